"""The decode step's float kernels (`backends.tvm.decoder.kernels`) against the NumPy reference of the decoder
(`decoder.reference`, itself equal to ONNX Runtime on the artifacts): RMSNorm with and without γ, RoPE at
several positions, the per-row Kronecker transform, the per-channel scaling, SiLU·up, the float GEMV; the
cache write (float, and as codes: bit for bit `QuantSpec.per_token`'s codes, scales and zero points) in place
at the given position; grouped-query decode attention over float and quantized caches, reading only the
positions up to the current one. Float tolerances are explicit: 2e-6 relative for single sums and products,
1e-5 for the transcendental functions (TVM's exp/sin/cos are not NumPy's)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.decoder import kernels, reference
from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.target import host_target
from qcompile.ir.online_ops import kronecker_rotate
from qcompile.ir.quant_meta import QuantSpec

RNG = np.random.default_rng(0)


def _call(func, *arrays, outputs):
    """Build `func` for this CPU, run it on `arrays` + zero-filled `outputs` ((shape, dtype) pairs, or arrays used
    in place); returns the outputs."""
    import tvm

    lib = tvm.tirx.build(fence_float_products(func), target=host_target(2))
    outs = [tvm.runtime.tensor(o if isinstance(o, np.ndarray) else np.zeros(o[0], o[1])) for o in outputs]
    lib["main"](*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays), *outs)
    return [o.numpy() for o in outs]


def _close(got, want, rtol):
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * float(np.abs(want).max()))


@pytest.mark.parametrize("with_gamma", [True, False])
def test_rms_norm(with_gamma) -> None:
    x = (RNG.standard_normal((1, 576)) * 3).astype(np.float32)
    gamma = RNG.random(576).astype(np.float32) if with_gamma else None
    args = (x, gamma) if with_gamma else (x,)
    (got,) = _call(kernels.rms_norm_func(1, 576, 1e-5, with_gamma), *args, outputs=[((1, 576), "float32")])
    _close(got, reference.rms_norm(x, gamma, 1e-5), 2e-6)
    rows = (RNG.standard_normal((5, 576)) * 3).astype(np.float32)
    args = (rows, gamma) if with_gamma else (rows,)
    (got,) = _call(kernels.rms_norm_func(5, 576, 1e-5, with_gamma), *args, outputs=[((5, 576), "float32")])
    _close(got, reference.rms_norm(rows, gamma, 1e-5), 2e-6)


@pytest.mark.parametrize("position, rows", [(0, 1), (7, 1), (511, 1), (100, 6)])
def test_rope(position, rows) -> None:
    inv_freq = (1.0 / (10000 ** (np.arange(0, 64, 2) / 64))).astype(np.float32)
    x = RNG.standard_normal((rows, 9, 64)).astype(np.float32)
    cos, sin = _call(
        kernels.rope_table_func(rows, 64, inv_freq),
        np.array([position], np.int32),
        outputs=[((rows, 32), "float32"), ((rows, 32), "float32")],
    )
    (got,) = _call(kernels.rope_func(rows, 9, 64), x, cos, sin, outputs=[((rows, 9, 64), "float32")])
    want = reference.rope(x.transpose(1, 0, 2), position + np.arange(rows), inv_freq).transpose(1, 0, 2)
    _close(got, want, 1e-5)


@pytest.mark.parametrize("rows", [1, 4])
def test_qkv_split_with_rope_in_one_kernel(rows) -> None:
    """`qkv_rope_func` == the three slices of the q/k/v output and `rope_func` on q and k, bit for bit."""
    heads, kvh, dim = 9, 3, 64
    qkv = RNG.standard_normal((rows, (heads + 2 * kvh) * dim)).astype(np.float32)
    cos, sin = (RNG.standard_normal((rows, dim // 2)).astype(np.float32) for _ in range(2))
    q = qkv[:, : heads * dim].reshape(rows, heads, dim)
    k = qkv[:, heads * dim : (heads + kvh) * dim].reshape(rows, kvh, dim)
    (want_q,) = _call(kernels.rope_func(rows, heads, dim), q, cos, sin, outputs=[((rows, heads, dim), "float32")])
    (want_k,) = _call(kernels.rope_func(rows, kvh, dim), k, cos, sin, outputs=[((rows, kvh, dim), "float32")])
    shapes = [((rows, heads, dim), "float32"), ((rows, kvh, dim), "float32"), ((rows, kvh, dim), "float32")]
    got_q, got_k, got_v = _call(kernels.qkv_rope_func(rows, heads, kvh, dim), qkv, cos, sin, outputs=shapes)
    np.testing.assert_array_equal(got_q, want_q)
    np.testing.assert_array_equal(got_k, want_k)
    np.testing.assert_array_equal(got_v, qkv[:, (heads + kvh) * dim :].reshape(rows, kvh, dim))


@pytest.mark.parametrize("rows, heads, a, b", [(1, 9, 1, 64), (3, 3, 1, 64), (2, 4, 4, 16)])
def test_rope_then_the_per_head_transform_in_one_kernel(rows, heads, a, b) -> None:
    """`rope_kronecker_func` == `rope_func` and then `kronecker_func` over the heads' rows, bit for bit."""
    x = RNG.standard_normal((rows, heads, 64)).astype(np.float32)
    cos, sin = (RNG.standard_normal((rows, 32)).astype(np.float32) for _ in range(2))
    fa, fb = RNG.standard_normal((a, a)).astype(np.float32), RNG.standard_normal((b, b)).astype(np.float32)
    (roped,) = _call(kernels.rope_func(rows, heads, 64), x, cos, sin, outputs=[((rows, heads, 64), "float32")])
    flat = ((rows * heads, 64), "float32")
    (want,) = _call(kernels.kronecker_func(rows * heads, a, b), roped.reshape(rows * heads, 64), fa, fb, outputs=[flat])
    (got,) = _call(kernels.rope_kronecker_func(rows, heads, 64, a, b), x, cos, sin, fa, fb, outputs=[flat])
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="heads of 64"):
        kernels.rope_kronecker_func(rows, heads, 64, 2, 16)


@pytest.mark.parametrize(
    "rows, a, b", [(3, 4, 12), (1, 12, 128), (9, 1, 64), (16, 1, 64), (2, 36, 16), (1, 3, 6), (64, 4, 16)]
)
def test_kronecker(rows, a, b) -> None:
    """Blocks of 64 columns (b = 128: two per row), one row (a decode step), a = 1 (a per-head transform), odd b;
    serial below `PARALLEL_MACS` multiply-adds, parallel from there ((1, 12, 128), (16, 1, 64), (64, 4, 16))."""
    x = RNG.standard_normal((rows, a * b)).astype(np.float32)
    fa, fb = RNG.standard_normal((a, a)).astype(np.float32), RNG.standard_normal((b, b)).astype(np.float32)
    func = kernels.kronecker_func(rows, a, b)
    assert ("T.parallel(" in func.script()) == (rows * a * b * (a + b) >= kernels.PARALLEL_MACS)
    (got,) = _call(func, x, fa, fb, outputs=[((rows, a * b), "float32")])
    _close(got, kronecker_rotate(x, fa, fb), 2e-6)


def test_channel_scale() -> None:
    x = RNG.standard_normal((3, 48)).astype(np.float32)
    c = RNG.random(48).astype(np.float32)
    (scaled,) = _call(kernels.channel_scale_func(3, 48), x, c, outputs=[((3, 48), "float32")])
    np.testing.assert_array_equal(scaled, x * c)


def test_fast_exp_is_within_two_ulps_of_numpy() -> None:
    from tvm.script import tirx as T

    x = np.concatenate([np.linspace(-87, 88, 4001), RNG.standard_normal(999) * 5]).astype(np.float32)

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((5000,), "float32"), b: T.Buffer((5000,), "float32")):
        T.func_attr({"global_symbol": "main", "tir.noalias": True})
        for i in T.vectorized(5000):
            b[i] = kernels.fast_exp(a[i])

    (got,) = _call(func, x, outputs=[((5000,), "float32")])
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)), rtol=2.4e-7, atol=0)
    (clamped,) = _call(func, np.full(5000, -200.0, np.float32), outputs=[((5000,), "float32")])
    assert np.all(clamped <= np.float32(np.exp(-87.0)) * 1.0001)


def test_silu_mul_and_gemv() -> None:
    gu = RNG.standard_normal((2, 2 * 96)).astype(np.float32)
    (got,) = _call(kernels.silu_mul_func(2, 96), gu, outputs=[((2, 96), "float32")])
    gate, up = gu[:, :96], gu[:, 96:]
    _close(got, gate * (1 / (1 + np.exp(-gate))) * up, 1e-5)
    x, w = RNG.standard_normal((1, 64)).astype(np.float32), RNG.standard_normal((64, 200)).astype(np.float32)
    (y,) = _call(kernels.gemv_func(64, 200), x, kernels.pack_gemv_weight(w), outputs=[((1, 256), "float32")])
    _close(y[:, :200], x @ w, 2e-6)
    half = kernels.pack_gemv_weight(w, "float16")
    assert half.dtype == np.float16 and half.shape == (4, 64, 4, 16)  # 200 columns padded to 4 panels of 4 × 16
    assert half[0, 5, 2, 3] == np.float16(w[5, 35]) and half[3, 7, 0, 7] == np.float16(w[7, 199])
    assert not half[3, :, 0, 8:].any() and not half[3, :, 1:].any()
    (y16,) = _call(kernels.gemv_func(64, 200, dtype="float16"), x, half, outputs=[((1, 256), "float32")])
    _close(y16[:, :200], x @ w.astype(np.float16).astype(np.float32), 2e-6)  # the rounded weights, summed in float32
    codes, scale = kernels.quantize_gemv_weight(w)
    int8 = kernels.pack_gemv_weight(codes, "int8")
    (y8,) = _call(kernels.gemv_func(64, 200, dtype="int8"), x, int8, scale, outputs=[((1, 256), "float32")])
    _close(y8[:, :200], x @ (codes * scale[:200]), 2e-6)  # the codes' sums in float32, each scaled once
    assert not np.any(y8[:, 200:])  # padded columns: zero codes, zero scale


def test_int8_gemv_codes_reproduce_the_weight_within_half_a_step() -> None:
    w = RNG.standard_normal((64, 40)).astype(np.float32) * RNG.uniform(0.01, 10, 40).astype(np.float32)
    w[:, 3] = 0  # an all-zero column gets scale 1 and zero codes
    codes, scale = kernels.quantize_gemv_weight(w)
    assert codes.dtype == np.int8 and scale.shape == (64,) and np.abs(codes).max() == 127
    np.testing.assert_array_equal(np.abs(codes).max(axis=0)[[0, 1, 39]], 127)  # each column's peak is ±127
    assert scale[3] == 1 and not codes[:, 3].any()
    assert np.all(np.abs(codes * scale[:40] - w) <= scale[:40] / 2 * (1 + 1e-6))
    with pytest.raises(ValueError, match="float32, float16 or int8"):
        kernels.gemv_func(64, 40, dtype="bfloat16")


@pytest.mark.parametrize("bits, symmetric, ratio", [(None, True, 1.0), (4, False, 1.0), (8, True, 0.9), (4, True, 1.0)])
@pytest.mark.parametrize("rows", [1, 3])
def test_cache_write_in_place(bits, symmetric, ratio, rows) -> None:
    kvh, dim, cap, pos = 3, 64, 16, 5
    new = (RNG.standard_normal((rows, kvh, dim)) * RNG.uniform(0.1, 10, (rows, kvh, 1))).astype(np.float32)
    written = slice(pos, pos + rows)
    func = kernels.cache_write_func(rows, kvh, dim, cap, bits, symmetric, ratio)
    if bits is None:
        before = RNG.standard_normal((kvh, cap, dim)).astype(np.float32)
        (cache,) = _call(func, new, np.array([pos], np.int32), outputs=[before.copy()])
        np.testing.assert_array_equal(cache[:, written], new.transpose(1, 0, 2))
        kept = np.ones(cap, bool)
        kept[written] = False
        np.testing.assert_array_equal(cache[:, kept], before[:, kept])
        return
    codes, scale, zero = _call(
        func,
        new,
        np.array([pos], np.int32),
        outputs=[((kvh, cap, dim), "int8"), ((kvh, cap), "float32"), ((kvh, cap), "float32")],
    )
    spec = QuantSpec.per_token(bits, symmetric, ratio)
    heads_first = new.transpose(1, 0, 2)
    want_scale, want_zero = spec.token_params(heads_first)
    shift = 0 if symmetric else 128
    np.testing.assert_array_equal(codes[:, written].astype(np.int32) + shift, spec.quantize(heads_first))
    np.testing.assert_array_equal(scale[:, written], want_scale[..., 0])
    np.testing.assert_array_equal(zero[:, written], want_zero[..., 0])
    assert not codes[:, pos + rows :].any() and not codes[:, :pos].any()


@pytest.mark.parametrize("bits, symmetric, ratio", [(4, False, 0.95), (8, True, 1.0)])
def test_cache_write_of_dequantized_values_into_a_float_cache(bits, symmetric, ratio) -> None:
    rows, kvh, dim, cap, pos = 2, 3, 64, 8, 4
    new = (RNG.standard_normal((rows, kvh, dim)) * 3).astype(np.float32)
    func = kernels.cache_write_func(rows, kvh, dim, cap, bits, symmetric, ratio, as_codes=False)
    (cache,) = _call(func, new, np.array([pos], np.int32), outputs=[((kvh, cap, dim), "float32")])
    want = QuantSpec.per_token(bits, symmetric, ratio).fake_quantize(new.transpose(1, 0, 2))
    np.testing.assert_array_equal(cache[:, pos : pos + rows], want)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("rows", [1, 3])
def test_attention_is_grouped_and_causal(quantized, rows) -> None:
    heads, kvh, dim, cap, pos = 6, 2, 16, 12, 5
    q = RNG.standard_normal((rows, heads, dim)).astype(np.float32)
    keys = RNG.standard_normal((kvh, cap, dim)).astype(np.float32)
    values = RNG.standard_normal((kvh, cap, dim)).astype(np.float32)
    last = pos + rows - 1
    keys[:, last + 1 :] = values[:, last + 1 :] = 1e3  # past the last position: must not be read
    func = kernels.attention_func(rows, heads, kvh, dim, cap, 0.25, quantized, shift=128)
    if quantized:
        spec = QuantSpec.per_token(4, False)
        parts = []
        for tensor in (keys, values):
            scale, zero = spec.token_params(tensor)
            parts += [(spec.quantize(tensor) - 128).astype(np.int8), scale[..., 0], zero[..., 0]]
        (got,) = _call(func, q, np.array([pos], np.int32), *parts, outputs=[((rows, heads * dim), "float32")])
        keys, values = spec.fake_quantize(keys), spec.fake_quantize(values)
    else:
        (got,) = _call(func, q, np.array([pos], np.int32), keys, values, outputs=[((rows, heads * dim), "float32")])
    for i in range(rows):  # row i sees positions 0 … pos + i
        seen = pos + i + 1
        k, v = np.repeat(keys[:, :seen], heads // kvh, axis=0), np.repeat(values[:, :seen], heads // kvh, axis=0)
        scores = np.einsum("hd,htd->ht", q[i], k) * np.float32(0.25)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        _close(got[i : i + 1], np.einsum("ht,htd->hd", probs, v).reshape(1, -1), 1e-5)


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("pos", [0, 2, 37, 63])
def test_decode_attention_in_runs_of_positions(quantized, pos) -> None:
    """One row's attention splits each KV head's positions into `ATTENTION_PARTS` runs (some empty when there are
    fewer positions than runs) and merges their softmax sums: the one-pass result within float rounding."""
    heads, kvh, dim, cap = 9, 3, 64, 64
    q = RNG.standard_normal((1, heads, dim)).astype(np.float32)
    keys = (RNG.standard_normal((kvh, cap, dim)) * 2).astype(np.float32)
    values = RNG.standard_normal((kvh, cap, dim)).astype(np.float32)
    keys[:, pos + 1 :] = values[:, pos + 1 :] = 1e3  # past the position: must not be read
    func = kernels.attention_func(1, heads, kvh, dim, cap, 0.125, quantized, shift=0)
    if quantized:
        spec = QuantSpec.per_token(8, True)
        parts = []
        for tensor in (keys, values):
            scale, _ = spec.token_params(tensor)
            parts += [spec.quantize(tensor).astype(np.int8), scale[..., 0], np.zeros((kvh, cap), np.float32)]
        (got,) = _call(func, q, np.array([pos], np.int32), *parts, outputs=[((1, heads * dim), "float32")])
        keys, values = spec.fake_quantize(keys), spec.fake_quantize(values)
    else:
        (got,) = _call(func, q, np.array([pos], np.int32), keys, values, outputs=[((1, heads * dim), "float32")])
    k = np.repeat(keys[:, : pos + 1], heads // kvh, axis=0).astype(np.float64)
    v = np.repeat(values[:, : pos + 1], heads // kvh, axis=0).astype(np.float64)
    scores = np.einsum("hd,htd->ht", q[0], k) * 0.125
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    _close(got, np.einsum("ht,htd->hd", probs, v).reshape(1, -1), 2e-6)
