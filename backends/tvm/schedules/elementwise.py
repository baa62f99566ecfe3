"""Schedule rule for injective PrimFuncs (casts, requantize, transposes, their fused chains) on a CPU.

Every producer block is inlined into the last one (`dlight.try_inline`), whose loops are fused into one
and split as [chunks ∥ cores] × [vector lanes]: the outer part parallel over the cores, the inner one
vectorized (32 bytes of the output's dtype, 8 lanes at least); an output under `SERIAL_BYTES` is only
vectorized, on the calling thread. Rules that do not match return None, so
`ApplyDefaultSchedule` tries the next one; nothing here changes what a kernel computes.
"""

from __future__ import annotations

import numpy as np
from tvm.s_tir.dlight import ScheduleRule

__all__ = ["Elementwise"]

VECTOR_BYTES = 32
# outputs smaller than this stay on the calling thread (vectorized): waking the pool for them costs more than the
# loop (a decode step's residual adds and slices are 2 KB)
SERIAL_BYTES = 16384


class Elementwise(ScheduleRule):
    def apply(self, func, target, tunable):
        from tvm import s_tir, tirx
        from tvm.s_tir.dlight import normalize_prim_func, try_inline

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not infos or any(not info.is_injective() for info in infos):
            return None
        remaining = try_inline(sch, infos)
        if len(remaining) != 1:
            return None
        block = remaining[0].block_rv
        loops = sch.get_loops(block)
        if not loops:
            return sch
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = int(sch.get(fused).extent)
        dtype_bytes = np.dtype(str(sch.get(block).writes[0].source.dtype)).itemsize
        lanes = max(8, VECTOR_BYTES // dtype_bytes)
        if extent * dtype_bytes < SERIAL_BYTES:  # a parallel launch costs more than the loop
            if extent >= lanes and extent % lanes == 0:
                sch.vectorize(sch.split(fused, [None, lanes])[1])
            return sch
        if extent >= 4 * lanes and extent % lanes == 0:
            outer, inner = sch.split(fused, [None, lanes])
            sch.parallel(outer)
            sch.vectorize(inner)
        else:
            sch.parallel(fused)
        return sch
