"""A task for any ONNX file without labelled data: seeded random inputs, agreement with the float model.

Inputs are drawn from N(0, 1) (float) or are ones (integers, e.g. token ids, masks of 1). A symbolic first
axis is the batch axis; every other symbolic dim comes from `input_shapes` (the CLI's `--input-shape
x=1x128x768`, one sample's shape) or, for the built-in tiny model only, from `dynamic_size`: a size is
never invented, since a wrong hidden size only fails later, deep inside ONNX Runtime. The source is
seeded and endless; runs are bounded at `SAMPLE_LIMIT` samples. Real calibration data calibrates better;
this makes any model runnable end to end. Metric: mean cosine similarity between each runner's outputs
and the float model's (1.0 for the float model itself).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.ir import clone_model
from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel

__all__ = ["RandomInputTask", "SAMPLE_LIMIT"]

SAMPLE_LIMIT = 100_000
MAX_SAMPLE_BYTES = 1 << 30

_FLOAT = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.DOUBLE: np.float64}
_INT = {ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32}


class RandomInputTask(ZooModel):
    metric_name = "cosine"

    def __init__(
        self,
        model: ir.Model,
        source: str,
        dynamic_size: int | None = None,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
    ) -> None:
        from qcompile.frontends.precision import compute_in_float32

        compute_in_float32(model, source)  # a no-op unless the model computes in fp16/bf16
        self._model = clone_model(model)  # load() hands out a fresh copy: passes mutate models
        self._inputs = list(self.load().graph.inputs)  # a private copy, never handed out
        self.name = source
        self.description = f"{source} on seeded random inputs"
        if not self._inputs:
            raise InputError(f"{source}: the model has no graph inputs, so there is nothing to calibrate or evaluate")
        shapes = dict(input_shapes or {})
        unknown = sorted(set(shapes) - {v.name for v in self._inputs})
        if unknown:
            names = ", ".join(v.name for v in self._inputs)
            raise InputError(f"--input-shape names {', '.join(unknown)}, not an input of {source} (inputs: {names})")
        self._sample_dims = {}
        for value in self._inputs:
            if value.dtype not in _FLOAT and value.dtype not in _INT:
                raise InputError(
                    f"{source}: input '{value.name}' has type {value.dtype}; random inputs support float and int"
                )
            self._sample_dims[value.name] = _sample_dims(value, shapes.get(value.name), dynamic_size, source)

    def load(self) -> ir.Model:
        return clone_model(self._model)

    def sample_limits(self) -> tuple[int, int]:
        return SAMPLE_LIMIT, SAMPLE_LIMIT

    def _feeds(self, rng: np.random.Generator, batch: int) -> Feeds:
        feeds = {}
        for value in self._inputs:
            dims = list(self._sample_dims[value.name])
            if dims and value.shape is not None and not isinstance(value.shape[0], int):
                dims[0] = batch
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

    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
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


def _sample_dims(value: ir.Value, given: tuple[int, ...] | None, dynamic_size: int | None, source: str) -> list[int]:
    """One sample's dims of input `value`: `given` (checked against the declared dims), else the declared
    dims with a symbolic axis 0 as 1 (the batch axis) and other symbolic axes `dynamic_size` or refused."""
    where = f"{source}: input '{value.name}'"
    if value.shape is None:
        if given is None:
            raise InputError(f"{where} declares no shape; give one sample's shape with --input-shape {value.name}=1x..")
        dims = list(given)
    elif given is not None:
        declared = list(value.shape)
        if len(given) != len(declared):
            raise InputError(f"--input-shape {value.name} has {len(given)} dims; {where} has {len(declared)}")
        for axis, (want, have) in enumerate(zip(given, declared)):
            if isinstance(have, int) and have != want:
                raise InputError(f"--input-shape {value.name} gives {want} at axis {axis}; {where} declares {have}")
        dims = list(given)
    else:
        dims = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
            elif axis == 0:
                dims.append(1)
            elif dynamic_size is not None:
                dims.append(dynamic_size)
            else:
                example = "x".join(
                    str(d) if isinstance(d, int) else ("1" if i == 0 else "N") for i, d in enumerate(value.shape)
                )
                raise InputError(
                    f"{where} has symbolic dim '{dim}' at axis {axis}; give its size with --input-shape "
                    f"{value.name}={example}"
                )
    itemsize = np.dtype(_FLOAT.get(value.dtype) or _INT[value.dtype]).itemsize
    if int(np.prod(dims, dtype=object)) * itemsize > MAX_SAMPLE_BYTES:
        raise InputError(
            f"{where}: one sample of shape {'x'.join(map(str, dims))} needs over {MAX_SAMPLE_BYTES >> 30} GiB"
        )
    return dims
