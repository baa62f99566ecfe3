"""`qcompile.Lookup`: an integer function given as a table over a contiguous range of integer codes.

    out = table[clamp(x − first, 0, len(table) − 1)]          x int32

The table holds the output codes themselves, in their own container (uint8, int8, int16, int32), so the
output dtype is the table's. Used for GELU (`gelu_rule`, variant "table"): x is GELU's input on a 16-bit
grid, and the entries are the next linear's 8-bit activation codes of the exact GELU,
round(GELU(k·S16)/s) + z clamped, so the integer GELU costs no more than the output quantizer the float
model already has. A table of 2^16 one-byte codes is 64 KiB, an L2-resident gather on a CPU. Codes
outside the table read its end entries (the clamp), so the kernel is total: ONNX's Gather would otherwise
wrap a negative index to the far end of the table.
"""

from __future__ import annotations

import numpy as np
from onnxscript import INT32, script
from onnxscript import opset18 as op

from qcompile.intops.domain import QCOMPILE_OPSET

__all__ = ["lookup", "Lookup"]


def lookup(x: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """NumPy reference (the table's dtype)."""
    table = np.asarray(table)
    index = np.clip(np.asarray(x).astype(np.int64) - int(first), 0, table.shape[0] - 1)
    return table[index]


@script(QCOMPILE_OPSET, default_opset=op)
def Lookup(x: INT32, table, first: INT32):
    offset = op.Sub(x, first)
    last = op.Sub(op.CastLike(op.Squeeze(op.Shape(table)), offset), op.CastLike(1, offset))
    index = op.Clip(offset, op.CastLike(0, offset), last)
    return op.Gather(table, index, axis=0)
