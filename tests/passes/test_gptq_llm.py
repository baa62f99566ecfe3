"""GPTQ for decoder LLMs: per-group grids fit during the sweep (ragged last group included), stream blocks run
one at a time, and layer-by-layer Hessians taken from the already rounded layers, on the tiny Llama."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from qcompile import runtime
from qcompile.calibration.gram import Gram
from qcompile.frontends.onnx import load
from qcompile.ir import quant_meta
from qcompile.passes.quantize import gptq_weights
from qcompile.passes.quantize.gptq import ColumnGrid, gptq_grouped, layer_loss
from qcompile.passes.quantize.gptq_blocks import block_model, stream_blocks
from qcompile.pipeline.context import CalibrationData
from qcompile.pipeline.run import run_passes
from qcompile.runtime.qdq import to_qdq
from qcompile.testing.builders import post_ln_proto
from qcompile.testing.tiny_llama import VOCAB
from qcompile.zoo.lm_export import prefill_feeds

GPTQ_W4G32 = "quantize:weight_bits=4:weight_group=32:weight_symmetric=false:act_granularity=none:weight_search=gptq"


def _asym_fit(columns: np.ndarray) -> ColumnGrid:
    """The min/max asymmetric 4-bit grid of one group (columns: N×G), written out here."""
    lo = np.minimum(columns.min(axis=1), 0.0)
    hi = np.maximum(columns.max(axis=1), 0.0)
    scale = np.maximum((hi - lo) / 15, 1e-12).astype(np.float32).astype(np.float64)
    return ColumnGrid(scale, np.clip(np.rint(-lo / scale), 0, 15), 0, 15)


def _grouped_nearest(weight: np.ndarray, group: int) -> np.ndarray:
    """Round-to-nearest codes on the same per-group grids (K×N)."""
    codes = np.empty_like(weight)
    for start in range(0, weight.shape[0], group):
        grid = _asym_fit(weight[start : start + group].T)
        codes[start : start + group] = grid.codes(weight[start : start + group].T).T
    return codes


def _problem(k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, k)) @ (np.eye(k) + 0.9 * rng.normal(size=(k, k)) / np.sqrt(k))
    return rng.normal(size=(k, n)) * 0.1, x.T @ x


@pytest.mark.parametrize("k", [128, 200])  # 200 = 3 groups of 64 and a ragged one of 8
def test_grouped_gptq_with_an_identity_hessian_is_grouped_round_to_nearest(k: int) -> None:
    weight = np.random.default_rng(0).normal(size=(k, 24))
    codes, grids = gptq_grouped(weight, np.eye(k), 64, _asym_fit)
    assert len(grids) == -(-k // 64)
    np.testing.assert_array_equal(codes, _grouped_nearest(weight, 64))


@pytest.mark.parametrize("act_order", [False, True])
def test_grouped_gptq_lowers_the_layer_loss_and_its_grids_decode_its_codes(act_order: bool) -> None:
    weight, hessian = _problem(k=200, n=32, seed=1)
    codes, grids = gptq_grouped(weight, hessian, 64, _asym_fit, act_order=act_order)
    assert codes.min() >= 0 and codes.max() <= 15 and np.array_equal(codes, np.rint(codes))
    rounded = np.concatenate([grids[s // 64].values(codes[s : s + 64].T).T for s in range(0, 200, 64)])
    nearest_codes = _grouped_nearest(weight, 64)
    nearest = np.concatenate(
        [_asym_fit(weight[s : s + 64].T).values(nearest_codes[s : s + 64].T).T for s in range(0, 200, 64)]
    )
    assert layer_loss(weight, rounded, hessian) < 0.8 * layer_loss(weight, nearest, hessian)
    if act_order:  # static groups: every grid is the original weights' grid
        for g, grid in enumerate(grids):
            np.testing.assert_array_equal(grid.scale, _asym_fit(weight[g * 64 : (g + 1) * 64].T).scale)


def test_stream_blocks_chained_reproduce_the_logits_bit_exactly(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    ids = np.random.default_rng(2).integers(0, VOCAB, (2, 20)).astype(np.int64)
    feeds = prefill_feeds(model, ids)
    expected = runtime.run(runtime.make_session(model), feeds, ["logits"])["logits"]
    blocks = stream_blocks(model)
    assert len(blocks) == 5  # attention and MLP of two layers, then the head
    assert [b.end is None for b in blocks] == [False] * 4 + [True]
    first = blocks[0].start
    state = runtime.run(runtime.make_session(block_model(model, [], [first])), feeds)[first.name]
    for block in blocks:
        ends = [block.end] if block.end is not None else list(model.graph.outputs)
        proto = block_model(model, [block.start], ends)
        state = runtime.run(runtime.make_session(proto), {**feeds, block.start.name: state})[ends[0].name]
    np.testing.assert_array_equal(state, expected)


def _calibration(model: ir.Model) -> CalibrationData:
    rng = np.random.default_rng(5)
    return CalibrationData.from_list(
        [prefill_feeds(model, rng.integers(0, VOCAB, (2, 32)).astype(np.int64)) for _ in range(3)]
    )


def test_layer_by_layer_hessians_come_from_the_already_rounded_layers(tiny_llama_export, monkeypatch) -> None:
    """A block's first linears read norm(s_i), which depends only on earlier blocks: their Hessian must equal
    the Gram of their input in the finished (all rounded) model, and differ from the float model's."""
    model = load(tiny_llama_export("pow2"))
    float_model = load(tiny_llama_export("pow2"))
    seen: dict[str, np.ndarray] = {}
    call = gptq_weights._Rounder.__call__

    def spy(self, value, transposed, hessian):
        seen[value.name] = hessian.copy()
        return call(self, value, transposed, hessian)

    monkeypatch.setattr(gptq_weights._Rounder, "__call__", spy)
    calibration = _calibration(model)
    records = run_passes(model, GPTQ_W4G32 + ":keep_head_float=true", calibration=calibration)
    stats = records[-1]["stats"]["gptq"]
    assert stats["hessians"] == "layer by layer" and stats["linears"] == 14 and not stats["skipped"]

    # q_proj of the second layer: the first linear of the third block, reading RMSNorm(s_2)
    third = stream_blocks(model)[2].start
    linears = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].const_value is not None]
    q_proj = next(n for n in linears if _reads_after(n, third))
    x = q_proj.inputs[0]

    def gram(m) -> np.ndarray:
        session = runtime.make_session(runtime.with_outputs(m, [x.name]))
        total = Gram()
        for feeds in calibration.batches():
            total.update(runtime.run(session, feeds, [x.name])[x.name])
        return total.matrix

    rounded_gram, float_gram = gram(model), gram(float_model)
    name = q_proj.inputs[1].name
    np.testing.assert_allclose(seen[name], rounded_gram, rtol=1e-5, atol=1e-6 * np.abs(rounded_gram).max())
    assert np.abs(seen[name] - float_gram).max() > 1e-4 * np.abs(float_gram).max()


def _reads_after(node, stream_value) -> bool:
    """True when `node`'s input is computed from `stream_value` through an RMSNorm (walk back a few nodes)."""
    frontier, seen = [node.inputs[0]], set()
    for _ in range(8):
        nxt = []
        for value in frontier:
            if value is stream_value:
                return True
            producer = value.producer() if value is not None else None
            if producer is not None and id(producer) not in seen:
                seen.add(id(producer))
                nxt.extend(v for v in producer.inputs if v is not None and v.const_value is None)
        frontier = nxt
    return False


def test_grouped_gptq_exports_its_fitted_groups_and_the_head_stays_float(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    records = run_passes(model, GPTQ_W4G32 + ":keep_head_float=true", calibration=_calibration(model))
    head = next(n for n in model.graph if n.outputs[0].name == "logits")
    assert records[-1]["stats"]["skipped"][head.name].startswith("kept float")
    weights = [v for v in model.graph.initializers.values() if quant_meta.get_quant(v) is not None]
    assert len(weights) == 14
    for value in weights:
        spec = quant_meta.get_quant(value)
        assert spec.group_size == 32 and spec.scale.shape == (
            value.const_value.shape[0] // 32,
            value.const_value.shape[1],
        )
        array = value.const_value.numpy()
        np.testing.assert_array_equal(spec.fake_quantize(array), array)  # the weight lies on its fitted grid
    ids = np.random.default_rng(9).integers(0, VOCAB, (1, 16)).astype(np.int64)
    session = runtime.make_session(to_qdq(model))
    assert np.all(np.isfinite(runtime.run(session, prefill_feeds(model, ids), ["logits"])["logits"]))


def test_sequential_false_takes_every_hessian_from_the_float_model(tiny_llama_export) -> None:
    model = load(tiny_llama_export("pow2"))
    records = run_passes(model, GPTQ_W4G32 + ":gptq_sequential=false", calibration=_calibration(model))
    assert records[-1]["stats"]["gptq"]["hessians"] == "float model, all linears at once"


def test_a_model_without_a_residual_stream_falls_back_and_says_why() -> None:
    """A post-LN encoder has no pre-norm stream: GPTQ takes the float model's Hessians and says why."""
    model = ir.serde.deserialize_model(post_ln_proto())
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 8, 32)).astype(np.float32)}
    records = run_passes(model, "calibrate,quantize:weight_search=gptq", calibration=CalibrationData.from_list([feeds]))
    assert records[-1]["stats"]["gptq"]["hessians"].startswith(
        "float model, all linears at once (not layer by layer: post-LN"
    )


def test_a_rotated_llama_still_runs_layer_by_layer(tiny_llama_export) -> None:
    """rotate folds every γ away: its weightless RMSNorms still delimit the stream's blocks."""
    model = load(tiny_llama_export("pow2"))
    records = run_passes(model, "rotate," + GPTQ_W4G32 + ":keep_head_float=true", calibration=_calibration(model))
    assert len(stream_blocks(model)) == 5
    assert records[-1]["stats"]["gptq"]["hessians"] == "layer by layer"
