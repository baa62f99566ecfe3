"""Peer: AMD Quark 0.13 ONNX quantizer (`quark.onnx.ModelQuantizer`) on SmolLM2-135M (qcompile's float ONNX export).

Measures perplexity on the 16 evaluation windows, top-1 agreement with the float ONNX model run by the same ORT
(onnxruntime 1.32.0 in this venv), and the wall time of `quantize_model`, for Quark's named default configs:

  a8w8            get_default_config("A8W8"): static QDQ, int8 symmetric activations (per-tensor, MinMax
                  calibration) and int8 weights
  int8_tr         get_default_config("INT8_TRANSFORMER_DEFAULT"): static QDQ, uint8 activations (MinMax, moving
                  average), int8 weights
  a8w8_noalign    A8W8 with extra option AlignConcat=False (the preset's AlignConcat step fails on this graph)
  a8w8_sq         A8W8 (AlignConcat=False) + SmoothQuantConfig() (Quark default alpha=0.5)
  u8_dynamic      get_default_config("UINT8_DYNAMIC_QUANT") (dynamic quantization)
  nbits           get_default_config("MATMUL_NBITS"): 4-bit MatMulNBits, group 128, symmetric, accuracy level 1
  nbits_asym      the same with MatMulNBitsParams Symmetric=False

Calibration (static configs): qcompile's calibration windows (512 tokens, numpy seed 0) through a
CalibrationDataReader; --calib N picks N windows exactly as qcompile does for N (seed 0) (N=16 was used for
the static configs: Quark's MinMax calibrator keeps every run's full model outputs, incl. the 100 MB logits per
window, in memory — 32 windows peaked at 12.7 GB RSS, and 128 would need ~15 GB, more than this shared 23 GB
machine had free). The artifact evaluated is Quark's quantized ONNX file run by ORT CPU, 2 threads.

Run (venv /work/peers/venv-quark, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-quark/bin/python benchmarks/llm_peers/quark_peer.py --setting a8w8
Records go to /work/peers/out/quark_<setting>.json; collect.py gathers them.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from ort_peer import Reader, describe, runner, session  # noqa: E402

WORK = Path("/work/peers/quark")


def _a8w8_without_align_concat(get_default_config):
    """Quark's A8W8 preset with AlignConcat off (the preset's AlignConcat refinement asserts on this graph)."""
    cfg = get_default_config("A8W8")
    cfg.extra_options = copy.deepcopy(cfg.extra_options)
    cfg.extra_options["AlignConcat"] = False
    return cfg


def build(setting: str):
    from quark.onnx import ModelQuantizer
    from quark.onnx.quantization.config.config import Config
    from quark.onnx.quantization.config.custom_config import get_default_config

    algorithms = []
    if setting == "a8w8":
        cfg = get_default_config("A8W8")
    elif setting == "int8_tr":
        cfg = get_default_config("INT8_TRANSFORMER_DEFAULT")
    elif setting == "a8w8_noalign":
        cfg = _a8w8_without_align_concat(get_default_config)
    elif setting == "a8w8_sq":
        from quark.onnx.quantization.config.algorithm import SmoothQuantConfig

        cfg = _a8w8_without_align_concat(get_default_config)
        algorithms = [SmoothQuantConfig()]
    elif setting == "u8_dynamic":
        cfg = get_default_config("UINT8_DYNAMIC_QUANT")
    elif setting == "nbits":
        cfg = get_default_config("MATMUL_NBITS")
    elif setting == "nbits_asym":
        cfg = get_default_config("MATMUL_NBITS")
        cfg.extra_options = copy.deepcopy(cfg.extra_options)
        cfg.extra_options["MatMulNBitsParams"]["Symmetric"] = False
    else:
        raise SystemExit(f"unknown setting {setting}")
    return ModelQuantizer(Config(global_quant_config=cfg)), algorithms, cfg


def main() -> None:
    args = common.peer_arguments()
    import onnxruntime as ort
    import quark

    peer = f"amd-quark {getattr(quark, '__version__', '0.13')} (onnxruntime {ort.__version__})"
    WORK.mkdir(parents=True, exist_ok=True)
    fp_ppl, fp_top = common.fp_top(
        "quark_ort", lambda: common.score(runner(session(common.ONNX_MODEL, args.threads)), "quark-venv fp")
    )
    name = f"quark_{args.setting}"
    if args.setting == "fp":
        common.record_float(name, peer, "float ONNX", fp_ppl)
        return
    out = WORK / f"{name}.onnx"
    calib = common.calib_windows(args.calib)
    import os

    os.chdir(WORK)  # Quark writes quantized_info.csv into the working directory; keep it out of the repo
    start = time.perf_counter()
    try:
        quantizer, algorithms, cfg = build(args.setting)
        print("config:", cfg, flush=True)
        quantizer.quantize_model(
            str(common.ONNX_MODEL), str(out), calibration_data_reader=Reader(calib), algorithms=algorithms
        )
    except Exception as error:  # noqa: BLE001 - the row says why
        common.record_failure(name, peer, args.setting, error, start)
        return
    qtime = time.perf_counter() - start
    desc = describe(out)
    print(desc, flush=True)
    scores = common.score(runner(session(out, args.threads)), name)
    size = sum(p.stat().st_size for p in out.parent.glob(out.name + "*"))
    common.record_scores(
        name,
        peer,
        args.setting,
        scores,
        (fp_ppl, fp_top),
        qtime,
        artifact="real (Quark's quantized ONNX run by ORT CPU EP)",
        model_bytes=size,
        calibration_windows=len(calib),
        threads=args.threads,
        **desc,
    )


if __name__ == "__main__":
    main()
