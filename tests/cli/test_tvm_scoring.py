"""TvmScoring: qcompile's model scored by the TVM library where the shapes match, by ONNX Runtime elsewhere."""

from __future__ import annotations

import numpy as np

from qcompile.job import TvmScoring


class _Library:
    metadata = {"inputs": [{"name": "x", "shape": [1, 4]}], "outputs": [{"name": "y"}]}

    def __init__(self) -> None:
        self.calls = 0

    def run(self, feeds):
        self.calls += 1
        assert feeds["x"].shape == (1, 4)  # one sample at a time, as the library was built
        return {"y": feeds["x"] * 2}


def test_matching_batches_run_sample_by_sample_in_the_library_and_others_fall_back() -> None:
    library = _Library()
    fallback_calls = []
    scoring = TvmScoring(library, lambda feeds: fallback_calls.append(feeds) or feeds["x"] * 2)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(scoring({"x": x}), x * 2)
    assert library.calls == 3 and (scoring.by_tvm, scoring.by_ort) == (3, 0) and not fallback_calls
    other = np.ones((2, 5), dtype=np.float32)
    np.testing.assert_array_equal(scoring({"x": other}), other * 2)
    assert (scoring.by_tvm, scoring.by_ort) == (3, 2) and len(fallback_calls) == 1 and library.calls == 3
