"""The TVM decoder library on the real SmolLM2-135M (marked slow; runs where its ONNX export is cached, as the other
SmolLM2 tests): the `rotate,w4a8` artifact's library follows ONNX Runtime on the artifact through a prefill chunk and
greedy decode steps, and its perplexity on two 128-token windows is the artifact's."""

from __future__ import annotations

import os

import numpy as np
import pytest

from qcompile.backends.tvm.kernels.int4_matmul import flavours_for
from qcompile.backends.tvm.target import cpu_features, host_target

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not flavours_for(cpu_features(host_target(1))), reason="the 4-bit matmul needs AVX2 at least"),
]
FLIP_TOLERANCE = 2e-3  # a per-token code on the other side of a rounding boundary (test_tvm_decoder_reader.py)


def _cached_export():
    from qcompile.zoo import smollm2
    from qcompile.zoo.data.lee import lee_path

    if not lee_path().is_file():
        pytest.skip(f"Lee corpus not in the cache ({lee_path()}); `make data` fetches it")
    if not smollm2.onnx_path().is_file() and os.environ.get("QCOMPILE_FULL") != "1":
        pytest.skip("SmolLM2's ONNX export is not cached (QCOMPILE_FULL=1 exports it, about 5 minutes)")
    return smollm2.ensure_onnx()


def test_smollm2_w4a8_library_follows_onnx_runtime(tmp_path) -> None:
    from qcompile import runtime
    from qcompile.backends.onnx import export
    from qcompile.backends.tvm.decoder import artifact
    from qcompile.frontends.onnx import load
    from qcompile.job_tvm_decoder import DecoderScoring, check_against_onnx
    from qcompile.pipeline.run import plan_passes, run_passes
    from qcompile.zoo import smollm2
    from qcompile.zoo.lm_export import complete_prefill_feeds, kv_cache_of

    model = load(_cached_export())
    task = smollm2.SmolLM2(window=128, eval_windows=2)
    task.set_kv_cache(kv_cache_of(model))
    context, passes = plan_passes("rotate,w4a8", decoder=True)
    run_passes(model, passes, context=context, check_numerics=False)
    path = export(model, tmp_path / "model.qdq.onnx", fmt="qdq")
    compiled = artifact.compile_decoder(path, capacity=256, chunk=64, threads=2)
    artifact.save(compiled, tmp_path)
    library = artifact.load(tmp_path)
    ort_session = runtime.make_session(str(path))
    window = task.windows().evaluation[0]
    check = check_against_onnx(library.session(), ort_session, window[:67])
    assert check["argmax_agreement"] == 1.0 and check["max_rel_diff"] <= FLIP_TOLERANCE
    runners = {
        "ort": lambda feeds: runtime.run(ort_session, complete_prefill_feeds(ort_session, feeds))["logits"],
        "tvm": DecoderScoring(library),
    }
    scores = task.evaluate(runners, samples=2, seed=0, progress=False)
    assert scores["tvm"]["perplexity"] == pytest.approx(scores["ort"]["perplexity"], rel=FLIP_TOLERANCE)
    assert np.isfinite(scores["tvm"]["perplexity"]) and scores["tvm"]["top1_agreement"] >= 0.99
