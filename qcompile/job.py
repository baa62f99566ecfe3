"""The main job: compile a model with a pass list, export it, and measure it against its peers.

1. Load the model (a file or `zoo:NAME`) and keep a serialized copy of the float model.
2. Run the passes (VerifyIR and CheckNumerics instrumented) with streamed calibration data.
3. Export the QDQ model; build ONNX Runtime's own static and dynamic INT8 models on the same samples.
4. Score the float model, qcompile's model and both ONNX Runtime models on the same evaluation samples.
   With `--target llvm`, qcompile's model is scored by the TVM library (bit-exact with model.int.onnx,
   checked on the latency sample) wherever a sample has the shapes it was built for; report.json's
   `metric_runtime` says which runtime produced each score. For a decoder LLM `--target llvm` compiles
   model.qdq.onnx's decode and prefill steps into decoder.so, checked against ONNX Runtime, scored and timed
   next to it (`job_tvm_decoder`).
5. Time all of them side by side in this process (medians over alternating blocks, `threads` threads).
6. Write model.qdq.onnx (model.int.onnx after `intonly`), report.json and report.html into the output directory,
   through `OutputFolder`: locked against a concurrent run, staged in a hidden folder and moved into place
   only when everything succeeded, so a failed or interrupted run leaves no partial artifact.

Failures of ONNX Runtime on the user's float model (loading it, or running it on the first calibration
batch, both before any pass) are bad input and raised as `InputError` naming the stage; later failures
are qcompile's own.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from qcompile import zoo
from qcompile.errors import InputError, one_line, ort_stage
from qcompile.frontends.model_kind import is_decoder_llm
from qcompile.ir import clone_model
from qcompile.ir.properties import Property, get_properties
from qcompile.job_tvm_decoder import DecoderScoring, build_decoder_library, decode_ms
from qcompile.output_folder import TOKENIZER_FILES, OutputFolder
from qcompile.passes.transforms.intact_kv import bake_prefix_cache, intact_kv_prefix, prefix_cache
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.pass_base import Pass
from qcompile.pipeline.run import plan_passes, run_passes
from qcompile.report.environment import environment
from qcompile.report.latency import measure_latency
from qcompile.report.ranges import RecordRanges
from qcompile.zoo.lm_export import complete_prefill_feeds
from qcompile.zoo.perplexity import PerplexityTask

__all__ = ["JobConfig", "run_job", "resolve_model"]


@dataclasses.dataclass
class JobConfig:
    model: str | zoo.ZooModel
    passes: str
    output_dir: Path
    calib_samples: int = 32
    eval_samples: int | None = None  # None: the task's default (1000, or all of a perplexity task's windows)
    seed: int = 0
    threads: int = 2
    progress: bool = True
    baselines: bool = True
    latency_rounds: int = 15
    target: str | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None
    force: bool = False
    planned: tuple[PipelineContext, list[Pass]] | None = None  # `plan_passes(passes)`, when already built
    planned_decoder: bool = False  # `planned` holds the recipes' decoder-LLM steps
    command: list[str] | None = None  # the argv recorded in the report (default: this process's)
    qdq_weights: str = "auto"  # weight codes of model.qdq.onnx: int8, uint8, or auto (int8 where exact here)
    html: bool = True  # also write report.html
    max_context: int = 2048  # positions of a decoder library's cache (--target llvm on a decoder LLM)
    lm_head: str = "float32"  # how a decoder library stores a float LM head: float32, float16 or int8 (--lm-head)


def resolve_model(source: str | zoo.ZooModel, input_shapes: dict[str, tuple[int, ...]] | None = None) -> zoo.ZooModel:
    """`zoo:NAME` → the zoo entry; a Hugging Face causal-LM folder or `.gguf` → `HfCausalLM` (perplexity on
    Lee's corpus); a path → the ONNX file on seeded random inputs (symbolic input dims from `input_shapes`);
    an entry → itself."""
    if isinstance(source, zoo.ZooModel):
        return source
    if source.startswith("zoo:"):
        return zoo.get(source[4:])
    from qcompile.zoo.hf_causal_lm import HfCausalLM, is_hf_source

    if is_hf_source(source):  # a Hugging Face folder or a .gguf: exported once, scored on Lee's corpus
        return HfCausalLM(source)
    from qcompile.frontends.onnx import load
    from qcompile.zoo.generic import RandomInputTask

    return RandomInputTask(load(source), source, input_shapes=input_shapes)


def _with_sample_counts(config: JobConfig, entry: zoo.ZooModel) -> JobConfig:
    """`config` with `eval_samples` resolved (None: the task's default, at most its limit), after refusing
    sample counts the task's data cannot supply."""
    calibration_limit, evaluation_limit = entry.sample_limits()
    if config.eval_samples is None:
        default = entry.default_eval_samples
        config = dataclasses.replace(
            config, eval_samples=default if evaluation_limit is None else min(default, evaluation_limit)
        )
    for option, wanted, limit, kind in (
        ("--calib-samples", config.calib_samples, calibration_limit, "calibration"),
        ("--eval-samples", config.eval_samples, evaluation_limit, "evaluation"),
    ):
        if limit is not None and wanted > limit:
            raise InputError(f"{option} {wanted}: {entry.name} has {limit} {kind} samples; ask for at most {limit}")
    return config


def _check_float_model(entry: zoo.ZooModel, float_model, calibration, threads: int):
    """An ONNX Runtime session of the user's float model, run once on a calibration batch (or the latency
    sample): a model ONNX Runtime cannot load or run is refused here, before any pass."""
    from qcompile import runtime

    with ort_stage(f"{entry.name}: ONNX Runtime cannot load the float model"):
        session = runtime.make_session(float_model, threads=threads)
    feeds = calibration.first_batch() if calibration is not None else entry.latency_feeds()
    with ort_stage(
        f"{entry.name}: ONNX Runtime cannot run the float model on "
        f"{'a calibration batch' if calibration is not None else 'a sample'}"
    ):
        runtime.run(session, feeds)
    return session


def _session_runner(session):
    output = session.get_outputs()[0].name

    def run(feeds):
        from qcompile.runtime.sessions import run as ort_run

        return ort_run(session, complete_prefill_feeds(session, feeds), [output])[output]

    return run


def run_job(config: JobConfig, log=print) -> dict[str, Any]:
    """Run the job and return the report (also written to `output_dir/report.json`)."""
    if config.target:
        from qcompile.backends.tvm import BRIEF_SPIN, configure_pool

        configure_pool(config.threads, spin_count=BRIEF_SPIN)  # idle TVM workers sleep before ORT is timed
    from qcompile import runtime
    from qcompile.backends.onnx import export, ort_baselines
    from qcompile.backends.onnx.kernels import int8_weights_exact

    with OutputFolder(config.output_dir, force=config.force) as out:
        entry = resolve_model(config.model, config.input_shapes)
        config = _with_sample_counts(config, entry)
        model = entry.load()
        float_model = clone_model(model)  # the passes change `model` in place
        staging = out.staging
        calibration = entry.calibration(config.calib_samples, config.seed) if config.calib_samples > 0 else None
        float_session = _check_float_model(entry, float_model, calibration, config.threads)
        decoder = isinstance(entry, PerplexityTask) or is_decoder_llm(model)
        if config.planned is not None and config.planned_decoder == decoder:
            context, passes = config.planned
        else:  # recipes mean other steps on decoder LLMs (`w8a8` is per-token there)
            context, passes = plan_passes(config.passes, decoder=decoder)
        if config.target and not decoder and not any(Property.INTEGER_ONLY in p.establishes for p in passes):
            raise InputError(f"--target {config.target} needs the integer-only model: add intonly to the passes")
        if config.lm_head != "float32" and not decoder:
            raise InputError(
                f"--lm-head {config.lm_head} sets how a decoder LLM's TVM library stores its LM head; this "
                "model is not a decoder LLM"
            )
        if config.target and decoder and not isinstance(entry, PerplexityTask):
            raise InputError(
                f"--target {config.target} on a decoder LLM scores and checks its library on text: give the model as "
                "a Hugging Face folder, a .gguf or zoo:NAME (a decoder ONNX file runs on random inputs)"
            )
        context.calibration, context.seed = calibration, config.seed  # the passes read these when they run
        context.progress, context.threads = config.progress, config.threads
        if isinstance(entry, PerplexityTask):
            context.prompt_prefixes = entry.prompt_prefixes()
        log(f"running passes: {config.passes}")
        ranges = RecordRanges()
        records = run_passes(model, passes, context=context, instruments=[ranges])
        integer = Property.INTEGER_ONLY in get_properties(model)
        artifact_name = "model.int.onnx" if integer else "model.qdq.onnx"
        int8_weights = {"auto": int8_weights_exact(), "int8": True, "uint8": False}[config.qdq_weights]
        artifact = export(model, staging / artifact_name, fmt="int" if integer else "qdq", int8_weights=int8_weights)
        artifact_files = [artifact_name] + (
            [f"{artifact_name}.data"] if (staging / f"{artifact_name}.data").exists() else []
        )

        prefix = intact_kv_prefix(model)
        if prefix is not None:  # the float reference reads the same prefix, its KV computed in float as well
            bake_prefix_cache(float_model, prefix, prefix_cache(float_model, prefix, config.threads))
            float_session = runtime.make_session(float_model, threads=config.threads)
        sessions = {"ort_fp32": float_session}
        with ort_stage("ONNX Runtime cannot load qcompile's artifact (a qcompile bug)", internal=True):
            sessions["qcompile"] = runtime.make_session(str(artifact), threads=config.threads)
        tvm_model, tvm_report, library = None, None, None
        if config.target and decoder:
            library, tvm_report = _compile_decoder_library(config, entry, artifact, staging, sessions, prefix, log)
        elif config.target:
            try:
                tvm_model, tvm_report = _compile_tvm(
                    config, entry.latency_feeds(), artifact, staging, sessions["qcompile"], log
                )
            except (InputError, MemoryError):
                raise
            except Exception as error:  # TVM's own errors are many-lined C++ text: one line naming the stage
                raise RuntimeError(
                    f"TVM build for --target {config.target} failed: {type(error).__name__}: {one_line(error)}"
                ) from error
        baseline_seconds: dict[str, float] = {}
        if config.baselines and calibration is not None:
            log("building ONNX Runtime baselines (quantize_static, quantize_dynamic)")
            start = time.perf_counter()
            static = ort_baselines.ort_quantize_static(clone_model(float_model), calibration, staging / "ort_scratch")
            baseline_seconds["ort_int8_static"] = time.perf_counter() - start
            start = time.perf_counter()
            dynamic = ort_baselines.ort_quantize_dynamic(clone_model(float_model), staging / "ort_scratch")
            baseline_seconds["ort_int8_dynamic"] = time.perf_counter() - start
            sessions["ort_int8_static"] = runtime.make_session(static, threads=config.threads)
            sessions["ort_int8_dynamic"] = runtime.make_session(dynamic, threads=config.threads)

        runners = {label: _session_runner(session) for label, session in sessions.items()}
        if library is not None:
            runners["tvm_int"] = DecoderScoring(library)
        scored_by_tvm = None
        if tvm_model is not None:
            scored_by_tvm = TvmScoring(tvm_model, runners["qcompile"])
            runners["qcompile"] = scored_by_tvm
        log(f"evaluating {', '.join(runners)} on {config.eval_samples} samples")
        scores = entry.evaluate(runners, config.eval_samples, config.seed, progress=config.progress)
        generations, tokenizer_files = [], []
        if isinstance(entry, PerplexityTask):
            generators = dict(sessions) if library is None else {**sessions, "tvm_int": library.session()}
            log(f"generating {entry.generation_tokens} greedy tokens per prompt with {', '.join(generators)}")
            generations = entry.generations(generators, prefix)
            tokenizer_files = _save_tokenizer(entry, staging)

        feeds = entry.latency_feeds()
        timed = dict(sessions)
        not_timed = {}
        if tvm_model is not None:  # the library is the deployment; ORT runs model.int.onnx's int32 MatMuls slowly
            del timed["qcompile"]
            not_timed["qcompile"] = (
                "model.int.onnx in ONNX Runtime is a bit-exact reference, not a deployment (no int32 GEMM "
                "there); tvm_int is its deployment"
            )
        runners = {
            label: (lambda s=session, f=complete_prefill_feeds(session, feeds): runtime.run(s, f))
            for label, session in timed.items()
        }
        if tvm_model is not None:
            prepared = tvm_model.prepare(feeds)
            runners["tvm_int"] = lambda: tvm_model.run_prepared(prepared)
        if library is not None:
            timed_session, window = library.session(), feeds["input_ids"][0]
            runners["tvm_int"] = lambda: (timed_session.reset(), timed_session.prefill(window))
            tvm_report["decode_ms"] = _decode_times(sessions, library, window)
        latency = measure_latency(runners, rounds=config.latency_rounds)
        report = build_report(config, entry, records, scores, latency, baseline_seconds, calibration)
        report["decoder_llm"] = decoder
        if prefix is not None:
            report["intact_kv_prefix"] = prefix
        report["artifact"] = artifact_name
        report["qdq_weights"] = None if integer else ("int8" if int8_weights else "uint8")
        if tvm_report is not None:
            report["tvm"] = tvm_report
            report["target"] = tvm_report["target"]
        report["metric_runtime"] = metric_runtimes(sessions, tvm_report, scored_by_tvm)
        if library is not None:
            report["metric_runtime"]["tvm_int"] = (
                f"TVM {library.metadata['kind']} decoder library ({tvm_report['kernels']} kernels), one decode step "
                "per token"
            )
        if not_timed:
            report["latency_not_timed"] = not_timed
        if generations:
            report["generations"] = generations
        report["calibration_ranges"] = ranges.ranges
        report["environment"] = environment(config.command)
        report["files"] = [*artifact_files, *tokenizer_files, *(tvm_report or {}).get("files", []), "report.json"]
        report["files"] += ["report.html"] if config.html else []
        report = json.loads(json.dumps(report, default=_json_default))  # plain JSON types, as a reader sees it
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if config.html:
            from qcompile.report.html import write_html_report

            write_html_report(report, staging / "report.html")
        out.commit(report["files"])
        return report


def _compile_decoder_library(config: JobConfig, entry, artifact: Path, staging: Path, sessions, prefix, log):
    """decoder.so of the artifact's steps (`job_tvm_decoder`), loaded and checked against ONNX Runtime; a form the
    steps do not compile is bad input (its reason in one line), TVM's own failures are qcompile's."""
    from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder

    window = entry.latency_feeds()["input_ids"][0]
    capacity = max(config.max_context, len(prefix or ()) + len(window) + entry.generation_tokens + 64)
    try:
        return build_decoder_library(
            config.target,
            artifact,
            staging,
            sessions["qcompile"],
            window,
            capacity,
            config.threads,
            log,
            config.lm_head,
        )
    except UnsupportedDecoder as error:
        raise InputError(f"--target {config.target}: {one_line(error)}") from None
    except MemoryError:
        raise
    except Exception as error:
        if isinstance(error, RuntimeError) and "backend bug" in str(error):
            raise
        raise RuntimeError(
            f"TVM build for --target {config.target} failed: {type(error).__name__}: {one_line(error)}"
        ) from error


def _decode_times(sessions: dict, library, window) -> dict:
    """`decode_ms` of the library and of the artifact and the float model in ONNX Runtime, at the window's context."""
    from qcompile.generation import OrtSteps

    times = {"context": len(window), "tvm_int": decode_ms(library.session(), window)}
    for label in ("qcompile", "ort_fp32"):
        times[label] = decode_ms(OrtSteps(sessions[label]), window)
    return times


def _save_tokenizer(entry, staging: Path) -> list[str]:
    """Save the task's tokenizer next to the artifact (what `qcompile generate` reads); the file names."""
    tokenizer = entry.tokenizer()
    if tokenizer is None:
        return []
    folder = staging / ".tokenizer"
    tokenizer.save_pretrained(str(folder))
    names = []
    for path in sorted(folder.iterdir()):
        if path.name in TOKENIZER_FILES:
            path.replace(staging / path.name)
            names.append(path.name)
    shutil.rmtree(folder)
    return names


class TvmScoring:
    """Scores qcompile's integer model with the TVM library, one sample at a time, wherever a sample has
    the shapes the library was built for (batch 1 of the latency sample's shapes); other samples go to
    ONNX Runtime's session of model.int.onnx, which computes the same integers. Counts both."""

    def __init__(self, library, fallback) -> None:
        self.library, self.fallback = library, fallback
        self.shapes = {spec["name"]: list(spec["shape"]) for spec in library.metadata["inputs"]}
        self.output = library.metadata["outputs"][0]["name"]
        self.by_tvm = self.by_ort = 0

    def __call__(self, feeds):
        import numpy as np

        batch = len(next(iter(feeds.values())))
        one_sample = {name: [1, *np.shape(value)[1:]] for name, value in feeds.items()}
        if one_sample != self.shapes:
            self.by_ort += batch
            return self.fallback(feeds)
        self.by_tvm += batch
        samples = ({name: value[i : i + 1] for name, value in feeds.items()} for i in range(batch))
        return np.concatenate([self.library.run(sample)[self.output] for sample in samples])


def metric_runtimes(sessions: dict, tvm_report: dict | None, scored_by_tvm: TvmScoring | None) -> dict[str, str]:
    """Which runtime produced each label's scores (report.json's `metric_runtime`)."""
    import onnxruntime

    ort = f"ONNX Runtime {onnxruntime.__version__}"
    runtimes = {label: ort for label in sessions}
    if scored_by_tvm is not None and tvm_report is not None:
        kind = "cuda" if "cuda" in tvm_report["target"] else "llvm"
        tvm = f"TVM {kind} library ({tvm_report['kernels']} kernels)"
        if scored_by_tvm.by_ort == 0:
            runtimes["qcompile"] = tvm
        else:
            runtimes["qcompile"] = (
                f"{tvm} on {scored_by_tvm.by_tvm} samples, {ort} on {scored_by_tvm.by_ort} "
                "(shapes the library was not built for)"
            )
    return runtimes


def _compile_tvm(config: JobConfig, feeds: dict, artifact: Path, staging: Path, int_session, log):
    """Compile model.int.onnx with TVM into the staging folder; on a CPU target load it and check it
    bit for bit against ONNX Runtime on the latency sample. Returns (loaded model or None, report)."""
    import numpy as np
    import onnx

    from qcompile import runtime
    from qcompile.backends.tvm import artifact as tvm_artifact
    from qcompile.backends.tvm import pool_threads

    shapes = {name: tuple(np.shape(value)) for name, value in feeds.items()}
    shapes.update(config.input_shapes or {})
    log(f"compiling the integer model with TVM for {config.target} (inputs {shapes})")
    compiled = tvm_artifact.compile_int_model(onnx.load(str(artifact)), config.target, shapes, threads=config.threads)
    files = [path.name for path in tvm_artifact.save(compiled, staging)]
    report = {
        "target": compiled.metadata["target"],
        "cpu": compiled.metadata["cpu"],
        "kernels": compiled.metadata["kernels"],
        "build_seconds": compiled.seconds,
        "files": files,
        "inputs": compiled.metadata["inputs"],
        "threads": pool_threads(),
    }
    if compiled.metadata["kind"] != "llvm":
        report["bit_exact_vs_onnx"] = None
        report["not_run"] = "a CUDA library is built here but runs only on a GPU machine"
        return None, report
    model = tvm_artifact.load(staging)
    if all(list(np.shape(feeds[s["name"]])) == s["shape"] for s in compiled.metadata["inputs"]):
        expected = runtime.run(int_session, feeds)
        got = model.run(feeds)
        report["bit_exact_vs_onnx"] = all(np.array_equal(got[name], expected[name]) for name in got)
        if not report["bit_exact_vs_onnx"]:
            raise RuntimeError("the TVM library's outputs differ from ONNX Runtime's on model.int.onnx (a backend bug)")
        return model, report
    report["bit_exact_vs_onnx"] = None
    report["not_run"] = "--input-shape differs from the latency sample's shape: not checked or timed here"
    return None, report


def model_from_bytes(data: bytes):
    import onnx
    import onnx_ir as ir

    return ir.serde.deserialize_model(onnx.load_from_string(data))


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _finite(value: float | None) -> float | None:
    import math

    if value is None:
        return None
    return value if math.isfinite(value) else (1e9 if value > 0 else -1e9)


def build_report(config, entry, records, scores, latency, baseline_seconds, calibration) -> dict[str, Any]:
    """Assemble report.json's dictionary (schema in docs/report.md)."""
    metric = entry.metric_name
    fp = scores["ort_fp32"][metric]
    quantized = scores["qcompile"][metric]
    calibrate = [r for r in records if r["name"] == "calibrate"]
    per_pass = []
    for record in records:
        item = {k: record[k] for k in ("name", "numerics", "modified", "seconds")}
        item["options"] = record.get("options", {})
        if "sqnr_vs_float_db" in record:
            item["sqnr_vs_float_db"] = _finite(record["sqnr_vs_float_db"])
        if "sqnr_db" in record:
            item["sqnr_db"] = _finite(record["sqnr_db"])
        elif "max_abs_err" in record:
            item["max_abs_err"] = record["max_abs_err"]
            item["max_rel_err"] = record.get("max_rel_err")
        item["stats"] = record.get("stats", {})
        per_pass.append(item)
    per_layer = next((r["per_layer"] for r in reversed(records) if r.get("per_layer")), [])
    return {
        "model": config.model if isinstance(config.model, str) else f"zoo:{entry.name}",
        "passes": config.passes,
        "metric": {
            "name": metric,
            "higher_is_better": getattr(entry, "higher_is_better", True),
            "fp": fp,
            "quantized": quantized,
            "drop": fp - quantized,
            **{label: scores[label][metric] for label in ("ort_int8_static", "ort_int8_dynamic") if label in scores},
        },
        "all_metrics": scores,
        "latency_ms": {
            label: latency.get(label)
            for label in ("ort_fp32", "qcompile", "ort_int8_static", "ort_int8_dynamic", "tvm_int")
            if label != "tvm_int" or label in latency
        },
        "latency_setup": {
            "threads": config.threads,
            "rounds": config.latency_rounds,
            "statistic": "median",
            "batch": 1,
        },
        "calibration": {
            "samples": calibration.samples if calibration is not None else 0,
            "peak_rss_mb": calibrate[-1]["stats"].get("peak_rss_mb") if calibrate else None,
            "seconds": sum(r["seconds"] for r in calibrate),
            "ort_static_seconds": baseline_seconds.get("ort_int8_static"),
        },
        "eval_samples": config.eval_samples,
        "seed": config.seed,
        "per_pass": per_pass,
        "per_layer": [{"node": r["node"], "sqnr_db": _finite(r["sqnr_db"])} for r in per_layer],
    }
