"""The fused quantizer (`decoder.fused`): its codes, scales and zero points equal, bit for bit, those of the separate
kernels it replaces (RMSNorm with and without γ, or SiLU·up; then one Kronecker step or none; then the per-token
quantizer), for one row (a decode step) and several (a prefill chunk), symmetric 8-bit and asymmetric 4-bit codes,
transforms run serially and in parallel, per-head (a = 1) and full ones; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.decoder import kernels
from qcompile.backends.tvm.decoder.fused import fused_quantize_func
from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.kernels.token_quantize import token_quantize_func
from qcompile.backends.tvm.target import host_target

EPS = 1e-5


def _call(func, *arrays, outputs):
    import tvm

    lib = tvm.tirx.build(fence_float_products(func), target=host_target(2))
    outs = [tvm.runtime.tensor(np.zeros(shape, dtype)) for shape, dtype in outputs]
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays), *outs)
    return [o.numpy() for o in outs]


def _separately(x, m, k, prologue, gamma, fa, fb, bits, symmetric, ratio):
    """The codes, scales (and zero points) of the unfused kernels, one call each."""
    rows = x
    if prologue == "rms":
        args = (x, gamma) if gamma is not None else (x,)
        (rows,) = _call(kernels.rms_norm_func(m, k, EPS, gamma is not None), *args, outputs=[((m, k), "float32")])
    elif prologue == "silu":
        (rows,) = _call(kernels.silu_mul_func(m, k), x, outputs=[((m, k), "float32")])
    if fa is not None:
        func = kernels.kronecker_func(m, fa.shape[0], fb.shape[0])
        (rows,) = _call(func, rows, fa, fb, outputs=[((m, k), "float32")])
    outputs = [((m, k), "int8"), ((m,), "float32")] + ([] if symmetric else [((m,), "int32")])
    return _call(token_quantize_func(m, k, bits, symmetric, ratio), rows, outputs=outputs)


@pytest.mark.parametrize(
    "prologue, with_gamma, kron",
    [
        ("rms", False, None),  # the qkv / gate-up input of a rotated model: γ folded into the weights
        ("rms", True, None),
        ("silu", False, None),
        ("silu", False, (12, 128)),  # the down projection's online transform (parallel stages)
        ("none", False, (36, 16)),  # the o projection's (serial)
        ("rms", True, (1, 64)),  # a per-head-sized transform after a norm
    ],
)
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bits, symmetric, ratio", [(8, True, 1.0), (4, False, 0.9)])
def test_fused_codes_equal_the_separate_kernels(prologue, with_gamma, kron, m, bits, symmetric, ratio) -> None:
    rng = np.random.default_rng(m + bits)
    k = kron[0] * kron[1] if kron else 576
    x = (rng.standard_normal((m, 2 * k if prologue == "silu" else k)) * 3).astype(np.float32)
    x[0, 5] = 40.0  # an outlier channel
    gamma = rng.random(k).astype(np.float32) + 0.5 if with_gamma else None
    fa = rng.standard_normal((kron[0], kron[0])).astype(np.float32) if kron else None
    fb = rng.standard_normal((kron[1], kron[1])).astype(np.float32) if kron else None
    want = _separately(x, m, k, prologue, gamma, fa, fb, bits, symmetric, ratio)
    func = fused_quantize_func(m, k, prologue, kron, bits, symmetric, ratio, EPS, with_gamma)
    one = np.ones((1, 1), np.float32)
    args = (x, gamma if with_gamma else one[0], fa if kron else one, fb if kron else one)
    got = _call(func, *args, outputs=[((m, k), "int8"), ((m,), "float32"), ((m,), "int32")])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2] if not symmetric else np.zeros(m, np.int32))


def test_refusals() -> None:
    with pytest.raises(ValueError, match="prologue"):
        fused_quantize_func(1, 64, "gelu", None, 8, True)
    with pytest.raises(ValueError, match="nothing to fuse"):
        fused_quantize_func(1, 64, "none", None, 8, True)
    with pytest.raises(ValueError, match="does not transform rows of 64"):
        fused_quantize_func(1, 64, "rms", (4, 8), 8, True)


def _signed_hadamard(n: int, rng) -> np.ndarray:
    from scipy.linalg import hadamard

    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0) / np.sqrt(n)
    return (signs[:, None] * hadamard(n)).astype(np.float32)


def test_signed_hadamard_is_recognized_exactly() -> None:
    rng = np.random.default_rng(0)
    b = _signed_hadamard(128, rng)
    np.testing.assert_array_equal(kernels.signed_hadamard(b), b[:, 0])
    assert kernels.signed_hadamard(b[::-1].copy()) is None  # rows of H in another order: not Sylvester's
    nudged = b.copy()
    nudged[3, 7] = np.nextafter(nudged[3, 7], np.float32(0))
    assert kernels.signed_hadamard(nudged) is None
    assert kernels.signed_hadamard(_signed_hadamard(4, rng)) is None  # below one 8-column vector
    assert kernels.signed_hadamard(rng.standard_normal((12, 12)).astype(np.float32)) is None


@pytest.mark.parametrize("m, a, b", [(1, 12, 128), (3, 12, 128), (1, 36, 16), (2, 1, 64), (1, 3, 8)])
def test_the_fast_hadamard_transform_sums_the_dense_products_in_another_order(m, a, b) -> None:
    """The fast form of a signed Hadamard B is within float32 rounding of the exact Aᵀ X B (as close as the dense
    kernel), and the codes quantized from it are the dense form's but where a value sits on a rounding boundary."""
    rng = np.random.default_rng(a * b + m)
    fa = rng.standard_normal((a, a)).astype(np.float32)
    fb = _signed_hadamard(b, rng)
    x = (rng.standard_normal((m, a * b)) * 3).astype(np.float32)
    table = kernels.hadamard_table(kernels.signed_hadamard(fb))
    (fast,) = _call(kernels.kronecker_func(m, a, b, hadamard=True), x, fa, table, outputs=[((m, a * b), "float32")])
    (dense,) = _call(kernels.kronecker_func(m, a, b), x, fa, fb, outputs=[((m, a * b), "float32")])
    exact = np.einsum("ki,mkl,lj->mij", fa.astype(np.float64), x.reshape(m, a, b), fb.astype(np.float64))
    exact = exact.reshape(m, a * b)
    bound = 4e-7 * np.sqrt(a * b) * float(np.abs(exact).max())
    assert np.abs(fast - exact).max() <= bound
    assert np.abs(dense - exact).max() <= bound
    outputs = [((m, a * b), "int8"), ((m,), "float32"), ((m,), "int32")]
    one = np.ones(1, np.float32)
    got = _call(
        fused_quantize_func(m, a * b, "none", (a, b), 8, True, hadamard=True), x, one, fa, table, outputs=outputs
    )
    want = _call(fused_quantize_func(m, a * b, "none", (a, b), 8, True), x, one, fa, fb, outputs=outputs)
    assert np.abs(got[0].astype(int) - want[0]).max() <= 1
    assert (got[0] != want[0]).mean() <= 0.01
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_the_fast_hadamard_transform_needs_a_power_of_two_of_eight_or_more() -> None:
    with pytest.raises(ValueError, match="power of two"):
        kernels.kronecker_func(1, 3, 12, hadamard=True)
