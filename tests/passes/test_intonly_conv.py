"""`intonly` patch-embedding convolution: patchify + IntLinear, bit-exact against the reference
interpreter and close to the float convolution; other convolutions are refused by name."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile import PipelineContext, runtime
from qcompile.errors import InputError
from qcompile.intops.reference import run_reference
from qcompile.passes.lowering.intonly import IntOnlyPass, float_values
from qcompile.pipeline.numerics import sqnr_db


def _stem(stride: int = 4, seed: int = 0) -> ir.Model:
    """image [B, 3, 8, 8] → Conv(6, k = 4, stride) → [B, 6, P] → [B, P, 6] → linear."""
    rng = np.random.default_rng(seed)
    patches = (8 // 4) ** 2 if stride == 4 else 25
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (6, 3, 4, 4)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "conv_b"),
        numpy_helper.from_array(np.array([0, 6, -1], np.int64), "flat"),
        numpy_helper.from_array(rng.normal(0, 0.4, (6, 5)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "conv_w", "conv_b"],
            ["feature"],
            name="patch_embed",
            kernel_shape=[4, 4],
            strides=[stride, stride],
        ),
        helper.make_node("Reshape", ["feature", "flat"], ["flat_feature"], name="flatten"),
        helper.make_node("Transpose", ["flat_feature"], ["tokens"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", patches, 5])],
        inits,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _run_pipeline(model: ir.Model, seed: int = 1) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = qcompile.CalibrationData.from_list(
        [{"image": rng.normal(0, 1, (4, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    )
    context = PipelineContext(calibration=data, progress=False)
    qcompile.run_passes(model, "w8a8", context=context)
    IntOnlyPass(context=context)(model)
    return context, rng.normal(0, 1, (5, 3, 8, 8)).astype(np.float32)


def test_patch_convolution_lowers_to_patchify_and_int_linear() -> None:
    image = np.random.default_rng(1).normal(0, 1, (5, 3, 8, 8)).astype(np.float32)
    reference = runtime.run(runtime.make_session(_stem()), {"image": image})["y"]
    model = _stem()
    _run_pipeline(model)
    ops = [n.op_type for n in model.graph]
    assert "Conv" not in ops and ops.count("IntLinear") == 2 and float_values(model) == []
    integer = runtime.run(runtime.make_session(model), {"image": image})["y"]
    np.testing.assert_array_equal(run_reference(ir.serde.serialize_model(model), {"image": image})["y"], integer)
    assert sqnr_db(reference, integer) > 35.0  # 39.9 dB measured: int8 image and weights, int16 output grid


def test_an_overlapping_convolution_is_refused_by_name() -> None:
    model = _stem(stride=1)
    with pytest.raises(InputError, match=r"cannot lower node 'patch_embed' \(Conv\)"):
        _run_pipeline(model)
