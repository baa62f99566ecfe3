"""qcompile.math.hadamard: Hadamard constructions, Kronecker factoring, online and randomized rotations."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.math.hadamard import (
    Rotation,
    hadamard_matrix,
    kronecker_factors,
    online_rotation,
    random_hadamard,
    random_orthogonal,
)

HADAMARD_SIZES = [1, 2, 4, 8, 12, 20, 24, 28, 32, 36, 40, 44, 48, 60, 64, 96, 128, 384, 768, 1536, 3072]


def _orth_err(m: np.ndarray) -> float:
    return float(np.abs(m @ m.T - np.eye(m.shape[0])).max())


@pytest.mark.parametrize("n", HADAMARD_SIZES)
def test_hadamard_exact(n):
    h = hadamard_matrix(n)
    assert h is not None and h.shape == (n, n) and h.dtype == np.float64
    assert np.all(np.abs(h) == 1.0)
    assert np.array_equal(h @ h.T, n * np.eye(n))
    assert not h.flags.writeable


@pytest.mark.parametrize("n", [0, 3, 5, 6, 10, 14, 18])
def test_hadamard_none(n):
    assert hadamard_matrix(n) is None


def test_hadamard_cached():
    assert hadamard_matrix(384) is hadamard_matrix(384)


@pytest.mark.parametrize(
    ("n", "split"),
    [
        (1, (1, 1)),
        (64, (1, 64)),
        (12, (12, 1)),
        (24, (12, 2)),
        (384, (12, 32)),
        (768, (12, 64)),
        (1536, (12, 128)),
        (3072, (12, 256)),
        (6, (3, 2)),
        (10, (5, 2)),
        (7, (7, 1)),
        (576, (36, 16)),  # SmolLM2's hidden size: Paley II 36
        (4864, (76, 64)),  # Qwen2-0.5B's FFN: Paley II 76
        (11008, (43, 256)),  # Llama-2-7B's FFN: 5504 (Paley I) is reachable but too large a dense factor
    ],
)
def test_kronecker_factors(n, split):
    assert kronecker_factors(n) == split


@pytest.mark.parametrize(
    ("n", "kind"),
    [(6, "random-orthogonal"), (64, "hadamard"), (384, "hadamard"), (1536, "hadamard"), (10, "random-orthogonal")],
)
def test_online_rotation(n, kind):
    rot = online_rotation(n, seed=3)
    assert isinstance(rot, Rotation) and rot.kind == kind and rot.size == n
    a, b = kronecker_factors(n)
    assert rot.a.shape == (a, a) and rot.b.shape == (b, b)
    assert rot.a.dtype == rot.b.dtype == np.float64
    dense = rot.dense()
    assert dense.shape == (n, n)
    assert _orth_err(dense) < 1e-12
    # Kronecker identity: x @ (A ⊗ B) == Aᵀ X B on x reshaped to [a, b]
    x = np.random.default_rng(0).standard_normal((5, n))
    y = np.einsum("rkl,ki,lj->rij", x.reshape(5, a, b), rot.a, rot.b).reshape(5, n)
    np.testing.assert_allclose(y, x @ dense, rtol=0, atol=1e-12)


def test_online_rotation_power_of_two_has_trivial_a():
    rot = online_rotation(128)
    assert np.array_equal(rot.a, [[1.0]])
    np.testing.assert_allclose(rot.b, hadamard_matrix(128) / np.sqrt(128), rtol=0, atol=0)


def test_online_rotation_random_factor_seeded():
    assert np.array_equal(online_rotation(6, seed=1).a, online_rotation(6, seed=1).a)
    assert not np.allclose(online_rotation(6, seed=1).a, online_rotation(6, seed=2).a)


@pytest.mark.parametrize(
    ("n", "kind"), [(64, "hadamard"), (384, "hadamard"), (6, "random-orthogonal"), (100, "random-orthogonal")]
)
def test_random_hadamard(n, kind):
    m, k = random_hadamard(n, seed=7)
    assert k == kind and m.shape == (n, n) and m.dtype == np.float64
    assert _orth_err(m) < 1e-12
    assert np.array_equal(m, random_hadamard(n, seed=7)[0])
    assert not np.allclose(m, random_hadamard(n, seed=8)[0])
    if kind == "hadamard":  # rows are ±H rows scaled by 1/√n
        ratio = m * np.sqrt(n) / hadamard_matrix(n)
        assert np.all(np.abs(ratio - ratio[:, :1]) == 0) and np.all(np.abs(ratio) == 1)


def test_random_orthogonal():
    q = random_orthogonal(17, seed=0)
    assert q.shape == (17, 17) and _orth_err(q) < 1e-12
    assert np.array_equal(q, random_orthogonal(17, seed=0))
    assert not np.allclose(q, random_orthogonal(17, seed=1))


@pytest.mark.parametrize("n", [64, 384, 1536, 20])
def test_signed_online_rotation_is_a_sign_randomized_kronecker_hadamard(n):
    """diag(s_a)A ⊗ diag(s_b)B = diag(s_a ⊗ s_b)(A ⊗ B): orthogonal, seeded, same column space as unsigned."""
    plain, signed = online_rotation(n, seed=3), online_rotation(n, seed=3, signed=True)
    dense = signed.dense()
    np.testing.assert_allclose(dense @ dense.T, np.eye(n), atol=1e-12)
    np.testing.assert_array_equal(dense, online_rotation(n, seed=3, signed=True).dense())
    row_signs = dense[:, 0] / plain.dense()[:, 0]
    np.testing.assert_allclose(np.abs(row_signs), 1.0)
    np.testing.assert_allclose(dense, row_signs[:, None] * plain.dense(), atol=1e-12)
    assert not np.array_equal(dense, online_rotation(n, seed=4, signed=True).dense())


def test_signed_online_rotation_spreads_a_mean_that_a_plain_hadamard_concentrates():
    """A constant input (a GELU output's mean) lands on one channel of a plain Hadamard; signs spread it."""
    n = 1536
    ones = np.ones(n)
    plain = ones @ online_rotation(n, seed=0).dense()
    signed = ones @ online_rotation(n, seed=0, signed=True).dense()
    assert np.count_nonzero(np.abs(plain) > 1e-9) == 12  # (1ᵀA) ⊗ (√b e₀): 12 of 1536 channels carry it
    assert np.abs(plain).max() > 0.8 * np.sqrt(n)
    assert np.abs(signed).max() < 0.25 * np.sqrt(n)
