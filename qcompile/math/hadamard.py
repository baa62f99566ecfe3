"""Hadamard and orthogonal rotation matrices for rotation-based quantization (QuaRot-style).

A Hadamard matrix H of order n has entries ±1 and H Hᵀ = n I; H/√n is orthonormal. Orders above 2 must be
multiples of 4. Constructions used here (float64 throughout; ±1 entries make products exact):

* Sylvester: H_1 = [1], H_{2n} = [[H_n, H_n], [H_n, −H_n]], giving every power of two.
* Paley I: for a prime q ≡ 3 (mod 4), let Q be the Jacobsthal matrix Q[i, j] = χ(j − i), χ the quadratic
  character mod q (0, or ±1 for residue / non-residue). Q is skew; with S = [[0, 1ᵀ], [−1, Q]] the matrix
  H = I + S is Hadamard of order q + 1.
* Paley II: for a prime q ≡ 1 (mod 4), Q is symmetric and C = [[0, 1ᵀ], [1, Q]] is a symmetric conference
  matrix; replacing 0 by [[1, −1], [−1, −1]] and ±1 by ±[[1, 1], [1, −1]] gives a Hadamard of order 2(q + 1).
* Kronecker products: H_a ⊗ H_b is Hadamard of order a·b, so e.g. 12·2^k, 20·2^k, 28·2^k, 36·2^k are reached.

Sizes with no construction fall back to a seeded random orthogonal matrix (QR of a Gaussian with the signs of
diag(R) folded into Q). It is still orthogonal, so float-equivalent rewrites stay exact, but it does not spread
outliers as evenly as a Hadamard.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Rotation",
    "hadamard_matrix",
    "kronecker_factors",
    "online_rotation",
    "random_hadamard",
    "random_orthogonal",
]


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    chi = np.full(q, -1.0)
    chi[0] = 0.0
    chi[[(x * x) % q for x in range(1, q)]] = 1.0
    idx = np.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _paley1(q: int) -> np.ndarray:
    s = np.zeros((q + 1, q + 1))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
    return np.eye(q + 1) + s


def _paley2(q: int) -> np.ndarray:
    c = np.zeros((q + 1, q + 1))
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
    return np.kron(c, [[1.0, 1.0], [1.0, -1.0]]) + np.kron(np.eye(q + 1), [[1.0, -1.0], [-1.0, -1.0]])


@functools.lru_cache(maxsize=None)
def _hadamard(n: int) -> np.ndarray | None:
    if n < 1 or (n > 2 and n % 4):
        return None
    if n & (n - 1) == 0:
        h = _sylvester(n)
    elif _is_prime(n - 1) and (n - 1) % 4 == 3:
        h = _paley1(n - 1)
    elif n % 2 == 0 and _is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
        h = _paley2(n // 2 - 1)
    else:
        h = None
        for d in range(2, math.isqrt(n) + 1):  # Kronecker product of two smaller constructible orders
            if n % d == 0 and (ha := _hadamard(d)) is not None and (hb := _hadamard(n // d)) is not None:
                h = np.kron(ha, hb)
                break
        if h is None:
            return None
    h.setflags(write=False)
    return h


def hadamard_matrix(n: int) -> np.ndarray | None:
    """An n×n float64 matrix of ±1 with H Hᵀ = n I (read-only, cached), or None if no construction reaches n."""
    return _hadamard(int(n))


MAX_DENSE_FACTOR = 256  # largest order a of the dense factor A (the online op costs n·(a + b) per row)


def kronecker_factors(n: int) -> tuple[int, int]:
    """Split n = a·b, b a power of two, taking the largest b for which hadamard_matrix(a) exists and
    a ≤ MAX_DENSE_FACTOR (384 → (12, 32), 64 → (1, 64)); otherwise the largest power of two b (6 → (3, 2);
    11008 → (43, 256): the only Hadamard order reached, 5504 = 5503 + 1, would make A a 5504×5504 matrix)."""
    if n < 1:
        raise ValueError(f"kronecker_factors needs n >= 1, got {n}")
    b_max = n & -n
    b = b_max
    while b >= 1:
        if n // b <= MAX_DENSE_FACTOR and hadamard_matrix(n // b) is not None:
            return n // b, b
        b //= 2
    return n // b_max, b_max


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A seeded random n×n orthogonal matrix: QR of a Gaussian, columns sign-fixed by diag(R)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


@dataclass(frozen=True)
class Rotation:
    """An orthogonal n×n rotation R = A ⊗ B kept in factored form (size = n = a·b).

    A row vector x maps to x·R. With X = x reshaped to [a, b] this is Aᵀ X B, i.e.
    y[i, j] = Σ_{k,l} x[k, l] · A[k, i] · B[l, j], which is how the online transform applies it.
    """

    a: np.ndarray
    b: np.ndarray
    kind: str
    size: int

    def dense(self) -> np.ndarray:
        return np.kron(self.a, self.b)


def online_rotation(n: int, seed: int = 0, signed: bool = False) -> Rotation:
    """Orthonormal factors for the online transform: normalized Sylvester H_b ⊗ (normalized H_a, or a seeded
    random orthogonal a×a when no Hadamard of order a exists).

    With `signed`, the rows of both factors get seeded random signs: diag(s_a)A ⊗ diag(s_b)B =
    diag(s_a ⊗ s_b)(A ⊗ B), a randomized Hadamard that costs nothing extra online. Without signs a
    Hadamard maps the all-ones direction onto its first column, so an input with a nonzero mean (a GELU
    output) gets one outlier channel of size √n·mean; the signs spread that mean over all channels."""
    a, b = kronecker_factors(n)
    hb = hadamard_matrix(b) / math.sqrt(b)
    ha = hadamard_matrix(a)
    kind = "hadamard"
    if ha is None:
        ha, kind = random_orthogonal(a, seed), "random-orthogonal"
    else:
        ha = ha / math.sqrt(a)
    if signed:
        rng = np.random.default_rng(seed)
        ha = rng.choice([-1.0, 1.0], size=a)[:, None] * ha
        hb = rng.choice([-1.0, 1.0], size=b)[:, None] * hb
    return Rotation(ha, hb, kind, n)


def random_hadamard(n: int, seed: int) -> tuple[np.ndarray, str]:
    """QuaRot's randomized Hadamard diag(s)·H_n/√n with random signs s, or a seeded random orthogonal matrix."""
    h = hadamard_matrix(n)
    if h is None:
        return random_orthogonal(n, seed), "random-orthogonal"
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=n)
    return signs[:, None] * h / math.sqrt(n), "hadamard"
