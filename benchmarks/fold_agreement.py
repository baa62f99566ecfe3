"""How far apart are two pass lists that are equal in real arithmetic? Reports; asserts nothing.

Runs both pass lists on a zoo model (no quantization) and prints the largest relative difference,
max |a − b| / max |a|, over the float initializers the two models share. docs/methods/rotate.md quotes
it for `rotate` against `repq-ln,rotate` on DINOv2 (equal in reals, see the composition paragraph).

    python benchmarks/fold_agreement.py --model dinov2-s --passes rotate --other repq-ln,rotate
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from qcompile import zoo
from qcompile.pipeline.context import PipelineContext
from qcompile.pipeline.run import run_passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dinov2-s")
    parser.add_argument("--passes", default="rotate")
    parser.add_argument("--other", default="repq-ln,rotate")
    parser.add_argument("--calib-samples", type=int, default=32)
    args = parser.parse_args()
    entry = zoo.get(args.model)
    models = []
    for passes in (args.passes, args.other):
        model = entry.load()
        run_passes(
            model, passes, context=PipelineContext(calibration=entry.calibration(args.calib_samples, 0), progress=False)
        )
        models.append({name: value.const_value.numpy() for name, value in model.graph.initializers.items()})
    first, second = models
    worst, where = 0.0, None
    for name in sorted(set(first) & set(second)):
        a, b = first[name], second[name]
        if a.shape != b.shape or a.dtype.kind != "f" or not a.size:
            continue
        diff = float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(a).max(), 1e-30))
        if diff > worst:
            worst, where = diff, name
    only = sorted(set(first) ^ set(second))
    print(
        f"{args.model}: '{args.passes}' vs '{args.other}': {len(set(first) & set(second))} shared initializers, "
        f"{len(only)} not shared; largest relative difference {worst:.2g} ({where})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
