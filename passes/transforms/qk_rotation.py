"""Per-head query/key rotation and key-bias removal at attention score sites (`attention_sites`), float64.

For a site with H heads of size D, R = diag(s)·H_D/√D (a randomized Hadamard, or a seeded random orthogonal
matrix where no Hadamard of order D exists) and B = I_H ⊗ R:

    W_q ← W_q B,  b_q ← b_q B,  W_k ← W_k B,  b_k ← b_k B       ⇒  Q_h K_hᵀ = (Q_h R)(K_h R)ᵀ.

This is QuaRot's/SpinQuant's R3 (the online Q/K Hadamard after RoPE); without RoPE it folds into the two
projections, so nothing runs online. It spreads the few large head channels of Q and K over the head.

Key bias: S = Q(XW_k + 1b_k)ᵀ = Q(XW_k)ᵀ + (Q b_kᵀ)1ᵀ, and the second term is constant along the key axis
of each query row, so softmax(S·c + M) does not depend on b_k (c a scalar, M a mask). Dropping b_k
removes the per-channel offset that makes K's per-tensor range wide; on DINOv2-S (after the per-head
rotation) it lifts the output SQNR of 6-bit K alone from 26.1 to 34.4 dB (docs/methods/rotate.md).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.ir import replace_const
from qcompile.math.hadamard import random_hadamard
from qcompile.passes.transforms.attention_sites import Projection, QKSite

__all__ = ["rotate_heads", "drop_key_bias"]


def _fold_columns(projection: Projection, block: np.ndarray) -> None:
    replace_const(projection.weight, projection.weight.const_value.numpy().astype(np.float64) @ block)
    if projection.bias is not None:
        replace_const(projection.bias, projection.bias.const_value.numpy().astype(np.float64) @ block)


def rotate_heads(site: QKSite, seed: int) -> str:
    """Fold I_H ⊗ R into both projections of `site`; returns the kind of R."""
    rotation, kind = random_hadamard(site.head_dim, seed)
    block = np.kron(np.eye(site.heads), rotation)
    _fold_columns(site.query, block)
    _fold_columns(site.key, block)
    return kind


def drop_key_bias(model: ir.Model, site: QKSite) -> bool:
    """Remove the key projection's bias Add; False when it has none."""
    key = site.key
    if key.add is None:
        return False
    ir.convenience.replace_all_uses_with(key.add.outputs[0], key.matmul.outputs[0])
    model.graph.remove(key.add, safe=True)
    key.add, key.bias = None, None
    return True
