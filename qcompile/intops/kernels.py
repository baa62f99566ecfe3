"""Every integer kernel by name, and adding a kernel (with the kernels its body calls) to a model."""

from __future__ import annotations

import onnx_ir as ir

from qcompile.intops.domain import DOMAIN, add_function
from qcompile.intops.ibert_softmax import IBertSoftmax
from qcompile.intops.ilayernorm import ILayerNorm
from qcompile.intops.int_exp import IntExpShift
from qcompile.intops.int_gelu import IntGELU
from qcompile.intops.int_linear import IntAdd, IntLinear
from qcompile.intops.isqrt import IntSqrt
from qcompile.intops.lookup import Lookup
from qcompile.intops.requantize import Requantize
from qcompile.intops.shiftgelu import ShiftGELU
from qcompile.intops.shiftmax import Shiftmax

__all__ = ["KERNELS", "add_kernel"]

KERNELS = {
    kernel.to_function_proto().name: kernel
    for kernel in (
        Requantize,
        IntLinear,
        IntAdd,
        IntExpShift,
        Shiftmax,
        IBertSoftmax,
        ShiftGELU,
        IntGELU,
        IntSqrt,
        ILayerNorm,
        Lookup,
    )
}


def add_kernel(model: ir.Model, kernel) -> str:
    """Add `kernel`'s function and, recursively, every `qcompile` function its body calls; returns its name."""
    proto = kernel.to_function_proto()
    add_function(model, kernel)
    for node in proto.node:
        if node.domain == DOMAIN:
            add_kernel(model, KERNELS[node.op_type])
    return proto.name
