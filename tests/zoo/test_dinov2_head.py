"""The packaged DINOv2 probe head: used only when the float model reproduces its fingerprint features."""

from __future__ import annotations

import os

import numpy as np
import pytest

from qcompile import runtime
from qcompile.zoo import dinov2
from qcompile.zoo.linear_probe import LinearProbe

pytestmark = pytest.mark.skipif(
    not dinov2.SHIPPED_HEAD.is_file(), reason="the packaged head is missing (a broken install)"
)


@pytest.fixture(scope="module")
def reference():
    entry = dinov2.DinoV2Small()
    session = runtime.make_session(entry.load())
    output = session.get_outputs()[0].name
    calls = []

    def run(feeds):
        calls.append(len(next(iter(feeds.values()))))
        return runtime.run(session, feeds)[output]

    run.calls = calls
    return run


def test_an_empty_cache_takes_the_shipped_head_after_one_batch(reference, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))
    reference.calls.clear()
    probe = dinov2.DinoV2Small()._probe(reference, progress=False)
    assert reference.calls == [dinov2.FINGERPRINT]  # the fingerprint batch, not the 125 batches of a fit
    shipped = LinearProbe.load(dinov2.SHIPPED_HEAD)
    assert all(np.array_equal(getattr(probe, f), getattr(shipped, f)) for f in ("mean", "std", "weight", "bias"))
    assert (tmp_path / "probes" / "dinov2-s_fmnist_2000.npz").is_file()  # cached like a fitted probe


def test_a_model_that_does_not_reproduce_the_fingerprint_gets_no_shipped_head(reference) -> None:
    def drifted(feeds):
        features = reference(feeds)
        return features + 2 * dinov2.FINGERPRINT_RTOL * np.max(np.abs(features))

    entry = dinov2.DinoV2Small()
    assert entry.shipped_probe(reference) is not None
    assert entry.shipped_probe(drifted) is None


def test_other_probe_sizes_never_take_the_shipped_head(reference) -> None:
    assert dinov2.DinoV2Small(probe_train=200).shipped_probe(reference) is None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("QCOMPILE_FULL") != "1", reason="refits the 2000-image probe (QCOMPILE_FULL=1)")
def test_refitting_here_reproduces_the_shipped_head(reference, tmp_path) -> None:
    entry = dinov2.DinoV2Small()
    path = entry.write_shipped_head(reference, tmp_path / "head.npz", progress=False)
    refit, shipped = LinearProbe.load(path), LinearProbe.load(dinov2.SHIPPED_HEAD)
    images, _ = dinov2.load_split("test")
    features = reference({dinov2.INPUT_NAME: dinov2.vit_preprocess(images[:300])}).astype(np.float64)
    agreement = np.mean(refit.predict(features) == shipped.predict(features))
    assert agreement >= 0.99, agreement
