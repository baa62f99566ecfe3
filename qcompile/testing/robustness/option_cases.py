"""Cases of category `cli-options`: a valid model with bad, missing or extreme options, and output
folders that are files, unwritable, or already hold a run's outputs."""

from __future__ import annotations

import json
import os

from qcompile.testing.robustness import models
from qcompile.testing.robustness.case import Case, CaseDirs, model_argv, save

__all__ = ["CASES"]


def _model(dirs: CaseDirs) -> None:
    save(models.mlp(), dirs.model)


def _then(*steps):
    def build(dirs: CaseDirs) -> None:
        for step in steps:
            step(dirs)

    return build


def _out_is_file(dirs: CaseDirs) -> None:
    dirs.out.write_text("a file where OUT should go\n")


def _readonly_parent(dirs: CaseDirs) -> None:
    dirs.out.parent.mkdir()
    os.chmod(dirs.out.parent, 0o555)


def _bad_model(dirs: CaseDirs) -> None:
    proto = models.mlp()
    next(n for n in proto.graph.node if n.name == "relu1").op_type = "Frobnicate"
    save(proto, dirs.model)


def _previous_run(dirs: CaseDirs) -> None:
    dirs.out.mkdir(parents=True)
    (dirs.out / "report.json").write_text(json.dumps({"artifact": "model.qdq.onnx", "note": "an earlier run"}) + "\n")
    save(models.mlp(seed=5), dirs.out / "model.qdq.onnx")


def _previous_run_with_extras(dirs: CaseDirs) -> None:
    _previous_run(dirs)
    save(models.mlp(seed=6), dirs.out / "model.int.onnx")  # stale: an earlier intonly run's artifact
    (dirs.out / "notes.txt").write_text("the user's own notes\n")


def _without(flag: str, argv: tuple[str, ...]) -> tuple[str, ...]:
    index = argv.index(flag)
    return argv[:index] + argv[index + 2 :]


_BASE = model_argv()
_M = _model

CASES = [
    Case("opt-missing-passes", "cli-options", "error", _M, argv=_without("--passes", _BASE), mentions=("--passes",)),
    Case("opt-empty-passes", "cli-options", "error", _M, argv=model_argv(passes=""), mentions=("--passes",)),
    Case("opt-missing-output", "cli-options", "error", _M, argv=_without("-o", _BASE), mentions=(("-o", "--output"),)),
    Case(
        "opt-empty-output",
        "cli-options",
        "error",
        _M,
        argv=model_argv(out=""),
        mentions=(("-o", "--output"),),
        note="-o '' would mean the working directory",
    ),
    Case(
        "opt-unknown-pass",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="w8a8,frobnicate"),
        mentions=("frobnicate",),
    ),
    Case(
        "opt-pass-order",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="quantize"),
        mentions=("quantize",),
        note="quantize requires CALIBRATED",
    ),
    Case(
        "opt-weight-bits-inf",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="calibrate,quantize:weight_bits=1e999"),
        mentions=("weight_bits",),
    ),
    Case(
        "opt-weight-bits-fraction",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="calibrate,quantize:weight_bits=8.9"),
        mentions=("weight_bits",),
    ),
    Case(
        "opt-weight-bits-text",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="calibrate,quantize:weight_bits=abc"),
        mentions=("weight_bits",),
    ),
    Case(
        "opt-observer-unknown",
        "cli-options",
        "error",
        _M,
        argv=model_argv(passes="calibrate:observer=nope,quantize"),
        mentions=(("observer", "nope"),),
    ),
    Case("opt-unknown-flag", "cli-options", "error", _M, argv=model_argv("--frobnicate"), mentions=("--frobnicate",)),
    Case("opt-seed-negative", "cli-options", "error", _M, argv=model_argv("--seed", "-1"), mentions=("--seed",)),
    Case("opt-seed-text", "cli-options", "error", _M, argv=model_argv("--seed", "abc"), mentions=("--seed",)),
    Case(
        "opt-calib-samples-negative",
        "cli-options",
        "error",
        _M,
        argv=model_argv(calib_samples="-1"),
        mentions=("--calib-samples",),
    ),
    Case(
        "opt-calib-samples-huge",
        "cli-options",
        "error",
        _M,
        argv=model_argv(calib_samples="1000000000"),
        mentions=("--calib-samples",),
        timeout=60,
        note="a billion samples: refuse (or bound) with a message",
    ),
    Case(
        "opt-eval-samples-zero",
        "cli-options",
        "error",
        _M,
        argv=model_argv(eval_samples="0"),
        mentions=("--eval-samples",),
    ),
    Case("opt-threads-zero", "cli-options", "error", _M, argv=model_argv("--threads", "0"), mentions=("--threads",)),
    Case(
        "opt-target-bogus",
        "cli-options",
        "error",
        _M,
        argv=model_argv("--target", "bogus", passes="w8a8,intonly"),
        mentions=(("--target", "bogus"),),
    ),
    Case(
        "opt-input-shape-zero",
        "cli-options",
        "error",
        _M,
        argv=model_argv("--input-shape", "x=0x3", "--target", "llvm", passes="w8a8,intonly"),
        mentions=(("--input-shape", "x=0x3"),),
    ),
    Case(
        "opt-input-shape-unknown-input",
        "cli-options",
        "error",
        _M,
        argv=model_argv("--input-shape", "nosuch=1x16"),
        mentions=("nosuch",),
    ),
    Case(
        "opt-input-shape-contradicts-model",
        "cli-options",
        "error",
        _M,
        argv=model_argv("--input-shape", "features=2x15"),
        mentions=("features",),
        note="the model fixes features' second dim at 16",
    ),
    Case(
        "opt-unknown-zoo-model", "cli-options", "error", _M, argv=model_argv(model="zoo:nosuch"), mentions=("nosuch",)
    ),
    Case(
        "opt-output-is-file",
        "cli-options",
        "error",
        _then(_M, _out_is_file),
        out_path="existing-file",
        mentions=("existing-file",),
    ),
    Case(
        "opt-output-readonly-parent",
        "cli-options",
        "error",
        _then(_M, _readonly_parent),
        out_path="locked/out",
        restricted=True,
        mentions=("locked",),
    ),
    Case(
        "opt-output-new-parents-bad-model",
        "cli-options",
        "error",
        _bad_model,
        out_path="new1/new2/out",
        mentions=("Frobnicate",),
        note="the parents the run would create must not remain",
    ),
    Case(
        "opt-output-holds-previous-run",
        "cli-options",
        "error",
        _then(_M, _previous_run),
        out_path="previous-run",
        mentions=("previous-run",),
        note="no --force: refuse, leave the earlier outputs untouched",
    ),
    Case(
        "opt-output-previous-run-force",
        "cli-options",
        "ok",
        _then(_M, _previous_run_with_extras),
        argv=model_argv("--force"),
        out_path="previous-run",
        out_keep=("notes.txt",),
        out_gone=("model.int.onnx",),
        note="--force: replace our outputs, remove our stale model.int.onnx, keep the user's notes.txt",
    ),
]
