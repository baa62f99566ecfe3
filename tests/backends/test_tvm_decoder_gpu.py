"""The decoder's CUDA steps without a GPU. Every CUDA kernel, built with its thread loops serial (`bind=False`) and run
on this CPU, computes what the CPU kernel computes (bit for bit where their arithmetic is the same; the integer
matmul bit for bit the NumPy reference); the whole CUDA step built that way decodes as the NumPy reference; built
for cuda:sm_80, the library's matmuls call `__dp4a`, its float products are `__fmul_rn`, it saves with its metadata,
loading it without a GPU says so, and nvcc (where installed) compiles its CUDA C. Running on a GPU needs a GPU
machine (docs/tvm-backend.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import onnx_ir as ir
import pytest

from qcompile.backends.tvm.decoder import artifact, gpu_attention, gpu_kernels, kernels, reference
from qcompile.backends.tvm.decoder.build import GPU_FLAVOUR, build_decode, cache_spec
from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder, read_decoder
from qcompile.backends.tvm.decoder.session import DecodeSession
from qcompile.backends.tvm.fence import fence_float_products
from qcompile.backends.tvm.kernels import gpu_matmul
from qcompile.backends.tvm.kernels.int4_float_matmul import pack_float_group_params
from qcompile.backends.tvm.kernels.int4_matmul import pack_group_params, padded_columns
from qcompile.backends.tvm.kernels.token_quantize import token_quantize_func
from qcompile.backends.tvm.target import host_target
from qcompile.intops.int4_matmul import int4_matmul_reference

RNG = np.random.default_rng(7)


def _run(func, arrays):
    """Build `func` for this CPU (products fenced, as the pipeline does) and run it on copies of `arrays`."""
    import tvm

    lib = tvm.tirx.build(fence_float_products(func), target=host_target(2))
    tensors = [tvm.runtime.tensor(np.array(a, copy=True)) for a in arrays]
    lib(*tensors)
    return [t.numpy() for t in tensors]


def _same_outputs(gpu_func, cpu_func, arrays, outputs):
    got, want = _run(gpu_func, arrays), _run(cpu_func, arrays)
    for index in outputs:
        np.testing.assert_array_equal(got[index], want[index])


def _floats(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


M, D = 3, 40


@pytest.mark.parametrize(
    "name, gpu, cpu, arrays, outputs",
    [
        (
            "rms_norm γ",
            lambda: gpu_kernels.rms_norm_func(M, D, 1e-5, True, bind=False),
            lambda: kernels.rms_norm_func(M, D, 1e-5, True),
            lambda: [_floats(M, D), _floats(D), np.zeros((M, D), np.float32)],
            [2],
        ),
        (
            "rms_norm",
            lambda: gpu_kernels.rms_norm_func(M, D, 1e-6, False, bind=False),
            lambda: kernels.rms_norm_func(M, D, 1e-6, False),
            lambda: [_floats(M, D), np.zeros((M, D), np.float32)],
            [1],
        ),
        (
            "silu_mul",
            lambda: gpu_kernels.silu_mul_func(M, D, bind=False),
            lambda: kernels.silu_mul_func(M, D),
            lambda: [_floats(M, 2 * D), np.zeros((M, D), np.float32)],
            [1],
        ),
        (
            "channel_scale",
            lambda: gpu_kernels.channel_scale_func(M, D, bind=False),
            lambda: kernels.channel_scale_func(M, D),
            lambda: [_floats(M, D), _floats(D), np.zeros((M, D), np.float32)],
            [2],
        ),
        (
            "kronecker 5 x 8",
            lambda: gpu_kernels.kronecker_func(M, 5, 8, bind=False),
            lambda: kernels.kronecker_func(M, 5, 8),
            lambda: [_floats(M, 40), _floats(5, 5), _floats(8, 8), np.zeros((M, 40), np.float32)],
            [3],
        ),
        (
            "kronecker 1 x 40",
            lambda: gpu_kernels.kronecker_func(M, 1, 40, bind=False),
            lambda: kernels.kronecker_func(M, 1, 40),
            lambda: [_floats(M, 40), _floats(1, 1), _floats(40, 40), np.zeros((M, 40), np.float32)],
            [3],
        ),
        (
            "rope",
            lambda: gpu_kernels.rope_func(M, 3, 16, bind=False),
            lambda: kernels.rope_func(M, 3, 16),
            lambda: [_floats(M, 3, 16), _floats(M, 8), _floats(M, 8), np.zeros((M, 3, 16), np.float32)],
            [3],
        ),
        (
            "rope + kronecker",
            lambda: gpu_kernels.rope_kronecker_func(M, 3, 16, 2, 8, bind=False),
            lambda: kernels.rope_kronecker_func(M, 3, 16, 2, 8),
            lambda: (
                [_floats(M, 3, 16), _floats(M, 8), _floats(M, 8), _floats(2, 2), _floats(8, 8)]
                + [np.zeros((M * 3, 16), np.float32)]
            ),
            [5],
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_row_kernels_are_the_cpu_kernels_bit_for_bit(name, gpu, cpu, arrays, outputs) -> None:
    _same_outputs(gpu(), cpu(), arrays(), outputs)


def test_rope_table_is_the_cpu_kernel_bit_for_bit() -> None:
    inv = (1.0 / 10000 ** (np.arange(0, 16, 2) / 16)).astype(np.float32)
    arrays = [np.array([7], np.int32), np.zeros((M, 8), np.float32), np.zeros((M, 8), np.float32)]
    _same_outputs(
        gpu_kernels.rope_table_func(M, 16, inv, bind=False), kernels.rope_table_func(M, 16, inv), arrays, [1, 2]
    )


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [8, 4])
def test_token_quantizer_is_the_cpu_kernel_bit_for_bit(symmetric, bits) -> None:
    x = _floats(M, D) + (0 if symmetric else 0.7)
    arrays = [x, np.zeros((M, D), np.int8), np.zeros(M, np.float32)] + ([] if symmetric else [np.zeros(M, np.int32)])
    gpu = gpu_kernels.token_quantize_func(M, D, bits, symmetric, 0.9, bind=False)
    _same_outputs(gpu, token_quantize_func(M, D, bits, symmetric, 0.9), arrays, range(1, len(arrays)))


KVH, DIM, CAP = 2, 16, 12
POS = np.array([4], np.int32)


@pytest.mark.parametrize(
    "bits, symmetric, as_codes",
    [(None, True, True), (4, True, True), (4, False, True), (8, False, False), (4, True, False)],
)
def test_cache_writes_are_the_cpu_kernel_bit_for_bit(bits, symmetric, as_codes) -> None:
    new = _floats(M, KVH, DIM)
    if bits is None or not as_codes:
        arrays = [new, POS, np.full((KVH, CAP, DIM), 5, np.float32)]
    else:
        arrays = [
            new,
            POS,
            np.zeros((KVH, CAP, DIM), np.int8),
            np.ones((KVH, CAP), np.float32),
            np.ones((KVH, CAP), np.float32),
        ]
    args = (M, KVH, DIM, CAP, bits, symmetric, 0.95, as_codes)
    _same_outputs(
        gpu_attention.cache_write_func(*args, bind=False),
        kernels.cache_write_func(*args),
        arrays,
        range(2, len(arrays)),
    )


@pytest.mark.parametrize("quantized", [False, True])
def test_attention_is_the_cpu_kernel_within_float_rounding(quantized) -> None:
    """Scores are summed over the head in another order (the CPU in 16-lane partial sums), so float rounding apart."""
    heads, shift = 4, 128 if quantized else 0
    q = _floats(M, heads, DIM)
    if quantized:
        codes = RNG.integers(-128, 128, (KVH, CAP, DIM)).astype(np.int8)
        scale, zero = (
            (RNG.random((KVH, CAP)) / 20).astype(np.float32),
            RNG.integers(100, 150, (KVH, CAP)).astype(np.float32),
        )
        cache = [codes, scale, zero, codes[:, ::-1].copy(), scale, zero]
    else:
        cache = [_floats(KVH, CAP, DIM), _floats(KVH, CAP, DIM)]
    arrays = [q, POS, *cache, np.zeros((M, heads * DIM), np.float32)]
    args = (M, heads, KVH, DIM, CAP, 0.25, quantized, shift)
    got = _run(gpu_attention.attention_func(*args, bind=False), arrays)[-1]
    want = _run(kernels.attention_func(*args), arrays)[-1]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("m", [1, 6])
@pytest.mark.parametrize("bits, act_zero", [(4, False), (4, True), (8, False), (8, True)])
def test_integer_matmul_is_the_reference_bit_for_bit(m, bits, act_zero) -> None:
    k, n, group = 64, 70, 32
    q = RNG.integers(0, 2**bits, (k, n))
    zero = RNG.integers(0, 2**bits, (k // group, n))
    scale = RNG.random((k // group, n)).astype(np.float32)
    a = RNG.integers(-128, 128, (m, k)).astype(np.int8)
    act_scale, act_zero_points = RNG.random(m).astype(np.float32), RNG.integers(-128, 128, m).astype(np.int32)
    want = int4_matmul_reference(a, q, zero, scale, act_scale, act_zero_points if act_zero else None, group, bits)
    s, z, sums = pack_group_params(q, zero, scale, gpu_matmul.COLUMNS, group, bits)
    args = [a, gpu_matmul.pack_weight(q, bits), s, z, *([sums] if act_zero else []), act_scale]
    args += [act_zero_points] if act_zero else []
    out = np.zeros((m, padded_columns(n, gpu_matmul.COLUMNS)), np.float32)
    func = gpu_matmul.int4_matmul_func(m, k, n, group, act_zero=act_zero, bits=bits, bind=False)
    np.testing.assert_array_equal(_run(func, [*args, out])[-1][:, :n], want)


def test_float_matmul_is_the_dequantized_product_within_float32_rounding() -> None:
    m, k, n, group = 5, 64, 70, 32
    q, zero = RNG.integers(0, 16, (k, n)), RNG.integers(0, 16, (k // group, n))
    scale, x = RNG.random((k // group, n)).astype(np.float32), _floats(m, k)
    weight = ((q.reshape(k // group, group, n) - zero[:, None]) * scale[:, None].astype(np.float64)).reshape(k, n)
    want = x.astype(np.float64) @ weight
    params = pack_float_group_params(zero, scale, gpu_matmul.COLUMNS)
    out = np.zeros((m, padded_columns(n, gpu_matmul.COLUMNS)), np.float32)
    got = _run(
        gpu_matmul.int4_float_matmul_func(m, k, n, group, bind=False), [x, gpu_matmul.pack_weight(q), *params, out]
    )
    np.testing.assert_allclose(got[-1][:, :n], want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_gemv_is_the_cpu_kernel_bit_for_bit(dtype) -> None:
    k, n = 40, 100
    weight, x = _floats(k, n), _floats(1, k)
    out = np.zeros((1, kernels.gemv_columns(n)), np.float32)
    if dtype == "int8":
        codes, scale = kernels.quantize_gemv_weight(weight)
        gpu_args, cpu_args = (
            [gpu_matmul.pack_gemv_weight(codes, dtype), scale],
            [kernels.pack_gemv_weight(codes, dtype), scale],
        )
    else:
        gpu_args, cpu_args = [gpu_matmul.pack_gemv_weight(weight, dtype)], [kernels.pack_gemv_weight(weight, dtype)]
    got = _run(gpu_matmul.gemv_func(k, n, dtype, bind=False), [x, *gpu_args, out])[-1]
    np.testing.assert_array_equal(got, _run(kernels.gemv_func(k, n, dtype), [x, *cpu_args, out])[-1])


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_words_hold_the_codes_a_thread_unpacks(bits) -> None:
    k, n = 16, 5
    q = RNG.integers(0, 2**bits, (k, n))
    words = gpu_matmul.pack_weight(q, bits)
    assert words.dtype == np.int32 and words.shape == (k * bits // 32, gpu_matmul.COLUMNS)
    data = words.view(np.uint8).reshape(words.shape[0], gpu_matmul.COLUMNS, 4)  # byte t of each word
    if bits == 4:
        unpacked = np.concatenate([data & 15, data >> 4], axis=2)  # [k8, n, 8]: low nibbles k 0..3, high 4..7
    else:
        unpacked = data.view(np.int8).astype(np.int32) + 128
    np.testing.assert_array_equal(unpacked.transpose(0, 2, 1).reshape(k, -1)[:, :n], q)
    assert not unpacked.transpose(0, 2, 1).reshape(k, -1)[:, n:].any() or bits == 8


# the forms the whole step is checked in: rotations with per-head transforms and a 4-bit KV cache of codes,
# asymmetric activations with weight groups, and 4-bit weights with float activations (groups padded, then cut)
STEP_FORMS = ["rotate-w4a4kv4", "w4a8-g32-asym", "w4a16-g48"]


@pytest.mark.parametrize("form", STEP_FORMS)
def test_the_cuda_step_on_this_cpu_decodes_as_the_reference(tiny_llama_artifact, form) -> None:
    decoder = read_decoder(ir.load(str(tiny_llama_artifact(form))))
    executable = build_decode(decoder, 12, GPU_FLAVOUR, host_target(2), chunk=4, bind=False)
    session, cache = DecodeSession(executable, cache_spec(decoder, 12), 4), reference.Cache.empty(decoder)
    ids = np.random.default_rng(3).integers(0, decoder.vocab, 7)
    want, cache = reference.step(decoder, ids[:5], cache)
    tolerance = 1e-5 * float(np.abs(want).max())
    np.testing.assert_allclose(session.prefill(ids[:5]), want[-1], rtol=0, atol=tolerance)
    for token in ids[5:]:
        want, cache = reference.step(decoder, np.array([token]), cache)
        np.testing.assert_allclose(session.step(int(token)), want[0], rtol=0, atol=1e-5 * float(np.abs(want).max()))


def _cuda_source(module) -> str:
    if module.kind == "cuda":
        return module.inspect_source("cuda")
    return "".join(_cuda_source(sub) for sub in module.imports)


@pytest.fixture(scope="module")
def cuda_library(tiny_llama_artifact):
    return artifact.compile_decoder(tiny_llama_artifact("rotate-w4a4kv4"), "cuda:sm_80", capacity=12, chunk=4)


def _kernels(source: str) -> dict[str, str]:
    pattern = r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{(.*?)\n\}"
    return dict(re.findall(pattern, source, flags=re.S))


def test_cuda_matmuls_use_dp4a_and_products_are_rounded(cuda_library) -> None:
    bodies = _kernels(_cuda_source(cuda_library.executable.mod))
    matmuls = {name: body for name, body in bodies.items() if name.startswith("mm_")}
    assert matmuls and all("__dp4a(" in body for body in matmuls.values())
    assert all("& 252645135" in body for body in matmuls.values())  # nibbles masked in registers: 0x0F0F0F0F
    quantizers = [body for name, body in bodies.items() if name.startswith("tq_")]
    assert quantizers and any("__fmul_rn(" in body for body in quantizers)
    assert not any(re.search(r"\bfmaf?\(", body) for body in bodies.values())
    meta = cuda_library.metadata
    assert (meta["kind"], meta["kernels"], meta["arch"]) == ("cuda", "cuda", "sm_80")


def test_cuda_library_saves_and_says_it_needs_a_gpu(cuda_library, tmp_path) -> None:
    import tvm

    paths = artifact.save(cuda_library, tmp_path)
    assert [p.name for p in paths] == [artifact.LIBRARY, artifact.METADATA] and paths[0].stat().st_size > 0
    assert json.loads(paths[1].read_text())["kind"] == "cuda"
    if tvm.cuda(0).exist:
        pytest.skip("a GPU is here: the library loads")
    with pytest.raises(RuntimeError, match=r"built for a CUDA GPU \(sm_80\): none here"):
        artifact.load(tmp_path)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_generated_cuda_compiles_with_nvcc(cuda_library, tmp_path) -> None:
    source = tmp_path / "decoder.cu"
    source.write_text(_cuda_source(cuda_library.executable.mod))
    command = ["nvcc", "-arch=sm_80", "-cubin", "-o", str(tmp_path / "decoder.cubin"), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_gpus_without_dp4a_are_refused(tiny_llama_artifact) -> None:
    with pytest.raises(UnsupportedDecoder, match="sm_61 or later"):
        artifact.compile_decoder(tiny_llama_artifact("rotate-w4a4kv4"), "cuda:sm_52", capacity=12, chunk=4)
