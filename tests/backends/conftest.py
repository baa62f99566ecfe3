"""Fixtures of the backend tests: tiny Llama decoder artifacts in every form the TVM decoder reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompile.cli import main
from qcompile.testing.tiny_llama import DECODER_FORMS


@pytest.fixture(scope="session")
def tiny_llama_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QCOMPILE_CACHE of the backend tests' own: the tiny Llama is exported into it once."""
    return tmp_path_factory.mktemp("qcompile-cache")


@pytest.fixture(scope="session")
def tiny_llama_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_llama_cache: Path):
    """`tiny_llama_artifact(form)`: the model.qdq.onnx of the seeded tiny Llama compiled with
    DECODER_FORMS[form] (built once per test session, in `tiny_llama_cache`)."""
    built: dict[str, Path] = {}
    cache = tiny_llama_cache

    def get(form: str) -> Path:
        if form not in built:
            out = tmp_path_factory.mktemp(form)
            args = ["zoo:tiny-llama", "--passes", DECODER_FORMS[form], "-o", str(out), "--force", "--quiet"]
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("QCOMPILE_CACHE", str(cache))
                assert main([*args, "--no-baselines", "--no-html", "--eval-samples", "2"]) == 0
            built[form] = out / "model.qdq.onnx"
        return built[form]

    return get
