"""measure_latency: call pattern and result shape (no timing assertions: benchmarks report timings)."""

from qcompile.report.latency import measure_latency


def test_each_runner_is_warmed_up_then_run_in_alternating_blocks():
    calls = []
    runners = {label: (lambda label=label: calls.append(label)) for label in ("a", "b")}
    result = measure_latency(runners, warmup=2, rounds=6, block=4, pause=0.0)
    # warm-up a,a,b,b then 6 // 3 = 2 rounds of a block of 4 per runner, alternating
    assert calls == ["a"] * 2 + ["b"] * 2 + (["a"] * 4 + ["b"] * 4) * 2
    assert set(result) == {"a", "b"} and all(value >= 0.0 for value in result.values())
