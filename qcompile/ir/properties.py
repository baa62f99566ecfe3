"""Pipeline properties: facts about a model that passes require, establish and invalidate.

They live in `model.meta` under one key, so they travel with the in-memory model from pass to pass.
"""

from __future__ import annotations

import enum

from onnx_ir import Model

__all__ = ["Property", "get_properties", "set_properties"]

_KEY = "qcompile.properties"


class Property(str, enum.Enum):
    """A fact the pass manager tracks. The string value is what error messages print."""

    CALIBRATED = "CALIBRATED"
    SMOOTHED = "SMOOTHED"
    ROTATED = "ROTATED"
    REPARAMETERIZED = "REPARAMETERIZED"
    QUANTIZED = "QUANTIZED"
    INTEGER_ONLY = "INTEGER_ONLY"

    def __str__(self) -> str:
        return self.value


def get_properties(model: Model) -> frozenset[Property]:
    """The properties currently established on `model`."""
    return frozenset(model.meta.get(_KEY, ()))


def set_properties(model: Model, properties: frozenset[Property] | set[Property]) -> None:
    """Replace the properties established on `model`."""
    model.meta[_KEY] = frozenset(properties)
