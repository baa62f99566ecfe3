"""Attention score sites (attention_sites) and the rotate pass's per-head Q/K rotation and key-bias drop."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from qcompile import runtime
from qcompile.passes.transforms.attention_sites import find_qk_sites
from qcompile.pipeline.run import run_passes
from qcompile.testing.builders import tiny_encoder, tiny_encoder_proto

RTOL = 1e-5  # max |y_after − y_before| ≤ RTOL · max |y_before| (float32 end to end)
QK_ONLY = "rotate:residual=false:online=false:norm_online=false:drop_key_bias=false"
BIAS_ONLY = "rotate:residual=false:online=false:norm_online=false:qk=false"


def _y(model, feeds):
    session = runtime.make_session(runtime.with_outputs(model, ["y"]) if isinstance(model, ir.Model) else model)
    return runtime.run(session, feeds, ["y"])["y"]


def _assert_equivalent(before, after):
    err = np.abs(after.astype(np.float64) - before).max()
    assert err <= RTOL * np.abs(before).max(), (err, np.abs(before).max())


def _node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def _weight(model: ir.Model, name: str) -> np.ndarray:
    return _node(model, name).inputs[1].const_value.numpy().astype(np.float64)


def _initializer(proto: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name).astype(np.float64)


def _dynamic_head_split(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite the q/k/v head splits as legacy exporters do: the Reshape shape is computed at run time as
    Concat(Unsqueeze(Gather(Shape(x), 0)), Unsqueeze(Gather(Shape(x), 1)), [H], [D])."""
    heads_shape = _initializer(proto, "heads_shape").astype(np.int64)
    extra = [
        numpy_helper.from_array(np.array(0, np.int64), "i0"),
        numpy_helper.from_array(np.array(1, np.int64), "i1"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(heads_shape[2:], "head_dims"),
    ]
    proto.graph.initializer.extend(extra)
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "Reshape" and node.input[1] == "heads_shape":
            x, p = node.input[0], node.name.split("/")[0]
            nodes += [
                helper.make_node("Shape", [x], [f"{p}.dyn_shape"], name=f"{p}/Shape"),
                helper.make_node("Gather", [f"{p}.dyn_shape", "i0"], [f"{p}.dyn_b"], name=f"{p}/Gather0", axis=0),
                helper.make_node("Gather", [f"{p}.dyn_shape", "i1"], [f"{p}.dyn_t"], name=f"{p}/Gather1", axis=0),
                helper.make_node("Unsqueeze", [f"{p}.dyn_b", "axes0"], [f"{p}.dyn_b1"], name=f"{p}/Unsqueeze0"),
                helper.make_node("Unsqueeze", [f"{p}.dyn_t", "axes0"], [f"{p}.dyn_t1"], name=f"{p}/Unsqueeze1"),
                helper.make_node(
                    "Concat",
                    [f"{p}.dyn_b1", f"{p}.dyn_t1", "head_dims"],
                    [f"{p}.dyn_split"],
                    name=f"{p}/Concat",
                    axis=0,
                ),
            ]
            node.input[1] = f"{p}.dyn_split"
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


# ------------------------------------------------------------------------------------------- site finding


@pytest.mark.parametrize("decomposed", [False, True])
def test_finds_the_score_site_of_the_tiny_encoder(decomposed):
    model = ir.serde.deserialize_model(tiny_encoder_proto(decomposed_layernorm=decomposed))
    (site,), skipped = find_qk_sites(model)
    assert skipped == {}
    assert (site.scores.name, site.softmax.name) == ("attn/QK", "attn/Softmax")
    assert (site.query.matmul.name, site.key.matmul.name) == ("q_proj/MatMul", "k_proj/MatMul")
    assert (site.query.add.name, site.key.add.name) == ("q_proj/Add", "k_proj/Add")
    assert (site.heads, site.head_dim) == (2, 16)


def test_finds_a_head_split_whose_shape_is_computed_at_run_time():
    model = ir.serde.deserialize_model(_dynamic_head_split(tiny_encoder_proto(heads=4)))
    (site,), skipped = find_qk_sites(model)
    assert skipped == {} and (site.heads, site.head_dim) == (4, 8)


def test_a_shared_key_weight_is_skipped_with_the_reason():
    proto = tiny_encoder_proto()
    for node in proto.graph.node:
        if node.name == "v_proj/MatMul":
            node.input[1] = "k_proj.weight"
    sites, skipped = find_qk_sites(ir.serde.deserialize_model(proto))
    assert sites == [] and "k_proj.weight" in skipped["attn/QK"] and "shared" in skipped["attn/QK"]


def test_a_per_channel_mul_between_projection_and_scores_is_skipped_with_the_reason():
    proto = tiny_encoder_proto()
    proto.graph.initializer.append(numpy_helper.from_array(np.linspace(0.5, 1.5, 32).astype(np.float32), "q_gain"))
    for node in proto.graph.node:
        if node.name == "q/Reshape":
            node.input[0] = "q.gained"
    index = next(i for i, n in enumerate(proto.graph.node) if n.name == "q/Reshape")
    proto.graph.node.insert(index, helper.make_node("Mul", ["q_proj.out", "q_gain"], ["q.gained"], name="q/Gain"))
    sites, skipped = find_qk_sites(ir.serde.deserialize_model(proto))
    assert sites == [] and "q/Gain" in skipped["attn/QK"]


def test_scores_whose_softmax_is_not_over_the_keys_are_not_a_site():
    proto = tiny_encoder_proto()
    next(n for n in proto.graph.node if n.name == "attn/Softmax").attribute[0].i = 2
    assert find_qk_sites(ir.serde.deserialize_model(proto)) == ([], {})


# ----------------------------------------------------------------------------------------------- rewrites


@pytest.mark.parametrize("dynamic", [False, True])
def test_qk_rotation_preserves_outputs_and_each_head_product(dynamic):
    proto = tiny_encoder_proto(heads=4)
    proto = _dynamic_head_split(proto) if dynamic else proto
    tiny = tiny_encoder()
    model = ir.serde.deserialize_model(proto)
    expected = _y(model, tiny.feeds)
    (record,) = run_passes(model, QK_ONLY, calibration=tiny.calibration)
    assert record["stats"]["qk"]["sites"] == 1 and record["stats"]["qk"]["heads"] == [(4, 8)]
    assert record["max_rel_err"] < RTOL
    _assert_equivalent(expected, _y(model, tiny.feeds))

    old_q, old_k = _initializer(proto, "q_proj.weight"), _initializer(proto, "k_proj.weight")
    new_q, new_k = _weight(model, "q_proj/MatMul"), _weight(model, "k_proj/MatMul")
    assert not np.allclose(new_q, old_q, atol=1e-3)
    for head in range(4):
        block = slice(8 * head, 8 * head + 8)
        # W_q,h R (W_k,h R)ᵀ = W_q,h W_k,hᵀ, and R = W_q,h⁺ W_q,h' is orthogonal
        np.testing.assert_allclose(new_q[:, block] @ new_k[:, block].T, old_q[:, block] @ old_k[:, block].T, atol=1e-5)
        rotation = np.linalg.lstsq(old_q[:, block], new_q[:, block], rcond=None)[0]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(8), atol=1e-5)
    # the value and output projections are untouched
    np.testing.assert_array_equal(_weight(model, "v_proj/MatMul"), _initializer(proto, "v_proj.weight"))


def test_dropping_the_key_bias_preserves_outputs_and_removes_only_that_add():
    tiny = tiny_encoder()
    expected = _y(tiny.model, tiny.feeds)
    (record,) = run_passes(tiny.model, BIAS_ONLY, calibration=tiny.calibration)
    assert record["stats"]["key_bias_dropped"] == 1 and record["stats"]["qk"] == "off"
    names = {n.name for n in tiny.model.graph}
    assert "k_proj/Add" not in names and {"q_proj/Add", "v_proj/Add"} <= names
    assert "k_proj.bias" not in tiny.model.graph.initializers
    assert _node(tiny.model, "k/Reshape").inputs[0] is _node(tiny.model, "k_proj/MatMul").outputs[0]
    _assert_equivalent(expected, _y(tiny.model, tiny.feeds))


def test_the_key_bias_matters_without_the_softmax_invariance():
    """Control: with the scores read by a Softmax over the wrong axis the bias is not dropped, and
    zeroing it by hand does change the outputs (so the equivalence test above can fail)."""
    proto = tiny_encoder_proto()
    next(n for n in proto.graph.node if n.name == "attn/Softmax").attribute[0].i = 2
    tiny = tiny_encoder()
    model = ir.serde.deserialize_model(proto)
    expected = _y(model, tiny.feeds)
    (record,) = run_passes(model, BIAS_ONLY, calibration=tiny.calibration)
    assert record["stats"]["key_bias_dropped"] == 0 and record["modified"] is False
    for init in proto.graph.initializer:
        if init.name == "k_proj.bias":
            init.CopyFrom(numpy_helper.from_array(np.zeros(32, np.float32), "k_proj.bias"))
    changed = _y(ir.serde.deserialize_model(proto), tiny.feeds)
    assert np.abs(changed - expected).max() > 100 * RTOL * np.abs(expected).max()


def test_full_rotate_with_qk_and_key_bias_preserves_outputs():
    tiny = tiny_encoder(final_norm=True, layer_scale=True)
    expected = _y(tiny.model, tiny.feeds)
    (record,) = run_passes(tiny.model, "rotate", calibration=tiny.calibration)
    stats = record["stats"]
    assert isinstance(stats["residual"], dict) and stats["qk"]["sites"] == 1 and stats["key_bias_dropped"] == 1
    # ln1 still folds into q/k/v: the key bias is dropped after the fold, not before
    assert "ln1" in stats["residual"]["norms"] and "k_proj.bias" not in tiny.model.graph.initializers
    assert not [n for n in tiny.model.graph if n.op_type == "LayerNormalization"]
    _assert_equivalent(expected, _y(tiny.model, tiny.feeds))
