"""Compile a static integer-only model into a TVM Relax executable (`tvm.compile`) for a CPU or CUDA.

    model.int.onnx ─ static_model ─→ onnx_ir (static shapes, shape arithmetic folded)
                   ─ to_relax ─────→ Relax: standard ops via TVM's ONNX importer, one TE kernel per
                                      qcompile function, the GEMM pre-scheduled with its epilogue
                   ─ pipeline ─────→ legalize, FoldConstant, FuseOps/FuseTIR (casts and requantizes fuse
                                      with their neighbours), dlight schedules for the rest, float
                                      products fenced against FMA contraction, VM lowering

The schedule step applies, per unscheduled PrimFunc, the first rule that matches: our `Elementwise`
rule, our `FloatMatmul` (float models only), dlight's CPU `Reduction` rule (row-wise softmax and
LayerNorm) and `GEMV`. `unscheduled(mod)`
names what no rule matched (they still run, serially), so a slow model says why.
"""

from __future__ import annotations

__all__ = ["relax_pipeline", "compile_relax", "unscheduled", "SCHEDULED"]

SCHEDULED = "tirx.is_scheduled"  # the PrimFunc attribute dlight sets and skips on


def _schedule_pass(target):
    from tvm.s_tir import dlight

    from qcompile.backends.tvm.schedules.elementwise import Elementwise
    from qcompile.backends.tvm.schedules.float_matmul import FloatMatmul

    if target.kind.name == "cuda":
        return dlight.ApplyDefaultSchedule(
            dlight.gpu.Matmul(),
            dlight.gpu.GEMV(),
            dlight.gpu.Reduction(),
            dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback(),
        )
    return dlight.ApplyDefaultSchedule(Elementwise(), FloatMatmul(), dlight.cpu.Reduction(), dlight.cpu.GEMV())


def _stages(target):
    """TVM's per-target pass lists (imported from the backend modules: 0.27's relax.pipeline dispatcher
    looks dataflow_lower_passes up on a package that does not export it)."""
    if target.kind.name == "cuda":
        from tvm.relax.backend.cuda import pipeline
    else:
        from tvm.relax.backend.cpu_generic import pipeline
    return pipeline


def relax_pipeline(target, exact_float: bool = True):
    """The backend's Relax pipeline: TVM's CPU/CUDA pipeline with the schedule step after fusion.
    exact_float: float products are fenced (`fence.FenceFloatProducts`: LLVM's fence on CPUs, `__fmul_rn` on CUDA)
    so a·b + c rounds twice, as ONNX Runtime does; False lets the compiler contract them into FMAs (float models:
    nothing to match)."""
    import tvm

    from qcompile.backends.tvm.fence import FenceFloatProducts

    stages = _stages(target)

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            passes = (
                stages.library_dispatch_passes(target)
                + stages.legalize_passes(target)
                + [_schedule_pass(target)]
                + ([FenceFloatProducts(target.kind.name)] if exact_float else [])
                + stages.dataflow_lower_passes(target)
                + stages.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_relax(mod, target, exact_float: bool = True):
    """`tvm.compile` of a Relax module with `relax_pipeline`."""
    import tvm

    return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, exact_float))


def unscheduled(mod, target) -> list[str]:
    """Names of the PrimFuncs of `mod` (after fusion and scheduling) that no rule scheduled."""
    import tvm
    from tvm import tirx

    stages = _stages(target)
    with target:
        lowered = tvm.transform.Sequential(stages.legalize_passes(target) + [_schedule_pass(target)])(mod)
    return sorted(
        gv.name_hint
        for gv, func in lowered.functions.items()
        if isinstance(func, tirx.PrimFunc) and not func.attrs.get(SCHEDULED, False)
    )
