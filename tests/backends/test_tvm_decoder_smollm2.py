"""The TVM decoder library on the real SmolLM2-135M (marked slow; runs where its ONNX export is cached, as the other
SmolLM2 tests): the `rotate,w4a8` artifact's library is as close to ONNX Runtime on the artifact as the NumPy
reference run of the same spec is, in the logits of a prompt and in perplexity on a 128-token window."""

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


def _cached_export():
    from qcompile.zoo import smollm2
    from qcompile.zoo.data.lee import lee_path

    if not lee_path().is_file():
        pytest.skip(f"Lee corpus not in the cache ({lee_path()}); `make data` fetches it")
    if not smollm2.onnx_path().is_file() and os.environ.get("QCOMPILE_FULL") != "1":
        pytest.skip("SmolLM2's ONNX export is not cached (QCOMPILE_FULL=1 exports it, about 5 minutes)")
    return smollm2.ensure_onnx()


def test_smollm2_w4a8_library_is_as_close_to_onnx_runtime_as_the_exact_reference(tmp_path) -> None:
    """On a real model per-token codes flip between runtimes (the float parts sum in another order): the library's
    logits and perplexity are compared with ONNX Runtime's next to the NumPy reference run of the same spec, whose
    arithmetic is the graph's; the library may differ from ONNX Runtime by at most twice as much as it does."""
    import onnx_ir as ir

    from qcompile import runtime
    from qcompile.backends.onnx import export
    from qcompile.backends.tvm.decoder import artifact, reference
    from qcompile.backends.tvm.decoder.reader import read_decoder
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
    artifact.save(artifact.compile_decoder(path, capacity=256, chunk=64, threads=2), tmp_path)
    library = artifact.load(tmp_path)
    ort_session = runtime.make_session(str(path))
    decoder = read_decoder(ir.load(str(path)))

    def reference_logits(feeds):
        return np.stack([reference.step(decoder, ids, reference.Cache.empty(decoder))[0] for ids in feeds["input_ids"]])

    window = task.windows().evaluation[0][:67]
    check = check_against_onnx(library.session(), ort_session, window, reference.ReferenceSession(decoder))
    assert check["within_reference"] and check["calls"] == 5
    runners = {
        "ort": lambda feeds: runtime.run(ort_session, complete_prefill_feeds(ort_session, feeds))["logits"],
        "tvm": DecoderScoring(library),
        "reference": reference_logits,
    }
    scores = {label: s["perplexity"] for label, s in task.evaluate(runners, 1, seed=0, progress=False).items()}
    spread = abs(scores["reference"] - scores["ort"])
    assert abs(scores["tvm"] - scores["ort"]) <= 2 * spread + 1e-3 * scores["ort"]
