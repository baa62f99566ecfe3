"""TVM targets: the host CPU as LLVM sees it, and CUDA with the host as its host target.

Targets are built from dicts (apache-tvm 0.27 rejects strings such as "llvm -mcpu=native"). The CPU is
detected through TVM's own LLVM (`llvm_get_system_cpu`, e.g. "znver3"), never hard-coded, and written
into the artifact by the caller so a library is not loaded on a CPU it was not built for. The triple is
normalized to `<arch>-linux-gnu` (the wheel's LLVM reports its conda build triple).
"""

from __future__ import annotations

import os

__all__ = ["host_target", "cuda_target", "split_target", "parse_target", "cpu_features", "TARGET_KINDS"]

TARGET_KINDS = ("llvm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"


def _triple(system_triple: str) -> str:
    parts = system_triple.split("-")
    return f"{parts[0]}-linux-gnu" if "linux" in system_triple else system_triple


def host_target(threads: int | None = None):
    """The host CPU as an LLVM target with `threads` cores (default: every core), all its features on.

    Float a·b + c is kept from contracting into an FMA by the pipeline's `fence.FenceFloatProducts`,
    not by turning the `fma` feature off: LLVM's AVX-512 features imply FMA, so that would also turn
    AVX-512 off."""
    from tvm.target import Target, codegen

    return Target(
        {
            "kind": "llvm",
            "mtriple": _triple(codegen.llvm_get_system_triple()),
            "mcpu": codegen.llvm_get_system_cpu(),
            "num-cores": int(threads or os.cpu_count() or 1),
        }
    )


def cuda_target(arch: str = DEFAULT_CUDA_ARCH, threads: int | None = None):
    """CUDA for compute capability `arch` (e.g. "sm_90"), host code for this CPU."""
    from tvm.target import Target

    if not (arch.startswith("sm_") and arch[3:].isdigit()):
        raise ValueError(f"CUDA arch must look like 'sm_90', got {arch!r}")
    return Target({"kind": "cuda", "arch": arch}, host=host_target(threads))


def split_target(text: str) -> tuple[str, str | None]:
    """'llvm' → ('llvm', None); 'cuda' / 'cuda:sm_80' → ('cuda', arch). Anything else is a ValueError.
    Imports no TVM, so the CLI checks its --target before any work."""
    kind, _, arch = text.partition(":")
    if kind == "llvm" and not arch:
        return kind, None
    if kind == "cuda" and (not arch or (arch.startswith("sm_") and arch[3:].isdigit())):
        return kind, arch or DEFAULT_CUDA_ARCH
    raise ValueError(f"unknown target {text!r}; expected one of: llvm, cuda, cuda:sm_XX")


def parse_target(text: str, threads: int | None = None):
    """The TVM target for `split_target`'s text."""
    kind, arch = split_target(text)
    return host_target(threads) if kind == "llvm" else cuda_target(arch, threads)


def cpu_features(target) -> frozenset[str]:
    """LLVM feature names of an LLVM target's CPU (e.g. 'avx2', 'avxvnni', 'avx512vnni')."""
    from tvm.target import codegen

    with target:
        return frozenset(str(f) for f in codegen.llvm_get_cpu_features())
