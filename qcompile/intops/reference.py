"""The NumPy reference interpreter of an integer-only model: onnx's `ReferenceEvaluator` (NumPy
implementations of the standard ops) with every `qcompile` kernel replaced by its NumPy reference
function instead of its ONNX function body. ONNX Runtime runs the bodies; comparing the two runs bit for
bit checks every kernel body and every standard op of the graph at once.

Kernel inputs that are parameters (multipliers, shifts, bounds) are int64 scalars or vectors and are
passed to the references as arrays; outputs are int64, as the function bodies produce.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from qcompile.intops import (
    ibert_softmax,
    ilayernorm,
    int_exp,
    int_gelu,
    int_linear,
    isqrt,
    lookup,
    requantize,
    shiftgelu,
    shiftmax,
)
from qcompile.intops.domain import DOMAIN

__all__ = ["REFERENCES", "reference_evaluator", "run_reference"]


def _scalar(value) -> int:
    return int(np.asarray(value).reshape(()))


REFERENCES = {
    "Requantize": lambda x, m, e, b, lo, hi: requantize.requantize(
        x.astype(np.int32), m, e, b, _scalar(lo), _scalar(hi)
    ),
    "IntExpShift": lambda d, x0, n: int_exp.int_exp_shift(d, _scalar(x0), _scalar(n)),
    "Shiftmax": lambda x, x0, n, bits: shiftmax.shiftmax(x, _scalar(x0), _scalar(n), _scalar(bits)),
    "ShiftGELU": lambda x, x0, n, bits: shiftgelu.shift_gelu(x, _scalar(x0), _scalar(n), _scalar(bits)),
    "IntGELU": lambda x, b, c, one, n: int_gelu.int_gelu(x, _scalar(b), _scalar(c), _scalar(one), _scalar(n)),
    "IntSqrt": lambda v: isqrt.int_sqrt(v),
    "ILayerNorm": lambda x, shift: ilayernorm.i_layernorm(x, _scalar(shift)),
    "IBertSoftmax": lambda x, x0, b, c, n, bits: ibert_softmax.ibert_softmax(
        x, _scalar(x0), _scalar(b), _scalar(c), _scalar(n), _scalar(bits)
    ),
    "IntLinear": lambda x, w, bias: int_linear.int_linear(x, w, bias).astype(np.int32),
    "Lookup": lambda x, table, first: lookup.lookup(x, table, _scalar(first)),
    "IntAdd": lambda a, b, ma, ea, mb, eb, lo, hi: int_linear.int_add(
        a.astype(np.int32), b.astype(np.int32), ma, ea, mb, eb, _scalar(lo), _scalar(hi)
    ),
}


def _op_class(name: str, function) -> type[OpRun]:
    def _run(self, *inputs):
        return (np.asarray(function(*inputs)),)

    return type(name, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


def reference_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """A ReferenceEvaluator that runs `qcompile` kernels with their NumPy references."""
    new_ops = [_op_class(name, function) for name, function in REFERENCES.items()]
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    kept = [f for f in stripped.functions if f.domain != DOMAIN or f.name not in REFERENCES]
    del stripped.functions[:]
    stripped.functions.extend(kept)
    return ReferenceEvaluator(stripped, new_ops=new_ops)


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{output name: array} of `model` on `feeds` through the reference interpreter."""
    evaluator = reference_evaluator(model)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, evaluator.run(None, feeds)))
