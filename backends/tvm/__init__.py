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

__all__ = ["load", "compile_int_model", "save"]


def __getattr__(name: str):
    if name in __all__:
        from qcompile.backends.tvm import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
