"""Serialize `QuantSpec`s as standard QuantizeLinear/DequantizeLinear nodes (QDQ ONNX).

For a constant (weight) value with spec S: the float initializer W is replaced by its integer codes
``q = clamp(round(W / s) + z, qmin, qmax)`` in an int8/uint8 initializer, followed by
``DequantizeLinear(q, s, z[, axis])``; consumers read the dequantized value.

For an activation x with spec S: ``DequantizeLinear(Clip?(QuantizeLinear(x, s, z)), s, z)`` is inserted
after x's producer and every consumer of x reads the result. QuantizeLinear saturates to the container
(int8/uint8); when S has fewer than 8 bits an integer `Clip(qmin, qmax)` between Q and DQ restricts codes
to the b-bit range, so b-bit quantization is simulated exactly inside an 8-bit container. Graph outputs
keep the float value.

For an activation x with a log√2 spec (``kind="log_sqrt2"``, RepQ-ViT's post-Softmax quantizer), the pair is
``qcompile.DequantizeLogSqrt2(qcompile.QuantizeLogSqrt2(x, Δ, qmax), Δ, qmax)`` instead: model-local
functions (domain ``qcompile``, standard ops inside, see `log_quant`) added to the model, with Δ and
qmax = 2^b − 1 as float32 scalar initializers ``{x}_delta`` / ``{x}_qmax``; the codes ``{x}_quantized`` are
uint8 and consumers read ``{x}_dequantized`` as for uniform activations. Log√2 specs on constants (weights)
are not supported: `to_qdq` raises ValueError.

With ``int8_weights=True`` (what `backends.onnx.export` chooses on CPUs whose u8×s8 kernels are exact, see
`backends/onnx/kernels.py` and docs/qdq-export.md) a weight of an unsigned spec is written as int8 codes
instead: ``q' = q − z`` with zero point 0 when every q − z fits in int8 (always for the symmetric weight
quantizers, whose uint8 codes are z ± (2^(b−1) − 1) around z = 2^(b−1)), else ``q' = q − 128`` with zero
point z − 128. Either way ``(q' − z')·s = (q − z)·s`` for every code: the same values in another container.
ONNX Runtime then fuses DequantizeLinear→MatMul into its u8×s8 kernels (VNNI/AMX) instead of u8×u8 ones.
Activations stay uint8 (ONNX Runtime's x86 optimizer turns int8 activation Q/DQ pairs back into uint8 ones).

A per-group weight spec (``group_size`` G along `axis`) becomes, by default and at every opset, the arithmetic
of a blocked DequantizeLinear in standard ops: the codes stored as [..., K/G, G, ...] and
``Reshape(Mul(Sub(Cast(codes, float), z), s), shape)`` with s and z of shape [..., K/G, 1, ...]: (q − z) is exact
in float32 and one rounding multiplies by s, exactly what DequantizeLinear computes. A ragged last group (G not
dividing K) is padded with its zero-point code to ⌈K/G⌉·G and the padding cut off by a Slice (always this form). With
``blocked_weights=True`` and a default-domain opset of 21 or more it is ``DequantizeLinear(codes, s, z, axis,
block_size=G)`` instead (ONNX Runtime 1.32's CPU provider runs blocked int8/uint8 DequantizeLinear; the opset is
never raised for it: that would change other ops, e.g. ReduceMean's axes became an input at 18). Not the default
because ONNX Runtime's ORT_ENABLE_ALL optimizer fuses a blocked DequantizeLinear → MatMul into MatMulNBits, which
by default (session config ``session.qdq_matmulnbits_accuracy_level`` = 4) quantizes the activations to int8
per block: measured 0.8 % of max|y| off the QDQ arithmetic on a random 256×24 MatMul; levels 0–2 compute in
float (float32 noise). ONNX Runtime constant-folds the standard-op form into a float weight at load time.

Floating-point specs (``kind="fp"``, ``"fp_token"``, LLM-FP4) are written by `fp_qdq`: weights as uint8 indices
into the format's value table, activations through the ``qcompile.FpRound_<format>`` function (or float8
QuantizeLinear/DequantizeLinear from opset 19).

A per-token activation spec (``kind="uniform_token"``) becomes standard ops that compute each row's scale
from x itself (the last axis reduced, keepdims) and fake-quantize with it, op for op the float32 algebra of
`QuantSpec` (ReduceMax/ReduceMin take `axes` as an attribute below opset 18, as an input from 18):

    symmetric:  s = Max(Div(Mul(ReduceMax(Abs(x)), r), qmax), tiny)
                q = Clip(Round(Div(x, s)), −qmax, qmax) → Cast int8 ``{x}_quantized``
                x̂ = Mul(Cast(q, float), s)
    asymmetric: lo = Mul(Min(ReduceMin(x), 0), r), hi = Mul(Max(ReduceMax(x), 0), r)
                s = Max(Div(Sub(hi, lo), L), tiny), z = Clip(Round(Div(Neg(lo), s)), 0, L)
                q = Clip(Add(Round(Div(x, s)), z), 0, L) → Cast uint8 ``{x}_quantized``
                x̂ = Mul(Sub(Cast(q, float), z), s)

(the Mul by r is left out when r = 1). Round is half to even, like QuantizeLinear. ONNX Runtime runs these
as float ops: no integer kernel is fused for per-token activations.

The input model is not modified: `to_qdq` works on a copy.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import clone_model, quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.runtime import log_quant
from qcompile.runtime.fp_qdq import quantize_fp_value
from qcompile.runtime.kv_storage import store_quantized_cache

__all__ = ["to_qdq", "int8_weight_codes", "MIN_OPSET", "BLOCKED_OPSET"]

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
BLOCKED_OPSET = 21  # DequantizeLinear's block_size
REDUCE_AXES_INPUT_OPSET = 18  # ReduceMax/ReduceMin take axes as an input


def _container(spec: QuantSpec) -> np.dtype:
    """The 8-bit container of the spec's codes."""
    return np.dtype(np.int8) if spec.signed else np.dtype(np.uint8)


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def _qparams(
    graph: ir.Graph, base: str, spec: QuantSpec, zero_point: np.ndarray | None = None
) -> tuple[ir.Value, ir.Value]:
    """Scale and zero-point initializers; `zero_point` (already in its container) replaces the spec's."""
    scale = _constant(graph, f"{base}_scale", spec.scale.astype(np.float32))
    zero_point = spec.zero_point.astype(_container(spec)) if zero_point is None else zero_point
    return scale, _constant(graph, f"{base}_zero_point", zero_point)


def int8_weight_codes(spec: QuantSpec, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unsigned spec's codes (int32, as `QuantSpec.quantize` gives them) and zero point written as int8
    with the same dequantized values: centered (q − z, zero point 0) where that fits in int8, else q − 128."""
    zero_point = spec.zero_point
    centered = codes - spec.broadcast(zero_point, codes.ndim, codes.shape[spec.axis] if spec.group_size else None)
    if centered.size == 0 or (centered.min() >= -128 and centered.max() <= 127):
        return centered.astype(np.int8), np.zeros_like(zero_point, dtype=np.int8)
    return (codes - 128).astype(np.int8), (zero_point - 128).astype(np.int8)


def _axis_attr(spec: QuantSpec) -> dict:
    return {} if spec.axis is None else {"axis": spec.axis}


def _node(op: str, inputs: list[ir.Value], name: str, dtype: ir.DataType = ir.DataType.FLOAT, **attributes) -> ir.Node:
    node = ir.node(op, inputs, attributes=attributes or None, name=name)
    node.outputs[0].name = name
    node.outputs[0].dtype = dtype
    return node


def _grouped_dequantize(
    graph: ir.Graph, base: str, spec: QuantSpec, codes: np.ndarray, zero_point: np.ndarray
) -> list[ir.Node]:
    """Standard-op form of a blocked DequantizeLinear: Cast, Sub, Mul on [.., ⌈K/G⌉, G, ..], Reshape; a ragged
    last group is padded with zero-point codes (dequantized to 0) and cut off again by a Slice."""
    axis, group = spec.axis % codes.ndim, spec.group_size
    length = codes.shape[axis]
    groups = -(-length // group)
    if groups * group != length:
        pad_shape = list(codes.shape)
        pad_shape[axis] = groups * group - length
        fill = np.broadcast_to(np.take(zero_point, [groups - 1], axis=axis), pad_shape)
        codes = np.concatenate([codes, fill.astype(codes.dtype)], axis=axis)
    grouped_shape = (*codes.shape[:axis], groups, group, *codes.shape[axis + 1 :])
    quantized = _constant(graph, f"{base}_quantized", codes.reshape(grouped_shape))
    scale = _constant(graph, f"{base}_scale", np.expand_dims(spec.scale.astype(np.float32), axis + 1))
    zero = _constant(graph, f"{base}_zero_point", np.expand_dims(zero_point.astype(np.float32), axis + 1))
    shape = _constant(graph, f"{base}_shape", np.array(codes.shape, dtype=np.int64))
    cast = _node("Cast", [quantized], f"{base}_codes_float", to=ir.DataType.FLOAT)
    sub = _node("Sub", [cast.outputs[0], zero], f"{base}_centered")
    mul = _node("Mul", [sub.outputs[0], scale], f"{base}_grouped")
    reshape = _node("Reshape", [mul.outputs[0], shape], f"{base}_DequantizeGrouped")
    if groups * group == length:
        return [cast, sub, mul, reshape]
    starts = _constant(graph, f"{base}_slice_starts", np.array([0], dtype=np.int64))
    ends = _constant(graph, f"{base}_slice_ends", np.array([length], dtype=np.int64))
    axes = _constant(graph, f"{base}_slice_axes", np.array([axis], dtype=np.int64))
    cut = _node("Slice", [reshape.outputs[0], starts, ends, axes], f"{base}_DequantizeGroupedCut")
    return [cast, sub, mul, reshape, cut]


def _quantize_weight(
    graph: ir.Graph, value: ir.Value, spec: QuantSpec, int8: bool = False, opset: int = 0, blocked: bool = False
) -> None:
    codes = spec.quantize(value.const_value.numpy())
    if int8 and not spec.signed:
        codes, zero_point = int8_weight_codes(spec, codes)
    else:
        codes, zero_point = codes.astype(_container(spec)), None
    base = value.name
    ragged = spec.group_size is not None and codes.shape[spec.axis] % spec.group_size != 0
    if spec.group_size is not None and (ragged or not (blocked and opset >= BLOCKED_OPSET)):
        nodes = _grouped_dequantize(graph, base, spec, codes, spec.zero_point if zero_point is None else zero_point)
    else:
        quantized = _constant(graph, f"{base}_quantized", codes)
        scale, zero_point = _qparams(graph, base, spec, zero_point)
        attrs = _axis_attr(spec)
        if spec.group_size is not None:
            attrs["block_size"] = spec.group_size
        nodes = [
            ir.node(
                "DequantizeLinear", [quantized, scale, zero_point], attributes=attrs, name=f"{base}_DequantizeLinear"
            )
        ]
    dq = nodes[-1]
    dq.outputs[0].name = f"{base}_dequantized"
    dq.outputs[0].dtype = value.dtype or ir.DataType.FLOAT
    dq.outputs[0].shape = value.shape
    ir.convenience.replace_all_uses_with(value, dq.outputs[0])
    graph.insert_before(graph.node(0), nodes) if len(graph) else graph.extend(nodes)
    if value.name in graph.initializers and not value.uses():
        graph.initializers.pop(value.name)


def _quantize_activation(graph: ir.Graph, value: ir.Value, spec: QuantSpec) -> None:
    uses = list(value.uses())
    if not uses:
        return
    dtype = _container(spec)
    base = value.name
    scale, zero_point = _qparams(graph, base, spec)
    attrs = _axis_attr(spec)
    q = ir.node("QuantizeLinear", [value, scale, zero_point], attributes=attrs, name=f"{base}_QuantizeLinear")
    q.outputs[0].name = f"{base}_quantized"
    q.outputs[0].dtype = ir.DataType.from_numpy(dtype)
    nodes = [q]
    codes = q.outputs[0]
    if not spec.container_is_full:
        lo = _constant(graph, f"{base}_qmin", np.array(spec.qmin, dtype=dtype))
        hi = _constant(graph, f"{base}_qmax", np.array(spec.qmax, dtype=dtype))
        clip = ir.node("Clip", [codes, lo, hi], name=f"{base}_Clip")
        clip.outputs[0].name = f"{base}_clipped"
        clip.outputs[0].dtype = codes.dtype
        nodes.append(clip)
        codes = clip.outputs[0]
    dq = ir.node("DequantizeLinear", [codes, scale, zero_point], attributes=attrs, name=f"{base}_DequantizeLinear")
    dq.outputs[0].name = f"{base}_dequantized"
    dq.outputs[0].dtype = value.dtype or ir.DataType.FLOAT
    dq.outputs[0].shape = value.shape
    nodes.append(dq)
    for use in uses:
        use.node.replace_input_with(use.idx, dq.outputs[0])
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, nodes)
    elif len(graph):
        graph.insert_before(graph.node(0), nodes)


def _reduce(graph: ir.Graph, op: str, x: ir.Value, name: str, opset: int) -> ir.Node:
    if opset >= REDUCE_AXES_INPUT_OPSET:
        axes = _constant(graph, f"{name}_axes", np.array([-1], dtype=np.int64))
        return _node(op, [x, axes], name, keepdims=1)
    return _node(op, [x], name, axes=[-1], keepdims=1)


def _token_ops(graph: ir.Graph, value: ir.Value, spec: QuantSpec, opset: int):
    """The per-token quantizer's nodes (not inserted) and its values: (nodes, codes, scale, zero point (None if
    symmetric), dequantized)."""
    base = value.name
    nodes: list[ir.Node] = []

    def add(op: str, inputs: list[ir.Value], suffix: str, dtype: ir.DataType = ir.DataType.FLOAT, **attrs) -> ir.Value:
        node = _node(op, inputs, f"{base}_{suffix}", dtype, **attrs)
        nodes.append(node)
        return node.outputs[0]

    def const(suffix: str, number: float) -> ir.Value:
        return _constant(graph, f"{base}_{suffix}", np.array(number, dtype=np.float32))

    def reduce(op: str, x: ir.Value, suffix: str) -> ir.Value:
        node = _reduce(graph, op, x, f"{base}_{suffix}", opset)
        nodes.append(node)
        return node.outputs[0]

    ratio = None if spec.clip_ratio == 1.0 else const("clip_ratio", spec.clip_ratio)
    tiny = const("min_scale", float(quant_meta.TOKEN_MIN_SCALE))
    if spec.signed:
        top = const("qmax", spec.token_qmax)
        absmax = reduce("ReduceMax", add("Abs", [value], "abs"), "absmax")
        if ratio is not None:
            absmax = add("Mul", [absmax, ratio], "clipped_absmax")
        scale = add("Max", [add("Div", [absmax, top], "raw_scale"), tiny], "token_scale")
        rounded = add("Round", [add("Div", [value, scale], "scaled")], "rounded")
        clipped = add("Clip", [rounded, const("qmin", -spec.token_qmax), top], "clipped")
        codes = add("Cast", [clipped], "quantized", ir.DataType.INT8, to=ir.DataType.INT8)
        centered = add("Cast", [codes], "codes_float", to=ir.DataType.FLOAT)
        zero_point = None
    else:
        zero, levels = const("zero", 0.0), const("levels", 2**spec.bits - 1)
        lo = add("Min", [reduce("ReduceMin", value, "row_min"), zero], "lo")
        hi = add("Max", [reduce("ReduceMax", value, "row_max"), zero], "hi")
        if ratio is not None:
            lo, hi = add("Mul", [lo, ratio], "clipped_lo"), add("Mul", [hi, ratio], "clipped_hi")
        scale = add("Max", [add("Div", [add("Sub", [hi, lo], "width"), levels], "raw_scale"), tiny], "token_scale")
        shift = add("Round", [add("Div", [add("Neg", [lo], "neg_lo"), scale], "raw_zero")], "rounded_zero")
        zero_point = add("Clip", [shift, zero, levels], "token_zero_point")
        rounded = add("Round", [add("Div", [value, scale], "scaled")], "rounded")
        shifted = add("Add", [rounded, zero_point], "shifted")
        clipped = add("Clip", [shifted, zero, levels], "clipped")
        codes = add("Cast", [clipped], "quantized", ir.DataType.UINT8, to=ir.DataType.UINT8)
        centered = add("Sub", [add("Cast", [codes], "codes_float", to=ir.DataType.FLOAT), zero_point], "centered")
    dequantized = add("Mul", [centered, scale], "dequantized")
    dequantized.shape = value.shape
    codes.shape = value.shape
    return nodes, codes, scale, zero_point, dequantized


def _insert_after_producer(graph: ir.Graph, value: ir.Value, nodes: list[ir.Node]) -> None:
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, nodes)
    elif len(graph):
        graph.insert_before(graph.node(0), nodes)


def _quantize_token_activation(graph: ir.Graph, value: ir.Value, spec: QuantSpec, opset: int) -> None:
    uses = list(value.uses())
    if not uses:
        return
    nodes, _, _, _, dequantized = _token_ops(graph, value, spec, opset)
    for use in uses:
        use.node.replace_input_with(use.idx, dequantized)
    _insert_after_producer(graph, value, nodes)


def _quantize_log_activation(graph: ir.Graph, value: ir.Value, spec: QuantSpec) -> None:
    uses = list(value.uses())
    if not uses:
        return
    base = value.name
    delta = _constant(graph, f"{base}_delta", spec.scale.astype(np.float32))
    qmax = _constant(graph, f"{base}_qmax", np.array(spec.qmax, dtype=np.float32))
    q = ir.node(log_quant.QUANTIZE, [value, delta, qmax], domain=log_quant.DOMAIN, name=f"{base}_{log_quant.QUANTIZE}")
    q.outputs[0].name = f"{base}_quantized"
    q.outputs[0].dtype = ir.DataType.UINT8
    q.outputs[0].shape = value.shape
    dq = ir.node(
        log_quant.DEQUANTIZE,
        [q.outputs[0], delta, qmax],
        domain=log_quant.DOMAIN,
        name=f"{base}_{log_quant.DEQUANTIZE}",
    )
    dq.outputs[0].name = f"{base}_dequantized"
    dq.outputs[0].dtype = ir.DataType.FLOAT
    dq.outputs[0].shape = value.shape
    for use in uses:
        use.node.replace_input_with(use.idx, dq.outputs[0])
    producer = value.producer()
    if producer is not None:
        graph.insert_after(producer, [q, dq])
    elif len(graph):
        graph.insert_before(graph.node(0), [q, dq])


def to_qdq(
    model: ir.Model, int8_weights: bool = False, blocked_weights: bool = False, kv_storage: bool = False
) -> ir.Model:
    """A copy of `model` with every `QuantSpec` written as QDQ nodes (log√2 specs as `log_quant` functions,
    per-token specs as the standard ops above, per-group weights as blocked or standard-op dequantization);
    `int8_weights` writes unsigned weight codes as int8 (exactly the same values, see above);
    `blocked_weights` writes per-group weights as blocked DequantizeLinear where the opset is 21 or more;
    `kv_storage` stores a quantized KV cache as codes with their scales (`kv_storage.store_quantized_cache`:
    the artifact's cache interface changes, so numeric checks use the default)."""
    quantized = quant_meta.quantized_values(model.graph)
    specs = {v.name: quant_meta.get_quant(v) for v in quantized}
    for value in quantized:
        if specs[value.name].kind not in ("uniform", "fp") and value.const_value is not None:
            raise ValueError(
                f"'{value.name}' is a constant with a {specs[value.name].kind} spec: only activations may be "
                f"log√2- or per-token-quantized"
            )
    out = clone_model(model)
    if not specs:
        return out
    if out.opset_imports.get("", 1) < MIN_OPSET:
        out.opset_imports[""] = MIN_OPSET
    graph = out.graph
    opset = out.opset_imports[""]
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        values.update({v.name: v for v in node.outputs})
    for name, spec in specs.items():
        value = values[name]
        if spec.kind in quant_meta.FP_KINDS:
            quantize_fp_value(out, value, spec, opset)
        elif spec.kind == "log_sqrt2":
            if value.uses():
                log_quant.add_log_functions(out)
            _quantize_log_activation(graph, value, spec)
        elif spec.kind == "uniform_token":
            if not (kv_storage and store_quantized_cache(graph, value, spec, opset, _token_ops)):
                _quantize_token_activation(graph, value, spec, opset)
        elif value.const_value is not None and name in graph.initializers:
            _quantize_weight(graph, value, spec, int8_weights, opset, blocked_weights)
        else:
            _quantize_activation(graph, value, spec)
    return out
