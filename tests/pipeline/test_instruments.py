"""Tests of the instruments: CheckNumerics holds passes to their declared numerics; VerifyIR to the IR.

Expected numbers are computed here: each model is run with ONNX Runtime directly, before and after the
pass, on the batch CheckNumerics uses (the first `CHECK_SAMPLES` samples of the first calibration batch).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import qcompile
from qcompile import Numerics, Pass, PassResult, register_pass
from qcompile.errors import PassFailure
from qcompile.pipeline.run import CHECK_SAMPLES


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    proto = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    return session.run(["y"], feeds)[0]


def _check_feeds(tiny) -> dict[str, np.ndarray]:
    return {k: v[:CHECK_SAMPLES] for k, v in next(tiny.calibration.batches()).items()}


def _sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference, test = reference.astype(np.float64), test.astype(np.float64)
    return 10.0 * np.log10(np.sum(reference**2) / np.sum((reference - test) ** 2))


def _set(model: ir.Model, name: str, array: np.ndarray) -> None:
    model.graph.initializers[name].const_value = ir.tensor(array.astype(np.float32), name=name)


def _get(model: ir.Model, name: str) -> np.ndarray:
    return model.graph.initializers[name].const_value.numpy().astype(np.float64)


def _scale_fc2_weight(model: ir.Model) -> None:
    """Not an equivalence: scales one weight by 1.01."""
    _set(model, "fc2.weight", _get(model, "fc2.weight") * 1.01)


_RESCALE = np.random.default_rng(3).uniform(0.5, 2.0, 32)


def _rescale_ln2_into_fc1(model: ir.Model) -> None:
    """An equivalence in real arithmetic: LN(x)·γ + β scaled by s per channel, fc1's rows divided by s.

    (s ⊙ (γ x̂ + β)) @ (diag(1/s) W) = (γ x̂ + β) @ W; ln2's output feeds only fc1.
    """
    _set(model, "ln2.weight", _get(model, "ln2.weight") * _RESCALE)
    _set(model, "ln2.bias", _get(model, "ln2.bias") * _RESCALE)
    _set(model, "fc1.weight", _get(model, "fc1.weight") / _RESCALE[:, None])


def _make_pass(name: str, numerics: Numerics, rewrite) -> type[Pass]:
    class _Rewrite(Pass):
        def call(self, model):
            rewrite(model)
            return PassResult(model, modified=True)

    _Rewrite.numerics = numerics
    _Rewrite.__qualname__ = _Rewrite.__name__ = name
    return register_pass(name)(_Rewrite)


def test_an_exact_in_reals_pass_that_changes_outputs_fails_naming_the_pass(tiny, clean_registry) -> None:
    _make_pass("test_scale_weight", Numerics.EXACT_IN_REALS, _scale_fc2_weight)

    with pytest.raises(
        PassFailure, match=r"pass 'test_scale_weight' is declared EXACT_IN_REALS but changed output 'y' by"
    ):
        qcompile.run_passes(tiny.model, "test_scale_weight", calibration=tiny.calibration)


def test_an_exact_pass_that_changes_outputs_fails_too(tiny, clean_registry) -> None:
    _make_pass("test_scale_weight_exact", Numerics.EXACT, _scale_fc2_weight)
    with pytest.raises(PassFailure, match="'test_scale_weight_exact' is declared EXACT but changed output 'y'"):
        qcompile.run_passes(tiny.model, "test_scale_weight_exact", calibration=tiny.calibration)


def test_a_broken_pass_runs_unchecked_when_numerics_checks_are_off(tiny, clean_registry) -> None:
    _make_pass("test_scale_weight_unchecked", Numerics.EXACT_IN_REALS, _scale_fc2_weight)
    records = qcompile.run_passes(
        tiny.model, "test_scale_weight_unchecked", calibration=tiny.calibration, check_numerics=False
    )
    assert "max_abs_err" not in records[0]


def test_the_same_change_declared_lossy_passes_and_records_its_sqnr(tiny, clean_registry) -> None:
    _make_pass("test_scale_weight_lossy", Numerics.LOSSY, _scale_fc2_weight)
    feeds = _check_feeds(tiny)
    before = _run(tiny.model, feeds)

    (record,) = qcompile.run_passes(tiny.model, "test_scale_weight_lossy", calibration=tiny.calibration)

    expected = _sqnr_db(before, _run(tiny.model, feeds))
    assert np.isfinite(expected) and expected > 0
    assert record["numerics"] == "LOSSY" and record["modified"] is True
    assert record["sqnr_db"] == pytest.approx(expected, abs=1e-3)
    assert record["sqnr_db_per_output"] == {"y": pytest.approx(expected, abs=1e-3)}
    assert "max_abs_err" not in record


def test_an_exact_in_reals_pass_that_is_exact_passes_and_records_its_error(tiny, clean_registry) -> None:
    _make_pass("test_rescale_ln2", Numerics.EXACT_IN_REALS, _rescale_ln2_into_fc1)
    feeds = _check_feeds(tiny)
    before = _run(tiny.model, feeds)
    weight_before = _get(tiny.model, "fc1.weight")

    (record,) = qcompile.run_passes(tiny.model, "test_rescale_ln2", calibration=tiny.calibration)

    after = _run(tiny.model, feeds)
    error = float(np.max(np.abs(after.astype(np.float64) - before)))
    allowed = 1e-4 * float(np.max(np.abs(before))) + 1e-6  # EXACT_IN_REALS: float32 reassociation only
    assert record["numerics"] == "EXACT_IN_REALS"
    assert record["max_abs_err"] == pytest.approx(error, abs=1e-6)
    assert record["max_abs_err"] <= allowed
    assert "sqnr_db" not in record
    # The rewrite really happened (the check compared two different graphs).
    np.testing.assert_allclose(_get(tiny.model, "fc1.weight"), weight_before / _RESCALE[:, None], rtol=1e-6)


def test_the_exact_rewrite_is_exact_on_the_evaluation_batch_too(tiny) -> None:
    before = _run(tiny.model, tiny.feeds)
    _rescale_ln2_into_fc1(tiny.model)
    after = _run(tiny.model, tiny.feeds)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4 * float(np.max(np.abs(before))))


class _Unorder(Pass):
    """Moves the last node to the front, breaking topological order."""

    numerics = Numerics.EXACT

    def call(self, model):
        last = model.graph.node(-1)
        model.graph.remove(last)
        model.graph.insert_before(model.graph.node(0), last)
        return PassResult(model, modified=True)


@pytest.mark.no_verify  # the pass breaks the IR on purpose: the manager's VerifyIR must name it
def test_a_pass_that_leaves_a_dangling_input_fails_verification_naming_the_pass(tiny, clean_registry) -> None:
    @register_pass("test_dangle")
    class Dangle(Pass):
        numerics = Numerics.EXACT

        def call(self, model):
            ghost = ir.Value(name="ghost", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1]))
            node = ir.node("Add", [model.graph.inputs[0], ghost], name="dangler")
            node.outputs[0].name = "dangler.out"
            model.graph.append(node)
            return PassResult(model, modified=True)

    with pytest.raises(
        PassFailure,
        match=r"pass 'test_dangle' left an invalid model: node 'dangler' \(Add\) input 1 'ghost' is not produced",
    ):
        qcompile.run_passes(tiny.model, "test_dangle")


@pytest.mark.no_verify  # the pass breaks the IR on purpose: the manager's VerifyIR must name it
def test_verification_runs_even_with_calibration_data(tiny, clean_registry) -> None:
    register_pass("test_unorder")(_Unorder)
    with pytest.raises(PassFailure, match="pass 'test_unorder' left an invalid model: .*before it is produced"):
        qcompile.run_passes(tiny.model, "test_unorder", calibration=tiny.calibration)


def test_a_direct_pass_call_in_a_test_is_verified_too(tiny) -> None:
    """The autouse `verify_after_every_pass` fixture (tests/conftest.py) checks passes called directly."""

    with pytest.raises(PassFailure, match="before it is produced"):
        _Unorder()(tiny.model)


def test_a_pass_reporting_no_change_is_not_checked(tiny, clean_registry) -> None:
    @register_pass("test_silent")
    class Silent(Pass):
        numerics = Numerics.EXACT

        def call(self, model):
            return PassResult(model, modified=False)

    (record,) = qcompile.run_passes(tiny.model, "test_silent", calibration=tiny.calibration)
    assert record["modified"] is False and "max_abs_err" not in record and "sqnr_db" not in record


def test_quantize_records_per_layer_sqnr_for_every_quantized_matmul(tiny) -> None:
    records = qcompile.run_passes(tiny.model, "w8a8", calibration=tiny.calibration)
    quantize = records[-1]
    layers = {item["node"] for item in quantize["per_layer"]}
    # Every MatMul with a quantized input: all of them (attn/AV has a quantized V even with float probs).
    expected = {node.outputs[0].name for node in tiny.model.graph if node.op_type == "MatMul"}
    assert layers == expected
    assert all(np.isfinite(item["sqnr_db"]) and item["sqnr_db"] > 0 for item in quantize["per_layer"])


def test_per_layer_sqnr_compares_each_matmul_output_before_and_after_quantization(tiny) -> None:
    from qcompile.runtime.qdq import to_qdq

    feeds = _check_feeds(tiny)
    names = [node.outputs[0].name for node in tiny.model.graph if node.op_type == "MatMul"]
    before = _run_outputs(tiny.model, feeds, names)

    records = qcompile.run_passes(tiny.model, "w8a8", calibration=tiny.calibration)

    after = _run_outputs(to_qdq(tiny.model), feeds, names)
    recorded = {item["node"]: item["sqnr_db"] for item in records[-1]["per_layer"]}
    assert recorded == {name: pytest.approx(_sqnr_db(before[name], after[name]), abs=1e-3) for name in names}


def _run_outputs(model: ir.Model, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    proto = ir.serde.serialize_model(model)
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_numerics_are_checked_on_the_whole_first_batch_of_a_fixed_batch_model() -> None:
    from onnx import TensorProto, helper, numpy_helper

    from qcompile.runtime.qdq import to_qdq

    rng = np.random.default_rng(4)
    weight = rng.normal(0, 1, (6, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "fixed_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 5])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    batches = [{"x": rng.normal(0, 1, (4, 6)).astype(np.float32)} for _ in range(2)]
    data = qcompile.CalibrationData.from_list(batches)
    before = _run(model, batches[0])

    records = qcompile.run_passes(model, "w8a8", context=qcompile.PipelineContext(calibration=data, progress=False))

    assert records[-1]["sqnr_db"] == pytest.approx(_sqnr_db(before, _run(to_qdq(model), batches[0])), abs=1e-3)
