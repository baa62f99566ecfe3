"""Thread grids for the CUDA kernels written as TVMScript loops: one thread per item of a phase, in blocks of
`THREADS`, or (bind=False) the same loops serial, so the kernel builds and runs on a CPU for its tests."""

from __future__ import annotations

__all__ = ["THREADS", "grid", "thread_scope"]

THREADS = 256  # threads per block of every phase


class grid:  # noqa: N801  (used like a loop constructor)
    """Thread loops of a phase over `count` items: `for bx in g.blocks: for tx in g.threads: if g.valid(bx, tx)`,
    item `g.index(bx, tx)`. bind: blockIdx.x × threadIdx.x (CUDA); else serial loops (the same kernel on a CPU)."""

    def __init__(self, count: int, bind: bool):
        self.count, self.width, self.bind = count, min(THREADS, count), bind

    @property
    def blocks(self):
        from tvm.script import tirx as T

        extent = -(-self.count // self.width)
        return T.thread_binding(extent, thread="blockIdx.x") if self.bind else T.serial(extent)

    @property
    def threads(self):
        from tvm.script import tirx as T

        return T.thread_binding(self.width, thread="threadIdx.x") if self.bind else T.serial(self.width)

    def index(self, bx, tx):
        return bx * self.width + tx

    def valid(self, bx, tx):
        return bx * self.width + tx < self.count


def thread_scope(bind: bool) -> str:
    """Per-thread scratch: registers on the GPU; a plain buffer on the CPU."""
    return "local" if bind else "global"
