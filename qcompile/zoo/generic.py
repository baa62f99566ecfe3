"""A task for any ONNX file without labelled data: seeded random inputs, agreement with the float model.

Inputs are drawn from N(0, 1) (float) or small non-negative integers (int64, e.g. token ids, masks of 1)
with every dynamic dimension set to `dynamic_size`. Real calibration data calibrates better; this makes
any model runnable end to end. Metric: mean cosine similarity between each runner's outputs and the
float model's (1.0 for the float model itself).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel

__all__ = ["RandomInputTask"]

_FLOAT = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64}
_INT = {ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32}


class RandomInputTask(ZooModel):
    metric_name = "cosine"

    def __init__(self, model: ir.Model, source: str, dynamic_size: int = 1) -> None:
        self._proto = ir.serde.serialize_model(model)  # load() hands out a fresh copy: passes mutate models
        self._inputs = list(self.load().graph.inputs)  # a private copy, never handed out
        self.name = source
        self.description = f"{source} on seeded random inputs"
        self.dynamic_size = dynamic_size
        for value in self._inputs:
            if value.dtype not in _FLOAT and value.dtype not in _INT:
                raise InputError(f"{source}: input '{value.name}' has type {value.dtype}; random inputs support float and int")

    def load(self) -> ir.Model:
        return ir.serde.deserialize_model(self._proto)

    def _feeds(self, rng: np.random.Generator, batch: int) -> Feeds:
        feeds = {}
        for value in self._inputs:
            dims = [d if isinstance(d, int) else self.dynamic_size for d in (value.shape or [])]
            if dims:
                dims[0] = batch if not isinstance(value.shape[0], int) else dims[0]
            if value.dtype in _FLOAT:
                feeds[value.name] = rng.normal(0, 1, dims).astype(_FLOAT[value.dtype])
            else:
                feeds[value.name] = np.ones(dims, dtype=_INT[value.dtype])
        return feeds

    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        def batches():
            rng = np.random.default_rng(seed)
            for start in range(0, samples, batch_size):
                yield self._feeds(rng, min(batch_size, samples - start))

        return CalibrationData(batches=batches, samples=samples)

    def evaluate(self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True) -> dict[str, dict[str, float]]:
        del progress
        rng = np.random.default_rng(seed + 1)
        sums = {label: 0.0 for label in runners}
        count = 0
        for _ in range(samples):
            feeds = self._feeds(rng, 1)
            outputs = {label: runner(feeds).ravel().astype(np.float64) for label, runner in runners.items()}
            reference = next(iter(outputs.values()))
            for label, out in outputs.items():
                denominator = np.linalg.norm(reference) * np.linalg.norm(out)
                sums[label] += float(reference @ out / denominator) if denominator > 0 else 0.0
            count += 1
        return {label: {"cosine": total / max(count, 1)} for label, total in sums.items()}

    def latency_feeds(self) -> Feeds:
        return self._feeds(np.random.default_rng(0), 1)
