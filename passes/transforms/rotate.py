"""QuaRot-style rotation (Ashkboos et al. 2024; METHODS.md §7.1), float64 weight math, EXACT_IN_REALS.

Let d be the residual width, C = I − 11ᵀ/d (mean removal) and Q = diag(s)·(A ⊗ B) an orthogonal
randomized Hadamard (random signs s; A ⊗ B = H_d/√d as Kronecker factors, `math.hadamard`; a random
orthogonal A where no Hadamard of order a exists, reported in the stats).

1. **Residual rotation** (pre-LN models, `residual_stream.find_stream`). Every writer's LayerScale λ is
   folded first (W ← W diag λ, b ← b ⊙ λ); then the stream becomes x' = x C Q:
   * the origin (embedding) gets online ops x0' = ((x0 − mean x0) ⊙ s)(A ⊗ B) (Sub, Mul, KroneckerRotate);
   * every writer: W ← W C Q, b ← b C Q (centred outputs keep the stream mean-free);
   * every norm becomes weightless RMS: n' = x' / √(mean(x'²) + ε). Because x C has zero mean and Q
     preserves norms, n' = LN₀(x) Q with LN₀ the affine-free LayerNorm;
   * a norm whose consumers are all biased linears absorbs γ, β and Qᵀ: W ← Qᵀ diag(γ) W, b ← b + β W;
     any other norm (the final one) un-rotates online: y = (n' (A ⊗ B)ᵀ) ⊙ (s ⊙ γ) + β.
2. **Online Hadamards** on the input h of every writer (attention output before the output projection,
   MLP hidden before FC2), pre-LN or post-LN: h' = h (A_h ⊗ B_h) online, W ← (A_h ⊗ B_h)ᵀ W. These cannot
   be folded (a nonlinearity or the attention sits before them); they spread the input's outliers over
   all channels. QuaRot fuses the per-head half of the attention transform into v_proj and keeps only the
   cross-head part online; here the whole transform runs online, which needs no knowledge of the head
   layout (docs/methods/rotate.md).

   **Norm outputs of a post-LN model** (option `norm_online`, used only when step 1 did not apply): a
   norm output y also feeds the residual, so nothing can be folded into γ, β; the linears reading y get
   y' = y (A ⊗ B) online instead, W ← (A ⊗ B)ᵀ W, and the residual keeps y. This spreads the outlier
   channels γ gives LayerNorm outputs (BERT) over all channels of the Q/K/V and FC1 inputs.

3. **Attention score sites** (`attention_sites`, `qk_rotation`; options `qk`, `drop_key_bias`): a per-head
   randomized Hadamard folded into the query and key projections (QuaRot's R3 without an online op, since
   there is no RoPE between projection and scores), and the key bias dropped (it shifts each query row of
   the scores by a constant, which softmax ignores).
4. **Cached keys after RoPE** (`kv_sites`; option `qk_online`, decoders exported with a KV cache): RoPE sits
   between the projections and the scores, so the per-head Hadamard R runs online on the new keys before
   they enter the cache and on the queries at the score MatMul: (Q R)(K R)ᵀ = Q Kᵀ, and the cache holds K R.

On Llama-family decoders (RMSNorm streams) step 1 needs no centring (C = I): the embedding table is rotated
in place (E ← E Q; a tied LM head gets its own copy first, `untie`), every RMSNorm's γ is folded into the
linears it feeds (W ← Qᵀ diag(γ) W), the writers (o_proj, down_proj) get W ← W Q, and step 2 puts online
Hadamards before o_proj and down_proj (SwiGLU's output).

The online Hadamards of step 2 carry random row signs on both Kronecker factors (`online_rotation(...,
signed=True)`): a plain Hadamard maps a nonzero-mean input (a GELU output) to one outlier channel.

Every step is orthogonal algebra or a softmax invariance, so outputs match in real arithmetic.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import add_initializer, quant_meta, replace_const
from qcompile.ir.online_ops import insert_after, insert_kronecker_rotate
from qcompile.ir.properties import Property, get_properties
from qcompile.math.hadamard import Rotation, online_rotation
from qcompile.passes.transforms.attention_sites import find_qk_sites
from qcompile.passes.transforms.kv_sites import find_kv_sites
from qcompile.passes.transforms.norm_sites import find_norm_sites, norm_linears
from qcompile.passes.transforms.qk_rotation import drop_key_bias, rotate_heads
from qcompile.passes.transforms.repq_layernorm import linear_bias
from qcompile.passes.transforms.residual_stream import (
    Norm,
    Stream,
    Writer,
    as_float64,
    find_norms,
    find_stream,
    find_writers,
)
from qcompile.passes.transforms.untie import untie_transposed_weights
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["RotatePass"]


def _constant(model: ir.Model, name: str, array: np.ndarray) -> ir.Value:
    return add_initializer(model, name, np.asarray(array, dtype=np.float32))


def _add_node(
    model: ir.Model, after: ir.Node | None, op: str, inputs: list[ir.Value], name: str, like: ir.Value, **attrs
) -> ir.Value:
    node = ir.node(op, inputs, attributes=attrs or None, name=name)
    node.outputs[0].name = f"{name}_output"
    node.outputs[0].dtype = like.dtype or ir.DataType.FLOAT
    node.outputs[0].shape = like.shape
    insert_after(model, after, node)
    return node.outputs[0]


def _reduce_mean(model: ir.Model, after: ir.Node | None, x: ir.Value, name: str) -> ir.Value:
    if model.opset_imports.get("", 1) >= 18:
        axes = _constant(model, f"{name}_axes", np.array([-1]))
        axes.const_value = ir.tensor(np.array([-1], dtype=np.int64), name=axes.name)
        axes.dtype = ir.DataType.INT64
        return _add_node(model, after, "ReduceMean", [x, axes], name, x, keepdims=1)
    return _add_node(model, after, "ReduceMean", [x], name, x, axes=[-1], keepdims=1)


def _remove_dead(model: ir.Model, nodes: list[ir.Node]) -> None:
    for node in nodes:
        if node is not None and node.graph is model.graph and not any(o.uses() for o in node.outputs):
            model.graph.remove(node, safe=True)


def _fold_writer_scale(model: ir.Model, writer: Writer) -> None:
    """W ← W diag λ, b ← b ⊙ λ; drop the LayerScale Mul."""
    if writer.scale_mul is None:
        return
    scale = as_float64(writer.scale)
    replace_const(writer.weight, as_float64(writer.weight) * scale)
    if writer.bias is not None:
        replace_const(writer.bias, as_float64(writer.bias) * scale)
    add_output = next(v for v in writer.scale_mul.inputs if v is not writer.scale)
    ir.convenience.replace_all_uses_with(writer.scale_mul.outputs[0], add_output)
    _remove_dead(model, [writer.scale_mul])
    writer.output, writer.scale_mul, writer.scale = add_output, None, None


def _to_rms(model: ir.Model, norm: Norm) -> ir.Value:
    """Drop the mean subtraction; returns the normalized value n'."""
    if norm.rms:
        return norm.normalized
    if norm.fused is not None:
        node = norm.fused
        x = node.inputs[0]
        eps = node.attributes.get_float("epsilon", 1e-5)
        square = _add_node(model, node, "Mul", [x, x], f"{norm.name}_rms_square", x)
        mean = _reduce_mean(model, square.producer(), square, f"{norm.name}_rms_mean")
        shifted = _add_node(
            model,
            mean.producer(),
            "Add",
            [mean, _constant(model, f"{norm.name}_eps", np.float32(eps))],
            f"{norm.name}_rms_eps",
            mean,
        )
        root = _add_node(model, shifted.producer(), "Sqrt", [shifted], f"{norm.name}_rms_sqrt", mean)
        return _add_node(model, root.producer(), "Div", [x, root], f"{norm.name}_rms_div", x)
    mean_node = norm.sub.inputs[1].producer()
    ir.convenience.replace_all_uses_with(norm.sub.outputs[0], norm.sub.inputs[0])
    _remove_dead(model, [norm.sub, mean_node])
    return norm.div.outputs[0]


def _apply_affine(
    model: ir.Model, norm: Norm, value: ir.Value, after: ir.Node, gamma: np.ndarray, beta: np.ndarray | None
) -> ir.Value:
    out = _add_node(
        model, after, "Mul", [value, _constant(model, f"{norm.name}_gamma_rotated", gamma)], f"{norm.name}_gamma", value
    )
    if beta is not None:
        out = _add_node(
            model,
            out.producer(),
            "Add",
            [out, _constant(model, f"{norm.name}_beta", beta)],
            f"{norm.name}_beta_add",
            value,
        )
    return out


def _embedding_table(origin: ir.Value) -> tuple[ir.Node, ir.Value] | None:
    """(Gather, table) when `origin` is Gather(table[V, d] constant, ids) along axis 0."""
    node = origin.producer()
    if node is None or node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
        return None
    table = node.inputs[0]
    if table is None or table.const_value is None or len(table.const_value.shape) != 2:
        return None
    return node, table


class _Rotator:
    def __init__(self, model: ir.Model, stream: Stream, seed: int) -> None:
        self.model = model
        self.stream = stream
        self.rotation = online_rotation(stream.width, seed)
        self.signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=stream.width)
        self.q = self.signs[:, None] * self.rotation.dense()  # Q = diag(s)(A ⊗ B)
        center = np.eye(stream.width) - (0.0 if stream.rms else 1.0 / stream.width)
        self.cq = center @ self.q

    def rotate_origin(self) -> str:
        """x0' = x0 C Q: folded into an embedding table (RMS streams), else online ops."""
        origin = self.stream.origin
        embedding = _embedding_table(origin)
        if self.stream.rms and embedding is not None:
            gather, table = embedding
            rotated = as_float64(table) @ self.q
            if len(table.uses()) == 1:
                replace_const(table, rotated)
                return "folded into the embedding table"
            name = f"{table.name}_rotated"
            gather.replace_input_with(0, _constant(self.model, name, rotated))
            return "folded into an untied copy of the embedding table"
        uses = list(origin.uses())
        if self.stream.rms:
            centered = origin
        else:
            mean = _reduce_mean(self.model, origin.producer(), origin, "rotate_origin_mean")
            centered = _add_node(self.model, mean.producer(), "Sub", [origin, mean], "rotate_origin_center", origin)
        signed = _add_node(
            self.model,
            centered.producer(),
            "Mul",
            [centered, _constant(self.model, "rotate_signs", self.signs)],
            "rotate_origin_signs",
            origin,
        )
        rotated = insert_kronecker_rotate(self.model, signed, self.rotation, "rotate_origin", "rotate_residual")
        for use in uses:
            use.node.replace_input_with(use.idx, rotated)
        return "online"

    def rotate_writer(self, writer: Writer) -> None:
        _fold_writer_scale(self.model, writer)
        replace_const(writer.weight, as_float64(writer.weight) @ self.cq)
        if writer.bias is not None:
            replace_const(writer.bias, as_float64(writer.bias) @ self.cq)

    def rotate_norm(self, norm: Norm, sites: dict[int, list]) -> str:
        consumers = list(norm.output.uses())  # before any node is inserted (a weightless norm's output is n')
        normalized = _to_rms(self.model, norm)
        gamma = as_float64(norm.gamma) if norm.gamma is not None else np.ones(self.stream.width)
        beta = as_float64(norm.beta) if norm.beta is not None else None
        readers = sites.get(id(norm.output))
        if readers is not None:
            for linear, bias in readers:
                weight = linear.array().astype(np.float64)
                rows = weight if linear.in_axis == 0 else weight.T
                if beta is not None:
                    replace_const(bias, as_float64(bias) + beta @ rows)
                rows = self.q.T @ (gamma[:, None] * rows)
                replace_const(linear.weight, rows if linear.in_axis == 0 else rows.T)
            ir.convenience.replace_all_uses_with(norm.output, normalized)
            _remove_dead(self.model, [norm.output.producer(), norm.mul, norm.fused])
            return "folded"
        back = Rotation(self.rotation.a.T, self.rotation.b.T, self.rotation.kind, self.rotation.size)
        unrotated = insert_kronecker_rotate(
            self.model, normalized, back, f"{norm.name}_unrotate", "rotate_residual_inverse"
        )
        out = _apply_affine(self.model, norm, unrotated, unrotated.producer(), self.signs * gamma, beta)
        for use in consumers:
            use.node.replace_input_with(use.idx, out)
        if norm.gamma is not None:
            _remove_dead(self.model, [norm.output.producer(), norm.mul, norm.fused])
        return "unrotated online"


def _rotate_cached_qk(model: ir.Model, seed: int) -> dict | str:
    """Online per-head Hadamard R on the new keys after RoPE (before the cache) and on the queries at the score
    MatMul: S = (Q R)(K R)ᵀ = Q Kᵀ, and the cache holds K R, whose outliers R spreads over the head (QuaRot's
    R3/R4 for KV quantization)."""
    sites, skipped = find_kv_sites(model)
    if not sites and not skipped:
        return "skipped: no KV-cache inputs (past_key_values.*)"
    rotations = {d: online_rotation(d, seed, signed=True) for d in {s.head_dim for s in sites}}
    for site in sites:
        rotation = rotations[site.head_dim]
        factor = f"rotate_qk_{site.head_dim}"
        key = insert_kronecker_rotate(model, site.new_key, rotation, f"layer{site.layer}_key", factor)
        site.key_concat.replace_input_with(1, key)
        query = insert_kronecker_rotate(model, site.scores.inputs[0], rotation, f"layer{site.layer}_query", factor)
        site.scores.replace_input_with(0, query)
    kinds = sorted({r.kind for r in rotations.values()})
    return {"sites": len(sites), "head_dim": sorted(rotations), "rotation": kinds, "skipped": skipped}


def _drop_unused_initializers(model: ir.Model) -> None:
    outputs = {id(v) for v in model.graph.outputs}
    for name, value in list(model.graph.initializers.items()):
        if not value.uses() and id(value) not in outputs and value not in model.graph.inputs:
            model.graph.initializers.pop(name)


def _norm_readers(model: ir.Model) -> tuple[dict[int, list], dict[str, str]]:
    """{id(norm output): [(linear, bias)]} for norms whose consumers are all linears: biased ones where
    the norm has a β to fold (bias None for an RMSNorm's readers)."""
    sites, skipped = find_norm_sites(model.graph, rms=True)
    readers = {}
    for site in sites:
        if site.beta is None:
            readers[id(site.output)] = [(linear, None) for linear in site.linears]
            continue
        biases = [linear_bias(linear) for linear in site.linears]
        reasons = [b for b in biases if isinstance(b, str)]
        if reasons:
            skipped[site.name] = reasons[0]
        else:
            readers[id(site.output)] = list(zip(site.linears, biases))
    return readers, skipped


@register_pass("rotate")
class RotatePass(Pass):
    """Randomized Hadamard rotation of the residual stream plus online Hadamards before writer linears."""

    establishes = frozenset({Property.ROTATED})
    invalidates = frozenset({Property.CALIBRATED})
    numerics = Numerics.EXACT_IN_REALS

    def __init__(
        self,
        residual: bool = True,
        online: bool = True,
        qk: bool = True,
        drop_key_bias: bool = True,
        norm_online: bool = True,
        qk_online: bool = True,
        context: PipelineContext | None = None,
    ) -> None:
        self.residual = bool(residual)
        self.online = bool(online)
        self.qk = bool(qk)
        self.drop_key_bias = bool(drop_key_bias)
        self.norm_online = bool(norm_online)
        self.qk_online = bool(qk_online)
        self.context = context or PipelineContext()

    def call(self, model: ir.Model) -> PassResult:
        if Property.ROTATED in get_properties(model):
            return PassResult(model, modified=False, stats={"reason": "already rotated"})
        if any(quant_meta.get_quant(v) is not None for v in quant_meta.quantized_values(model.graph)):
            raise InputError("pass 'rotate' must run before quantization")
        seed = self.context.seed
        writers = find_writers(model.graph, rms=True)
        stats: dict = {
            "residual": "off",
            "online": [],
            "norm_online": [],
            "qk": "off",
            "qk_online": "off",
            "key_bias_dropped": 0,
        }
        sites, skipped_sites = find_qk_sites(model) if self.qk or self.drop_key_bias else ([], {})
        if self.qk:
            kinds = [rotate_heads(site, seed + 3) for site in sites]
            stats["qk"] = {
                "sites": len(sites),
                "heads": sorted({(s.heads, s.head_dim) for s in sites}),
                "rotation": sorted(set(kinds)),
                "skipped": skipped_sites,
            }
        if self.residual:
            stream = find_stream(model.graph)
            if isinstance(stream, str):
                stats["residual"] = f"skipped: {stream}"
            else:
                untied = untie_transposed_weights(model)
                readers, skipped = _norm_readers(model)
                rotator = _Rotator(model, stream, seed)
                origin = rotator.rotate_origin()
                for writer in stream.writers:
                    rotator.rotate_writer(writer)
                norms = {norm.name: rotator.rotate_norm(norm, readers) for norm in stream.norms}
                stats["residual"] = {
                    "norm_kind": "rms" if stream.rms else "layer",
                    "origin": origin,
                    "untied": untied,
                    "width": stream.width,
                    "rotation": rotator.rotation.kind,
                    "factors": [rotator.rotation.a.shape[0], rotator.rotation.b.shape[0]],
                    "writers": len(stream.writers),
                    "norms": norms,
                    "skipped_readers": skipped,
                }
        if self.norm_online and not isinstance(stats["residual"], dict):
            stats["norm_online"] = [self._norm_online(model, norm, seed) for norm in find_norms(model.graph)]
        if self.online:
            for writer in writers:
                stats["online"].append(self._online(model, writer, seed))
        if self.qk_online:
            stats["qk_online"] = _rotate_cached_qk(model, seed + 5)
        if self.drop_key_bias:  # last: the residual fold may still add β·W_k into the key bias
            stats["key_bias_dropped"] = sum(drop_key_bias(model, site) for site in sites)
        _drop_unused_initializers(model)
        modified = (
            isinstance(stats["residual"], dict)
            or bool(stats["online"])
            or any(isinstance(n, dict) for n in stats["norm_online"])
            or isinstance(stats["qk"], dict)
            or stats["key_bias_dropped"] > 0
            or (isinstance(stats["qk_online"], dict) and stats["qk_online"]["sites"] > 0)
        )
        return PassResult(model, modified=modified, stats=stats)

    def _online(self, model: ir.Model, writer: Writer, seed: int) -> dict:
        x = writer.matmul.inputs[0]
        producer = x.producer()
        if producer is not None and producer.domain == "qcompile" and producer.op_type == "KroneckerRotate":
            return {"linear": writer.matmul.name, "skipped": "input already rotated online (norm_online)"}
        size = writer.weight.const_value.shape[0]
        rotation = online_rotation(size, seed + 2, signed=True)
        rotated = insert_kronecker_rotate(model, x, rotation, writer.matmul.name or x.name, f"rotate_online_{size}")
        writer.matmul.replace_input_with(0, rotated)
        replace_const(writer.weight, rotation.dense().T @ as_float64(writer.weight))
        return {
            "linear": writer.matmul.name,
            "size": size,
            "rotation": rotation.kind,
            "factors": [rotation.a.shape[0], rotation.b.shape[0]],
        }

    def _norm_online(self, model: ir.Model, norm: Norm, seed: int) -> dict | str:
        """y' = y R online for the linears reading norm output y, W ← Rᵀ W; other consumers keep y."""
        linears = norm_linears(norm.output, norm.gamma.const_value.shape[0])
        if isinstance(linears, str):
            return f"{norm.name}: {linears}"
        size = norm.gamma.const_value.shape[0]
        rotation = online_rotation(size, seed + 4, signed=True)
        rotated = insert_kronecker_rotate(model, norm.output, rotation, norm.name, f"rotate_norm_online_{size}")
        dense = rotation.dense()
        for linear in linears:
            linear.node.replace_input_with(0, rotated)
            weight = as_float64(linear.weight)
            replace_const(linear.weight, dense.T @ weight if linear.in_axis == 0 else weight @ dense)
        return {
            "norm": norm.name,
            "linears": [linear.node.name for linear in linears],
            "size": size,
            "rotation": rotation.kind,
        }
