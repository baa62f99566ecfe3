"""`linear-patch`: LinearPatch's one d×d matrix at the cut `prune-layers` left (Chen et al. 2025; METHODS.md §10b).

After pruning layers [i, i + K), the first kept layer reads x_i where it used to read x_{i+K}. Both are residual
streams, but of different magnitude per channel, and their outlier channels differ. With H the orthonormal
Hadamard of order d (`layer_similarity.orthonormal_hadamard`) and, per channel c,

    s_c = mean_n |(x_{i+K} H)_c| / mean_n |(x_i H)_c|        (calibration tokens, unpruned model)

the patch is P = H · diag(s) · Hᵀ, and the stream entering layer i + K becomes x_i P: one MatMul per token,
P symmetric. In the Hadamard basis the channels' energy is spread, so one scale per channel aligns the
magnitudes of ordinary and outlier tokens alike. `rotation=none` is the paper's `diag` variant: P = diag(m_{i+K}
/ m_i) with the plain channel means.

What can be folded: nothing exactly. x_i P feeds the next layer's RMSNorm and its residual add; the norm divides
by the rms of x_i P (not of x_i), so P cannot move behind it into the linears, and the residual carries x_i P
itself. P could move into the writers before the cut (x_i = x_0 + Σ writers) only if nothing else read the
stream before the cut, but every earlier layer's norm does. The paper, too, keeps it as a separate matmul.

Run it right after `prune-layers` (it reads the cut from `model.meta`); the patch's MatMul is a linear with a
constant weight, so a later `quantize` treats it like any other (per-token activations on LLM recipes). LOSSY.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import add_initializer
from qcompile.ir.online_ops import insert_after
from qcompile.ir.properties import Property
from qcompile.passes.transforms.prune_layers import CUT_KEY, PrunedCut
from qcompile.pipeline.pass_base import Numerics, Pass, PassResult
from qcompile.pipeline.registry import register_pass

__all__ = ["LinearPatchPass", "patch_matrix", "ROTATIONS"]

ROTATIONS = ("hadamard", "none")


def patch_matrix(cut: PrunedCut, rotation: str) -> np.ndarray:
    """P = H·diag(s)·Hᵀ (float64), or diag(s) with `rotation="none"`."""
    if rotation == "none":
        return np.diag(cut.scale(rotated=False))
    h = cut.stats.rotation
    return (h * cut.scale(rotated=True)) @ h.T


@register_pass("linear-patch")
class LinearPatchPass(Pass):
    """Multiply the hidden state entering the first layer after a pruned span by P = H·diag(s)·Hᵀ."""

    invalidates = frozenset({Property.CALIBRATED})
    numerics = Numerics.LOSSY

    def __init__(self, rotation: str = "hadamard") -> None:
        if rotation not in ROTATIONS:
            raise ValueError(f"linear-patch rotation must be one of {', '.join(ROTATIONS)}, got {rotation!r}")
        self.rotation = rotation

    def call(self, model: ir.Model) -> PassResult:
        cut = model.meta.get(CUT_KEY)
        if not isinstance(cut, PrunedCut):
            raise InputError("linear-patch patches the cut of prune-layers: run it right after 'prune-layers:n=K'")
        if cut.patched:
            return PassResult(model, modified=False, stats={"reason": "the cut is already patched"})
        patch = patch_matrix(cut, self.rotation)
        x = cut.value
        readers = list(x.uses())
        weight = add_initializer(model, f"linear_patch_{cut.start}_{cut.count}", patch.astype(np.float32))
        matmul = ir.node("MatMul", [x, weight], name=f"linear_patch_{cut.start}_{cut.count}")
        out = matmul.outputs[0]
        out.name, out.dtype, out.shape = f"{x.name}_patched", x.dtype, x.shape
        for use in readers:
            use.node.replace_input_with(use.idx, out)
        insert_after(model, x.producer(), matmul)
        cut.patched = True
        scale = cut.scale(rotated=self.rotation == "hadamard")
        stats = {
            "after_layer": cut.start - 1,
            "before_layer": cut.start + cut.count,
            "rotation": cut.stats.rotation_kind if self.rotation == "hadamard" else "none",
            "scale_range": [round(float(scale.min()), 4), round(float(scale.max()), 4)],
            "parameters": int(patch.size),
        }
        return PassResult(model, modified=True, stats=stats)
