"""TVM targets: the host CPU detected (not hard-coded), CUDA with a host, one-line errors for bad names."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.backends.tvm.target import cpu_features, cuda_target, host_target, parse_target


def test_host_target_names_the_detected_cpu_and_threads() -> None:
    from tvm.target import codegen

    target = host_target(threads=2)
    assert target.kind.name == "llvm"
    assert str(target.attrs["mcpu"]) == codegen.llvm_get_system_cpu()
    assert int(target.attrs["num-cores"]) == 2
    assert str(target.attrs["mtriple"]).endswith("linux-gnu") and "conda" not in str(target.attrs["mtriple"])


def test_cpu_features_list_the_vector_extensions() -> None:
    features = cpu_features(host_target(threads=1))
    assert "sse2" in features  # every x86-64 CPU; the kernels branch on avx2 / avxvnni / avx512vnni


def test_parse_target_kinds() -> None:
    assert parse_target("llvm", threads=1).kind.name == "llvm"
    cuda = parse_target("cuda:sm_80", threads=1)
    assert cuda.kind.name == "cuda" and str(cuda.attrs["arch"]) == "sm_80" and cuda.host.kind.name == "llvm"
    assert str(parse_target("cuda", threads=1).attrs["arch"]) == "sm_90"


@pytest.mark.parametrize("text", ["llvm -mcpu=native", "vulkan", "cuda:90", "llvm:znver3"])
def test_parse_target_rejects_unknown_names(text) -> None:
    with pytest.raises(ValueError, match="target|arch"):
        parse_target(text, threads=1)


def test_cuda_target_rejects_a_malformed_arch() -> None:
    with pytest.raises(ValueError, match="sm_90"):
        cuda_target("ampere")


def test_fenced_float_products_do_not_contract_into_fma() -> None:
    """a·b − c must round twice, as ONNX Runtime does (the input quantizer and output dequantization):
    TVM's LLVM contracts it on an FMA CPU (x·x − fl(x·x) then yields the rounding error of x·x), the
    fence keeps the product apart (exactly 0)."""
    import tvm
    from tvm import te

    from qcompile.backends.tvm.fence import fence_float_products

    x = te.placeholder((64,), "float32", name="x")
    c = te.placeholder((64,), "float32", name="c")
    func = te.create_prim_func([x, c, te.compute((64,), lambda i: x[i] * x[i] - c[i], name="y")])
    values = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    squares = values * values  # rounded: x·x − c is 0 rounded twice, the rounding error of x·x fused

    def run(lib):
        out = tvm.runtime.tensor(np.ones(64, np.float32))
        lib["main"](tvm.runtime.tensor(values), tvm.runtime.tensor(squares), out)
        return out.numpy()

    target = host_target(1)
    fenced = tvm.tirx.build(fence_float_products(func), target=target)
    assert "vfmadd" not in fenced.inspect_source("asm")
    np.testing.assert_array_equal(run(fenced), np.zeros(64, np.float32))
    if "fma" in cpu_features(target):
        contracted = tvm.tirx.build(func, target=target)
        assert "vfm" in contracted.inspect_source("asm") and np.count_nonzero(run(contracted)) > 32


def test_fence_leaves_integer_products_alone() -> None:
    from tvm import te

    from qcompile.backends.tvm.fence import FENCE, fence_float_products

    x = te.placeholder((8,), "int32", name="x")
    func = te.create_prim_func([x, te.compute((8,), lambda i: x[i] * 3 + 1, name="y")])
    assert FENCE not in fence_float_products(func).script()


def test_cuda_products_are_rounded_on_their_own() -> None:
    """On CUDA a·b − c becomes __fmul_rn(a, b) − c (NVCC would contract it into an FMA); integer products and
    half-precision ones are left alone."""
    from tvm import te

    from qcompile.backends.tvm.fence import round_float_products

    x = te.placeholder((64,), "float32", name="x")
    c = te.placeholder((64,), "float32", name="c")
    n = te.placeholder((64,), "int32", name="n")
    h = te.placeholder((64,), "float16", name="h")
    outputs = [
        te.compute((64,), lambda i: x[i] * x[i] - c[i], name="y"),
        te.compute((64,), lambda i: n[i] * 3 + 1, name="z"),
        te.compute((64,), lambda i: h[i] * h[i], name="w"),
    ]
    script = round_float_products(te.create_prim_func([x, c, n, h, *outputs])).script()
    assert script.count("__fmul_rn") == 1 and "__dmul_rn" not in script
    assert "n[v_i] * 3" in script and "h[v_i] * h[v_i]" in script


def test_tvm_thread_pool_leaves_the_process_affinity_alone() -> None:
    """A pinned pool would squeeze ONNX Runtime's threads, created later in the process, onto one core."""
    import os
    import subprocess
    import sys

    code = (
        "import os, qcompile.backends.tvm, tvm; before = os.sched_getaffinity(0); "
        "tvm.get_global_func('runtime.config_threadpool')(0, 2); print(before == os.sched_getaffinity(0))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().splitlines()[-1] == "True"


def test_tvm_pool_runs_on_every_available_core() -> None:
    """TVM's own default sizes the pool from its idea of physical cores (1 on a 2-vCPU VM)."""
    import os
    import subprocess
    import sys

    code = "import os, qcompile.backends.tvm as q; print(q.pool_threads() == len(os.sched_getaffinity(0)))"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("user_setting, expected", [(None, 1), ("2", 2)], ids=["ours", "user's"])
def test_configure_pool_sizes_the_pool_unless_the_user_did(user_setting, expected) -> None:
    import os
    import subprocess
    import sys

    code = "import qcompile.backends.tvm as q; q.configure_pool(1); print(q.pool_threads())"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if user_setting is not None:
        env["TVM_NUM_THREADS"] = user_setting
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert int(out.strip().splitlines()[-1]) == expected
