"""TVM backend (issue 5): compile an integer-only model into a library of integer kernels.

from qcompile.backends import tvm as qtvm
model = qtvm.load("out/")            # out/model.so + out/model.tvm.json
outputs = model.run({"input_image": x})
"""

from __future__ import annotations

import os

_SET_BY_USER = {
    name for name in ("TVM_BIND_THREADS", "TVM_NUM_THREADS", "TVM_THREAD_POOL_SPIN_COUNT") if name in os.environ
}

# TVM's thread pool pins its workers *and the calling thread* to cores by default; every thread the
# process creates afterwards (ONNX Runtime's pool, the baselines timed next to TVM) inherits the pinned
# affinity and shares one core. Unpinned, before TVM creates its pool (it reads the variable then).
os.environ.setdefault("TVM_BIND_THREADS", "0")
# TVM sizes its pool once, at first use, from TVM_NUM_THREADS, else from its idea of the physical core
# count — 1 on the 2-vCPU development machine, where every TVM kernel silently ran on one core;
# `runtime.config_threadpool` does not resize it. Default: every core this process may use.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))


# An idle worker calls sched_yield this many times before it sleeps: long enough to catch the next
# kernel of the same run (no wake-up per parallel kernel), short enough that the workers are asleep
# within a millisecond of the run's end, so they cannot slow another runtime timed afterwards.
# benchmarks/results/tvm_spin.md (DINOv2-S): 70.2–71.6 ms at 0, 67.6–68.2 ms at 500; 0.3 ms of CPU
# burned in the 50 ms after a run, against 50 ms with TVM's default spinning.
BRIEF_SPIN = 500


def configure_pool(threads: int, spin_count: int | None = None) -> None:
    """Pool size and idle spinning for this process, unless the user set them in the environment.
    spin_count: None keeps TVM's default (workers spin for tens of milliseconds after each kernel),
    0 sleeps at once (a wake-up per parallel kernel), `BRIEF_SPIN` what the job and benchmark use.
    Effective only before TVM's pool exists (its first parallel kernel); `pool_threads()` tells."""
    if "TVM_NUM_THREADS" not in _SET_BY_USER:
        os.environ["TVM_NUM_THREADS"] = str(int(threads))
    if spin_count is not None and "TVM_THREAD_POOL_SPIN_COUNT" not in _SET_BY_USER:
        os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = str(int(spin_count))


__all__ = ["load", "compile_int_model", "save", "pool_threads", "configure_pool", "BRIEF_SPIN"]


def pool_threads() -> int:
    """The number of threads TVM's pool runs parallel loops on (fixed at its first use)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def __getattr__(name: str):
    if name in ("load", "compile_int_model", "save"):
        from qcompile.backends.tvm import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
