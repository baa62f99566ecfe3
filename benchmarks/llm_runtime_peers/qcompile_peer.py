"""qcompile's rows of the runtime table: a qcompile SmolLM2-135M artifact (model.qdq.onnx) run by the TVM decode
step (`qcompile.backends.tvm.decoder`) and, for reference, by ONNX Runtime as written (QDQ, MatMulNBits fusions
in float32 as qcompile evaluates it), in qcompile's own venv.

Settings (ARTIFACT: the output folder of the `qcompile` command in the setting's docstring line):
  tvm_w4a8         out/llm/rotate_w4a8_gptq   rotate,w4a8:weight_search=gptq --calib-samples 128
  tvm_w4a8_f16head the same, the float LM head stored as float16 in the library (an opt-in of the TVM build)
  tvm_w4a8_i8head  the same, the LM head stored as int8 codes with a scale per vocabulary entry (another opt-in)
  ort_w4a8         the same artifact in ONNX Runtime
  tvm_w4a4kv4_f16head, ort_w4a4kv4   out/llm/rotate_w4a4kv4_gptq   rotate,w4a4kv4:weight_search=gptq:
                   act_symmetric=false:act_clip_ratio=search:clip_ratio=search --calib-samples 128 (the KV cache
                   stored as 4-bit codes with per-token scales and zero points)
  tvm_intact_w4a4kv4_f16head, ort_intact_w4a4kv4   out/llm/rotate_intact-kv_w4a4kv4_gptq   the same passes with
                   intact-kv before w4a4kv4 (the [BOS] prefix's float KV baked in; the cache behind it float)

The TVM library's `prefill` runs the prompt in chunks of CHUNK tokens (the rest through the decode step);
perplexity windows go through the decode step token by token (the prefill function returns the last token's
logits only). `truncate(n)` moves the write position back (the attention reads positions up to the current one
only). The LM head of these artifacts is float32
(the recipes keep it float) and read in full every step.

Run from /work/main (after `make setup`):
    .venv/bin/python benchmarks/llm_runtime_peers/qcompile_peer.py --setting tvm_w4a8
QCOMPILE_PEER_ARTIFACT=FOLDER runs a setting on another artifact folder (named in the record's notes).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402  (puts benchmarks/llm_peers first on sys.path: it has an ort_peer.py of its own)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's ort_peer.py, not llm_peers'
from ort_peer import OrtBackend  # noqa: E402  (numpy only at import: runs in either venv)

ROOT = Path(__file__).resolve().parents[2]
W4A8 = ROOT / "out/llm/rotate_w4a8_gptq"
W4A4KV4 = ROOT / "out/llm/rotate_w4a4kv4_gptq"
INTACT = ROOT / "out/llm/rotate_intact-kv_w4a4kv4_gptq"
ARTIFACTS = {
    "tvm_w4a8": W4A8,
    "tvm_w4a8_f16head": W4A8,
    "tvm_w4a8_i8head": W4A8,
    "ort_w4a8": W4A8,
    "tvm_w4a4kv4_f16head": W4A4KV4,
    "ort_w4a4kv4": W4A4KV4,
    "tvm_intact_w4a4kv4_f16head": INTACT,
    "ort_intact_w4a4kv4": INTACT,
}
HEADS = {"f16head": "float16", "i8head": "int8"}  # a setting's suffix → how the library stores the LM head
CAPACITY = 1024
CHUNK = 128


class TvmBackend:
    def __init__(self, session) -> None:
        self.session = session
        self.reset()

    def reset(self) -> None:
        self.session.reset()
        self.start = self.session.position  # an intact-kv prefix's positions come first

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self.session.prefill(ids)

    def decode(self, token: int) -> np.ndarray:
        return self.session.step(token)

    def truncate(self, n: int) -> None:
        self.session.position = self.start + n

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        self.reset()
        return np.stack([self.session.step(int(token)) for token in ids])


def weight_mb(decoder, head_dtype: str) -> float:
    """Bytes the decode step reads per token for weights: 4-bit codes (padded to 16 columns), their scales and zero
    points (and weight sums for asymmetric activations), the LM head; the embedding row gathered is left out."""
    total = 0
    for block in decoder.blocks:
        for layer in (block.qkv, block.o, block.gate_up, block.down):
            columns = -(-layer.out_features // 16) * 16
            groups = layer.in_features // layer.group
            total += layer.in_features * columns // 2 + groups * columns * 4 * (2 if layer.act.symmetric else 3)
    head = decoder.lm_head.weight
    head_bytes = {"float16": 2 * head.size, "int8": head.size + 4 * head.shape[1]}.get(head_dtype, 4 * head.size)
    return (total + head_bytes) / 1e6


def _load(setting: str, threads: int):
    folder = Path(os.environ.get("QCOMPILE_PEER_ARTIFACT", ARTIFACTS[setting]))
    path = folder / "model.qdq.onnx"
    size = rt_common.size_mb(path)
    if setting.startswith("ort"):
        from qcompile.runtime.sessions import make_session

        return OrtBackend(make_session(str(path), threads=threads)), size, {"notes": f"artifact {folder}"}
    from qcompile.backends.tvm import configure_pool

    configure_pool(threads)
    import onnx_ir as ir

    from qcompile.backends.tvm.decoder.build import build_decode, cache_spec
    from qcompile.backends.tvm.decoder.reader import read_decoder
    from qcompile.backends.tvm.decoder.session import DecodeSession
    from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
    from qcompile.backends.tvm.target import cpu_features, host_target

    decoder = read_decoder(ir.load(str(path)))
    target = host_target(threads)
    start = time.perf_counter()
    head = HEADS.get(setting.rsplit("_", 1)[-1], "float32")
    executable = build_decode(decoder, CAPACITY, flavours_for(cpu_features(target))[0], target, head, CHUNK)
    build_seconds = time.perf_counter() - start
    library = Path(os.environ.get("TMPDIR", "/tmp")) / "qcompile_decode.so"
    executable.export_library(str(library))
    extra = {
        "build_seconds": build_seconds,
        "library_mb": library.stat().st_size / 1e6,
        "weights_mb": weight_mb(decoder, head),
        "notes": f"prefill in chunks of {CHUNK}; LM head {head}; artifact {folder}",
    }
    return TvmBackend(DecodeSession(executable, cache_spec(decoder, CAPACITY), CHUNK)), size, extra


def main() -> None:
    args = rt_common.arguments(sorted(ARTIFACTS))
    runtime = "qcompile TVM" if args.setting.startswith("tvm") else "ONNX Runtime (qcompile artifact)"
    rt_common.run_setting("qcompile", runtime, args.setting, args, lambda: _load(args.setting, args.threads))


if __name__ == "__main__":
    main()
