"""The pass library, installed as `qcompile.passes`. Importing it registers every built-in pass and recipe."""

from qcompile.passes.analysis import calibrate  # noqa: F401
from qcompile.passes.lowering import intonly  # noqa: F401
from qcompile.passes.quantize import kv_cache, log_softmax, recipes, uniform  # noqa: F401
from qcompile.passes.transforms import flatquant, intact_kv, noisy_bias, repq_layernorm, rotate, smooth  # noqa: F401
