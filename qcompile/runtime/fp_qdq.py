"""Floating-point quantizers (`QuantSpec` kinds "fp", "fp_token") as ONNX that ONNX Runtime runs, bit-exact.

**Rounding.** ``qcompile.FpRound_<format>(y) -> r`` is a model-local function (domain ``qcompile``, standard
ops only) that rounds onto the format's unit-scale grid (`qcompile.math.fp_formats`), op for op in float32:

    a = Min(Abs(y), max);  p = 1 + Σ_{k=2..P} Cast(GreaterOrEqual(a, 2^k));  step = Pow(2, p − M)
    r = Mul(Sign(y), Mul(Round(Div(a, step)), step))

(Round is half to even; Div by a power of two and Mul by one are exact). ONNX Runtime has no float4
QuantizeLinear/DequantizeLinear on CPU, and float8 ones only from opset 19; the function serves every format
at any opset from 13. Where the model's opset is 19 or more and the format is an ONNX float8 type (E4M3FN,
E5M2), ``DequantizeLinear(QuantizeLinear(y, 2^bias, 0), 2^bias, 0)`` with a float8 zero point is written
instead (saturating, round to nearest even: the same values, tested).

**Activations.** ``x̂ = Mul(Round_fp(Div(x, s)), s)`` with s a constant (per tensor, or per channel along the
last axis, "fp") or computed per row, "fp_token": ``s = Max(Div(Mul(ReduceMax(Abs(x)), r), max), tiny)``.

**Weights** ("fp" on a constant): the codes are stored as uint8 indices into the format's signed value table
(`code_table`), decoded by ``Mul(Gather(table, Cast(codes, int32)), s)`` with s per output channel: one byte per weight,
the same values as s·fp_round(W/s), at any opset.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from qcompile.ir.online_ops import insert_after
from qcompile.ir.quant_meta import TOKEN_MIN_SCALE, QuantSpec
from qcompile.math.fp_formats import FpFormat, enumerate_grid, fp_format, fp_round

__all__ = ["DOMAIN", "round_function_name", "round_function", "code_table", "fp_codes", "quantize_fp_value"]

DOMAIN = "qcompile"
DOMAIN_VERSION = 1
FUNCTION_OPSET = 13
FLOAT8_OPSET = 19
_FLOAT = int(ir.DataType.FLOAT)
_ML_DTYPES = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def round_function_name(fmt: FpFormat) -> str:
    return f"FpRound_{fmt.name}"


def round_function(fmt: FpFormat, opset: int = FUNCTION_OPSET) -> ir.Function:
    """``FpRound_<format>(y) -> r``: y rounded onto the format's unit-scale grid (module docstring)."""
    y = ir.Value(name="y")
    nodes: list[ir.Node] = []

    def op(kind: str, *inputs: ir.Value, name: str, **attributes) -> ir.Value:
        node = ir.node(kind, list(inputs), attributes=attributes or None, name=f"{name}_{kind}")
        node.outputs[0].name = name
        nodes.append(node)
        return node.outputs[0]

    def constant(name: str, number: float) -> ir.Value:
        return op("Constant", name=name, value=ir.tensor(np.array(number, dtype=np.float32), name=name))

    a = op("Min", op("Abs", y, name="abs_y"), constant("max_value", fmt.max_value), name="a")
    p = constant("one", 1.0)
    for k in range(2, fmt.top_binade + 1):
        above = op("GreaterOrEqual", a, constant(f"two_pow_{k}", 2.0**k), name=f"above_{k}")
        p = op("Add", p, op("Cast", above, name=f"above_{k}_float", to=_FLOAT), name=f"p_{k}")
    exponent = op("Sub", p, constant("mantissa_bits", fmt.mantissa_bits), name="exponent")
    step = op("Pow", constant("two", 2.0), exponent, name="step")
    magnitude = op("Mul", op("Round", op("Div", a, step, name="units"), name="rounded"), step, name="magnitude")
    r = op("Mul", op("Sign", y, name="sign"), magnitude, name="r")
    graph = ir.Graph([y], [r], nodes=nodes, opset_imports={"": opset}, name=round_function_name(fmt))
    return ir.Function(DOMAIN, round_function_name(fmt), graph=graph, attributes=[])


def _add_round_function(model: ir.Model, fmt: FpFormat) -> None:
    opset = max(model.opset_imports.get("", FUNCTION_OPSET), FUNCTION_OPSET)
    function = round_function(fmt, opset)
    if function.identifier() not in model.functions:
        model.functions[function.identifier()] = function
    model.opset_imports[DOMAIN] = DOMAIN_VERSION


def code_table(fmt: FpFormat) -> np.ndarray:
    """The format's signed values in unit scale, float32: index i < n is −grid[n − 1 − i], then grid (0 once)."""
    grid = enumerate_grid(fmt)
    return np.concatenate([-grid[:0:-1], grid]).astype(np.float32)


def fp_codes(weight: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """uint8 indices into `code_table` of the weight's rounded values s·fp_round(W/s) / s."""
    fmt = fp_format(spec.fp_format)
    scale = spec.fp_scale(weight)
    rounded = fp_round(np.asarray(weight, dtype=np.float32) / scale, fmt)
    table = code_table(fmt)
    codes = np.searchsorted(table, rounded)
    if not np.array_equal(table[codes], rounded):
        raise AssertionError("a rounded weight is not on the format's grid")
    return codes.astype(np.uint8)


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape, value.dtype = ir.Shape(array.shape), ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def _nodes(base: str):
    nodes: list[ir.Node] = []

    def add(kind: str, inputs: list[ir.Value], suffix: str, domain: str = "", **attributes) -> ir.Value:
        node = ir.node(kind, inputs, attributes=attributes or None, domain=domain, name=f"{base}_{suffix}")
        node.outputs[0].name = f"{base}_{suffix}"
        node.outputs[0].dtype = ir.DataType.FLOAT
        nodes.append(node)
        return node.outputs[0]

    return nodes, add


def _round(model: ir.Model, add, graph: ir.Graph, base: str, y: ir.Value, fmt: FpFormat) -> ir.Value:
    opset = model.opset_imports.get("", 1)
    if fmt.onnx_type is not None and fmt.bits == 8 and opset >= FLOAT8_OPSET:
        scale = _const(graph, f"{base}_fp8_scale", np.array(fmt.onnx_scale, dtype=np.float32))
        zero = _const(graph, f"{base}_fp8_zero", np.zeros((), dtype=getattr(ml_dtypes, _ML_DTYPES[fmt.name])))
        codes = add("QuantizeLinear", [y, scale, zero], "fp8")
        codes.dtype = zero.dtype
        return add("DequantizeLinear", [codes, scale, zero], "rounded")
    _add_round_function(model, fmt)
    return add(round_function_name(fmt), [y], "rounded", domain=DOMAIN)


def quantize_fp_value(model: ir.Model, value: ir.Value, spec: QuantSpec, opset: int) -> None:
    """Write `spec` (an fp kind) for `value` into `model`'s graph: every reader then reads x̂."""
    graph, base, fmt = model.graph, value.name, fp_format(spec.fp_format)
    uses = list(value.uses())
    if not uses:
        return
    nodes, add = _nodes(base)
    if value.const_value is not None and value.name in graph.initializers:  # a weight: codes + table
        weight = value.const_value.numpy()
        codes = _const(graph, f"{base}_fp_codes", fp_codes(weight, spec))
        table = _const(graph, f"{base}_fp_table", code_table(fmt))
        scale = _const(graph, f"{base}_fp_scale", np.asarray(spec.fp_scale(weight), dtype=np.float32))
        indices = add("Cast", [codes], "fp_indices", to=int(ir.DataType.INT32))
        indices.dtype = ir.DataType.INT32
        decoded = add("Mul", [add("Gather", [table, indices], "fp_values"), scale], "dequantized")
        decoded.shape = value.shape
        ir.convenience.replace_all_uses_with(value, decoded)
        graph.insert_before(graph.node(0), nodes) if len(graph) else graph.extend(nodes)
        if not value.uses():
            graph.initializers.pop(value.name)
        return
    if spec.kind == "fp":  # per tensor, or per channel along the last axis
        scale = _const(graph, f"{base}_fp_scale", spec.scale.astype(np.float32))
    else:
        absmax = add("Abs", [value], "abs")
        if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
            axes = _const(graph, f"{base}_axes", np.array([-1], dtype=np.int64))
            absmax = add("ReduceMax", [absmax, axes], "absmax", keepdims=1)
        else:
            absmax = add("ReduceMax", [absmax], "absmax", axes=[-1], keepdims=1)
        if spec.clip_ratio != 1.0:
            ratio = _const(graph, f"{base}_clip_ratio", np.array(spec.clip_ratio, dtype=np.float32))
            absmax = add("Mul", [absmax, ratio], "clipped_absmax")
        top = _const(graph, f"{base}_fp_max", np.array(fmt.max_value, dtype=np.float32))
        tiny = _const(graph, f"{base}_min_scale", np.array(TOKEN_MIN_SCALE, dtype=np.float32))
        scale = add("Max", [add("Div", [absmax, top], "raw_scale"), tiny], "token_scale")
    rounded = _round(model, add, graph, base, add("Div", [value, scale], "scaled"), fmt)
    dequantized = add("Mul", [rounded, scale], "dequantized")
    dequantized.shape = value.shape
    for use in uses:
        use.node.replace_input_with(use.idx, dequantized)
    insert_after(model, value.producer(), nodes)
