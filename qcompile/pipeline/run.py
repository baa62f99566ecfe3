"""`run_passes`: the one call that turns a `--passes` string into a checked, instrumented run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.pipeline.context import CalibrationData, PipelineContext
from qcompile.pipeline.instruments import CheckNumerics, Instrument, VerifyIR
from qcompile.pipeline.manager import PassManager
from qcompile.pipeline.pass_base import Pass
from qcompile.pipeline.registry import PassSpec, build_pass, expand, parse_pass_list

__all__ = ["run_passes", "plan_passes", "plan_for_any_model", "CHECK_SAMPLES"]

CHECK_SAMPLES = 2  # samples of the first calibration batch used by CheckNumerics


def plan_passes(
    passes: str | Sequence[PassSpec], context: PipelineContext | None = None, decoder: bool = False
) -> tuple[PipelineContext, list[Pass]]:
    """Parse, expand and build the steps of `passes` (the `--passes` syntax, or the `PassSpec`s of a recipe
    file) once, all sharing `context`,
    which the caller may fill later (calibration data, seed, threads): passes read it when they run.
    `decoder`: recipes expand to their decoder-LLM steps. The CLI validates a pass list with this and its
    job runs the very objects it built (re-planned when the model turns out to be a decoder LLM)."""
    context = context or PipelineContext()
    if isinstance(passes, str):
        specs = expand(parse_pass_list(passes), decoder) if passes.strip() else []
    else:
        specs = expand(list(passes), decoder)
    return context, [build_pass(spec, context) for spec in specs]


def plan_for_any_model(passes: str | Sequence[PassSpec]) -> tuple[PipelineContext, list[Pass], bool]:
    """`plan_passes` before the model is known: the plan for encoders, or, when the list is valid only with
    recipes' decoder-LLM steps (`w4a4:act_clip_ratio=0.8`), that plan; the bool says which. A list valid for
    neither raises the encoder plan's error."""
    try:
        return (*plan_passes(passes), False)
    except (InputError, ValueError) as error:
        try:
            return (*plan_passes(passes, decoder=True), True)
        except (InputError, ValueError):
            raise error from None


def run_passes(
    model: ir.Model,
    passes: str | Sequence[Pass],
    *,
    calibration: CalibrationData | None = None,
    context: PipelineContext | None = None,
    check_numerics: bool = True,
    instruments: Sequence[Instrument] = (),
) -> list[dict[str, Any]]:
    """Run the passes named in `passes` (the CLI's `--passes` syntax, or pass objects `plan_passes` built
    with this `context`) on `model` in place.

    Returns one record per pass (name, numerics, modified, seconds, stats, and the numeric check's
    `max_abs_err` or `sqnr_db`/`per_layer`). VerifyIR always runs; CheckNumerics runs when there is
    calibration data and `check_numerics` is set; `instruments` run after those (e.g. the report's
    `RecordRanges`).
    """
    context = context or PipelineContext(calibration=calibration)
    if calibration is not None:
        context.calibration = calibration
    if isinstance(passes, str):
        _, pass_objects = plan_passes(passes, context)
    else:
        pass_objects = list(passes)
        stray = [p.pass_name for p in pass_objects if getattr(p, "context", context) is not context]
        if stray:
            raise ValueError(f"passes {', '.join(stray)} were built with another PipelineContext than the one given")
    checks: list[Instrument] = [VerifyIR()]
    if check_numerics and context.calibration is not None:
        # Cut the batch only when every input's batch dimension is dynamic (a fixed one must be fed whole).
        fixed_batch = any(
            v.shape is not None and len(v.shape) > 0 and isinstance(v.shape[0], int) for v in model.graph.inputs
        )
        feeds = context.calibration.first_batch(None if fixed_batch else CHECK_SAMPLES)
        checks.append(CheckNumerics(feeds, threads=context.threads))
    manager = PassManager(pass_objects, [*checks, *instruments])
    manager.run(model)
    return manager.records
