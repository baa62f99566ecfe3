"""Linear probes: multinomial logistic regression on frozen float features, cached on disk.

The probe (standardization + weights) is fit once on float features of a training split and then applied
unchanged to features from any model variant, so accuracy differences come from the backbone alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

__all__ = ["LinearProbe", "fit_probe"]


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # [features, classes]
    bias: np.ndarray  # [classes]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(features), axis=-1)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp.npz")
        np.savez(temp, **dataclasses.asdict(self))
        temp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LinearProbe:
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def fit_probe(features: np.ndarray, labels: np.ndarray, c: float = 1.0, seed: int = 0) -> LinearProbe:
    """Fit an L2-regularized logistic regression (lbfgs) on standardized features."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    std = features.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    classifier.fit((features - mean) / std, labels)
    weight = classifier.coef_.T
    bias = classifier.intercept_
    if weight.shape[1] == 1:  # binary: sklearn keeps one column; expand to two logits
        weight = np.concatenate([-weight / 2, weight / 2], axis=1)
        bias = np.concatenate([-bias / 2, bias / 2])
    return LinearProbe(
        mean.astype(np.float64), std.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64)
    )
