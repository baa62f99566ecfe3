"""qcompile: a quantization compiler for transformer models.

result = qcompile.compile("model.onnx", passes="repq,intonly", output_dir="out", target="llvm")
                                               # the CLI's whole job: artifact, report.json, report.html

model = qcompile.load("model.onnx")            # or qcompile.from_torch(module, example_inputs)
qcompile.run_passes(model, "w8a8", calibration=data)
qcompile.backends.onnx.export(model, "out/model.qdq.onnx")
"""

import importlib
import os

# ONNX Runtime (1.32 on Linux) otherwise writes a telemetry device id under ~/.cache/Microsoft and a
# session file in TMPDIR when it is imported: qcompile writes nothing outside its output folder.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from qcompile.errors import InputError, PassFailure, QcompileError

# Everything else is imported on first use (PEP 562), so that `import qcompile` (and the CLI's start-up,
# which must answer Ctrl-C with one line) does not pay for onnx, onnxruntime and torch until they are needed.
_LAZY = {
    "compile": "qcompile.api",
    "Result": "qcompile.api",
    "load": "qcompile.frontends.onnx",
    "from_torch": "qcompile.frontends.torch",
    "run_passes": "qcompile.pipeline.run",
    "Property": "qcompile.ir.properties",
    **dict.fromkeys(
        (
            "CalibrationData",
            "Numerics",
            "Pass",
            "PassManager",
            "PassResult",
            "PipelineContext",
            "register_pass",
            "register_recipe",
        ),
        "qcompile.pipeline",
    ),
}

_SUBPACKAGES = (
    "backends",
    "runtime",
    "passes",
    "zoo",
    "ir",
    "pipeline",
    "frontends",
    "calibration",
    "intops",
    "report",
    "testing",
    "math",
    "job",
    "api",
)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"qcompile.{name}")
    raise AttributeError(f"module 'qcompile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBPACKAGES})


__all__ = [*_LAZY, "InputError", "PassFailure", "QcompileError"]
__version__ = "0.1.0"
