"""Tests of `qcompile.from_torch`: a module exports to an `ir.Model` that ONNX Runtime runs like torch."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

import qcompile
from qcompile import runtime
from qcompile.errors import InputError
from qcompile.ir.verifier import verify_model


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.nn.functional.gelu(self.linear(x)))


@pytest.fixture(scope="module")
def exported() -> tuple[_Block, ir.Model]:
    torch.manual_seed(0)
    module = _Block()
    model = qcompile.from_torch(module, (torch.randn(3, 4, 8),), input_names=["x"], output_names=["y"])
    return module, model


def test_export_gives_a_well_formed_ir_model_with_the_given_names(exported) -> None:
    _, model = exported
    assert isinstance(model, ir.Model)
    verify_model(model)
    assert [v.name for v in model.graph.inputs] == ["x"]
    assert [v.name for v in model.graph.outputs] == ["y"]


def test_onnx_runtime_output_matches_torch(exported) -> None:
    module, model = exported
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x).numpy()

    actual = runtime.run(runtime.make_session(model, optimize=False), {"x": x.numpy()})["y"]

    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_exported_module_is_left_in_eval_mode(exported) -> None:
    module, _ = exported
    assert not module.training


@pytest.mark.parametrize("thing", [lambda x: x * 2, "a string", None, torch.ones(2)])
def test_a_non_module_is_an_input_error(thing) -> None:
    with pytest.raises(InputError, match="from_torch needs a torch.nn.Module"):
        qcompile.from_torch(thing, (torch.ones(2),))


class _DataDependentBranch(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_a_module_that_does_not_export_is_a_one_line_input_error() -> None:
    with pytest.raises(InputError, match="torch export of _DataDependentBranch failed") as info:
        qcompile.from_torch(_DataDependentBranch(), (torch.ones(2, 3),))
    assert "\n" not in str(info.value)
