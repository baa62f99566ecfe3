"""Read a QDQ decoder artifact (`model.qdq.onnx` of a Llama-family model, with past_key_values) into a
`spec.Decoder`, by the structure qcompile's passes and exporter write, never by value names.

What is recognised (anything else raises `UnsupportedDecoder` naming it):

* linear layers: MatMul(x̂, Ŵ) with Ŵ a per-channel DequantizeLinear of a constant, the standard-op grouped
  form of `runtime.qdq` (Reshape(Mul(Sub(Cast(codes), z), s))), or a float constant (optionally transposed);
  the MatMuls reading one input form one fused `Linear`;
* x̂: the per-token quantizer chain of `runtime.qdq` (symmetric or asymmetric, with or without a clip ratio;
  bits from its clip bound), of x or of a chain of online transforms of x (`qcompile.KroneckerRotate` /
  `KroneckerAffine`, FlatQuant's per-channel Mul before the latter); or x itself (float activations);
* norms: decomposed RMSNorms (`residual_stream.find_norms`), with γ or weightless; RoPE from `inv_freq`;
* the KV cache: Concat(past, new) per layer (after an intact-kv prefix: Concat(Expand(K_p), past)), the new
  keys/values as floats, fake-quantized, or stored as codes with their scales (`runtime.kv_storage`); a
  per-head transform of the roped queries and keys; the score scale as Mul(QKᵀ, c).
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx_ir as ir

from qcompile.backends.tvm.decoder.spec import Block, ChannelScale, Decoder, Kronecker, Linear, TokenQuant
from qcompile.ir.norms import find_norms

__all__ = ["read_decoder", "UnsupportedDecoder"]

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_TRANSFORMS = ("KroneckerRotate", "KroneckerAffine")


class UnsupportedDecoder(ValueError):
    """The artifact has a form the TVM decoder does not compile (the message says which)."""


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and "value" in node.attributes:
        return node.attributes["value"].as_tensor().numpy()
    return None


def _producer(value: ir.Value | None, *ops: str) -> ir.Node | None:
    node = value.producer() if value is not None else None
    return node if node is not None and node.op_type in ops else None


def _const_input(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(the other input, the constant) of a binary node with one constant input."""
    for i, j in ((0, 1), (1, 0)):
        constant = _const(node.inputs[j])
        if constant is not None and _const(node.inputs[i]) is None:
            return node.inputs[i], constant
    return None


def _ratio(value: ir.Value) -> tuple[ir.Value, float]:
    """(value before an optional Mul by a clip ratio, the ratio)."""
    mul = _producer(value, "Mul")
    pair = _const_input(mul) if mul is not None else None
    if pair is not None and pair[1].size == 1:
        return pair[0], float(pair[1].reshape(()))
    return value, 1.0


def parse_codes(codes: ir.Value) -> tuple[ir.Value, TokenQuant, ir.Value, ir.Value | None]:
    """(x, quantizer, scale value, zero-point value or None) of `runtime.qdq`'s per-token codes of x."""
    cast = _producer(codes, "Cast")
    clip = _producer(cast.inputs[0], "Clip") if cast is not None else None
    if clip is None:
        raise UnsupportedDecoder(f"{codes.name}: not per-token codes (Cast(Clip(…)))")
    top = _const(clip.inputs[2])
    shifted = _producer(clip.inputs[0], "Add")
    rounded = clip.inputs[0] if shifted is None else shifted.inputs[0]
    divide = _producer(_producer(rounded, "Round").inputs[0], "Div") if _producer(rounded, "Round") else None
    if divide is None or top is None:
        raise UnsupportedDecoder(f"{codes.name}: not per-token codes (Round(Div(x, s)))")
    x, scale = divide.inputs[0], divide.inputs[1]
    levels = int(top.reshape(()))
    symmetric = shifted is None
    bits = int(np.log2(levels + 1)) + (1 if symmetric else 0)
    raw = _producer(scale, "Max")
    numerator = (
        _producer(raw.inputs[0], "Div").inputs[0] if raw is not None and _producer(raw.inputs[0], "Div") else None
    )
    if numerator is None:
        raise UnsupportedDecoder(f"{codes.name}: its scale is not Max(Div(·, qmax), tiny)")
    if symmetric:
        _, ratio = _ratio(numerator)
    else:
        width = _producer(numerator, "Sub")
        _, ratio = _ratio(width.inputs[0]) if width is not None else (None, 1.0)
    zero_point = shifted.inputs[1] if shifted is not None else None
    return x, TokenQuant(bits, symmetric, ratio), scale, zero_point


def _dequantized_input(value: ir.Value) -> tuple[ir.Value, TokenQuant | None]:
    """(the float tensor a MatMul's activation input quantizes, its quantizer or None)."""
    mul = _producer(value, "Mul")
    if mul is None:
        return value, None
    for codes_side in mul.inputs:
        centred = _producer(codes_side, "Sub")
        cast = _producer(centred.inputs[0] if centred is not None else codes_side, "Cast")
        if cast is not None and _producer(cast.inputs[0], "Cast") is not None:
            x, quant, _, _ = parse_codes(cast.inputs[0])
            return x, quant
    return value, None


def _transform(value: ir.Value) -> tuple[ir.Value, Kronecker | None]:
    node = value.producer()
    if node is None or node.domain != "qcompile" or node.op_type not in _TRANSFORMS:
        return value, None
    a, b = _const(node.inputs[1]), _const(node.inputs[2])
    return node.inputs[0], Kronecker(a.astype(np.float32), b.astype(np.float32), node.op_type)


def _transforms(value: ir.Value) -> tuple[ir.Value, tuple[Kronecker | ChannelScale, ...]]:
    """(the value before a chain of online transforms, the chain in application order): Kronecker functions and
    FlatQuant's Mul by a constant per-channel vector before one."""
    chain: list[Kronecker | ChannelScale] = []
    while True:
        source, kronecker = _transform(value)
        if kronecker is not None:
            chain.append(kronecker)
            value = source
            continue
        mul = _producer(value, "Mul")
        pair = _const_input(mul) if mul is not None and chain else None
        if pair is not None and pair[1].ndim == 1 and pair[1].size > 1:
            chain.append(ChannelScale(pair[1].astype(np.float32)))
            value = pair[0]
            continue
        return value, tuple(reversed(chain))


def _four_bit(codes: np.ndarray, zero: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes in [0, 15], zero points [G, N]) with the same codes − zero, or None if they span more than 4 bits."""
    k, n = codes.shape
    centred = codes.astype(np.int32).reshape(k // group, group, n) - zero.astype(np.int32)[:, None, :]
    lo, hi = centred.min(axis=1), centred.max(axis=1)
    if np.any(hi - lo > 15):
        return None
    z = np.clip(8, -lo, 15 - hi)
    return (centred + z[:, None, :]).reshape(k, n), z.astype(np.int32)


def _padding_cut(value: ir.Value) -> tuple[ir.Value, int | None]:
    """(the value under a Slice that keeps the first K rows of a grouped weight whose last group was padded, K), or
    (value, None) without one."""
    cut = _producer(value, "Slice")
    if cut is None or len(cut.inputs) < 4:
        return value, None
    starts, ends, axes = (_const(cut.inputs[i]) for i in (1, 2, 3))
    if starts is None or ends is None or axes is None or list(starts) != [0] or list(axes) != [0]:
        return value, None
    return cut.inputs[0], int(ends[0])


def _is_weight(value: ir.Value) -> bool:
    """A constant, a transposed or dequantized constant, or the grouped dequantization of constant codes (its padded
    last group cut off by a Slice)."""
    if _const(value) is not None:
        return True
    value = _padding_cut(value)[0]
    node = _producer(value, "Transpose", "DequantizeLinear")
    if node is not None:
        return _const(node.inputs[0]) is not None
    chain = _producer(value, "Reshape")
    for op in ("Mul", "Sub", "Cast"):
        chain = _producer(chain.inputs[0], op) if chain is not None else None
    return chain is not None and _const(chain.inputs[0]) is not None


def _weight(value: ir.Value) -> dict:
    """The Linear fields of a MatMul's weight input."""
    constant = _const(value)
    transpose = _producer(value, "Transpose")
    if constant is None and transpose is not None and _const(transpose.inputs[0]) is not None:
        constant = _const(transpose.inputs[0]).T
    if constant is not None:
        weight = constant.astype(np.float32)
        return dict(codes=None, zero=None, scale=None, group=weight.shape[0], bits=32, weight=weight)
    dq = _producer(value, "DequantizeLinear")
    if dq is not None:
        codes, scale = _const(dq.inputs[0]), _const(dq.inputs[1])
        zero = _const(dq.inputs[2]) if len(dq.inputs) > 2 else np.zeros_like(scale, np.int32)
        if codes is None or codes.ndim != 2 or scale.ndim != 1 or dq.attributes.get_int("axis", 1) != 1:
            raise UnsupportedDecoder(f"{value.name}: a DequantizeLinear that is not per output channel")
        k = codes.shape[0]
        return _with_codes(codes, zero.reshape(1, -1), scale.reshape(1, -1), k)
    grouped, rows = _padding_cut(value)
    reshape = _producer(grouped, "Reshape")
    mul = _producer(reshape.inputs[0], "Mul") if reshape is not None else None
    sub = _producer(mul.inputs[0], "Sub") if mul is not None else None
    cast = _producer(sub.inputs[0], "Cast") if sub is not None else None
    if cast is None or _const(cast.inputs[0]) is None:
        raise UnsupportedDecoder(f"{value.name}: a weight that is neither a constant nor a dequantized one")
    codes3, zero3, scale3 = _const(cast.inputs[0]), _const(sub.inputs[1]), _const(mul.inputs[1])
    groups, group, n = codes3.shape
    codes, zero, scale = codes3.reshape(groups * group, n), zero3.reshape(groups, n), scale3.reshape(groups, n)
    if rows is not None and rows < groups * group:  # the last group padded: groups of gcd(K, group) rows, the same W
        sub_group = math.gcd(rows, group)
        repeat = group // sub_group
        zero, scale = (np.repeat(x, repeat, axis=0)[: rows // sub_group] for x in (zero, scale))
        codes, group = codes[:rows], sub_group
    return _with_codes(codes, zero, scale, group)


def _with_codes(codes: np.ndarray, zero: np.ndarray, scale: np.ndarray, group: int) -> dict:
    four = _four_bit(codes, zero, group)
    if four is not None:
        return dict(codes=four[0], zero=four[1], scale=scale.astype(np.float32), group=group, bits=4, weight=None)
    return dict(codes=codes.astype(np.int32), zero=zero.astype(np.int32), scale=scale, group=group, bits=8, weight=None)


def _linears(graph: ir.Graph) -> list[tuple[ir.Value, list[ir.Node]]]:
    """MatMuls with a constant or dequantized-constant weight, grouped by their shared input, in graph order."""
    groups: dict[int, tuple[ir.Value, list[ir.Node]]] = {}
    for node in graph:
        if node.op_type != "MatMul":
            continue
        if not _is_weight(node.inputs[1]):
            continue
        groups.setdefault(id(node.inputs[0]), (node.inputs[0], []))[1].append(node)
    return list(groups.values())


def _reaches(value: ir.Value, targets: set[int], depth: int = 40) -> bool:
    """True if `value` flows into a node in `targets` (node ids) within `depth` steps."""
    frontier, seen = [value], set()
    for _ in range(depth):
        following = []
        for v in frontier:
            for use in v.uses():
                if id(use.node) in targets:
                    return True
                if id(use.node) not in seen:
                    seen.add(id(use.node))
                    following.extend(use.node.outputs)
        frontier = following
    return False


def _linear(x: ir.Value, nodes: list[ir.Node], splits: tuple[int, ...] = ()) -> Linear:
    source, quant = _dequantized_input(x)
    source, transforms = _transforms(source)
    parts = [_weight(node.inputs[1]) for node in nodes]
    first = parts[0]
    if any(p["group"] != first["group"] or p["bits"] != first["bits"] for p in parts):
        raise UnsupportedDecoder(f"{nodes[0].name}: fused linears with different weight groups or bits")
    join = (lambda key: None) if first["codes"] is None else (lambda key: np.concatenate([p[key] for p in parts], 1))
    weight = np.concatenate([p["weight"] for p in parts], 1) if first["codes"] is None else None
    return Linear(
        join("codes"),
        join("zero"),
        join("scale"),
        first["group"],
        first["bits"],
        quant,
        transforms,
        weight,
        splits or tuple(int((p["codes"] if p["codes"] is not None else p["weight"]).shape[1]) for p in parts),
    )


def read_decoder(model: ir.Model) -> Decoder:
    """The `spec.Decoder` of a QDQ Llama-family decoder artifact (module docstring)."""
    graph = model.graph
    pasts: dict[int, dict[str, ir.Value]] = {}
    for value in graph.inputs:
        match = _PAST.match(value.name or "")
        if match:
            pasts.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not pasts or any(set(p) != {"key", "value"} for p in pasts.values()):
        raise UnsupportedDecoder("the model has no past_key_values.{i}.key/value inputs")
    layers = len(pasts)
    floating = sorted({n.op_type for n in graph if n.domain == "qcompile" and n.op_type.startswith("FpRound")})
    if floating:
        raise UnsupportedDecoder(f"floating-point quantizers ({', '.join(floating)}) are not compiled for TVM")
    linears = _linears(graph)
    if len(linears) != 4 * layers + 1:
        raise UnsupportedDecoder(
            f"{len(linears)} linear groups for {layers} layers (a Llama block has 4, plus the LM head)"
        )
    gather = next((n for n in graph if n.op_type == "Gather" and _const(n.inputs[0]) is not None), None)
    if gather is None:
        raise UnsupportedDecoder("no embedding Gather of a constant table")
    norms = {id(norm.output): norm for norm in find_norms(graph, rms=True)}
    blocks = []
    head_dim = int(pasts[0]["key"].shape[-1])
    kv_heads = int(pasts[0]["key"].shape[1])
    for layer in range(layers):
        (x_qkv, qkv_nodes), (x_o, o_nodes), (x_mlp, mlp_nodes), (x_down, down_nodes) = linears[
            4 * layer : 4 * layer + 4
        ]
        if (len(qkv_nodes), len(o_nodes), len(mlp_nodes), len(down_nodes)) != (3, 1, 2, 1):
            raise UnsupportedDecoder(f"layer {layer}: linear groups are not q/k/v, o, gate/up, down")
        (key_concat, prefix_key), (value_concat, prefix_value) = (
            _cache_concat(pasts[layer][kind]) for kind in ("key", "value")
        )
        order = sorted(
            qkv_nodes,
            key=lambda node: (
                1
                if _reaches(node.outputs[0], {id(key_concat)})
                else 2
                if _reaches(node.outputs[0], {id(value_concat)})
                else 0
            ),
        )  # q (reaches neither cache), k, v
        gate_first = sorted(
            mlp_nodes, key=lambda node: not any(u.node.op_type == "Sigmoid" for u in node.outputs[0].uses())
        )
        qkv = _linear(x_qkv, order)
        gate_up = _linear(x_mlp, gate_first)
        key_quant, k_source = _kv_quant(key_concat)
        value_quant, _ = _kv_quant(value_concat)
        scores = _scores(key_concat)
        q_source, q_transform = _transform(scores.inputs[0])
        _, k_transform = _transform(k_source)
        blocks.append(
            Block(
                attn_norm=_gamma(norms, _transforms(_dequantized_input(x_qkv)[0])[0]),
                qkv=qkv,
                q_transform=q_transform,
                k_transform=k_transform,
                key_quant=key_quant,
                value_quant=value_quant,
                o=_linear(x_o, o_nodes),
                mlp_norm=_gamma(norms, _transforms(_dequantized_input(x_mlp)[0])[0]),
                gate_up=gate_up,
                down=_linear(x_down, down_nodes),
                prefix_key=prefix_key,
                prefix_value=prefix_value,
            )
        )
    x_head, head_nodes = linears[-1]
    norm, final_gamma = _norm(norms, _transforms(_dequantized_input(x_head)[0])[0])
    score_mul = next(u.node for u in scores.outputs[0].uses())
    scale = _const_input(score_mul) if score_mul.op_type == "Mul" else None
    if scale is None:
        raise UnsupportedDecoder("the attention scores are not scaled by Mul(QKᵀ, c)")
    heads = qkv.splits[0] // head_dim
    return Decoder(
        embedding=_const(gather.inputs[0]).astype(np.float32),
        blocks=blocks,
        final_norm=final_gamma,
        lm_head=_linear(x_head, head_nodes),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        rms_eps=_eps(norm),
        rope_inv_freq=_inv_freq(graph),
        score_scale=float(scale[1].reshape(())),
    )


def _cache_concat(past: ir.Value) -> tuple[ir.Node, np.ndarray | None]:
    """(the cache Concat(past, new), the intact-kv prefix [kv_heads, P, head_dim] joined before the past or None)."""
    uses = [u.node for u in past.uses() if u.node.op_type == "Concat"]
    if len(uses) != 1:
        raise UnsupportedDecoder(f"{past.name}: not read by one cache Concat")
    concat, prefix = uses[0], None
    expand = _producer(concat.inputs[0], "Expand")
    if expand is not None and _const(expand.inputs[0]) is not None and concat.inputs[1] is past:
        prefix = _const(expand.inputs[0])[0].astype(np.float32)  # IntactKV: Concat(Expand(K_p), past)
        joins = [u.node for u in concat.outputs[0].uses() if u.node.op_type == "Concat" and u.idx == 0]
        if len(joins) != 1:
            raise UnsupportedDecoder(f"{past.name}: the prefix-joined past is not read by one cache Concat")
        concat = joins[0]
    return concat, prefix


def _kv_quant(concat: ir.Node) -> tuple[TokenQuant | None, ir.Value]:
    """(the quantizer of the new keys/values, the float tensor before it) of a cache Concat(past, new)."""
    new = concat.inputs[1]
    if _producer(new, "Cast") is not None and _producer(new.producer().inputs[0], "Clip") is not None:
        x, quant, _, _ = parse_codes(new)  # stored as codes (runtime.kv_storage)
        return quant, x
    x, quant = _dequantized_input(new)
    return quant, x


def _scores(key_concat: ir.Node) -> ir.Node:
    """The MatMul(Q, Kᵀ) the cached keys reach."""
    frontier = [key_concat.outputs[0]]
    for _ in range(12):
        following = []
        for value in frontier:
            for use in value.uses():
                if use.node.op_type == "MatMul" and use.idx == 1:
                    return use.node
                following.extend(use.node.outputs)
        frontier = following
    raise UnsupportedDecoder(f"{key_concat.name}: the cached keys reach no score MatMul")


def _norm(norms: dict, value: ir.Value):
    """(the RMSNorm whose output is `value`, its γ or None). Where a per-channel Mul after a weightless norm was
    taken for γ by `find_norms` but belongs to a transform chain (FlatQuant's scaling), `value` is the norm's
    unscaled output: γ is None, the Mul is in the chain."""
    norm = norms.get(id(value))
    if norm is not None:
        return norm, None if norm.gamma is None else _const(norm.gamma).astype(np.float32)
    for candidate in norms.values():
        if candidate.div is not None and candidate.div.outputs[0] is value:
            return candidate, None
    raise UnsupportedDecoder(f"{value.name}: a linear input that is not an RMSNorm output")


def _gamma(norms: dict, value: ir.Value) -> np.ndarray | None:
    return _norm(norms, value)[1]


def _eps(norm) -> float:
    mean = next(u.node for u in norm.square.outputs[0].uses())
    add = next(u.node for u in mean.outputs[0].uses())
    pair = _const_input(add)
    if add.op_type != "Add" or pair is None:
        raise UnsupportedDecoder("an RMSNorm without Add(mean, ε)")
    return float(pair[1].reshape(()))


def _inv_freq(graph: ir.Graph) -> np.ndarray:
    cos = next((n for n in graph if n.op_type == "Cos"), None)
    concat = _producer(cos.inputs[0], "Concat") if cos is not None else None
    mul = _producer(concat.inputs[0], "Mul") if concat is not None else None
    pair = _const_input(mul) if mul is not None else None
    if pair is None:
        raise UnsupportedDecoder("no RoPE Cos(Concat(positions · inv_freq))")
    return pair[1].astype(np.float32).reshape(-1)
