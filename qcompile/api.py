"""`qcompile.compile`: the CLI's job as one Python call, for build pipelines.

    result = qcompile.compile("model.onnx", passes="repq,intonly", output_dir="out", target="llvm",
                              calibration=[{"input": batch}, ...])
    result.artifact          # Path of model.int.onnx (model.qdq.onnx without intonly)
    result.report["metric"]  # the same dictionary as out/report.json
    result.report_html       # Path of out/report.html

It runs exactly what `qcompile MODEL --passes ... -o OUTDIR` runs (`qcompile.job.run_job`) and writes the
same files, so a pipeline and a person at a terminal get the same artifact and report. Errors are the
CLI's: `InputError` for bad input (its message is the CLI's one line), `PassFailure` when a pass breaks
its declared numerics.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qcompile.errors import InputError

__all__ = ["compile", "Result"]


@dataclasses.dataclass(frozen=True)
class Result:
    """What a run wrote: the output folder, the artifact, every file, and the report dictionary."""

    output_dir: Path
    artifact: Path
    files: tuple[Path, ...]
    report: dict[str, Any]

    @property
    def report_json(self) -> Path:
        return self.output_dir / "report.json"

    @property
    def report_html(self) -> Path | None:
        path = self.output_dir / "report.html"
        return path if path in self.files else None

    @property
    def library(self) -> Path | None:
        """The TVM library (`model.so`; `decoder.so` for a decoder LLM) when `target` was given and it was built."""
        return next((path for path in self.files if path.suffix == ".so"), None)


def _steps(passes, recipe):
    from qcompile.pipeline.recipe_file import load_recipe_file, recipe_text
    from qcompile.pipeline.registry import PassSpec

    if (passes is None) == (recipe is None):
        raise InputError("give passes= or recipe=, exactly one")
    if recipe is not None:
        specs = load_recipe_file(recipe)
        return specs, recipe_text(specs)
    if isinstance(passes, str):
        return passes, passes
    specs = [spec if isinstance(spec, PassSpec) else PassSpec(str(spec)) for spec in passes]
    return specs, recipe_text(specs)


def _task(model, input_shapes, calibration, evaluation):
    import onnx_ir as ir

    from qcompile.job import resolve_model
    from qcompile.zoo.base import ZooModel
    from qcompile.zoo.generic import RandomInputTask
    from qcompile.zoo.user_data import UserDataTask, as_calibration

    calibration = as_calibration(calibration) if calibration is not None else None
    evaluation = as_calibration(evaluation) if evaluation is not None else None
    given = evaluation or calibration
    if input_shapes is None and given is not None:  # one sample's shapes, from the user's own batches
        input_shapes = {name: (1, *array.shape[1:]) for name, array in given.first_batch(1).items()}
    if isinstance(model, ir.Model):
        task = RandomInputTask(model, model.graph.name or "model", input_shapes=input_shapes)
    elif isinstance(model, (str, os.PathLike, ZooModel)):
        task = resolve_model(model if isinstance(model, ZooModel) else os.fspath(model), input_shapes)
    else:
        raise InputError(
            f"model must be a path, 'zoo:NAME', an onnx_ir.Model or a zoo entry, got {type(model).__name__}"
        )
    if calibration is None and evaluation is None:
        return task, None
    return UserDataTask(task, calibration, evaluation), calibration


def _is_decoder(task) -> bool:
    """A decoder LLM (whose --target build is its decode steps, from model.qdq.onnx): a perplexity task, or a model
    with a language model's signature."""
    from qcompile.frontends.model_kind import is_decoder_llm
    from qcompile.zoo.perplexity import PerplexityTask

    return isinstance(task, PerplexityTask) or is_decoder_llm(task.load())


def compile(  # noqa: A001 - the verb users expect, as in torch.compile
    model: str | os.PathLike | Any,
    passes: str | Sequence[Any] | None = None,
    output_dir: str | os.PathLike = "qcompile-out",
    *,
    recipe: str | os.PathLike | None = None,
    calibration: Any | Iterable[dict] | None = None,
    evaluation: Any | Iterable[dict] | None = None,
    target: str | None = None,
    calib_samples: int = 32,
    eval_samples: int | None = None,
    seed: int = 0,
    threads: int = 2,
    baselines: bool = True,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    force: bool = False,
    progress: bool = False,
    html: bool = True,
    qdq_weights: str = "auto",
    max_context: int = 2048,
    lm_head: str = "float32",
    log=None,
) -> Result:
    """Compile `model` with `passes` (the `--passes` syntax, or a list of steps) or a TOML `recipe`, write the
    artifact and reports into `output_dir`, and return what was written.

    `model`: an ONNX path, `"zoo:NAME"`, an `onnx_ir.Model`, or a zoo entry. `calibration`: the data the
    passes calibrate on — a `CalibrationData` or batches as feed dicts (name → array with a batch axis);
    default: the zoo task's data, or seeded random inputs for a file. `evaluation`: batches on which every
    model is scored by cosine agreement with the float model (default: the task's own metric);
    `eval_samples`: how many of them (default: all of `evaluation`'s, else the task's default, as the CLI).
    `target`: also build the TVM library (`"llvm"`, `"cuda"`, `"cuda:sm_XX"`; needs `intonly`), or for a decoder
    LLM its decode and prefill steps (`"llvm"`; `max_context`: the positions of their KV cache; `lm_head`: how
    they store a float LM head, `"float32"`, `"float16"` or `"int8"`, the CLI's `--lm-head`).
    `qdq_weights`: `"int8"`, `"uint8"` or `"auto"` (the CLI's `--qdq-weights`; docs/qdq-export.md).
    """
    if qdq_weights not in ("auto", "int8", "uint8"):
        raise InputError(f"qdq_weights must be auto, int8 or uint8, got {qdq_weights!r}")
    if lm_head not in ("float32", "float16", "int8"):
        raise InputError(f"lm_head must be float32, float16 or int8, got {lm_head!r}")
    from qcompile.ir.properties import Property
    from qcompile.job import JobConfig, run_job
    from qcompile.pipeline.run import plan_for_any_model

    steps, text = _steps(passes, recipe)
    context, planned, decoder = plan_for_any_model(steps)
    task, user_calibration = _task(model, input_shapes, calibration, evaluation)
    integer = any(Property.INTEGER_ONLY in p.establishes for p in planned)
    if target is not None and not integer and not decoder and not _is_decoder(task):
        raise InputError("target= compiles the integer-only model: add intonly to the passes")
    if eval_samples is None and evaluation is not None:  # all of the user's evaluation batches
        eval_samples = task.sample_limits()[1]
    output_dir = Path(output_dir)
    config = JobConfig(
        model=task,
        passes=text,
        output_dir=output_dir,
        calib_samples=user_calibration.samples if user_calibration is not None else calib_samples,
        eval_samples=eval_samples,
        seed=seed,
        threads=threads,
        progress=progress,
        baselines=baselines,
        target=target,
        input_shapes=input_shapes,
        force=force,
        planned=(context, planned),
        planned_decoder=decoder,
        command=["qcompile.compile", repr(model if isinstance(model, (str, os.PathLike)) else type(model).__name__)],
        html=html,
        qdq_weights=qdq_weights,
        max_context=max_context,
        lm_head=lm_head,
    )
    report = run_job(config, log=log or (lambda message: None))
    files = tuple(output_dir / name for name in report["files"])
    return Result(output_dir=output_dir, artifact=output_dir / report["artifact"], files=files, report=report)
