"""Runtime peer: ONNX Runtime GenAI 0.18 (CPU) on SmolLM2-135M built by its own model builder.

The builder reads the Hugging Face folder /work/peers/smollm2-hf (make_hf_folder.py: the GGUF's float32 weights)
with its defaults for the CPU EP, into /work/peers/ortgenai/<setting>/ (in a child process, once):
  fp32   -p fp32 -e cpu
  int4   -p int4 -e cpu   (MatMulNBits, block_size 32, symmetric, accuracy_level 4 = int8 compute; the untied
         lm_head is quantized too)
Command: python -m onnxruntime_genai.models.builder -i /work/peers/smollm2-hf -o <out> -p <setting> -e cpu
(HF_HUB_OFFLINE=1: nothing is downloaded). The decoder session gets intra_op_num_threads=--threads through
og.Config.overlay. A Generator (greedy, max_length 1100, past_present_share_buffer as built) is made per sequence:
prefill = append_tokens(prompt), decode = append_tokens([token]) (the token is given, not sampled), the cut back
to ctx is rewind_to(ctx); perplexity reads get_output("logits") after appending a whole window.

Run (venv /work/peers/venv-ortgenai, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-ortgenai/bin/python benchmarks/llm_runtime_peers/ortgenai_peer.py --setting int4
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402

WORK = rt_common.PEERS / "ortgenai"
HF_DIR = rt_common.PEERS / "smollm2-hf"
SETTINGS = ["fp32", "int4"]
MAX_LENGTH = 1100


def build(setting: str) -> Path:
    out = WORK / setting
    if (out / "genai_config.json").is_file():
        return out
    if not (HF_DIR / "config.json").is_file():
        raise RuntimeError(f"{HF_DIR} missing: run make_hf_folder.py in venv-torch first")
    log = WORK / f"build_{setting}.log"
    WORK.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(HF_DIR), "-o", str(out)]
    command += ["-p", setting, "-e", "cpu", "-c", str(WORK / "cache")]
    with open(log, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=handle, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"model builder failed (rc {done.returncode}), log {log}: {log.read_text()[-600:]}")
    return out


class GenaiBackend:
    def __init__(self, og, model) -> None:
        self.og = og
        self.model = model
        self.params = og.GeneratorParams(model)
        self.params.set_search_options(max_length=MAX_LENGTH, do_sample=False)
        self.generator = None

    def reset(self) -> None:
        self.generator = self.og.Generator(self.model, self.params)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.generator.append_tokens(ids.astype(np.int32))
        return np.asarray(self.generator.get_logits()).reshape(-1)

    def decode(self, token: int) -> np.ndarray:
        self.generator.append_tokens(np.array([token], dtype=np.int32))
        return np.asarray(self.generator.get_logits()).reshape(-1)

    def truncate(self, n: int) -> None:
        self.generator.rewind_to(n)

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        self.reset()
        self.generator.append_tokens(ids.astype(np.int32))
        logits = np.asarray(self.generator.get_output("logits"))
        return logits.reshape(-1, logits.shape[-1])[-len(ids) :]


def main() -> None:
    args = rt_common.arguments(SETTINGS)

    def load():
        folder = build(args.setting)  # child process: the builder's memory is not this one's
        import onnxruntime_genai as og

        config = og.Config(str(folder))
        options = {"intra_op_num_threads": args.threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        model = og.Model(config)
        files = [p for p in folder.iterdir() if p.name.startswith("model.onnx")]
        extra = {"runtime_version": f"onnxruntime-genai {og.__version__}", "artifact": str(folder)}
        return GenaiBackend(og, model), rt_common.size_mb(*files), extra

    notes = "model builder defaults for CPU; artifact_mb = model.onnx + .data"
    rt_common.run_setting("ortgenai", "ONNX Runtime GenAI", args.setting, args, load, notes)


if __name__ == "__main__":
    main()
