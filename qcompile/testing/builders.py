"""Tiny seeded models for tests: a one-block pre-LN transformer encoder written directly as ONNX.

    x[B,T,D] → LN → {Q,K,V} MatMul+Add → attention (Softmax(QKᵀ/√d)V per head) → MatMul+Add → +x
             → LN → MatMul+Add → GELU(Erf) → MatMul+Add → +  → y[B,T,D]

Weights ~ N(0, 1/D) from `numpy.random.default_rng(seed)`; a few input channels get large outliers so
quantizers have something to clip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from qcompile.pipeline.context import CalibrationData

__all__ = ["TinyModel", "tiny_encoder", "tiny_encoder_proto"]


@dataclasses.dataclass
class TinyModel:
    model: ir.Model
    calibration: CalibrationData
    feeds: dict[str, np.ndarray]


def tiny_encoder_proto(
    dim: int = 32,
    heads: int = 2,
    hidden: int = 64,
    seed: int = 0,
    opset: int = 17,
    decomposed_layernorm: bool = False,
    final_norm: bool = False,
    layer_scale: bool = False,
) -> onnx.ModelProto:
    """The encoder block as an ONNX ModelProto with dynamic batch and sequence dims.

    `final_norm` ends the residual stream with a LayerNorm `ln_f` (as ViTs do) and `layer_scale` multiplies
    both branch outputs by a per-channel λ before the residual adds (DINOv2's LayerScale).

    `decomposed_layernorm` writes each LayerNorm as legacy exporters do:
    ReduceMean → Sub → Pow → ReduceMean → Add(eps) → Sqrt → Div → Mul(γ) → Add(β).
    """
    rng = np.random.default_rng(seed)
    head_dim = dim // heads
    inits, nodes = [], []

    def weight(name: str, shape: tuple[int, ...], std: float) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, std, shape).astype(np.float32), name))
        return name

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def linear(prefix: str, x: str, n_in: int, n_out: int) -> str:
        w = weight(f"{prefix}.weight", (n_in, n_out), n_in**-0.5)
        b = weight(f"{prefix}.bias", (n_out,), 0.02)
        nodes.append(helper.make_node("MatMul", [x, w], [f"{prefix}.mm"], name=f"{prefix}/MatMul"))
        nodes.append(helper.make_node("Add", [f"{prefix}.mm", b], [f"{prefix}.out"], name=f"{prefix}/Add"))
        return f"{prefix}.out"

    def layernorm(prefix: str, x: str) -> str:
        gamma = const(f"{prefix}.weight", (1.0 + rng.normal(0, 0.1, dim)).astype(np.float32))
        beta = const(f"{prefix}.bias", rng.normal(0, 0.1, dim).astype(np.float32))
        if not decomposed_layernorm:
            nodes.append(
                helper.make_node(
                    "LayerNormalization", [x, gamma, beta], [f"{prefix}.out"], name=prefix, axis=-1, epsilon=1e-5
                )
            )
            return f"{prefix}.out"
        const(f"{prefix}.two", np.array(2.0, dtype=np.float32))
        const(f"{prefix}.eps", np.array(1e-5, dtype=np.float32))
        steps = [
            ("ReduceMean", [x], "mean", {"axes": [-1]}),
            ("Sub", [x, f"{prefix}.mean"], "centered", {}),
            ("Pow", [f"{prefix}.centered", f"{prefix}.two"], "sq", {}),
            ("ReduceMean", [f"{prefix}.sq"], "var", {"axes": [-1]}),
            ("Add", [f"{prefix}.var", f"{prefix}.eps"], "var_eps", {}),
            ("Sqrt", [f"{prefix}.var_eps"], "std", {}),
            ("Div", [f"{prefix}.centered", f"{prefix}.std"], "normed", {}),
            ("Mul", [f"{prefix}.normed", gamma], "scaled", {}),
            ("Add", [f"{prefix}.scaled", beta], "out", {}),
        ]
        for op, inputs, out, attrs in steps:
            nodes.append(helper.make_node(op, inputs, [f"{prefix}.{out}"], name=f"{prefix}/{out}", **attrs))
        return f"{prefix}.out"

    def split_heads(name: str, x: str) -> str:
        nodes.append(helper.make_node("Reshape", [x, "heads_shape"], [f"{name}.r"], name=f"{name}/Reshape"))
        nodes.append(
            helper.make_node("Transpose", [f"{name}.r"], [f"{name}.h"], name=f"{name}/Transpose", perm=[0, 2, 1, 3])
        )
        return f"{name}.h"

    const("heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    const("merge_shape", np.array([0, 0, dim], dtype=np.int64))
    const("inv_sqrt_d", np.array(head_dim**-0.5, dtype=np.float32))
    const("sqrt_half", np.array(0.5**0.5, dtype=np.float32))
    const("one", np.array(1.0, dtype=np.float32))
    const("half", np.array(0.5, dtype=np.float32))

    h = layernorm("ln1", "x")
    q = split_heads("q", linear("q_proj", h, dim, dim))
    k = split_heads("k", linear("k_proj", h, dim, dim))
    v = split_heads("v", linear("v_proj", h, dim, dim))
    nodes.append(helper.make_node("Transpose", [k], ["k.t"], name="k/TransposeT", perm=[0, 1, 3, 2]))
    nodes.append(helper.make_node("MatMul", [q, "k.t"], ["scores.raw"], name="attn/QK"))
    nodes.append(helper.make_node("Mul", ["scores.raw", "inv_sqrt_d"], ["scores"], name="attn/Scale"))
    nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], name="attn/Softmax", axis=-1))
    nodes.append(helper.make_node("MatMul", ["probs", v], ["ctx.h"], name="attn/AV"))
    nodes.append(helper.make_node("Transpose", ["ctx.h"], ["ctx.t"], name="ctx/Transpose", perm=[0, 2, 1, 3]))
    nodes.append(helper.make_node("Reshape", ["ctx.t", "merge_shape"], ["ctx"], name="ctx/Reshape"))
    o = linear("o_proj", "ctx", dim, dim)
    if layer_scale:
        nodes.append(
            helper.make_node(
                "Mul", [o, const("ls1", rng.uniform(0.1, 1.0, dim).astype(np.float32))], ["o.ls"], name="ls1/Mul"
            )
        )
        o = "o.ls"
    nodes.append(helper.make_node("Add", ["x", o], ["res1"], name="res1"))
    h2 = layernorm("ln2", "res1")
    f1 = linear("fc1", h2, dim, hidden)
    nodes.append(helper.make_node("Mul", [f1, "sqrt_half"], ["gelu.s"], name="gelu/Scale"))
    nodes.append(helper.make_node("Erf", ["gelu.s"], ["gelu.e"], name="gelu/Erf"))
    nodes.append(helper.make_node("Add", ["gelu.e", "one"], ["gelu.a"], name="gelu/Add"))
    nodes.append(helper.make_node("Mul", [f1, "gelu.a"], ["gelu.m"], name="gelu/Mul"))
    nodes.append(helper.make_node("Mul", ["gelu.m", "half"], ["gelu"], name="gelu/Half"))
    f2 = linear("fc2", "gelu", hidden, dim)
    if layer_scale:
        nodes.append(
            helper.make_node(
                "Mul", [f2, const("ls2", rng.uniform(0.1, 1.0, dim).astype(np.float32))], ["f2.ls"], name="ls2/Mul"
            )
        )
        f2 = "f2.ls"
    if final_norm:
        nodes.append(helper.make_node("Add", ["res1", f2], ["res2"], name="res2"))
        nodes.append(helper.make_node("Identity", [layernorm("ln_f", "res2")], ["y"], name="y/Identity"))
    else:
        nodes.append(helper.make_node("Add", ["res1", f2], ["y"], name="res2"))

    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qcompile.testing")
    model.ir_version = 9
    return model


def tiny_inputs(
    batches: int, batch_size: int = 4, tokens: int = 8, dim: int = 32, seed: int = 1
) -> list[dict[str, np.ndarray]]:
    """Calibration-like batches with a few outlier channels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        x = rng.normal(0, 1, (batch_size, tokens, dim)).astype(np.float32)
        x[..., :2] *= 8.0
        out.append({"x": x})
    return out


def tiny_encoder(
    seed: int = 0,
    batches: int = 4,
    batch_size: int = 4,
    decomposed_layernorm: bool = False,
    final_norm: bool = False,
    layer_scale: bool = False,
) -> TinyModel:
    """A fresh tiny encoder with its calibration data and one evaluation batch."""
    proto = tiny_encoder_proto(
        seed=seed, decomposed_layernorm=decomposed_layernorm, final_norm=final_norm, layer_scale=layer_scale
    )
    model = ir.serde.deserialize_model(proto)
    calibration = CalibrationData.from_list(tiny_inputs(batches, batch_size, seed=seed + 1))
    feeds = tiny_inputs(1, batch_size, seed=seed + 100)[0]
    return TinyModel(model, calibration, feeds)


def post_ln_proto(dim: int = 32, seed: int = 0) -> onnx.ModelProto:
    """BERT-style post-LN: x → a1 = x + lin1(x) → ln1 → a2 = ln1 + lin2(ln1) → ln2 → y."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def array(name, values):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=np.float32), name))
        return name

    def linear(prefix, x):
        w = array(f"{prefix}.weight", rng.normal(0, dim**-0.5, (dim, dim)))
        b = array(f"{prefix}.bias", rng.normal(0, 0.02, dim))
        nodes.append(helper.make_node("MatMul", [x, w], [f"{prefix}.mm"], name=f"{prefix}/MatMul"))
        nodes.append(helper.make_node("Add", [f"{prefix}.mm", b], [f"{prefix}.out"], name=f"{prefix}/Add"))
        return f"{prefix}.out"

    def layernorm(prefix, x, out):
        gamma = array(f"{prefix}.weight", 1.0 + rng.normal(0, 0.1, dim))
        beta = array(f"{prefix}.bias", rng.normal(0, 0.1, dim))
        nodes.append(
            helper.make_node("LayerNormalization", [x, gamma, beta], [out], name=prefix, axis=-1, epsilon=1e-5)
        )

    nodes.append(helper.make_node("Add", ["x", linear("lin1", "x")], ["a1"], name="add1"))
    layernorm("ln1", "a1", "h1")
    nodes.append(helper.make_node("Add", ["h1", linear("lin2", "h1")], ["a2"], name="add2"))
    layernorm("ln2", "a2", "y")
    graph = helper.make_graph(
        nodes,
        "post_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model
