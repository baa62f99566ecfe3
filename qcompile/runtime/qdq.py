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

The input model is not modified: `to_qdq` works on a copy.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import clone_model, quant_meta
from qcompile.ir.quant_meta import QuantSpec
from qcompile.runtime import log_quant

__all__ = ["to_qdq", "int8_weight_codes", "MIN_OPSET"]

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear


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
    if spec.axis is not None:
        shape = [1] * codes.ndim
        shape[spec.axis] = -1
        centered = codes - zero_point.reshape(shape)
    else:
        centered = codes - zero_point
    if centered.size == 0 or (centered.min() >= -128 and centered.max() <= 127):
        return centered.astype(np.int8), np.zeros_like(zero_point, dtype=np.int8)
    return (codes - 128).astype(np.int8), (zero_point - 128).astype(np.int8)


def _axis_attr(spec: QuantSpec) -> dict:
    return {} if spec.axis is None else {"axis": spec.axis}


def _quantize_weight(graph: ir.Graph, value: ir.Value, spec: QuantSpec, int8: bool = False) -> None:
    codes = spec.quantize(value.const_value.numpy())
    if int8 and not spec.signed:
        codes, zero_point = int8_weight_codes(spec, codes)
    else:
        codes, zero_point = codes.astype(_container(spec)), None
    base = value.name
    quantized = _constant(graph, f"{base}_quantized", codes)
    scale, zero_point = _qparams(graph, base, spec, zero_point)
    dq = ir.node(
        "DequantizeLinear", [quantized, scale, zero_point], attributes=_axis_attr(spec), name=f"{base}_DequantizeLinear"
    )
    dq.outputs[0].name = f"{base}_dequantized"
    dq.outputs[0].dtype = value.dtype or ir.DataType.FLOAT
    dq.outputs[0].shape = value.shape
    ir.convenience.replace_all_uses_with(value, dq.outputs[0])
    graph.insert_before(graph.node(0), dq) if len(graph) else graph.append(dq)
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


def to_qdq(model: ir.Model, int8_weights: bool = False) -> ir.Model:
    """A copy of `model` with every `QuantSpec` written as QDQ nodes (log√2 specs as `log_quant` functions);
    `int8_weights` writes unsigned weight codes as int8 (exactly the same values, see above)."""
    quantized = quant_meta.quantized_values(model.graph)
    specs = {v.name: quant_meta.get_quant(v) for v in quantized}
    for value in quantized:
        if specs[value.name].kind != "uniform" and value.const_value is not None:
            raise ValueError(
                f"'{value.name}' is a constant with a {specs[value.name].kind} spec: only activations may be "
                f"log√2-quantized"
            )
    out = clone_model(model)
    if not specs:
        return out
    if out.opset_imports.get("", 1) < MIN_OPSET:
        out.opset_imports[""] = MIN_OPSET
    graph = out.graph
    values = {v.name: v for v in graph.inputs}
    values.update(graph.initializers)
    for node in graph:
        values.update({v.name: v for v in node.outputs})
    for name, spec in specs.items():
        value = values[name]
        if spec.kind == "log_sqrt2":
            if value.uses():
                log_quant.add_log_functions(out)
            _quantize_log_activation(graph, value, spec)
        elif value.const_value is not None and name in graph.initializers:
            _quantize_weight(graph, value, spec, int8_weights)
        else:
            _quantize_activation(graph, value, spec)
    return out
