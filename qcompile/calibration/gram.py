"""Streaming second moment of an activation: H = Σ_t x_t x_tᵀ over every token row x_t (last axis).

GPTQ's proxy loss for a linear y = x W is ‖X W − X Ŵ‖² = tr((W − Ŵ)ᵀ H (W − Ŵ)), so H is all it needs
from the data. Batches are multiplied in float32 (fast) and summed in float64; state is one K×K matrix
and a row count, whatever the number of samples.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Gram"]


class Gram:
    """Running XᵀX over rows of the last axis."""

    def __init__(self) -> None:
        self.matrix: np.ndarray | None = None
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        """Fold one batch (any leading shape, channels last) into the sum."""
        rows = np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1])
        if not np.all(np.isfinite(rows)):
            raise ValueError("Gram: batch contains NaN or inf")
        if self.matrix is not None and rows.shape[1] != self.matrix.shape[0]:
            raise ValueError(f"Gram: batch has {rows.shape[1]} channels, earlier batches had {self.matrix.shape[0]}")
        product = (rows.T @ rows).astype(np.float64)
        self.matrix = product if self.matrix is None else self.matrix + product
        self.rows += rows.shape[0]
