"""RepQ-ViT's log√2 quantizer as ONNX model-local functions in domain ``qcompile`` (standard ops only).

Two functions, both with float32 scalar inputs ``delta`` (Δ > 0) and ``qmax`` (= 2^b − 1 as a float):

``QuantizeLogSqrt2(x, delta, qmax) -> codes`` (uint8)::

    r     = x / Δ
    q     = clamp(round(−2·log2 r), 0, qmax)   computed as Round(Log(r) · (−2 / ln 2)), round half to even
    codes = r > 0 ? q : qmax                   (x ≤ 0 and NaN take the zero code, without a Log of 0)

``DequantizeLogSqrt2(codes, delta, qmax) -> y`` (float32), the reparameterized form of RepQ-ViT §3.3::

    e = ceil(q / 2),  q mod 2 = 2e − q
    y = q < qmax ? Δ · 2^(−e) · (1 + (√2 − 1)·(q mod 2)) : 0        (= Δ · 2^(−q/2) for q < qmax)

The top code qmax is reserved for exact zero (see `qcompile.ir.quant_meta.QuantSpec`). Both bodies compute
in float64 (Cast in, Cast out) with the same operations, in the same order, as the NumPy reference
`QuantSpec.quantize` / `QuantSpec.dequantize`: the codes match it bit for bit (a float64 Log differing by an
ulp can only flip a code within ~1e-15 of a rounding boundary) and the values match to float32 rounding
(tested at rtol 1e-6; 2^(−e) is a power of two, exact in float64).

Body ops (ONNX opset 13 semantics, all unchanged up to the current opset): Cast, Constant, Div, Greater,
Where, Log, Mul, Round, Clip, Ceil, Add, Sub, Neg, Pow, Less. `add_log_functions` registers both functions
on a model; call sites are nodes ``ir.node("QuantizeLogSqrt2", [x, delta, qmax], domain=DOMAIN)``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = [
    "DOMAIN",
    "QUANTIZE",
    "DEQUANTIZE",
    "FUNCTION_OPSET",
    "quantize_function",
    "dequantize_function",
    "add_log_functions",
]

DOMAIN = "qcompile"
QUANTIZE = "QuantizeLogSqrt2"
DEQUANTIZE = "DequantizeLogSqrt2"
DOMAIN_VERSION = 1
FUNCTION_OPSET = 13  # the lowest default-domain opset the bodies need (Clip with tensor bounds on doubles)

_DOUBLE = int(ir.DataType.DOUBLE)


class _Body:
    """Appends nodes with uniquely named outputs to a function body."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []

    def __call__(self, op: str, *inputs: ir.Value, name: str, **attributes) -> ir.Value:
        node = ir.node(op, list(inputs), attributes=attributes or None, name=f"{name}_{op}")
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]

    def constant(self, name: str, value: float) -> ir.Value:
        return self("Constant", name=name, value=ir.tensor(np.array(value, dtype=np.float64), name=name))


def _function(
    name: str, inputs: list[ir.Value], outputs: list[ir.Value], body: _Body, opset: int, doc: str
) -> ir.Function:
    graph = ir.Graph(inputs, outputs, nodes=body.nodes, opset_imports={"": opset}, name=name, doc_string=doc)
    return ir.Function(DOMAIN, name, graph=graph, attributes=[])


def quantize_function(opset: int = FUNCTION_OPSET) -> ir.Function:
    """``QuantizeLogSqrt2(x, delta, qmax) -> codes``: uint8 log√2 codes, qmax meaning zero."""
    x, delta, qmax = ir.Value(name="x"), ir.Value(name="delta"), ir.Value(name="qmax")
    f = _Body()
    x64 = f("Cast", x, name="x64", to=_DOUBLE)
    delta64 = f("Cast", delta, name="delta64", to=_DOUBLE)
    qmax64 = f("Cast", qmax, name="qmax64", to=_DOUBLE)
    zero, one = f.constant("zero", 0.0), f.constant("one", 1.0)
    r = f("Div", x64, delta64, name="r")
    positive = f("Greater", r, zero, name="positive")
    safe = f("Where", positive, r, one, name="safe_r")
    log_r = f("Log", safe, name="log_r")
    t = f("Mul", log_r, f.constant("neg_two_over_ln2", -2.0 / np.log(2.0)), name="t")
    q = f("Round", t, name="q")
    clipped = f("Clip", q, zero, qmax64, name="q_clipped")
    codes64 = f("Where", positive, clipped, qmax64, name="codes64")
    codes = f("Cast", codes64, name="codes", to=int(ir.DataType.UINT8))
    return _function(QUANTIZE, [x, delta, qmax], [codes], f, opset, quantize_function.__doc__)


def dequantize_function(opset: int = FUNCTION_OPSET) -> ir.Function:
    """``DequantizeLogSqrt2(codes, delta, qmax) -> y``: float32 Δ·2^(−q/2), 0 for the code qmax."""
    codes, delta, qmax = ir.Value(name="codes"), ir.Value(name="delta"), ir.Value(name="qmax")
    f = _Body()
    q = f("Cast", codes, name="q64", to=_DOUBLE)
    delta64 = f("Cast", delta, name="delta64", to=_DOUBLE)
    qmax64 = f("Cast", qmax, name="qmax64", to=_DOUBLE)
    e = f("Ceil", f("Div", q, f.constant("two", 2.0), name="half_q"), name="e")
    odd = f("Sub", f("Add", e, e, name="two_e"), q, name="q_mod_2")
    power = f("Pow", f.constant("base", 2.0), f("Neg", e, name="neg_e"), name="power")
    scaled = f("Mul", delta64, power, name="scaled")
    mantissa = f(
        "Add",
        f.constant("one", 1.0),
        f("Mul", odd, f.constant("sqrt2_minus_1", np.sqrt(2.0) - 1.0), name="odd_term"),
        name="mantissa",
    )
    y64 = f("Mul", scaled, mantissa, name="y_nonzero")
    nonzero = f("Less", q, qmax64, name="nonzero")
    y64 = f("Where", nonzero, y64, f.constant("zero", 0.0), name="y64")
    y = f("Cast", y64, name="y", to=int(ir.DataType.FLOAT))
    return _function(DEQUANTIZE, [codes, delta, qmax], [y], f, opset, dequantize_function.__doc__)


def add_log_functions(model: ir.Model) -> None:
    """Register both functions on `model` (once) and import domain ``qcompile`` version 1.

    The bodies import the model's default-domain opset (at least `FUNCTION_OPSET`), so the function and
    the model agree on the standard operator versions.
    """
    opset = max(model.opset_imports.get("", FUNCTION_OPSET), FUNCTION_OPSET)
    for build in (quantize_function, dequantize_function):
        function = build(opset)
        if function.identifier() not in model.functions:
            model.functions[function.identifier()] = function
    model.opset_imports[DOMAIN] = DOMAIN_VERSION
