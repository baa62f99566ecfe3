"""The `qcompile` command.

    qcompile MODEL --passes LIST -o OUTDIR [--calib-samples N] [--eval-samples N] [--seed S]
                               MODEL: an ONNX file, zoo:NAME, or a Hugging Face causal-LM folder / .gguf file
    qcompile MODEL --recipe FILE.toml -o OUTDIR      the pass list from a recipe file
    qcompile passes [--json]   list every pass and recipe
    qcompile report OUTDIR     rebuild OUTDIR/report.html from OUTDIR/report.json
    qcompile generate OUTDIR --prompt TEXT   greedy generation with a decoder-LLM run's artifact, streamed

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal failure or a pass that
broke its declared numerics (one line; QCOMPILE_DEBUG=1 shows the traceback), 130 interrupted (SIGINT),
143 terminated (SIGTERM; 129 for SIGHUP). Signals are caught from the first line of `main`, before the
heavy imports, and turned into exceptions so the output folder is cleaned up on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from qcompile.errors import InputError, Interrupted, PassFailure, one_line

MAX_SEED = 2**32 - 1

__all__ = ["main"]


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one `qcompile: error:` line and exit code 2, like every other."""

    def error(self, message: str):
        raise InputError(f"{message} (qcompile --help shows the usage)")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="qcompile",
        description="Quantize a transformer (ONNX file or zoo:NAME) with a pass list; write QDQ ONNX and a report.",
        epilog="`qcompile passes` lists passes and recipes. Zoo models: zoo:dinov2-s, zoo:minilm-l6, zoo:smollm2-135m, "
        "zoo:tiny, zoo:tiny-llama.",
    )
    parser.add_argument("model", help="an .onnx file, zoo:NAME, or the word 'passes'")
    parser.add_argument("--passes", help="comma-separated passes/recipes, e.g. w8a8 or calibrate:observer=mse,quantize")
    parser.add_argument("--recipe", type=Path, help="a TOML file with the pass list and options (instead of --passes)")
    parser.add_argument(
        "-o", "--output", help="output directory (model.qdq.onnx, or model.int.onnx after intonly; report.json)"
    )
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration samples (default 32)")
    parser.add_argument(
        "--eval-samples",
        type=int,
        help="evaluation samples (default 1000, at most the task's; a perplexity task's: all its windows)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for sample selection (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--plugin", action="append", default=[], type=Path, help="a Python file registering passes")
    parser.add_argument("--no-baselines", action="store_true", help="skip ONNX Runtime's quantizers")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in OUTDIR")
    parser.add_argument("--json", action="store_true", help="with `qcompile passes`: print the catalogue as JSON")
    parser.add_argument("--no-html", action="store_true", help="write report.json only, not report.html")
    parser.add_argument(
        "--qdq-weights",
        choices=("auto", "int8", "uint8"),
        default="auto",
        help="weight codes of model.qdq.onnx: int8 (fast and exact in ONNX Runtime on VNNI/AMX CPUs), uint8 "
        "(exact everywhere), auto (default: int8 where this CPU's kernels are exact)",
    )
    parser.add_argument(
        "--target",
        help="also compile with TVM: llvm (this CPU), cuda or cuda:sm_XX; an encoder's integer model (needs intonly), "
        "or a decoder LLM's 4-bit decode and prefill steps (llvm)",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=2048,
        metavar="N",
        help="positions of a TVM decoder library's KV cache (prompt and generated tokens; default 2048)",
    )
    parser.add_argument(
        "--lm-head",
        choices=("float32", "float16", "int8"),
        default="float32",
        help="how a TVM decoder library stores a float LM head: float32 (default: the artifact's logits), float16, "
        "or int8 codes with a scale per vocabulary entry (a quarter of the bytes each decode step reads)",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DxD..",
        help="an input's shape for one sample: fixes the model's symbolic dims for random inputs "
        "and --target's static shape",
    )
    return parser


def _passes_catalogue() -> dict:
    """Every registered pass (contract and options) and recipe, as `qcompile passes --json` prints it."""
    from qcompile.pipeline.registry import pass_options, registered_passes, registered_recipes

    passes = [
        {
            "name": name,
            "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
            "numerics": str(cls.numerics),
            "requires": sorted(map(str, cls.requires)),
            "establishes": sorted(map(str, cls.establishes)),
            "invalidates": sorted(map(str, cls.invalidates)),
            "options": pass_options(cls),
        }
        for name, cls in registered_passes().items()
    ]
    recipes = [
        {
            "name": name,
            "doc": recipe.doc,
            "steps": [str(s) for s in recipe.steps],
            "completes_with": recipe.completes_with,
        }
        for name, recipe in registered_recipes().items()
    ]
    return {"passes": passes, "recipes": recipes}


def _list_passes(as_json: bool) -> None:
    catalogue = _passes_catalogue()
    if as_json:
        print(json.dumps(catalogue, indent=2))
        return
    print("passes:")
    for item in catalogue["passes"]:
        contract = (
            f"numerics={item['numerics']} requires={','.join(item['requires']) or '-'} "
            f"establishes={','.join(item['establishes']) or '-'} invalidates={','.join(item['invalidates']) or '-'}"
        )
        options = ", ".join(f"{k}={v['default']!r}" if "default" in v else k for k, v in item["options"].items())
        print(f"  {item['name']:<12} {item['doc']}")
        print(f"  {'':<12} {contract}")
        print(f"  {'':<12} options: {options or '-'}")
    print("recipes:")
    for item in catalogue["recipes"]:
        print(f"  {item['name']:<12} {item['doc']}\n  {'':<12} = {','.join(item['steps']) or '(nothing)'}")


def _pass_steps(args: argparse.Namespace):
    """The pass list: the --passes string, or the PassSpecs of --recipe (never both)."""
    if args.passes and args.recipe:
        raise InputError("give --passes or --recipe, not both")
    if args.recipe is not None:
        from qcompile.pipeline.recipe_file import load_recipe_file

        return load_recipe_file(args.recipe)
    if not args.passes:
        raise InputError("--passes is required, or --recipe FILE (e.g. --passes w8a8; `qcompile passes` lists them)")
    return args.passes


def _validate(args: argparse.Namespace) -> None:
    if args.output is None:
        raise InputError("-o/--output OUTDIR is required")
    if not str(args.output).strip():
        raise InputError("-o/--output is empty; name a folder (-o . for the working directory)")
    args.output = Path(args.output)
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"output {args.output} exists and is not a directory")
    if not args.model.startswith("zoo:"):
        from qcompile.frontends.model_file import regular_file_status
        from qcompile.zoo.hf_causal_lm import is_hf_source

        if not is_hf_source(args.model):  # a Hugging Face folder or .gguf is loaded by transformers
            regular_file_status(Path(args.model), "an ONNX file")  # a pipe or device would block on reading
    if args.lm_head != "float32" and args.target is None:
        raise InputError(
            f"--lm-head {args.lm_head} sets how a TVM decoder library stores the LM head: add --target llvm"
        )
    if args.target is not None:
        from qcompile.backends.tvm.target import split_target

        try:
            split_target(args.target)
        except ValueError:
            raise InputError(f"--target must be llvm, cuda or cuda:sm_XX, got {args.target!r}") from None
    _input_shapes(args.input_shape)
    for label, value, low, high in (
        ("--calib-samples", args.calib_samples, 0, None),
        ("--eval-samples", 1 if args.eval_samples is None else args.eval_samples, 1, None),
        ("--threads", args.threads, 1, max(256, os.cpu_count() or 1)),
        ("--seed", args.seed, 0, MAX_SEED),
        ("--max-context", args.max_context, 1, 2**20),
    ):
        if value < low:
            raise InputError(f"{label} must be at least {low}, got {value}")
        if high is not None and value > high:
            raise InputError(f"{label} must be at most {high}, got {value}")


def _may_be_decoder(model: str) -> bool:
    """Whether MODEL may be a decoder LLM, known before loading it: a zoo decoder, a Hugging Face folder or .gguf,
    or an ONNX file (the job checks its kind once loaded)."""
    if model.startswith("zoo:"):
        from qcompile import zoo
        from qcompile.zoo.perplexity import PerplexityTask

        try:
            return isinstance(zoo.get(model[4:]), PerplexityTask)
        except (InputError, KeyError):
            return False  # an unknown name is reported by the job
    return True


def _input_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for text in texts:
        name, _, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(not 1 <= d <= 2**31 - 1 for d in shape):
            raise InputError(f"--input-shape takes NAME=DxDx.. with positive dims, got {text!r}")
        shapes[name] = shape
    return shapes


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from qcompile.pipeline.registry import load_plugin

    for plugin in args.plugin:
        load_plugin(plugin)
    if args.model == "passes" and (args.passes or args.recipe or args.output):
        raise InputError(
            "`qcompile passes` takes no --passes or -o (did you mean a model file named 'passes'? write ./passes)"
        )
    if args.model == "passes":
        _list_passes(args.json)
        return 0
    started = time.monotonic()
    steps = _pass_steps(args)
    _validate(args)
    import onnx_ir as ir

    from qcompile.ir.properties import Property
    from qcompile.job import JobConfig, run_job
    from qcompile.pipeline.manager import check_order
    from qcompile.pipeline.recipe_file import recipe_text
    from qcompile.pipeline.run import plan_for_any_model
    from qcompile.report.table import print_report

    # Reject unknown names, bad options and a bad order before loading anything; the job runs these objects
    # (or re-plans them when the model is a decoder LLM: recipes mean other steps there).
    context, passes, decoder = plan_for_any_model(steps)
    check_order(passes, ir.Model(ir.Graph([], [], nodes=[]), ir_version=9))  # a fresh model has no properties
    integer = any(Property.INTEGER_ONLY in p.establishes for p in passes)
    if args.target is not None and not integer and not decoder and not _may_be_decoder(args.model):
        raise InputError(
            "--target compiles the integer-only model: add intonly to --passes (e.g. --passes w8a8,intonly)"
        )
    config = JobConfig(
        model=args.model,
        passes=steps if isinstance(steps, str) else recipe_text(steps),
        planned=(context, passes),
        planned_decoder=decoder,
        output_dir=args.output,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
        baselines=not args.no_baselines,
        target=args.target,
        input_shapes=_input_shapes(args.input_shape),
        force=args.force,
        command=["qcompile", *sys.argv[1:]] if argv is None else ["qcompile", *argv],
        html=not args.no_html,
        qdq_weights=args.qdq_weights,
        max_context=args.max_context,
        lm_head=args.lm_head,
    )
    report = run_job(
        config, log=(lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    )
    print_report(report)
    paths = [str(args.output / name) for name in report["files"]]
    print(f"wrote {', '.join(paths[:-1])} and {paths[-1]}")
    print(f"finished in {time.monotonic() - started:.0f} s")
    if "report.html" in report["files"]:
        print(f"report: {(args.output / 'report.html').resolve()}")
    return 0


def _rebuild_report(argv: list[str]) -> int:
    """`qcompile report OUTDIR`: write OUTDIR/report.html from OUTDIR/report.json (nothing else changes)."""
    if len(argv) != 1 or argv[0].startswith("-"):
        raise InputError("usage: qcompile report OUTDIR (the folder of an earlier run, with its report.json)")
    folder = Path(argv[0])
    source = folder / "report.json"
    if not source.is_file():
        raise InputError(f"{source} not found: give the output folder of a qcompile run")
    try:
        report = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{source} is not a qcompile report: {one_line(error)}") from None
    if not isinstance(report, dict) or not {"model", "passes", "metric", "latency_ms"} <= set(report):
        raise InputError(f"{source} is not a qcompile report (model, passes, metric, latency_ms missing)")
    from qcompile.report.html import write_html_report

    path = write_html_report(report, folder / "report.html")
    print(f"report: {path.resolve()}")
    return 0


def _raise_interrupted(signal_number: int, frame) -> None:
    raise Interrupted(signal_number)


def _install_signal_handlers() -> list[int]:
    """SIGTERM and SIGHUP raise `Interrupted` (SIGINT raises KeyboardInterrupt, Python's own default);
    returns the signals whose handler was installed. A signal that was ignored stays ignored."""
    installed = []
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) in (signal.SIG_DFL, None):
            signal.signal(number, _raise_interrupted)
            installed.append(number)
    return installed


def _import_core_with_sigint_deferred() -> None:
    """Import the core (numpy, onnx_ir and their compiled extensions) with Ctrl-C held until it is done.

    A KeyboardInterrupt raised while a nanobind extension initializes is thrown through C++ and aborts the
    process (std::terminate: a traceback and exit -6) instead of unwinding, so a SIGINT arriving then is
    recorded and raised as KeyboardInterrupt right after the import."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        import qcompile.pipeline  # noqa: F401 - SIGINT is ignored or handled by the host: nothing to hold

        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda number, frame: pending.append(number))
    try:
        import qcompile.pipeline  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def _interrupted(signal_number: int) -> int:
    names = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
    print(f"qcompile: {names.get(signal_number, 'stopped by a signal')}; nothing was written", file=sys.stderr)
    return 128 + signal_number


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("QCOMPILE_DEBUG") == "1"
    installed = _install_signal_handlers()
    try:
        words = sys.argv[1:] if argv is None else argv
        if words[:1] == ["report"]:
            return _rebuild_report(words[1:])
        if words[:1] == ["generate"]:
            from qcompile.cli_generate import run_generate

            _import_core_with_sigint_deferred()
            return run_generate(words[1:])
        args = _parser().parse_args(argv)
        _import_core_with_sigint_deferred()
        return _run(args, argv)
    except InputError as error:
        print(f"qcompile: error: {one_line(error, 2000)}", file=sys.stderr)
        return 2
    except PassFailure as error:
        if debug:
            traceback.print_exc()
        print(f"qcompile: failed: {one_line(error, 2000)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(signal.SIGINT)
    except Interrupted as stop:
        return _interrupted(stop.signal_number)
    except SystemExit:
        raise  # --help
    except BrokenPipeError:  # `qcompile passes | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except MemoryError:
        print(
            "qcompile: error: out of memory (the model or the data asked for more than this machine has)",
            file=sys.stderr,
        )
        return 2
    except Exception as error:  # internal failure: one line unless debugging
        if debug:
            traceback.print_exc()
        print(
            f"qcompile: internal error: {type(error).__name__}: {one_line(error)} (QCOMPILE_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        for number in installed:  # a signal after the run ends gets the default action, not an exception
            signal.signal(number, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
