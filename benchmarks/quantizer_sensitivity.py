"""Which quantizers limit a recipe? Output SQNR with one role of quantizers kept at a time.

Compile a zoo model with a pass list, then for every role (weights or activations, keyed by the consuming
node's name with the layer index replaced by `L`, and the input index) keep only that role's quantizers
and measure the output SQNR against the float model on 3 held-out calibration batches (seed 1). With
`--probe`, the outputs are first standardized the way the zoo's linear probe standardizes features, so
the SQNR weighs every feature as the probe does. Reports; asserts nothing. Numbers quoted in
docs/methods/rotate.md and docs/methods/outliers.md come from here.

    python benchmarks/quantizer_sensitivity.py --model dinov2-s --passes rotate,w6a6 [--probe]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

import numpy as np

from qcompile import runtime, zoo
from qcompile.ir import quant_meta
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes
from qcompile.runtime import qdq
from qcompile.zoo.cache import cache_dir
from qcompile.zoo.linear_probe import LinearProbe

RESULTS = Path(__file__).resolve().parent / "results"


def role(value) -> str:
    node, index = next((use.node, use.idx) for use in value.uses())
    name = re.sub(r"layer[._]\d+", "L", node.name or node.op_type)
    return f"{'weight' if value.const_value is not None else 'activation'} {name} #{index}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dinov2-s")
    parser.add_argument("--passes", default="rotate,w6a6")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--probe", action="store_true", help="standardize outputs with the cached linear probe")
    args = parser.parse_args()
    entry = zoo.get(args.model)
    model = entry.load()
    run_passes(
        model,
        args.passes,
        context=PipelineContext(calibration=entry.calibration(args.calib_samples, 0), progress=False),
    )
    feeds = list(entry.calibration(24, 1).batches())[:3]
    float_session = runtime.make_session(entry.load(), threads=2)
    scale = lambda y: y  # noqa: E731
    if args.probe:
        paths = sorted((cache_dir() / "probes").glob(f"{args.model}_*.npz"))
        if not paths:
            print(f"no cached probe for {args.model}: run benchmarks/outlier_table.py first", file=sys.stderr)
            return 2
        probe = LinearProbe.load(paths[-1])
        scale = lambda y: (y - probe.mean) / probe.std  # noqa: E731
    references = [scale(float_session.run(None, f)[0].astype(np.float64)) for f in feeds]

    def sqnr() -> float:
        session = runtime.make_session(qdq.to_qdq(model), threads=2)
        signal = noise = 0.0
        for f, ref in zip(feeds, references):
            out = scale(session.run(None, f)[0].astype(np.float64))
            signal, noise = signal + np.sum(ref**2), noise + np.sum((out - ref) ** 2)
        return float(10 * np.log10(signal / noise))

    values = quant_meta.quantized_values(model.graph)
    specs = {id(v): quant_meta.get_quant(v) for v in values}
    roles = collections.defaultdict(list)
    for value in values:
        roles[role(value)].append(value)
    rows = []
    for name, members in sorted(roles.items()):
        keep = {id(v) for v in members}
        for value in values:
            quant_meta.set_quant(value, specs[id(value)]) if id(value) in keep else quant_meta.clear_quant(value)
        rows.append((f"{name} ({len(members)})", sqnr()))
        print(f"{rows[-1][0]}: {rows[-1][1]:.1f} dB", file=sys.stderr, flush=True)
    for value in values:
        quant_meta.set_quant(value, specs[id(value)])
    rows.append(("all quantizers", sqnr()))
    metric = "probe-standardized output SQNR" if args.probe else "output SQNR"
    text = (
        f"# {args.model} `{args.passes}`: {metric} with one role of quantizers kept\n\n"
        f"`python benchmarks/quantizer_sensitivity.py --model {args.model} "
        f"--passes {args.passes}{' --probe' if args.probe else ''}` "
        f"({args.calib_samples} calibration samples; 3 held-out batches)\n\n| quantizers kept | dB |\n|---|---|\n"
        + "".join(f"| {name} | {db:.1f} |\n" for name, db in rows)
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = (
        f"sensitivity_{args.model}_{args.passes.replace(',', '+').replace(':', '-').replace('=', '')}"
        f"{'_probe' if args.probe else ''}"
    )
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
