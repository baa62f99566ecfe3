"""The pass contract.

A pass is a class with four class attributes and a `call(model) -> PassResult`:

* `requires`    — pipeline properties that must hold before it runs (checked by `__call__`);
* `establishes` — properties that hold after it;
* `invalidates` — properties it destroys (e.g. re-scaling weights makes old ranges stale);
* `numerics`    — `EXACT` (outputs unchanged up to float rounding), `EXACT_IN_REALS` (an equivalence in
  real arithmetic: outputs unchanged up to float32 reassociation), or `LOSSY` (approximates).

Optionally `target_bits_option` names a constructor option holding the activation bit width the pass
tunes for (e.g. RepQ-ViT's per-channel search); a step that does not set it inherits the `act_bits` of the
next quantizing step of the pass list (see `registry.expand`).

`Pass` sits on `onnx_ir.passes.InPlacePass`: it mutates and returns the same model object, so it also
composes with onnx_ir's own `Sequential`. Because `requires` is a property set here rather than
onnx_ir's precondition method, `__call__` is redefined to check properties instead.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

import onnx_ir as ir

from qcompile.ir.properties import Property, get_properties, set_properties

__all__ = ["Numerics", "PassResult", "Pass", "PreconditionError"]


class Numerics(str, enum.Enum):
    """How a pass may change the model's outputs."""

    EXACT = "EXACT"
    EXACT_IN_REALS = "EXACT_IN_REALS"
    LOSSY = "LOSSY"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """onnx_ir's result (model, modified) plus the pass's own statistics."""

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


class PreconditionError(ir.passes.PreconditionError):
    """A pass was asked to run on a model lacking a property it requires."""


class Pass(ir.passes.InPlacePass):
    """Base class of every qcompile pass. Subclasses set the class attributes and implement `call`."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[Property]] = frozenset()
    establishes: ClassVar[frozenset[Property]] = frozenset()
    invalidates: ClassVar[frozenset[Property]] = frozenset()
    numerics: ClassVar[Numerics] = Numerics.EXACT
    target_bits_option: ClassVar[str | None] = None
    # {own option: ("quantize" (the next quantizing step) or a pass name, that step's option)}: options a
    # step not given them takes from a later step (registry.expand)
    inherited_options: ClassVar[dict[str, tuple[str, str]]] = {}

    @property
    def pass_name(self) -> str:
        return self.name or type(self).__name__

    def missing_properties(self, model: ir.Model) -> list[str]:
        """Names of required properties `model` lacks, sorted."""
        return sorted(str(p) for p in self.requires - get_properties(model))

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> PassResult:
        model = model_or_result.model if isinstance(model_or_result, ir.passes.PassResult) else model_or_result
        missing = self.missing_properties(model)
        if missing:
            raise PreconditionError(f"pass '{self.pass_name}' requires {', '.join(missing)}, which the model lacks")
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.pass_name}' must return qcompile.pipeline.PassResult")
        if result.model is not model:
            raise ir.passes.PassError(f"pass '{self.pass_name}' is in-place but returned a different model")
        properties = (get_properties(model) - self.invalidates) | self.establishes
        set_properties(model, properties)
        return result
