"""Recipe files: TOML pass lists with typed options become the same steps as the --passes string."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompile.errors import InputError
from qcompile.pipeline.recipe_file import load_recipe_file, recipe_text
from qcompile.pipeline.registry import PassSpec, expand, parse_pass_list
from qcompile.pipeline.run import plan_passes


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_string_steps_and_tables_become_pass_specs_in_order(tmp_path) -> None:
    path = _write(
        tmp_path,
        """
description = "mse calibration, then quantize at 6 bits"
passes = ["calibrate:observer=mse:bits=6"]

[[pass]]
name = "quantize"
weight_bits = 6
act_bits = 6
keep_float = ["Softmax"]
""",
    )
    specs = load_recipe_file(path)
    assert specs == [
        PassSpec("calibrate", {"observer": "mse", "bits": 6}),
        PassSpec("quantize", {"weight_bits": 6, "act_bits": 6, "keep_float": ["Softmax"]}),
    ]
    assert recipe_text(specs).startswith("calibrate:observer=mse:bits=6,quantize:weight_bits=6")


def test_a_recipe_file_plans_the_same_passes_as_the_equivalent_string(tmp_path) -> None:
    path = _write(tmp_path, 'passes = ["repq", "intonly"]\n')
    _, from_file = plan_passes(load_recipe_file(path))
    _, from_string = plan_passes("repq,intonly")
    assert [p.pass_name for p in from_file] == [p.pass_name for p in from_string]
    assert expand(load_recipe_file(path)) == expand(parse_pass_list("repq,intonly"))


def test_table_options_keep_their_types_and_reach_the_pass(tmp_path) -> None:
    path = _write(tmp_path, '[[pass]]\nname = "calibrate"\nobserver = "percentile"\npercentile = 99.9\n')
    _, passes = plan_passes(load_recipe_file(path))
    assert passes[0].spec_options == {"observer": "percentile", "percentile": 99.9}


@pytest.mark.parametrize(
    "text, message",
    [
        ("passes = [", "not valid TOML"),
        ("stages = ['w8a8']", "unknown keys stages"),
        ("passes = []", "lists no passes"),
        ("[[pass]]\nobserver = 'mse'", 'step 1 needs name = "PASS"'),
        ("passes = [3]", "step 1 must be a string"),
        ("pass = 'w8a8'", "`pass` an array of tables"),
    ],
)
def test_a_bad_recipe_file_is_one_clear_error_naming_the_file(tmp_path, text, message) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match=message) as caught:
        load_recipe_file(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unknown_pass_names_and_options_in_a_recipe_are_refused_when_planned(tmp_path) -> None:
    with pytest.raises(InputError, match="unknown pass or recipe 'quantise'"):
        plan_passes(load_recipe_file(_write(tmp_path, "passes = ['quantise']")))
    with pytest.raises(InputError, match="pass 'calibrate' has no option colour"):
        plan_passes(load_recipe_file(_write(tmp_path, "[[pass]]\nname = 'calibrate'\ncolour = 'red'")))


def test_a_missing_or_binary_recipe_file_is_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="is not a file"):
        load_recipe_file(tmp_path / "absent.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00passes")
    with pytest.raises(InputError, match="not UTF-8"):
        load_recipe_file(binary)
