"""TVM backend (issue 5): compile an integer-only model into a library of integer kernels.

    from qcompile.backends import tvm as qtvm
    model = qtvm.load("out/")            # out/model.so + out/model.tvm.json
    outputs = model.run({"input_image": x})
"""

from __future__ import annotations

__all__ = ["load", "compile_int_model", "save"]


def __getattr__(name: str):
    if name in __all__:
        from qcompile.backends.tvm import artifact

        return getattr(artifact, name)
    raise AttributeError(name)
