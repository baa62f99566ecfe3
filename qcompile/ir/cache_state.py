"""KV-cache state in a decoder's interface: ``past_key_values.{i}.key/value`` inputs, ``present.{i}.*`` outputs.

These names (optimum's and ONNX Runtime GenAI's, written by `qcompile.zoo.lm_export`) mark the model's
recurrent state rather than its result: passes may legitimately change the state's basis (`rotate` stores
K·R) or precision (KV quantization) while the logits keep their meaning. Numeric checks therefore compare
the result outputs and leave the state outputs out (`is_state_output`).
"""

from __future__ import annotations

__all__ = ["PAST_PREFIX", "PRESENT_PREFIX", "is_state_output"]

PAST_PREFIX = "past_key_values."
PRESENT_PREFIX = "present."


def is_state_output(name: str) -> bool:
    """True for a KV-cache output (``present.*``)."""
    return name.startswith(PRESENT_PREFIX)
