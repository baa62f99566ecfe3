"""Peer: ONNX Runtime 1.32 quantization tools on SmolLM2-135M (qcompile's float ONNX export), scored with ORT.

Measures perplexity on the 16 evaluation windows (8,192 tokens), top-1 agreement with the float ONNX model run
by the same ORT, and the wall time of the quantization call, for:

  fp            the float ONNX model (reference of this runtime)
  dyn_w8a8      onnxruntime.quantization.quantize_dynamic, weight_type=QInt8, per_channel=True (other args default;
                its default op types include Gather, so the tied embedding/lm_head table becomes per-tensor uint8)
  dyn_w8a8_matmul  the same with op_types_to_quantize=["MatMul"] (embedding table left float)
  nbits_default MatMulNBitsQuantizer, 4-bit, block_size=128, is_symmetric=False, default algorithm (min/max RTN)
  nbits_rtn     MatMulNBitsQuantizer with RTNWeightOnlyQuantConfig (INC round-to-nearest)
  nbits_hqq     MatMulNBitsQuantizer with HQQWeightOnlyQuantConfig(block_size=128, bits=4)
  nbits_gptq    MatMulNBitsQuantizer with GPTQWeightOnlyQuantConfig(block_size=128) and a calibration data
                reader over the chosen calibration windows (--calib N; qcompile's seed-0 pick)

--accuracy-level L sets MatMulNBits' accuracy_level (0/None = default: fp32 compute; 4 = int8 activations per
block). The artifact evaluated is the real quantized ONNX file run by ORT CPU (intra_op_num_threads=--threads).

Run (venv /work/peers/venv-ort, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-ort/bin/python benchmarks/llm_peers/ort_peer.py --setting dyn_w8a8
  ... --setting nbits_default [--accuracy-level 4]
Records go to /work/peers/out/ort_<setting>[_acc<L>].json; collect.py gathers them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WORK = Path("/work/peers/ort")


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def runner(sess):
    return lambda chunk: sess.run(["logits"], {"input_ids": chunk})[0]


class Reader:
    """onnxruntime CalibrationDataReader over calibration windows, one window per sample."""

    def __init__(self, calib: np.ndarray) -> None:
        self.calib = calib
        self.i = 0

    def get_next(self):
        if self.i >= len(self.calib):
            return None
        self.i += 1
        return {"input_ids": self.calib[self.i - 1 : self.i]}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.calib)

    def __iter__(self):
        self.rewind()
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def quantize(setting: str, out: Path, args) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    src = str(common.ONNX_MODEL)
    info: dict = {}
    if setting == "dyn_w8a8":
        quantize_dynamic(src, str(out), weight_type=QuantType.QInt8, per_channel=True)
        return info
    if setting == "dyn_w8a8_matmul":
        quantize_dynamic(src, str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        return info
    acc = args.accuracy_level if args.accuracy_level else None
    if setting == "nbits_default":
        algo = None
    elif setting == "nbits_rtn":
        algo = mnq.RTNWeightOnlyQuantConfig()
    elif setting == "nbits_hqq":
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=128, bits=4)
    elif setting == "nbits_gptq":
        calib = common.calib_windows(args.calib)
        info["calibration_windows"] = len(calib)
        algo = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(calib), block_size=128)
    else:
        raise SystemExit(f"unknown setting {setting}")
    model = onnx.load(src)  # external data loaded from next to the file
    q = mnq.MatMulNBitsQuantizer(
        model,  # ModelProto with its external data loaded (a path makes INC's GPTQ session lose the .data file)
        bits=4,
        block_size=128,
        is_symmetric=False,
        accuracy_level=acc,
        algo_config=algo,
    )
    q.process()
    qm = q.model.model if hasattr(q.model, "model") else q.model
    onnx.save_model(qm, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=out.name + ".data")
    return info


def describe(path: Path) -> dict:
    import collections

    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    attrs = {}
    if nbits:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    lm_head = [n.op_type for n in m.graph.node if n.output and n.output[0] == "logits"]
    float_matmuls = ops.get("MatMul", 0)
    return {
        "op_counts": {
            k: v
            for k, v in ops.items()
            if k
            in (
                "MatMul",
                "MatMulNBits",
                "MatMulInteger",
                "DynamicQuantizeLinear",
                "Gather",
                "GatherBlockQuantized",
                "DequantizeLinear",
                "QuantizeLinear",
            )
        },
        "first_matmulnbits_attrs": attrs,
        "float_matmul_left": float_matmuls,
        "logits_producer": lm_head,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setting", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accuracy-level", type=int, default=0)
    ap.add_argument("--calib", type=int, default=common.CALIB_WINDOWS)
    args = ap.parse_args()
    import onnxruntime as ort

    WORK.mkdir(parents=True, exist_ok=True)
    fp_ppl, fp_top = common.fp_top(
        "ort", lambda: common.score(runner(session(common.ONNX_MODEL, args.threads)), "ort fp")
    )
    name = f"ort_{args.setting}" + (f"_acc{args.accuracy_level}" if args.accuracy_level else "")
    if args.setting == "fp":
        common.record(
            name,
            {
                "peer": f"onnxruntime {ort.__version__}",
                "setting": "float ONNX",
                "perplexity": fp_ppl,
                "fp_perplexity": fp_ppl,
                "top1_agreement": 1.0,
                "artifact": "real (float ONNX, ORT CPU)",
            },
        )
        return
    out = WORK / f"{name}.onnx"
    start = time.perf_counter()
    try:
        info = quantize(args.setting, out, args)
    except Exception as error:  # noqa: BLE001 - the row says why
        common.record_failure(name, f"onnxruntime {ort.__version__}", args.setting, error, start)
        return
    qtime = time.perf_counter() - start
    desc = describe(out)
    print(desc, flush=True)
    scores = common.score(runner(session(out, args.threads)), name)
    size = out.stat().st_size + sum(p.stat().st_size for p in out.parent.glob(out.name + ".data"))
    common.record_scores(
        name,
        f"onnxruntime {ort.__version__}",
        args.setting,
        scores,
        (fp_ppl, fp_top),
        qtime,
        accuracy_level=args.accuracy_level or "default (0: fp32 compute)",
        artifact="real (quantized ONNX run by ORT CPU EP)",
        model_bytes=size,
        threads=args.threads,
        **info,
        **desc,
    )


if __name__ == "__main__":
    main()
