"""Schedule rule for float matmuls on a CPU (dlight's CPU rules have none): what makes the "TVM FP32"
baseline of benchmarks/tvm_latency.py a float model through the same pipeline rather than unscheduled
loops. Integer models have no float matmul, so it never touches them.

A PrimFunc matches when it is one float reduction block over loops (*batch, i, j, k) — TVM's legalized
`matmul`, after FuseOps possibly followed by injective epilogue blocks (bias, GELU, residual add). M and
N are padded to whole register tiles (`pad_einsum`); the tile is `rows` × (`blocks` · lanes)
accumulators (lanes = one vector register of the dtype), k runs outside it, the tile's columns are
vectorized and its rows unrolled, the tiles of all batches fused and parallel over the cores, and the
epilogues inlined into the tile's write-back where they can be. Nothing changes what is computed.
"""

from __future__ import annotations

from tvm.s_tir.dlight import ScheduleRule

__all__ = ["FloatMatmul"]


class FloatMatmul(ScheduleRule):
    def __init__(self, rows: int = 6, blocks: int = 2) -> None:
        self.rows, self.blocks = rows, blocks

    def apply(self, func, target, tunable):
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight import normalize_prim_func
        from tvm.s_tir.dlight.base import try_inline_contiguous_spatial

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        infos = try_inline_contiguous_spatial(sch, infos)
        if infos is None or infos[0].is_injective() or not all(info.is_injective() for info in infos[1:]):
            return None
        main = infos[0]
        kinds = main.dom_kind()
        block = main.block_rv
        dtype = str(sch.get(block).writes[0].source.dtype)
        if not dtype.startswith("float") or len(kinds) < 3 or kinds[-1] != "R" or "R" in kinds[:-1]:
            return None
        loops = sch.get_loops(block)
        extents = [sch.get(loop).extent for loop in loops]
        if not all(isinstance(e, tirx.IntImm) for e in extents):
            return None
        m, n = int(extents[-3]), int(extents[-2])
        lanes = _lanes(target, dtype)
        rows, width = self.rows, self.blocks * lanes
        if m % rows or n % width:
            sch.pad_einsum(block, [1] * (len(loops) - 3) + [rows if m % rows else 1, width if n % width else 1, 1])
        local = sch.cache_write(block, 0, "local")
        *batch, i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, [None, rows])
        jo, jb, ji = sch.split(j, [None, self.blocks, lanes])
        sch.reorder(*batch, io, jo, k, ii, jb, ji)
        sch.vectorize(ji)
        sch.unroll(jb)
        sch.unroll(ii)
        sch.reverse_compute_at(local, jo)
        sch.vectorize(sch.get_loops(local)[-1])
        sch.parallel(sch.fuse(*batch, io, jo))
        init = sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(init)[-1])
        for info in infos[1:]:  # epilogues: into the tile's write-back, else a parallel loop of their own
            try:
                sch.reverse_compute_inline(info.block_rv)
            except Exception:  # noqa: BLE001  (TVM raises ScheduleError subclasses by case)
                rest = sch.get_loops(info.block_rv)
                if rest:
                    sch.parallel(sch.fuse(*rest[:-1]) if len(rest) > 1 else rest[0])
        return sch


def _lanes(target, dtype: str) -> int:
    """Elements of `dtype` in one vector register of the target (zmm with AVX-512, else ymm)."""
    from qcompile.backends.tvm.target import cpu_features

    bits = 512 if "avx512f" in cpu_features(target) else 256
    return bits // int("".join(ch for ch in dtype if ch.isdigit()) or 32)
