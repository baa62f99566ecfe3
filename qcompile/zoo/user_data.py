"""A task on the user's own data: their calibration batches, and agreement with the float model on their
evaluation batches (or on the wrapped task's own samples when none are given).

Metric for user evaluation data: mean cosine similarity between each runner's output and the float
model's, per sample (1.0 for the float model itself), as for `RandomInputTask`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from qcompile.errors import InputError
from qcompile.pipeline.context import CalibrationData, Feeds
from qcompile.zoo.base import Runner, ZooModel

__all__ = ["UserDataTask", "as_calibration"]


def as_calibration(data: CalibrationData | Iterable[Feeds]) -> CalibrationData:
    """`CalibrationData` as given, or a list of feed dicts (each a batch) wrapped into one."""
    if isinstance(data, CalibrationData):
        return data
    if isinstance(data, dict):
        return CalibrationData.from_list([data])
    return CalibrationData.from_list(list(data))


class UserDataTask(ZooModel):
    """`base` with its calibration replaced by `calibration` and, when given, its evaluation by cosine
    agreement on `evaluation`'s batches."""

    def __init__(
        self, base: ZooModel, calibration: CalibrationData | None = None, evaluation: CalibrationData | None = None
    ) -> None:
        self.base, self._calibration, self._evaluation = base, calibration, evaluation
        self.name = base.name
        self.description = base.description + (" on the user's data" if calibration or evaluation else "")
        self.metric_name = "cosine" if evaluation is not None else base.metric_name
        self.higher_is_better = True if evaluation is not None else base.higher_is_better

    @property
    def default_eval_samples(self) -> int:
        return self.base.default_eval_samples

    def load(self) -> ir.Model:
        return self.base.load()

    def sample_limits(self) -> tuple[int | None, int | None]:
        calibration_limit, evaluation_limit = self.base.sample_limits()
        return (
            self._calibration.samples if self._calibration is not None else calibration_limit,
            self._evaluation.samples if self._evaluation is not None else evaluation_limit,
        )

    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        if self._calibration is None:
            return self.base.calibration(samples, seed, batch_size)
        return self._calibration

    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
        if self._evaluation is None:
            return self.base.evaluate(runners, samples, seed, progress)
        sums, count = dict.fromkeys(runners, 0.0), 0
        for feeds in self._evaluation.batches():
            outputs = {label: np.asarray(runner(feeds), dtype=np.float64) for label, runner in runners.items()}
            reference = next(iter(outputs.values()))
            reference = reference.reshape(len(reference), -1)
            for label, out in outputs.items():
                out = out.reshape(len(out), -1)
                norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(out, axis=1)
                cosine = np.where(norms > 0, np.sum(reference * out, axis=1) / np.where(norms > 0, norms, 1), 0.0)
                sums[label] += float(cosine.sum())
            count += len(reference)
            if count >= samples:
                break
        if count == 0:
            raise InputError("the evaluation data yields no batches")
        return {label: {"cosine": total / count} for label, total in sums.items()}

    def latency_feeds(self) -> Feeds:
        if self._evaluation is not None:
            return self._evaluation.first_batch(1)
        if self._calibration is not None:
            return self._calibration.first_batch(1)
        return self.base.latency_feeds()
