"""The pass library, installed as `qcompile.passes`. Importing it registers every built-in pass and recipe."""

from qcompile.passes.analysis import calibrate  # noqa: F401
from qcompile.passes.quantize import recipes, uniform  # noqa: F401
from qcompile.passes.transforms import noisy_bias, smooth  # noqa: F401
