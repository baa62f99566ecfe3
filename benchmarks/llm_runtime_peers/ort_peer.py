"""Runtime peer: ONNX Runtime 1.32 (CPU EP) on qcompile's float SmolLM2-135M decoder with its KV cache.

The model is qcompile's export (/root/.cache/qcompile/models/smollm2-135m-kv/model.onnx: input_ids and 30 x 2
past_key_values.{i}.key/value [1, 3, past, 64] -> logits [1, seq, 49152] and present.{i}.key/value); the prefill
feeds an empty past, decode feeds one token and the previous presents (the cut back to ctx tokens is a numpy slice).
The graph computes logits at every position, also in prefill (the export has no last-token-only output).

Settings:
  fp32        the float decoder as exported
  nbits_acc4  MatMulNBitsQuantizer(bits=4, block_size=128, is_symmetric=False, accuracy_level=4: int8 compute),
              the quantizer of llm_peers/ort_peer.py nbits_default_acc4 applied to the KV decoder; its lm_head
              (MatMul with the transposed tied embedding) has no constant weight, so it stays float32.
              Written once to /work/peers/ort/runtime_nbits_acc4.onnx (+ .data), in a child process.

Session: intra_op_num_threads=--threads, inter_op_num_threads=1, default graph optimizations.

Run (venv /work/peers/venv-ort, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-ort/bin/python benchmarks/llm_runtime_peers/ort_peer.py --setting fp32
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402

WORK = rt_common.PEERS / "ort"
ARTIFACTS = {"fp32": rt_common.KV_ONNX, "nbits_acc4": WORK / "runtime_nbits_acc4.onnx"}


def build_nbits(out: Path) -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    model = onnx.load(str(rt_common.KV_ONNX))
    q = mnq.MatMulNBitsQuantizer(model, bits=4, block_size=128, is_symmetric=False, accuracy_level=4)
    q.process()
    qm = q.model.model if hasattr(q.model, "model") else q.model
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(qm, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=out.name + ".data")


class OrtBackend:
    """A decoder ONNX model with past_key_values inputs; each cache input (float, or a quantized artifact's codes,
    scales and zero points) starts empty in its own dtype and width."""

    DTYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}

    def __init__(self, session) -> None:
        self.session = session
        inputs = [i for i in session.get_inputs() if i.name != "input_ids"]
        self.past_names = [i.name for i in inputs]
        self.outputs = ["logits"] + [n.replace("past_key_values.", "present.") for n in self.past_names]
        # [batch, kv_heads, past, head_dim (or 1 for scales)]
        self.empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), self.DTYPES[i.type]) for i in inputs}
        self.past = None

    def reset(self) -> None:
        self.past = dict(self.empty)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        out = self.session.run(self.outputs, {"input_ids": ids, **self.past})
        self.past = dict(zip(self.past_names, out[1:]))
        return out[0]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids[None])[0, -1]

    def decode(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], dtype=np.int64))[0, -1]

    def truncate(self, n: int) -> None:
        self.past = {k: np.ascontiguousarray(v[:, :, :n]) for k, v in self.past.items()}

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        self.reset()
        return self._run(ids[None])[0]


def main() -> None:
    if sys.argv[1:2] == ["--build-artifact"]:
        build_nbits(ARTIFACTS["nbits_acc4"])
        return
    args = rt_common.arguments(list(ARTIFACTS))
    path = ARTIFACTS[args.setting]
    if not path.is_file():  # quantize in a child process so this one's peak RSS is the runtime's alone
        subprocess.run([sys.executable, __file__, "--build-artifact"], check=True)

    def load():
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        extra = {"runtime_version": f"onnxruntime {ort.__version__}", "artifact": str(path)}
        return OrtBackend(session), rt_common.size_mb(path, path.with_name(path.name + ".data")), extra

    notes = "qcompile's KV decoder; logits for all prompt positions in prefill"
    if args.setting == "nbits_acc4":
        notes += "; MatMulNBits 4-bit asym block 128, accuracy_level 4; lm_head float32"
    rt_common.run_setting("ort", "ONNX Runtime", args.setting, args, load, notes)


if __name__ == "__main__":
    main()
