"""Observer update cost: time of `update()` on one DINOv2-sized activation batch [8, 257, 1536].

python benchmarks/observer_speed.py        (reports; asserts nothing)
"""

import time

import numpy as np

from qcompile.calibration.observers import OBSERVERS, make_observer

batch = np.random.default_rng(12).standard_normal((8, 257, 1536), dtype=np.float32)
print("| observer | update ms (best of 5) |\n|---|---|")
for name in OBSERVERS:
    observer = make_observer(name)
    observer.update(batch)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        observer.update(batch)
        times.append((time.perf_counter() - start) * 1000)
    print(f"| {name} | {min(times):.1f} |")
