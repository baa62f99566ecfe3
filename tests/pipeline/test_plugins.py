"""Tests of user-defined passes: one decorator makes a pass runnable from Python and from the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.pipeline.registry import load_plugin, registered_passes

PLUGIN = textwrap.dedent(
    '''
    """A user's pass: scale ln2's affine output by f and fc1's rows by 1/f (an equivalence in reals)."""
    import numpy as np
    import onnx_ir as ir

    import qcompile


    @qcompile.register_pass("rescale_ln2")
    class RescaleLayerNormPass(qcompile.Pass):
        """Scale ln2's gamma and beta by `factor` and fc1's weight by 1/factor."""

        numerics = qcompile.Numerics.EXACT_IN_REALS

        def __init__(self, factor: float = 2.0) -> None:
            self.factor = float(factor)

        def call(self, model):
            for name, factor in (
                ("ln2.weight", self.factor),
                ("ln2.bias", self.factor),
                ("fc1.weight", 1 / self.factor),
            ):
                value = model.graph.initializers[name]
                scaled = value.const_value.numpy().astype(np.float64) * factor
                value.const_value = ir.tensor(scaled.astype(np.float32), name=name)
            return qcompile.PassResult(model, modified=True, stats={"factor": self.factor})
    '''
)


@pytest.fixture
def plugin_file(tmp_path: Path, clean_registry) -> Path:
    path = tmp_path / "my_passes.py"
    path.write_text(PLUGIN)
    return path


def test_a_plugin_pass_runs_from_python(tiny, plugin_file: Path) -> None:
    fc1 = tiny.model.graph.initializers["fc1.weight"].const_value.numpy().copy()
    load_plugin(plugin_file)
    assert "rescale_ln2" in registered_passes()

    records = qcompile.run_passes(tiny.model, "rescale_ln2:factor=4", calibration=tiny.calibration)

    (record,) = records
    assert (record["name"], record["numerics"], record["modified"]) == ("rescale_ln2", "EXACT_IN_REALS", True)
    assert record["stats"] == {"factor": 4.0} and "max_abs_err" in record
    np.testing.assert_allclose(tiny.model.graph.initializers["fc1.weight"].const_value.numpy(), fc1 / 4, rtol=1e-7)


def test_a_plugin_pass_runs_from_the_cli(
    plugin_file: Path, tmp_path: Path, isolated_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "zoo:tiny",
            "--plugin",
            str(plugin_file),
            "--passes",
            "rescale_ln2:factor=4,w8a8",
            "--no-baselines",
            "--calib-samples",
            "8",
            "--eval-samples",
            "4",
            "--quiet",
            "-o",
            str(out),
        ]
    )

    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["per_pass"]] == ["rescale_ln2", "calibrate", "quantize"]
    plugin_record = report["per_pass"][0]
    assert plugin_record["numerics"] == "EXACT_IN_REALS" and plugin_record["modified"] is True
    assert plugin_record["stats"] == {"factor": 4.0}
    assert 0.0 <= plugin_record["max_abs_err"] < 1e-3


def test_the_cli_lists_a_plugin_pass(plugin_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes", "--plugin", str(plugin_file)]) == 0
    out = capsys.readouterr().out
    assert "rescale_ln2" in out and "Scale ln2's gamma and beta" in out and "numerics=EXACT_IN_REALS" in out


def test_a_missing_plugin_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"plugin .*absent\.py: no such file"):
        load_plugin(tmp_path / "absent.py")


def test_a_plugin_that_fails_to_import_is_an_input_error_naming_the_error(tmp_path: Path, clean_registry) -> None:
    path = tmp_path / "broken_plugin.py"
    path.write_text("import qcompile\nraise RuntimeError('no GPU here')\n")
    with pytest.raises(InputError, match=r"broken_plugin\.py failed to import: RuntimeError: no GPU here"):
        load_plugin(path)


def test_a_plugin_with_a_syntax_error_is_an_input_error(tmp_path: Path, clean_registry) -> None:
    path = tmp_path / "typo_plugin.py"
    path.write_text("def broken(:\n")
    with pytest.raises(InputError, match=r"typo_plugin\.py failed to import: SyntaxError"):
        load_plugin(path)


def test_the_documented_example_plugin_runs_from_the_cli_and_passes_its_exactness_check(
    tmp_path, isolated_cache, clean_registry, capsys
):
    from pathlib import Path

    from qcompile.cli import main

    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "rescale_layernorm.py"
    out = tmp_path / "out"
    code = main(
        [
            "zoo:tiny",
            "--plugin",
            str(example),
            "--passes",
            "rescale-ln:k=3,w8a8",
            "-o",
            str(out),
            "--eval-samples",
            "3",
            "--calib-samples",
            "8",
            "--no-baselines",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    import json

    first = json.loads((out / "report.json").read_text())["per_pass"][0]
    assert first["name"] == "rescale-ln" and first["numerics"] == "EXACT_IN_REALS" and first["modified"]
    assert first["stats"]["folded"] == 2  # the tiny encoder has two LayerNorms, each feeding only MatMuls
    assert 0 < first["max_abs_err"] < 1e-4  # k=3 is not a power of two: float rounding, within tolerance
