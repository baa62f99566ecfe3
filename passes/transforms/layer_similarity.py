"""How alike a decoder's layer inputs are, measured on calibration tokens: what `prune-layers` chooses by and
what `linear-patch` scales by (LinearPatch, Chen et al. 2025; METHODS.md §10b).

Let x_j ∈ R^{N×d} be the residual stream entering decoder layer j over N calibration tokens (j = 0 … L; x_L
enters the final norm). `stream_blocks` gives the stream as attention and MLP blocks, so x_j is the start of
block 2j. Accumulated in float64, one calibration batch at a time:

* cos[i, j] = (1/N) Σ_n ⟨x_i[n], x_j[n]⟩ / (‖x_i[n]‖ ‖x_j[n]‖): the mean token cosine of two layer inputs.
  Pruning layers [i, i + K) feeds x_i where x_{i+K} was; the start with the largest cos[i, i + K] loses least
  (ShortGPT's and LinearPatch's choice).
* a_j = (1/N) Σ_n |x_j[n] H| per channel, H the orthonormal Hadamard of order d (`hadamard_matrix(d)/√d`; a
  seeded random orthogonal matrix where no construction reaches d), and m_j = (1/N) Σ_n |x_j[n]| without it.
  LinearPatch's scale for the cut [i, i + K) is s = a_{i+K} / a_i (or m_{i+K} / m_i without the rotation).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from qcompile import runtime
from qcompile.math.hadamard import hadamard_matrix, random_orthogonal
from qcompile.passes.quantize.gptq_blocks import block_model, stream_blocks
from qcompile.pipeline.context import CalibrationData

__all__ = ["LayerStats", "decoder_layer_inputs", "collect_layer_stats", "orthonormal_hadamard"]


@dataclasses.dataclass
class LayerStats:
    """Statistics of the L + 1 layer inputs x_0 … x_L (module docstring)."""

    cosine: np.ndarray  # [L + 1, L + 1]
    abs_mean_rotated: np.ndarray  # [L + 1, d]: a_j
    abs_mean: np.ndarray  # [L + 1, d]: m_j
    rotation: np.ndarray  # [d, d] orthonormal H (float64)
    rotation_kind: str  # "hadamard" or "random orthogonal"
    tokens: int
    windows: int


def orthonormal_hadamard(d: int, seed: int) -> tuple[np.ndarray, str]:
    """H/√d for the Hadamard of order d, or a seeded random orthogonal matrix where none is known."""
    h = hadamard_matrix(d)
    if h is None:
        return random_orthogonal(d, seed), "random orthogonal"
    return h / np.sqrt(d), "hadamard"


def decoder_layer_inputs(model: ir.Model) -> list[ir.Value] | str:
    """x_0 … x_L: the residual stream values entering each decoder layer and the final norm, or why not."""
    blocks = stream_blocks(model)
    if isinstance(blocks, str):
        return blocks
    if len(blocks) % 2 != 1:  # L attention + L MLP blocks, then the head
        return f"the residual stream has {len(blocks) - 1} blocks, not an attention and an MLP block per layer"
    return [block.start for block in blocks[::2]]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def collect_layer_stats(
    model: ir.Model,
    inputs: list[ir.Value],
    calibration: CalibrationData,
    samples: int,
    seed: int = 0,
    threads: int = 2,
    progress: bool = False,
) -> LayerStats:
    """Run the float graph on the first `samples` calibration samples and accumulate cos, a and m."""
    names = [v.name for v in inputs]
    d = int(inputs[0].shape[-1])
    rotation, kind = orthonormal_hadamard(d, seed)
    rotation32 = rotation.astype(np.float32)
    session = runtime.make_session(block_model(model, [], inputs), threads=threads)
    count = len(inputs)
    cosine = np.zeros((count, count))
    abs_rotated, abs_plain = np.zeros((count, d)), np.zeros((count, d))
    tokens = windows = 0
    total = min(samples, calibration.samples)
    bar = tqdm(total=total, desc="layer similarity", unit="window", disable=not progress, leave=False)
    for feeds in calibration.batches():
        take = min(samples - windows, len(next(iter(feeds.values()))))
        if take <= 0:
            break
        outputs = runtime.run(session, {k: v[:take] for k, v in feeds.items()}, names)
        states = np.stack([outputs[n].reshape(-1, d) for n in names])  # [L + 1, N, d] float32
        units = _unit_rows(states)
        for i in range(count):
            cosine[i] += np.einsum("nd,jnd->j", units[i], units, dtype=np.float64)
            abs_rotated[i] += np.abs(states[i] @ rotation32).sum(axis=0, dtype=np.float64)
            abs_plain[i] += np.abs(states[i]).sum(axis=0, dtype=np.float64)
        tokens += states.shape[1]
        windows += take
        bar.update(take)
    bar.close()
    if tokens == 0:
        raise ValueError("the calibration data yields no samples")
    return LayerStats(cosine / tokens, abs_rotated / tokens, abs_plain / tokens, rotation, kind, tokens, windows)
