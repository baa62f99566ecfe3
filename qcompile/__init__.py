"""qcompile: a quantization compiler for transformer models.

    model = qcompile.load("model.onnx")            # or qcompile.from_torch(module, example_inputs)
    qcompile.run_passes(model, "w8a8", calibration=data)
    qcompile.backends.onnx.export(model, "out/model.qdq.onnx")
"""

from qcompile.errors import InputError, PassFailure, QcompileError
from qcompile.frontends.onnx import load
from qcompile.frontends.torch import from_torch
from qcompile.ir.properties import Property
from qcompile.pipeline import (
    CalibrationData,
    Numerics,
    Pass,
    PassManager,
    PassResult,
    PipelineContext,
    register_pass,
    register_recipe,
)
from qcompile.pipeline.run import run_passes

__all__ = [
    "load",
    "from_torch",
    "run_passes",
    "Property",
    "CalibrationData",
    "Numerics",
    "Pass",
    "PassManager",
    "PassResult",
    "PipelineContext",
    "register_pass",
    "register_recipe",
    "InputError",
    "PassFailure",
    "QcompileError",
]
__version__ = "0.1.0"
