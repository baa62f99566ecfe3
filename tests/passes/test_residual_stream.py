"""residual_stream: norms, writers and the pre-LN stream of the tiny encoder; post-LN and shared-weight negatives."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.passes.transforms.residual_stream import find_norms, find_stream, find_writers
from qcompile.testing.builders import post_ln_proto, tiny_encoder_proto


def _model(proto: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(proto)


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


# ---------------------------------------------------------------------------------------------- find_norms


@pytest.mark.parametrize("decomposed", [False, True])
def test_find_norms_finds_the_three_layernorms_with_their_affine(decomposed):
    proto = tiny_encoder_proto(final_norm=True, layer_scale=True, decomposed_layernorm=decomposed)
    inits = _inits(proto)
    model = _model(proto)
    norms = find_norms(model.graph)

    assert [n.input.name for n in norms] == ["x", "res1", "res2"]
    assert [n.output.name for n in norms] == ["ln1.out", "ln2.out", "ln_f.out"]
    for norm, prefix in zip(norms, ("ln1", "ln2", "ln_f")):
        assert norm.name.split("/")[0] == prefix
        assert norm.gamma.name == f"{prefix}.weight" and norm.beta.name == f"{prefix}.bias"
        np.testing.assert_array_equal(norm.gamma.const_value.numpy(), inits[f"{prefix}.weight"])
        np.testing.assert_array_equal(norm.beta.const_value.numpy(), inits[f"{prefix}.bias"])
        if decomposed:
            assert norm.fused is None
            assert (norm.sub.op_type, norm.div.op_type, norm.mul.op_type) == ("Sub", "Div", "Mul")
            assert norm.sub.inputs[0] is norm.input and norm.sub.inputs[1].producer().op_type == "ReduceMean"
            assert norm.gamma in norm.mul.inputs and norm.output.producer().op_type == "Add"
            # the nodes reading the norm input: the Sub and the first ReduceMean, nothing else of the norm
            assert {n.op_type for n in norm.input_uses()} == {"Sub", "ReduceMean"}
        else:
            assert norm.fused is not None and norm.fused.op_type == "LayerNormalization" and norm.fused.name == prefix
            assert norm.input_uses() == [norm.fused]


def test_find_norms_ignores_a_layernorm_over_another_axis():
    proto = tiny_encoder_proto(final_norm=True)
    for node in proto.graph.node:
        if node.name == "ln2":
            (axis,) = [a for a in node.attribute if a.name == "axis"]
            axis.i = 1  # of [batch, tokens, dim]: normalizes over tokens
    names = [n.name for n in find_norms(_model(proto).graph)]
    assert names == ["ln1", "ln_f"]


# -------------------------------------------------------------------------------------------- find_writers


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_find_writers_finds_o_proj_and_fc2_with_their_layer_scale(decomposed, layer_scale):
    proto = tiny_encoder_proto(final_norm=True, layer_scale=layer_scale, decomposed_layernorm=decomposed)
    inits = _inits(proto)
    writers = find_writers(_model(proto).graph)

    assert [w.matmul.name for w in writers] == ["o_proj/MatMul", "fc2/MatMul"]
    for writer, prefix, ls, add in zip(writers, ("o_proj", "fc2"), ("ls1", "ls2"), ("res1", "res2")):
        assert writer.weight.name == f"{prefix}.weight" and writer.bias.name == f"{prefix}.bias"
        assert writer.weight.const_value.shape == inits[f"{prefix}.weight"].shape
        # the writer's output is what its residual add reads
        assert [u.node.name for u in writer.output.uses()] == [add]
        if layer_scale:
            assert writer.scale_mul.name == f"{ls}/Mul" and writer.scale.name == ls
            np.testing.assert_array_equal(writer.scale.const_value.numpy(), inits[ls])
        else:
            assert writer.scale_mul is None and writer.scale is None
            assert writer.output.name == f"{prefix}.out"


def test_find_writers_without_final_norm_only_sees_the_add_that_feeds_a_norm():
    # res2 is the graph output, not a norm input: only o_proj writes to a normalized stream value
    writers = find_writers(_model(tiny_encoder_proto()).graph)
    assert [w.matmul.name for w in writers] == ["o_proj/MatMul"]


def test_a_writer_whose_weight_is_shared_is_not_a_writer():
    proto = tiny_encoder_proto(final_norm=True)
    for node in proto.graph.node:
        if node.name == "o_proj/MatMul":
            node.input[1] = "q_proj.weight"  # same [32, 32] shape; q_proj reads it too
    model = _model(proto)
    assert [w.matmul.name for w in find_writers(model.graph)] == ["fc2/MatMul"]
    # without o_proj as a writer, res1 cannot be walked back to x: two origins, no stream
    reason = find_stream(model.graph)
    assert isinstance(reason, str) and "origin" in reason


def test_a_layer_scale_shared_between_writers_is_not_a_writer():
    proto = tiny_encoder_proto(final_norm=True, layer_scale=True)
    for node in proto.graph.node:
        if node.name == "ls2/Mul":
            node.input[1] = "ls1"
    assert [w.matmul.name for w in find_writers(_model(proto).graph)] == []


# --------------------------------------------------------------------------------------------- find_stream


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_find_stream_of_the_pre_ln_encoder(decomposed, layer_scale):
    model = _model(tiny_encoder_proto(final_norm=True, layer_scale=layer_scale, decomposed_layernorm=decomposed))
    stream = find_stream(model.graph)
    assert not isinstance(stream, str), stream
    assert stream.origin is model.graph.inputs[0] and stream.origin.name == "x"
    assert stream.width == 32
    assert sorted(w.matmul.name for w in stream.writers) == ["fc2/MatMul", "o_proj/MatMul"]
    assert [n.name.split("/")[0] for n in stream.norms] == ["ln1", "ln2", "ln_f"]
    assert sorted(v.name for v in stream.values) == ["res1", "res2", "x"]
    if layer_scale:
        assert sorted(w.scale.name for w in stream.writers) == ["ls1", "ls2"]


def test_find_stream_without_final_norm_gives_the_reason():
    # res1 is read by res2, whose output y is not normalized: the stream leaks into the graph output
    reason = find_stream(_model(tiny_encoder_proto()).graph)
    assert isinstance(reason, str)
    assert "res1" in reason and "res2" in reason


def test_find_stream_refuses_a_stream_value_that_is_a_graph_output():
    proto = tiny_encoder_proto(final_norm=True)
    proto.graph.output.append(helper.make_tensor_value_info("res1", TensorProto.FLOAT, None))
    reason = find_stream(_model(proto).graph)
    assert isinstance(reason, str) and "graph output" in reason


def test_find_stream_on_post_ln_says_post_ln_but_writers_are_found():
    model = _model(post_ln_proto())
    reason = find_stream(model.graph)
    assert isinstance(reason, str) and "post-LN" in reason
    assert [n.name for n in find_norms(model.graph)] == ["ln1", "ln2"]
    assert [w.matmul.name for w in find_writers(model.graph)] == ["lin1/MatMul", "lin2/MatMul"]


def test_find_stream_without_norms():
    proto = post_ln_proto()
    graph = proto.graph
    kept = [n for n in graph.node if n.op_type != "LayerNormalization"]
    del graph.node[:]
    graph.node.extend(kept)
    for node in graph.node:
        node.input[:] = ["a1" if i == "h1" else i for i in node.input]
    graph.output[0].name = "a2"
    assert find_stream(_model(proto).graph) == "no LayerNorm or RMSNorm found"
