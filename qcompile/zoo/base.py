"""What a zoo entry provides: a fresh float model, streaming calibration data, an evaluation task.

`evaluate` takes several runners at once (label → function from feeds to the model's output array) and
scores them all on the same evaluation samples in one pass, so FP, qcompile and ONNX Runtime baselines
are compared on identical data.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from qcompile.pipeline.context import CalibrationData, Feeds

__all__ = ["Runner", "ZooModel"]

Runner = Callable[[Feeds], np.ndarray]


class ZooModel(abc.ABC):
    """A real model with real labelled data, usable offline."""

    name: str = ""
    metric_name: str = ""
    default_eval_samples: int = 1000  # evaluated when the caller does not say (at most the task's limit)
    higher_is_better: bool = True  # False for a metric like perplexity (reports then word its change so)
    description: str = ""

    @abc.abstractmethod
    def load(self) -> ir.Model:
        """A fresh float model."""

    @abc.abstractmethod
    def calibration(self, samples: int, seed: int, batch_size: int = 8) -> CalibrationData:
        """Calibration batches drawn (seeded) from data disjoint from the evaluation samples."""

    @abc.abstractmethod
    def evaluate(
        self, runners: dict[str, Runner], samples: int, seed: int, progress: bool = True
    ) -> dict[str, dict[str, float]]:
        """Score every runner on the same `samples` evaluation samples: {label: {metric: value}}.

        The first runner is the reference (the float model); the primary metric is `metric_name`.
        """

    @abc.abstractmethod
    def latency_feeds(self) -> Feeds:
        """One realistic batch-1 input for latency measurement."""

    def sample_limits(self) -> tuple[int | None, int | None]:
        """How many calibration and evaluation samples the data source has (None: no limit)."""
        return None, None
