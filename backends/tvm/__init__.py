"""TVM backend (issue 5): compile an integer-only model into a library of integer kernels.

    from qcompile.backends import tvm as qtvm
    model = qtvm.load("out/")            # out/model.so + out/model.tvm.json
    outputs = model.run({"input_image": x})
"""

from __future__ import annotations

import os

# TVM's thread pool pins its workers *and the calling thread* to cores by default; every thread the
# process creates afterwards (ONNX Runtime's pool, the baselines timed next to TVM) inherits the pinned
# affinity and shares one core: measured 3.6× slower ORT MatMulInteger in the same process. Unpinned,
# before TVM creates its pool (it reads the variable then); a user's explicit setting wins.
os.environ.setdefault("TVM_BIND_THREADS", "0")
# TVM sizes its pool once, at first use, from TVM_NUM_THREADS, else from what it takes for the physical
# core count — 1 on this 2-vCPU machine, where every TVM kernel silently ran on one core (GEMM 125 vs
# 257 GOP/s); `runtime.config_threadpool` does not resize it. Default: every core this process may use.
os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

__all__ = ["load", "compile_int_model", "save", "pool_threads"]


def pool_threads() -> int:
    """The number of threads TVM's pool runs parallel loops on (fixed at its first use)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def __getattr__(name: str):
    if name in ("load", "compile_int_model", "save"):
        from qcompile.backends.tvm import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
