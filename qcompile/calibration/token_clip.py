"""The clip ratio of each dynamic per-token activation quantizer, searched on calibration rows.

A per-token quantizer (`QuantSpec.per_token`, kind ``uniform_token``) scales every row x (one token's
activations entering a linear y = x W) from the row itself, its range shrunk by a clip ratio r: symmetric
s = r·max|x| / (2^(b−1) − 1); asymmetric [r·min(x, 0), r·max(x, 0)] over 2^b − 1 steps. At 4 bits one
fixed r for every site is a poor compromise: clipping the largest entries of a row trades their error for a
finer step on all the others, and how much that pays depends on the site's row distribution (after a
Hadamard rotation close to Gaussian; the SwiGLU product before down_proj heavier-tailed).

`search_token_clip` picks r per site from `CLIP_RATIOS` to minimise the channel-weighted squared error

    E(r) = Σ_rows Σ_j g_j (x_j − x̂_{r,j})²,   g_j = Σ_{linears L reading x} Σ_n W_L[j, n]²,

i.e. the output error ‖(x − x̂_r) W‖² of the linears that read the site with the cross terms between input
channels dropped (g = diag(W Wᵀ); all ones where no constant weight reads the site). x̂_r is computed by the
spec's own `fake_quantize`, op for op the graph's arithmetic. Rows come from the float model on the
calibration data, `rows_per_batch` drawn at random from every batch, so the cost is fixed per batch;
E(r) is accumulated in float64 over all batches; on a tie the largest r (least clipping) wins.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from qcompile.calibration.runner import stream_statistics
from qcompile.ir.quant_meta import QuantSpec
from qcompile.pipeline.context import CalibrationData

__all__ = ["CLIP_RATIOS", "ROWS_PER_BATCH", "TokenClipSearch", "search_token_clip"]

CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
ROWS_PER_BATCH = 256  # rows drawn at random from every batch


class TokenClipSearch:
    """Streaming E(r) of one site (module docstring); `best()` is the minimising ratio."""

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        channel_weight: np.ndarray | None = None,
        ratios: tuple[float, ...] = CLIP_RATIOS,
        rows_per_batch: int = ROWS_PER_BATCH,
        seed: int = 0,
    ) -> None:
        if not ratios or any(not 0 < r <= 1 for r in ratios):
            raise ValueError(f"clip ratios must be in (0, 1], got {ratios}")
        self.specs = [QuantSpec.per_token(bits, symmetric, r) for r in ratios]
        self.ratios = tuple(float(r) for r in ratios)
        self.channel_weight = None if channel_weight is None else np.asarray(channel_weight, dtype=np.float64)
        self.rows_per_batch = int(rows_per_batch)
        self.errors = np.zeros(len(ratios))
        self.rows = 0
        self._rng = np.random.default_rng(seed)

    def update(self, array: np.ndarray) -> None:
        rows = np.asarray(array, dtype=np.float32).reshape(-1, np.shape(array)[-1])
        if self.channel_weight is not None and rows.shape[1] != self.channel_weight.shape[0]:
            raise ValueError(f"rows have {rows.shape[1]} channels, the channel weights {self.channel_weight.shape[0]}")
        if len(rows) > self.rows_per_batch:
            rows = rows[self._rng.choice(len(rows), self.rows_per_batch, replace=False)]
        for index, spec in enumerate(self.specs):
            squared = (rows.astype(np.float64) - spec.fake_quantize(rows)) ** 2
            if self.channel_weight is not None:
                squared = squared * self.channel_weight
            self.errors[index] += float(squared.sum())
        self.rows += len(rows)

    def best(self) -> float:
        if self.rows == 0:
            raise ValueError("no rows were observed")
        smallest = self.errors.min()
        return max(r for r, e in zip(self.ratios, self.errors, strict=True) if e <= smallest)


def search_token_clip(
    model: ir.Model,
    channel_weights: Mapping[str, np.ndarray | None],
    bits: int,
    symmetric: bool,
    data: CalibrationData,
    *,
    seed: int = 0,
    threads: int = 2,
    progress: bool = True,
) -> dict[str, float]:
    """Per site (value name → its g, or None for all ones) the clip ratio minimising E(r) over `data`."""
    names = list(channel_weights)
    observers, _ = stream_statistics(
        model,
        data,
        names,
        lambda name: TokenClipSearch(bits, symmetric, channel_weights[name], seed=seed + names.index(name)),
        channel_stats=False,
        threads=threads,
        progress=progress,
    )
    return {name: observers[name].best() for name in names}
