"""Tests of the pass contract (`Pass.__call__`), static order checking and the manager's records."""

from __future__ import annotations

import onnx_ir as ir
import pytest

import qcompile
from qcompile import Numerics, Pass, PassManager, PassResult, Property
from qcompile.errors import InputError, PassFailure
from qcompile.ir.properties import get_properties, set_properties
from qcompile.pipeline import VerifyIR, check_order
from qcompile.pipeline.pass_base import PreconditionError
from qcompile.testing.builders import tiny_encoder


class _Establish(Pass):
    """Pretends to calibrate."""

    name = "test_establish"
    establishes = frozenset({Property.CALIBRATED})
    numerics = Numerics.EXACT

    def call(self, model):
        return PassResult(model, modified=False, stats={"ran": True})


class _NeedsCalibration(Pass):
    name = "test_needs"
    requires = frozenset({Property.CALIBRATED})
    establishes = frozenset({Property.QUANTIZED})
    numerics = Numerics.LOSSY
    calls = 0

    def call(self, model):
        type(self).calls += 1
        return PassResult(model, modified=False)


class _Invalidate(Pass):
    name = "test_invalidate"
    establishes = frozenset({Property.SMOOTHED})
    invalidates = frozenset({Property.CALIBRATED})
    numerics = Numerics.EXACT_IN_REALS

    def call(self, model):
        return PassResult(model, modified=False)


@pytest.fixture(autouse=True)
def _reset_counter() -> None:
    _NeedsCalibration.calls = 0


def test_quantize_without_calibrate_is_an_input_error_naming_the_property_and_the_provider(tiny) -> None:
    with pytest.raises(InputError, match=r"'quantize' \(step 1\) requires CALIBRATED.*established by: calibrate\b"):
        qcompile.run_passes(tiny.model, "quantize", calibration=tiny.calibration)
    assert get_properties(tiny.model) == frozenset()


def test_quantize_before_calibrate_is_an_input_error_saying_to_put_it_earlier(tiny) -> None:
    with pytest.raises(
        InputError, match=r"'quantize' \(step 1\) requires CALIBRATED.*established by: calibrate; put it earlier"
    ):
        qcompile.run_passes(tiny.model, "quantize,calibrate", calibration=tiny.calibration)


def test_order_is_checked_before_any_pass_runs(tiny) -> None:
    with pytest.raises(InputError, match=r"'test_needs' \(step 3\) requires CALIBRATED"):
        PassManager([_Establish(), _Invalidate(), _NeedsCalibration()]).run(tiny.model)
    assert _NeedsCalibration.calls == 0
    assert get_properties(tiny.model) == frozenset()  # not even the first pass ran


def test_check_order_accepts_a_list_that_meets_every_requirement(tiny) -> None:
    check_order([_Establish(), _NeedsCalibration(), _Invalidate()], tiny.model)


def test_check_order_counts_properties_the_model_already_has(tiny) -> None:
    set_properties(tiny.model, {Property.CALIBRATED})
    check_order([_NeedsCalibration()], tiny.model)


def test_calling_a_pass_whose_requirement_is_missing_raises_a_precondition_error(tiny) -> None:
    with pytest.raises(PreconditionError, match="pass 'test_needs' requires CALIBRATED, which the model lacks"):
        _NeedsCalibration()(tiny.model)
    assert _NeedsCalibration.calls == 0


def test_a_pass_establishes_and_invalidates_properties(tiny) -> None:
    set_properties(tiny.model, {Property.ROTATED})
    _Establish()(tiny.model)
    assert get_properties(tiny.model) == {Property.ROTATED, Property.CALIBRATED}

    _NeedsCalibration()(tiny.model)
    assert get_properties(tiny.model) == {Property.ROTATED, Property.CALIBRATED, Property.QUANTIZED}

    _Invalidate()(tiny.model)
    assert get_properties(tiny.model) == {Property.ROTATED, Property.QUANTIZED, Property.SMOOTHED}


def test_a_pass_accepts_an_earlier_pass_result(tiny) -> None:
    result = _Establish()(tiny.model)
    assert _NeedsCalibration()(result).model is tiny.model


def test_passes_compose_with_onnx_ir_sequential(tiny) -> None:
    result = ir.passes.Sequential(_Establish(), _NeedsCalibration())(tiny.model)
    assert result.model is tiny.model
    assert get_properties(tiny.model) == {Property.CALIBRATED, Property.QUANTIZED}


def test_a_pass_returning_the_wrong_result_type_is_rejected(tiny) -> None:
    class WrongResult(Pass):
        def call(self, model):
            return ir.passes.PassResult(model, modified=False)

    with pytest.raises(TypeError, match="must return qcompile.pipeline.PassResult"):
        WrongResult()(tiny.model)


def test_a_pass_returning_another_model_is_rejected(tiny) -> None:
    other = tiny_encoder().model

    class Replace(Pass):
        def call(self, model):
            return PassResult(other, modified=True)

    with pytest.raises(ir.passes.PassError, match="in-place but returned a different model"):
        Replace()(tiny.model)


def test_the_manager_records_name_numerics_modified_seconds_and_stats(tiny) -> None:
    manager = PassManager([_Establish(), _NeedsCalibration(), _Invalidate()], [VerifyIR()])
    assert manager.run(tiny.model) is tiny.model

    assert [r["name"] for r in manager.records] == ["test_establish", "test_needs", "test_invalidate"]
    assert [r["numerics"] for r in manager.records] == ["EXACT", "LOSSY", "EXACT_IN_REALS"]
    assert [r["modified"] for r in manager.records] == [False, False, False]
    assert manager.records[0]["stats"] == {"ran": True}
    for record in manager.records:
        assert isinstance(record["seconds"], float) and record["seconds"] >= 0.0


def test_run_passes_records_modified_as_the_passes_report_it(tiny) -> None:
    records = qcompile.run_passes(tiny.model, "w8a8", calibration=tiny.calibration)
    assert [(r["name"], r["numerics"], r["modified"]) for r in records] == [
        ("calibrate", "EXACT", True),
        ("quantize", "LOSSY", True),
    ]


def test_an_empty_pass_list_runs_nothing(tiny) -> None:
    assert qcompile.run_passes(tiny.model, "  ", calibration=tiny.calibration) == []
    assert qcompile.run_passes(tiny.model, "fp", calibration=tiny.calibration) == []


def test_a_precondition_lost_at_run_time_is_an_input_error(tiny) -> None:
    class DropsEverything(Pass):
        name = "test_drops"
        establishes = frozenset({Property.CALIBRATED})

        def call(self, model):
            return PassResult(model, modified=False)

    class Forget(Pass):
        name = "test_forget"

        def call(self, model):  # breaks its (empty) contract: removes a property behind the manager's back
            set_properties(model, frozenset())
            return PassResult(model, modified=False)

    with pytest.raises(InputError, match="'test_needs' requires CALIBRATED"):
        PassManager([DropsEverything(), Forget(), _NeedsCalibration()]).run(tiny.model)


def test_a_crashing_pass_is_a_pass_failure_naming_it(tiny) -> None:
    class Crash(Pass):
        name = "test_crash"

        def call(self, model):
            return 1 / 0

    with pytest.raises(PassFailure, match="pass 'test_crash' crashed: ZeroDivisionError"):
        PassManager([Crash()]).run(tiny.model)


def test_an_input_error_raised_by_a_pass_propagates_unchanged(tiny) -> None:
    class Complain(Pass):
        def call(self, model):
            raise InputError("the model has no attention")

    with pytest.raises(InputError, match="^the model has no attention$"):
        PassManager([Complain()]).run(tiny.model)


def test_a_property_invalidated_earlier_is_named_in_the_order_error() -> None:
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.registry import build_pass, expand, parse_pass_list

    passes = [build_pass(s, PipelineContext()) for s in expand(parse_pass_list("calibrate,repq-ln,quantize"))]
    with pytest.raises(
        InputError, match=r"'quantize' \(step 3\) requires CALIBRATED, which the earlier pass 'repq-ln' invalidates"
    ):
        check_order(passes, tiny_encoder().model)
