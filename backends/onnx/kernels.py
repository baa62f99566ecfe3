"""Which QDQ form runs fast *and* exactly on this CPU's ONNX Runtime integer kernels.

ONNX Runtime fuses ``DequantizeLinear → MatMul`` into MatMulIntegerToFloat / QLinearMatMul, whose MLAS kernel
is picked by the operands' signedness. With uint8 weights (qcompile's symmetric codes stored with zero point
128) it runs the u8×u8 kernel, which on x86 widens to 16 bits (vpmaddwd): exact but slow. With int8 weights it
runs the u8×s8 kernel:

* on CPUs with VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``) that kernel multiplies and sums four
  u8·s8 products straight into int32 (vpdpbusd / tdpbusd): exact and much faster (DINOv2-S's whole QDQ
  model: 0.86× → 0.49× of FP32 latency, benchmarks/results/qdq_speed.md);
* on AVX2/AVX-512 CPUs without VNNI it uses vpmaddubsw, which saturates the int16 sum of two u8·s8 products
  (255·127·2 > 32767) with full-range weights: results would differ from the QDQ model's arithmetic. ONNX
  Runtime's own quantizer answers that with 7-bit weights (reduce_range); qcompile keeps its 8-bit weights
  and the uint8 form there instead.

`int8_weights_exact` is the choice; `cpu_flags` reads the running CPU's (Linux /proc/cpuinfo; elsewhere
none are known and the uint8 form, exact everywhere, is kept).
"""

from __future__ import annotations

from collections.abc import Iterable

from qcompile.runtime.cpu import cpu_flags

__all__ = ["cpu_flags", "int8_weights_exact", "EXACT_INT8_FLAGS"]

EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_weights_exact(flags: Iterable[str] | None = None) -> bool:
    """Whether ONNX Runtime's u8×s8 MatMul kernels are exact for full-range int8 weights on a CPU with
    `flags` (default: this CPU's): True with VNNI or AMX int8 instructions, False otherwise."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return bool(EXACT_INT8_FLAGS & flags)
