"""rotate (QuaRot): float equivalence, structure, weight algebra, stream rotation, outlier spreading,
post-LN, options, second run, ordering, and the end-to-end recipes."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

import qcompile
from qcompile import runtime
from qcompile.ir.online_ops import DOMAIN, KRONECKER_ROTATE
from qcompile.pipeline.context import CalibrationData
from qcompile.pipeline.numerics import sqnr_db
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq
from qcompile.testing.builders import post_ln_proto, tiny_encoder, tiny_encoder_proto

RTOL = 1e-5  # float equivalence: max |y_after − y_before| ≤ RTOL · max |y_before| (float32 end to end)


def _run(model, feeds, outputs=("y",)):
    session = runtime.make_session(runtime.with_outputs(model, list(outputs)) if isinstance(model, ir.Model) else model)
    return runtime.run(session, feeds, list(outputs))


def _y(model, feeds):
    return _run(model, feeds)["y"]


def _assert_equivalent(before, after):
    err = np.abs(after.astype(np.float64) - before).max()
    assert err <= RTOL * np.abs(before).max(), (err, np.abs(before).max())


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}


def _node(model: ir.Model, name: str) -> ir.Node:
    return next(n for n in model.graph if n.name == name)


def _weight(model: ir.Model, name: str) -> np.ndarray:
    """The constant second input of node `name` (a MatMul's weight), float64."""
    return _node(model, name).inputs[1].const_value.numpy().astype(np.float64)


def _bias(model: ir.Model, matmul: str) -> np.ndarray:
    (use,) = _node(model, matmul).outputs[0].uses()
    return use.node.inputs[1 - use.idx].const_value.numpy().astype(np.float64)


def _rotates(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == KRONECKER_ROTATE and n.domain == DOMAIN]


def _is_rotate(value: ir.Value | None) -> bool:
    node = value.producer() if value is not None else None
    return node is not None and node.op_type == KRONECKER_ROTATE and node.domain == DOMAIN


def _factors(node: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    return tuple(v.const_value.numpy().astype(np.float64) for v in node.inputs[1:3])


def _centred(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    return v - v.mean(axis=-1, keepdims=True)


def _outlier_feeds(seed: int = 7, dim: int = 32) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(0, 1, (16, 8, dim)).astype(np.float32)
    x[..., :2] *= 50.0
    return {"x": x}


def _calibration(dim: int, seed: int = 0) -> tuple[CalibrationData, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    batches = [{"x": rng.normal(0, 1, (4, 8, dim)).astype(np.float32)} for _ in range(2)]
    return CalibrationData.from_list(batches), {"x": rng.normal(0, 1, (4, 8, dim)).astype(np.float32)}


# ------------------------------------------------------------------------------------ (a) float equivalence


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_rotation_preserves_outputs(decomposed, layer_scale):
    tiny = tiny_encoder(final_norm=True, decomposed_layernorm=decomposed, layer_scale=layer_scale)
    expected = _y(tiny.model, tiny.feeds)
    (record,) = run_passes(tiny.model, "rotate", calibration=tiny.calibration)
    assert record["name"] == "rotate" and record["modified"]
    assert record["max_rel_err"] < 1e-4
    _assert_equivalent(expected, _y(tiny.model, tiny.feeds))
    stats = record["stats"]["residual"]
    assert stats["width"] == 32 and stats["writers"] == 2 and stats["rotation"] == "hadamard"
    assert sorted(stats["norms"].values()) == ["folded", "folded", "unrotated online"]
    assert [o["linear"] for o in record["stats"]["online"]] == ["o_proj/MatMul", "fc2/MatMul"]
    assert [o["size"] for o in record["stats"]["online"]] == [32, 64]


@pytest.mark.parametrize(
    ("kwargs", "rotation"),
    [
        ({"opset": 18}, "hadamard"),  # ReduceMean takes its axes as an input
        ({"dim": 18, "heads": 2, "hidden": 36}, "random-orthogonal"),  # 18 = 9·2, no Hadamard of order 9
        ({"dim": 24, "heads": 2, "hidden": 48, "decomposed_layernorm": True}, "hadamard"),  # 24 = 12·2 (Paley)
    ],
)
def test_rotation_preserves_outputs_for_other_opsets_and_widths(kwargs, rotation):
    model = ir.serde.deserialize_model(tiny_encoder_proto(final_norm=True, **kwargs))
    calibration, feeds = _calibration(kwargs.get("dim", 32))
    expected = _y(model, feeds)
    (record,) = run_passes(model, "rotate", calibration=calibration)
    assert record["stats"]["residual"]["rotation"] == rotation
    assert record["stats"]["residual"]["width"] == kwargs.get("dim", 32)
    _assert_equivalent(expected, _y(model, feeds))
    assert record["max_rel_err"] < 1e-4


def test_a_final_norm_read_by_a_biased_head_is_folded_instead_of_unrotated():
    proto = tiny_encoder_proto(final_norm=True)
    graph = proto.graph
    rng = np.random.default_rng(3)
    graph.initializer.extend(
        [
            numpy_helper.from_array(rng.normal(0, 0.2, (32, 10)).astype(np.float32), "head.weight"),
            numpy_helper.from_array(rng.normal(0, 0.2, 10).astype(np.float32), "head.bias"),
        ]
    )
    (identity,) = [n for n in graph.node if n.op_type == "Identity"]
    graph.node.remove(identity)
    graph.node.extend(
        [
            helper.make_node("MatMul", ["ln_f.out", "head.weight"], ["head.mm"], name="head/MatMul"),
            helper.make_node("Add", ["head.mm", "head.bias"], ["y"], name="head/Add"),
        ]
    )
    graph.output[0].type.tensor_type.shape.dim[2].dim_value = 10
    tiny = tiny_encoder(final_norm=True)
    model = ir.serde.deserialize_model(proto)
    expected = _y(model, tiny.feeds)
    (record,) = run_passes(model, "rotate", calibration=tiny.calibration)
    assert record["stats"]["residual"]["norms"] == {"ln1": "folded", "ln2": "folded", "ln_f": "folded"}
    assert len(_rotates(model)) == 3  # origin + two online; no un-rotation
    _assert_equivalent(expected, _y(model, tiny.feeds))


# ------------------------------------------------------------------------------------------- (b) structure


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_structure_after_rotation(decomposed, layer_scale):
    """Before: LN(γ, β) → q/k/v | fc1, writers (· λ) added to x. Expected after: mean-free RMS norms read
    directly by the linears, no LayerScale, KroneckerRotate at the origin, before o_proj and fc2, and an
    un-rotation before ln_f's affine."""
    tiny = tiny_encoder(final_norm=True, decomposed_layernorm=decomposed, layer_scale=layer_scale)
    run_passes(tiny.model, "rotate", calibration=tiny.calibration)
    model = tiny.model
    x = model.graph.inputs[0]

    # no LayerNormalization left; the only mean subtraction is the origin's centring of x
    assert not [n for n in model.graph if n.op_type == "LayerNormalization"]
    subtractions = [
        n
        for n in model.graph
        if n.op_type == "Sub" and n.inputs[1].producer() is not None and n.inputs[1].producer().op_type == "ReduceMean"
    ]
    assert len(subtractions) == 1 and subtractions[0].inputs[0] is x
    if decomposed:
        assert not [n for n in model.graph if n.op_type == "Sub" and n.name.split("/")[0] in ("ln1", "ln2", "ln_f")]

    # γ, β of ln1/ln2 are gone and the linears read the normalized value x / √(mean x² + ε) directly
    names = set(model.graph.initializers)
    assert not names & {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "ls1", "ls2"}
    for prefix in ("ln1", "ln2"):
        assert not [
            n
            for n in model.graph
            if n.name.startswith(prefix)
            and n.op_type == "Mul"
            and n.inputs[1] is not None
            and n.inputs[1].const_value is not None
            and n.inputs[1] is not n.inputs[0]
        ]
    for readers in (("q_proj", "k_proj", "v_proj"), ("fc1",)):
        (normalized,) = {_node(model, f"{r}/MatMul").inputs[0] for r in readers}
        div = normalized.producer()
        assert div.op_type == "Div"
        root = div.inputs[1].producer()
        assert root.op_type == "Sqrt"
        assert root.inputs[0].producer().op_type == "Add"  # mean(x²) + ε
        assert {u.node.op_type for u in normalized.uses()} == {"MatMul"}

    # no LayerScale Muls
    assert not [n for n in model.graph if n.name in ("ls1/Mul", "ls2/Mul")]
    assert _node(model, "res1").inputs[1].producer().name == "o_proj/Add"
    assert _node(model, "res2").inputs[1].producer().name == "fc2/Add"

    # online transforms before the writers' MatMuls
    for writer in ("o_proj", "fc2"):
        assert _is_rotate(_node(model, f"{writer}/MatMul").inputs[0])
    # the origin: res1 = rotate((x − mean x) ⊙ s) + o_proj
    origin = _node(model, "res1").inputs[0]
    assert _is_rotate(origin)
    signs_mul = origin.producer().inputs[0].producer()
    assert signs_mul.op_type == "Mul" and signs_mul.inputs[0].producer() is subtractions[0]
    signs = signs_mul.inputs[1].const_value.numpy()
    assert set(np.unique(signs)) <= {-1.0, 1.0}
    # ln_f: y = (rms(res2) · (A ⊗ B)ᵀ) ⊙ (s ⊙ γ_f) + β_f
    beta_add = _node(model, "y/Identity").inputs[0].producer()
    gamma_mul = beta_add.inputs[0].producer()
    unrotate = gamma_mul.inputs[0]
    assert (beta_add.op_type, gamma_mul.op_type) == ("Add", "Mul") and _is_rotate(unrotate)
    assert unrotate.producer().inputs[0].producer().op_type == "Div"
    original = _inits(tiny_encoder_proto(final_norm=True, decomposed_layernorm=decomposed, layer_scale=layer_scale))
    np.testing.assert_allclose(gamma_mul.inputs[1].const_value.numpy(), signs * original["ln_f.weight"], rtol=1e-6)
    np.testing.assert_allclose(beta_add.inputs[1].const_value.numpy(), original["ln_f.bias"], rtol=1e-6)
    a, b = _factors(origin.producer())
    a_back, b_back = _factors(unrotate.producer())
    np.testing.assert_allclose(a_back, a.T, atol=1e-7)
    np.testing.assert_allclose(b_back, b.T, atol=1e-7)
    assert len(_rotates(model)) == 4


@pytest.mark.parametrize("layer_scale", [False, True])
def test_rotated_weights_are_orthogonal_transforms_of_the_originals(layer_scale):
    """With Q, H orthogonal and C = I − 11ᵀ/d:
    readers W' = Qᵀ diag(γ) W ⇒ W'ᵀW' = Wᵀ diag(γ²) W and b' = b + β W;
    writers W' = Hᵀ W diag(λ) C Q ⇒ singular values of W' = those of W diag(λ) C, ‖b'‖ = ‖(b ⊙ λ) C‖."""
    proto = tiny_encoder_proto(final_norm=True, layer_scale=layer_scale)
    w = _inits(proto)
    tiny = tiny_encoder(final_norm=True, layer_scale=layer_scale)
    run_passes(tiny.model, "rotate:qk=false:drop_key_bias=false", calibration=tiny.calibration, check_numerics=False)
    model = tiny.model

    for norm, readers in (("ln1", ("q_proj", "k_proj", "v_proj")), ("ln2", ("fc1",))):
        gamma, beta = w[f"{norm}.weight"], w[f"{norm}.bias"]
        for reader in readers:
            new = _weight(model, f"{reader}/MatMul")
            old = w[f"{reader}.weight"]
            np.testing.assert_allclose(new.T @ new, old.T @ (gamma[:, None] ** 2 * old), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(
                _bias(model, f"{reader}/MatMul"), w[f"{reader}.bias"] + beta @ old, rtol=1e-5, atol=1e-6
            )
            assert not np.allclose(new, gamma[:, None] * old, atol=1e-2)  # it was rotated, not only scaled

    center = np.eye(32) - 1.0 / 32
    for writer, ls in (("o_proj", "ls1"), ("fc2", "ls2")):
        scale = w[ls] if layer_scale else np.ones(32)
        expected = w[f"{writer}.weight"] * scale @ center
        new = _weight(model, f"{writer}/MatMul")
        np.testing.assert_allclose(
            np.linalg.svd(new, compute_uv=False), np.linalg.svd(expected, compute_uv=False), rtol=1e-5, atol=1e-6
        )
        # C removes exactly one direction: the smallest singular value is 0
        assert np.linalg.svd(new, compute_uv=False)[-1] < 1e-5
        bias = _bias(model, f"{writer}/MatMul")
        np.testing.assert_allclose(
            np.linalg.norm(bias), np.linalg.norm((w[f"{writer}.bias"] * scale) @ center), rtol=1e-5
        )


@pytest.mark.parametrize("decomposed", [False, True])
def test_the_residual_stream_is_rotated_by_one_orthogonal_map(decomposed):
    """Every stream value s becomes (s − mean s)·Q for one orthogonal Q: per-token norms are those of the
    centred original, one least-squares map fits origin, res1 and res2 at once, and it is C·Q (Q̂Q̂ᵀ = C).
    The RMS-normalized value read by q/k/v is then LN₀(x)·Q (LN₀: affine-free LayerNorm)."""
    tiny = tiny_encoder(final_norm=True, decomposed_layernorm=decomposed, layer_scale=True)
    feeds = _outlier_feeds()
    before = _run(tiny.model, feeds, ["res1", "res2"])
    run_passes(tiny.model, "rotate", calibration=tiny.calibration, check_numerics=False)
    origin = _node(tiny.model, "res1").inputs[0].name
    normalized = _node(tiny.model, "q_proj/MatMul").inputs[0].name
    after = _run(tiny.model, feeds, ["res1", "res2", origin, normalized])

    for name in ("res1", "res2"):
        expected = np.linalg.norm(_centred(before[name]), axis=-1)
        actual = np.linalg.norm(after[name].astype(np.float64), axis=-1)
        np.testing.assert_allclose(actual, expected, rtol=1e-4)
        # the rotated stream is not mean-free in general, and not the centred original itself
        assert np.abs(after[name] - _centred(before[name])).max() > 0.1 * np.abs(after[name]).max()

    sources = np.concatenate([_centred(v).reshape(-1, 32) for v in (feeds["x"], before["res1"], before["res2"])])
    targets = np.concatenate([after[k].astype(np.float64).reshape(-1, 32) for k in (origin, "res1", "res2")])
    assert np.linalg.matrix_rank(sources) == 31
    fit = np.linalg.pinv(sources) @ targets
    assert np.abs(sources @ fit - targets).max() <= 1e-4 * np.abs(targets).max()
    np.testing.assert_allclose(fit @ fit.T, np.eye(32) - 1.0 / 32, atol=1e-4)

    x = feeds["x"].astype(np.float64)
    ln0 = _centred(x) / np.sqrt(_centred(x).var(axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(after[normalized], ln0 @ fit, rtol=0, atol=1e-4 * np.abs(ln0).max())


# ---------------------------------------------------------------------------------------- (c) outliers


def test_rotation_spreads_outlier_channels_of_the_residual_stream():
    tiny = tiny_encoder(final_norm=True)
    feeds = _outlier_feeds()

    def peak_to_rms(v):
        v = v.astype(np.float64)
        return np.abs(v).max() / math.sqrt(np.mean(v**2))

    before = _run(tiny.model, feeds, ["res1", "res2"])
    run_passes(tiny.model, "rotate", calibration=tiny.calibration, check_numerics=False)
    after = _run(tiny.model, feeds, ["res1", "res2"])
    for name in ("res1", "res2"):
        # two channels ×50 of 32: peak/rms near √(32/2)·max|z| before; spread over 32 channels after
        assert peak_to_rms(before[name]) > 8.0
        assert peak_to_rms(after[name]) < 0.5 * peak_to_rms(before[name])
        # the outlier channels no longer dominate: per-channel max |·| is within 3x of its median
        channel_max = np.abs(after[name]).reshape(-1, 32).max(axis=0)
        assert channel_max.max() < 3.0 * np.median(channel_max)


# ---------------------------------------------------------------------------------------------- (d) post-LN


def test_post_ln_skips_the_residual_and_still_rotates_the_writer_inputs():
    proto = post_ln_proto()
    original = _inits(proto)
    model = ir.serde.deserialize_model(proto)
    calibration, feeds = _calibration(32, seed=1)
    expected = _y(model, feeds)
    (record,) = run_passes(model, "rotate", calibration=calibration)

    residual = record["stats"]["residual"]
    assert isinstance(residual, str) and residual.startswith("skipped") and "post-LN" in residual
    # lin2 reads ln1's output: norm_online rotates it once, the writer rule does not rotate it again
    assert [o["linear"] for o in record["stats"]["online"]] == ["lin1/MatMul", "lin2/MatMul"]
    assert (
        "skipped" not in record["stats"]["online"][0] and "already rotated" in record["stats"]["online"][1]["skipped"]
    )
    norm_online = record["stats"]["norm_online"]
    assert norm_online[0] == {"norm": "ln1", "linears": ["lin2/MatMul"], "size": 32, "rotation": "hadamard"}
    assert norm_online[1] == "ln2: no linear reads the norm output"
    assert record["modified"] and record["max_rel_err"] < 1e-4
    _assert_equivalent(expected, _y(model, feeds))

    # the LayerNorms are untouched, the writers read rotated inputs, the residual adds read the originals
    norms = [n for n in model.graph if n.op_type == "LayerNormalization"]
    assert [n.name for n in norms] == ["ln1", "ln2"]
    for norm in norms:
        np.testing.assert_array_equal(norm.inputs[1].const_value.numpy(), original[f"{norm.name}.weight"])
    assert len(_rotates(model)) == 2
    for linear, source in (("lin1", "x"), ("lin2", "h1")):
        matmul = _node(model, f"{linear}/MatMul")
        assert _is_rotate(matmul.inputs[0]) and matmul.inputs[0].producer().inputs[0].name == source
        # W' = Hᵀ W: same column Gram matrix
        new = _weight(model, f"{linear}/MatMul")
        old = original[f"{linear}.weight"]
        np.testing.assert_allclose(new.T @ new, old.T @ old, rtol=1e-4, atol=1e-5)
    assert {v.name for v in _node(model, "add1").inputs} == {"x", "lin1.out"}
    assert {v.name for v in _node(model, "add2").inputs} == {"h1", "lin2.out"}


def test_post_ln_norm_online_spreads_a_gamma_outlier_channel_over_the_linear_input():
    proto = post_ln_proto()
    for init in proto.graph.initializer:
        if init.name == "ln1.weight":
            gamma = numpy_helper.to_array(init).copy()
            gamma[3] = 40.0  # one LayerNorm output channel 40× the others, as γ makes them in BERT
            init.CopyFrom(numpy_helper.from_array(gamma, init.name))
    calibration, feeds = _calibration(32, seed=2)
    before = ir.serde.deserialize_model(proto)
    expected = _run(before, feeds, ("y", "h1"))
    model = ir.serde.deserialize_model(proto)
    (record,) = run_passes(model, "rotate", calibration=calibration)
    _assert_equivalent(expected["y"], _y(model, feeds))
    assert record["max_rel_err"] < 1e-4

    rotated = _node(model, "lin2/MatMul").inputs[0]
    assert _is_rotate(rotated) and rotated.producer().inputs[0].name == "h1"
    after = _run(model, feeds, (rotated.name,))[rotated.name]

    def peak_to_median(a):
        channel_max = np.abs(a).reshape(-1, 32).max(axis=0)
        return channel_max.max() / np.median(channel_max)

    assert peak_to_median(expected["h1"]) > 10.0 and peak_to_median(after) < 3.0
    # the residual add still reads the unrotated norm output
    assert {v.name for v in _node(model, "add2").inputs} == {"h1", "lin2.out"}


def test_norm_online_false_leaves_post_ln_norm_outputs_alone():
    model = ir.serde.deserialize_model(post_ln_proto())
    calibration, _ = _calibration(32, seed=1)
    (record,) = run_passes(model, "rotate:norm_online=false", calibration=calibration)
    assert record["stats"]["norm_online"] == []
    assert _node(model, "lin2/MatMul").inputs[0].name != "h1"  # the writer rule rotates it instead
    assert _node(model, "lin2/MatMul").inputs[0].producer().inputs[0].name == "h1"
    assert len(_rotates(model)) == 2


def test_online_rotations_of_one_size_use_the_same_factors():
    model = ir.serde.deserialize_model(post_ln_proto())
    calibration, _ = _calibration(32, seed=1)
    run_passes(model, "rotate:norm_online=false", calibration=calibration, check_numerics=False)
    first, second = _rotates(model)
    for a, b in zip(_factors(first), _factors(second)):
        np.testing.assert_array_equal(a, b)


def test_online_rotations_of_one_size_share_their_factor_initializers():
    model = ir.serde.deserialize_model(post_ln_proto())
    calibration, _ = _calibration(32, seed=1)
    run_passes(model, "rotate:norm_online=false", calibration=calibration, check_numerics=False)
    first, second = _rotates(model)
    assert first.inputs[1] is second.inputs[1] and first.inputs[2] is second.inputs[2]


def test_a_writer_with_a_shared_weight_is_left_alone():
    proto = tiny_encoder_proto(final_norm=True)
    for node in proto.graph.node:
        if node.name == "o_proj/MatMul":
            node.input[1] = "q_proj.weight"
    shared = _inits(proto)["q_proj.weight"]
    model = ir.serde.deserialize_model(proto)
    tiny = tiny_encoder(final_norm=True)
    expected = _y(model, tiny.feeds)
    (record,) = run_passes(model, "rotate", calibration=tiny.calibration)
    assert str(record["stats"]["residual"]).startswith("skipped")
    assert [o["linear"] for o in record["stats"]["online"]] == ["fc2/MatMul"]
    np.testing.assert_array_equal(_weight(model, "o_proj/MatMul"), shared)
    assert not _is_rotate(_node(model, "o_proj/MatMul").inputs[0])
    _assert_equivalent(expected, _y(model, tiny.feeds))


# ---------------------------------------------------------------------------------------------- (e) options


def test_residual_false_only_inserts_online_rotations():
    tiny = tiny_encoder(final_norm=True, layer_scale=True)
    original = _inits(tiny_encoder_proto(final_norm=True, layer_scale=True))
    expected = _y(tiny.model, tiny.feeds)
    (record,) = run_passes(
        tiny.model, "rotate:residual=false:norm_online=false:qk=false:drop_key_bias=false", calibration=tiny.calibration
    )
    assert record["stats"]["residual"] == "off" and len(record["stats"]["online"]) == 2
    assert record["stats"]["qk"] == "off" and record["stats"]["key_bias_dropped"] == 0
    model = tiny.model
    assert [n.name for n in model.graph if n.op_type == "LayerNormalization"] == ["ln1", "ln2", "ln_f"]
    assert {n.name for n in model.graph if n.name in ("ls1/Mul", "ls2/Mul")} == {"ls1/Mul", "ls2/Mul"}
    rotates = _rotates(model)
    assert len(rotates) == 2
    assert {u.node.name for r in rotates for u in r.outputs[0].uses()} == {"o_proj/MatMul", "fc2/MatMul"}
    for name in ("q_proj", "k_proj", "v_proj", "fc1"):
        np.testing.assert_array_equal(_weight(model, f"{name}/MatMul"), original[f"{name}.weight"])
    _assert_equivalent(expected, _y(model, tiny.feeds))


def test_online_false_only_rotates_the_residual():
    tiny = tiny_encoder(final_norm=True)
    expected = _y(tiny.model, tiny.feeds)
    (record,) = run_passes(tiny.model, "rotate:online=false", calibration=tiny.calibration)
    assert record["stats"]["online"] == [] and isinstance(record["stats"]["residual"], dict)
    model = tiny.model
    assert not _is_rotate(_node(model, "o_proj/MatMul").inputs[0])
    assert not _is_rotate(_node(model, "fc2/MatMul").inputs[0])
    assert _is_rotate(_node(model, "res1").inputs[0])
    assert len(_rotates(model)) == 2  # origin and ln_f's un-rotation
    assert not [n for n in model.graph if n.op_type == "LayerNormalization"]
    _assert_equivalent(expected, _y(model, tiny.feeds))


def test_rotations_depend_on_the_pipeline_seed():
    def rotated_q(seed):
        tiny = tiny_encoder(final_norm=True)
        context = qcompile.pipeline.context.PipelineContext(calibration=tiny.calibration, seed=seed)
        run_passes(tiny.model, "rotate", context=context, check_numerics=False)
        return _weight(tiny.model, "q_proj/MatMul")

    np.testing.assert_array_equal(rotated_q(0), rotated_q(0))
    assert not np.allclose(rotated_q(0), rotated_q(1))


# ------------------------------------------------------------------------------------ (f, g) order and reruns


def test_second_run_changes_nothing():
    tiny = tiny_encoder(final_norm=True)
    run_passes(tiny.model, "rotate", calibration=tiny.calibration)
    snapshot = ir.serde.serialize_model(tiny.model).SerializeToString()
    (record,) = run_passes(tiny.model, "rotate", calibration=tiny.calibration)
    assert record["modified"] is False and record["stats"]["reason"] == "already rotated"
    assert ir.serde.serialize_model(tiny.model).SerializeToString() == snapshot


def test_rotating_after_quantization_is_an_input_error():
    tiny = tiny_encoder(final_norm=True)
    with pytest.raises(qcompile.InputError, match="before quantization"):
        run_passes(tiny.model, "w8a8,rotate", calibration=tiny.calibration)


# ----------------------------------------------------------------------------------------- (h, i) recipes


def test_rotate_then_w8a8_exports_to_qdq_and_runs():
    tiny = tiny_encoder(final_norm=True)
    reference = _y(tiny.model, tiny.feeds)
    records = run_passes(tiny.model, "rotate,w8a8", calibration=tiny.calibration)
    assert [r["name"] for r in records] == ["rotate", "calibrate", "quantize"]
    assert np.isfinite(records[-1]["sqnr_db"])

    exported = qdq.to_qdq(tiny.model)
    proto = ir.serde.serialize_model(exported)
    assert [(f.domain, f.name) for f in proto.functions] == [(DOMAIN, KRONECKER_ROTATE)]
    # the online rotation's output is what gets quantized in front of o_proj and fc2
    for writer in ("o_proj", "fc2"):
        dq = _node(exported, f"{writer}/MatMul").inputs[0].producer()
        assert dq.op_type == "DequantizeLinear"
        q = dq.inputs[0].producer()
        while q.op_type != "QuantizeLinear":  # an optional Clip between Q and DQ
            q = q.inputs[0].producer()
        assert _is_rotate(q.inputs[0])
    y = _y(exported, tiny.feeds)
    assert np.all(np.isfinite(y))
    assert 20.0 < sqnr_db(reference, y) < math.inf


def test_smooth_rotate_w4a4_runs():
    tiny = tiny_encoder(final_norm=True)
    reference = _y(tiny.model, tiny.feeds)
    records = run_passes(tiny.model, "smooth,rotate,w4a4", calibration=tiny.calibration)
    assert [r["name"] for r in records] == ["calibrate", "smooth-scales", "rotate", "calibrate", "quantize"]
    rotate = records[2]
    assert rotate["modified"] and rotate["max_rel_err"] < 1e-4
    assert np.isfinite(records[-1]["sqnr_db"])
    y = _y(qdq.to_qdq(tiny.model), tiny.feeds)
    assert np.all(np.isfinite(y)) and np.isfinite(sqnr_db(reference, y))
