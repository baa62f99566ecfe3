"""The `qcompile` command.

    qcompile MODEL --passes LIST -o OUTDIR [--calib-samples N] [--eval-samples N] [--seed S]
    qcompile passes            list every pass and recipe

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal failure or a pass that
broke its declared numerics (one line; QCOMPILE_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from qcompile.errors import InputError, PassFailure

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qcompile",
        description="Quantize a transformer (ONNX file or zoo:NAME) with a pass list; write QDQ ONNX and a report.",
        epilog="`qcompile passes` lists passes and recipes. Zoo models: zoo:dinov2-s, zoo:minilm-l6, zoo:tiny.",
    )
    parser.add_argument("model", help="an .onnx file, zoo:NAME, or the word 'passes'")
    parser.add_argument("--passes", help="comma-separated passes/recipes, e.g. w8a8 or calibrate:observer=mse,quantize")
    parser.add_argument("-o", "--output", type=Path, help="output directory (model.qdq.onnx, or model.int.onnx after intonly; report.json)")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration samples (default 32)")
    parser.add_argument("--eval-samples", type=int, default=1000, help="evaluation samples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sample selection (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--plugin", action="append", default=[], type=Path, help="a Python file registering passes")
    parser.add_argument("--no-baselines", action="store_true", help="skip ONNX Runtime's quantizers")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--target", help="also compile the integer model with TVM: llvm (this CPU), cuda or cuda:sm_XX (needs intonly)")
    parser.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=DxD..", help="static input shape for --target (default: the latency sample's)"
    )
    return parser


def _list_passes() -> None:
    from qcompile.pipeline.registry import registered_passes, registered_recipes

    print("passes:")
    for name, cls in registered_passes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        requires = ",".join(sorted(map(str, cls.requires))) or "-"
        establishes = ",".join(sorted(map(str, cls.establishes))) or "-"
        invalidates = ",".join(sorted(map(str, cls.invalidates))) or "-"
        print(f"  {name:<12} {doc}")
        print(f"  {'':<12} numerics={cls.numerics} requires={requires} establishes={establishes} invalidates={invalidates}")
    print("recipes:")
    for name, recipe in registered_recipes().items():
        steps = ",".join(str(s) for s in recipe.steps) or "(nothing)"
        print(f"  {name:<12} {recipe.doc}\n  {'':<12} = {steps}")


def _validate(args: argparse.Namespace) -> None:
    if not args.passes:
        raise InputError("--passes is required (e.g. --passes w8a8; `qcompile passes` lists them)")
    if args.output is None:
        raise InputError("-o/--output OUTDIR is required")
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"output {args.output} exists and is not a directory")
    if args.target is not None:
        from qcompile.backends.tvm.target import split_target

        try:
            split_target(args.target)
        except ValueError:
            raise InputError(f"--target must be llvm, cuda or cuda:sm_XX, got {args.target!r}") from None
    elif args.input_shape:
        raise InputError("--input-shape is for --target")
    _input_shapes(args.input_shape)
    for label, value, low in (("--calib-samples", args.calib_samples, 0), ("--eval-samples", args.eval_samples, 1), ("--threads", args.threads, 1)):
        if value < low:
            raise InputError(f"{label} must be at least {low}, got {value}")


def _input_shapes(texts: list[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for text in texts:
        name, _, dims = text.partition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or any(d < 1 for d in shape):
            raise InputError(f"--input-shape takes NAME=DxDx.. with positive dims, got {text!r}")
        shapes[name] = shape
    return shapes


def _run(args: argparse.Namespace) -> int:
    from qcompile.pipeline.registry import load_plugin

    for plugin in args.plugin:
        load_plugin(plugin)
    if args.model == "passes":
        _list_passes()
        return 0
    _validate(args)
    import onnx_ir as ir

    from qcompile.job import JobConfig, run_job
    from qcompile.ir.properties import Property
    from qcompile.pipeline.context import PipelineContext
    from qcompile.pipeline.manager import check_order
    from qcompile.pipeline.registry import build_pass, expand, parse_pass_list
    from qcompile.report.table import print_report

    # Reject unknown names, bad options and a bad order before loading anything.
    passes = [build_pass(spec, PipelineContext()) for spec in expand(parse_pass_list(args.passes))]
    check_order(passes, ir.Model(ir.Graph([], [], nodes=[]), ir_version=9))  # a fresh model has no properties
    if args.target is not None and not any(Property.INTEGER_ONLY in p.establishes for p in passes):
        raise InputError("--target compiles the integer-only model: add intonly to --passes (e.g. --passes w8a8,intonly)")
    config = JobConfig(
        model=args.model,
        passes=args.passes,
        output_dir=args.output,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        seed=args.seed,
        threads=args.threads,
        progress=not args.quiet,
        baselines=not args.no_baselines,
        target=args.target,
        input_shapes=_input_shapes(args.input_shape),
    )
    report = run_job(config, log=(lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr)))
    print_report(report)
    written = [report["artifact"], *report.get("tvm", {}).get("files", []), "report.json"]
    paths = [str(args.output / name) for name in written]
    print(f"wrote {', '.join(paths[:-1])} and {paths[-1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = os.environ.get("QCOMPILE_DEBUG") == "1"
    try:
        return _run(args)
    except InputError as error:
        print(f"qcompile: error: {error}", file=sys.stderr)
        return 2
    except PassFailure as error:
        if debug:
            traceback.print_exc()
        print(f"qcompile: failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qcompile: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # internal failure: one line unless debugging
        if debug:
            traceback.print_exc()
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"qcompile: internal error: {type(error).__name__}: {first} (QCOMPILE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
