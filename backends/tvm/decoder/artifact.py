"""The decoder library as a file: compile a QDQ decoder artifact's steps, save them, load them, open sessions.

    out/decoder.so          the Relax VM executable: `decode` and `prefill`, the packed weights once, as constants
    out/decoder.tvm.json    {"format", "target", "kind", "arch", "cpu", "kernels", "capacity", "chunk", "head_dtype",
                             "cache": [...], "prefix_slots", "vocab", ...}
    out/decoder.prefix.npz  the intact-kv prefix's float keys and values (only for an artifact with one)

Like the encoders' library (`backends.tvm.artifact`) it is built for the CPU that built it, and `load` refuses
another CPU (the kernels use the instructions `kernels` names). With `target="cuda"` (or "cuda:sm_XX") the steps'
kernels are CUDA's (`gpu_kernels`, `gpu_attention`, `gpu_matmul`; the host code is still this CPU's), the cache and
the weights live on the GPU, and `load` needs a CUDA device. Loading needs TVM and NumPy, not the ONNX file.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from qcompile.backends.tvm.decoder.reader import UnsupportedDecoder
from qcompile.backends.tvm.decoder.session import CacheSpec, DecodeSession

__all__ = [
    "FORMAT",
    "LIBRARY",
    "METADATA",
    "PREFIX",
    "DEFAULT_CAPACITY",
    "DEFAULT_CHUNK",
    "CompiledDecoder",
    "DecoderLibrary",
    "compile_decoder",
    "save",
    "load",
    "has_library",
]

FORMAT = "qcompile-tvm-decoder/1"
LIBRARY, METADATA, PREFIX = "decoder.so", "decoder.tvm.json", "decoder.prefix.npz"
DEFAULT_CAPACITY = 2048  # positions of the cache (prompt, generated tokens and an intact-kv prefix together)
DEFAULT_CHUNK = 128  # tokens per `prefill` call


@dataclasses.dataclass
class CompiledDecoder:
    executable: object
    metadata: dict
    cache: CacheSpec
    seconds: float
    decoder: object = None  # the `spec.Decoder` read off the artifact


def compile_decoder(
    model,
    target: str = "llvm",
    capacity: int = DEFAULT_CAPACITY,
    chunk: int | None = DEFAULT_CHUNK,
    head_dtype: str = "float32",
    threads: int | None = None,
) -> CompiledDecoder:
    """Read a QDQ decoder artifact (a path or an onnx_ir.Model) and compile its steps for `target` ("llvm": this
    CPU; "cuda" / "cuda:sm_XX": an NVIDIA GPU, `__dp4a` needs sm_61 or later). Raises `UnsupportedDecoder` with the
    reason for a form, target or CPU the steps are not built for."""
    import onnx_ir as ir
    from tvm.target import codegen

    from qcompile.backends.tvm.decoder.build import GPU_FLAVOUR, build_decode, cache_spec
    from qcompile.backends.tvm.decoder.reader import read_decoder
    from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
    from qcompile.backends.tvm.target import cpu_features, parse_target, split_target

    kind, arch = split_target(target)
    if kind == "cuda" and arch is not None and int(arch[3:]) < 61:
        raise UnsupportedDecoder(f"the decoder's CUDA matmuls use __dp4a, which needs sm_61 or later ({target})")
    if capacity < 1 or (chunk is not None and not 1 <= chunk <= capacity):
        raise ValueError(f"capacity must be at least 1 and chunk in 1..capacity, got {capacity} and {chunk}")
    start = time.perf_counter()
    decoder = read_decoder(ir.load(str(model)) if isinstance(model, (str, Path)) else model)
    tvm_target = parse_target(target, threads)
    flavours = [GPU_FLAVOUR] if kind == "cuda" else flavours_for(cpu_features(tvm_target))
    if not flavours:
        raise UnsupportedDecoder("the decoder's 4-bit matmul needs an x86 CPU with AVX2 at least")
    executable = build_decode(decoder, capacity, flavours[0], tvm_target, head_dtype, chunk)
    cache = cache_spec(decoder, capacity)
    metadata = {
        "format": FORMAT,
        "target": str(tvm_target),
        "kind": kind,
        "arch": arch,
        "kernels": flavours[0],
        "cpu": str(codegen.llvm_get_system_cpu()),
        "capacity": capacity,
        "chunk": chunk,
        "head_dtype": head_dtype if decoder.lm_head.codes is None else "int4",
        "vocab": decoder.vocab,
        "layers": len(decoder.blocks),
        "hidden": decoder.hidden,
        "heads": decoder.heads,
        "kv_heads": decoder.kv_heads,
        "head_dim": decoder.head_dim,
        "cache": [{"shape": list(shape), "dtype": dtype} for shape, dtype in cache.layout],
        "prefix_slots": sorted(cache.prefix),
        "prefix_positions": cache.prefix_positions,
    }
    return CompiledDecoder(executable, metadata, cache, time.perf_counter() - start, decoder)


def save(compiled: CompiledDecoder, directory: Path) -> list[Path]:
    """Write decoder.so, decoder.tvm.json (and decoder.prefix.npz) into `directory`; returns their paths."""
    directory = Path(directory)
    paths = [directory / LIBRARY, directory / METADATA]
    compiled.executable.export_library(str(paths[0]))
    paths[1].write_text(json.dumps(compiled.metadata, indent=2) + "\n")
    if compiled.cache.prefix:
        paths.append(directory / PREFIX)
        with open(paths[2], "wb") as file:
            np.savez(file, **{f"slot{slot}": values for slot, values in compiled.cache.prefix.items()})
    return paths


def has_library(directory: Path) -> bool:
    return (Path(directory) / METADATA).is_file() and (Path(directory) / LIBRARY).is_file()


class DecoderLibrary:
    """A loaded decoder library; `session()` opens a sequence on it (each session owns its cache)."""

    def __init__(self, directory: Path) -> None:
        import tvm
        from tvm.target import codegen

        directory = Path(directory)
        if not has_library(directory):
            raise FileNotFoundError(f"{directory} holds no TVM decoder library ({LIBRARY} + {METADATA})")
        self.metadata = json.loads((directory / METADATA).read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{directory / METADATA}: format {self.metadata.get('format')!r}, expected {FORMAT!r}")
        cpu = str(codegen.llvm_get_system_cpu())
        if self.metadata["cpu"] != cpu:
            raise RuntimeError(f"{directory / LIBRARY} was built for CPU {self.metadata['cpu']}; this CPU is {cpu}")
        self.device = tvm.cpu()
        if self.metadata.get("kind") == "cuda":
            if not tvm.cuda(0).exist:
                raise RuntimeError(
                    f"{directory / LIBRARY} is built for a CUDA GPU ({self.metadata['arch']}): none here"
                )
            self.device = tvm.cuda(0)
        prefix = {}
        if self.metadata["prefix_slots"]:
            with np.load(directory / PREFIX) as stored:
                prefix = {slot: stored[f"slot{slot}"] for slot in self.metadata["prefix_slots"]}
        layout = [(tuple(entry["shape"]), entry["dtype"]) for entry in self.metadata["cache"]]
        self.cache = CacheSpec(layout, prefix)
        self.module = tvm.runtime.load_module(str(directory / LIBRARY))

    def session(self) -> DecodeSession:
        return DecodeSession(self.module, self.cache, self.metadata["chunk"], self.device)


def load(directory: str | Path) -> DecoderLibrary:
    """Load a decoder library folder (TVM's thread pool: `qcompile.backends.tvm.configure_pool`)."""
    return DecoderLibrary(Path(directory))
