"""Tests of pipeline properties stored on a model."""

from __future__ import annotations

from qcompile.ir.properties import Property, get_properties, set_properties


def test_a_fresh_model_has_no_properties(tiny) -> None:
    assert get_properties(tiny.model) == frozenset()


def test_set_properties_replaces_the_whole_set(tiny) -> None:
    set_properties(tiny.model, {Property.CALIBRATED, Property.SMOOTHED})
    assert get_properties(tiny.model) == {Property.CALIBRATED, Property.SMOOTHED}

    set_properties(tiny.model, frozenset({Property.QUANTIZED}))
    assert get_properties(tiny.model) == {Property.QUANTIZED}


def test_mutating_the_set_passed_in_does_not_change_the_model(tiny) -> None:
    mine = {Property.CALIBRATED}
    set_properties(tiny.model, mine)
    mine.add(Property.QUANTIZED)
    assert get_properties(tiny.model) == {Property.CALIBRATED}
    assert isinstance(get_properties(tiny.model), frozenset)


def test_properties_print_as_their_names() -> None:
    assert [str(p) for p in (Property.CALIBRATED, Property.INTEGER_ONLY)] == ["CALIBRATED", "INTEGER_ONLY"]
    assert f"{Property.QUANTIZED}" == "QUANTIZED"
