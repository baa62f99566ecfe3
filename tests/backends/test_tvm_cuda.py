"""CUDA code generation without a GPU: the dp4a GEMM kernel compiles for sm_80 with `__dp4a` (exact int8
dot products) in its inner loop; an integer-only tiny encoder compiles whole, exports as a library with
its metadata, and — where nvcc is installed — its CUDA C compiles to a cubin. Running needs a GPU
(docs/tvm-backend.md); the shifted-bias identity the dp4a GEMM relies on is tested here in NumPy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import onnx_ir as ir
import pytest

import qcompile
from qcompile import PipelineContext
from qcompile.backends import tvm as qtvm
from qcompile.backends.tvm.kernels.int_gemm_gpu import pack_weight_t, shifted_bias
from qcompile.passes.lowering.intonly import IntOnlyPass
from qcompile.testing.builders import tiny_encoder


def _cuda_source(module) -> str:
    if module.kind == "cuda":
        return module.inspect_source("cuda")
    return "".join(_cuda_source(sub) for sub in module.imports)


def test_dp4a_gemm_kernel_compiles_for_cuda() -> None:
    import tvm

    from qcompile.backends.tvm.kernels.int_gemm_gpu import dp4a_gemm_func, schedule_dp4a_gemm
    from qcompile.backends.tvm.target import parse_target

    lib = tvm.tirx.build(schedule_dp4a_gemm(dp4a_gemm_func(70, 40, 24, "uint8")), target=parse_target("cuda:sm_80"))
    source = _cuda_source(lib)
    bodies = dict(
        re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{(.*?)\n\}", source, flags=re.S)
    )
    assert any("__dp4a(" in body and "__shared__" in body for body in bodies.values())


@pytest.fixture(scope="module")
def compiled():
    tiny = tiny_encoder()
    context = PipelineContext(calibration=tiny.calibration, progress=False)
    qcompile.run_passes(tiny.model, "w8a8", context=context)
    IntOnlyPass(context=context)(tiny.model)
    return qtvm.compile_int_model(ir.serde.serialize_model(tiny.model), "cuda:sm_80", {"x": tiny.feeds["x"].shape})


def test_cuda_gemms_use_dp4a(compiled) -> None:
    source = _cuda_source(compiled.executable.mod)
    bodies = re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\) \{(.*?)\n\}", source, flags=re.S)
    gemms = [body for name, body in bodies if name.startswith("dp4a_gemm")]
    assert len(gemms) >= 2 and any("__dp4a(" in body for body in gemms)
    assert compiled.metadata["kind"] == "cuda" and '"arch":"sm_80"' in compiled.metadata["target"].replace(" ", "")


def test_cuda_library_exports(compiled, tmp_path) -> None:
    paths = qtvm.save(compiled, tmp_path)
    assert (tmp_path / "model.so").stat().st_size > 0
    assert json.loads((tmp_path / "model.tvm.json").read_text())["kind"] == "cuda"
    assert sorted(p.name for p in paths) == ["model.so", "model.tvm.json"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_generated_cuda_compiles_with_nvcc(compiled, tmp_path) -> None:
    source = tmp_path / "kernels.cu"
    source.write_text(_cuda_source(compiled.executable.mod))
    result = subprocess.run(
        ["nvcc", "-arch=sm_80", "-cubin", "-o", str(tmp_path / "k.cubin"), str(source)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_shifted_bias_identity_and_packing() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 19))
    w = rng.integers(-128, 128, (19, 7))
    bias = rng.integers(-1000, 1000, 7)
    shifted = (x - 128).astype(np.int8).astype(np.int64) @ w + shifted_bias(w, bias, "uint8")
    np.testing.assert_array_equal(shifted, x @ w + bias)
    packed = pack_weight_t(w)
    assert packed.shape == (64, 32) and packed.dtype == np.int8
    np.testing.assert_array_equal(packed[:7, :19], w.T)
    assert not packed[7:].any() and not packed[:, 19:].any()
