"""The pass library, installed as `qcompile.passes`. Importing it registers every built-in pass and recipe."""

from qcompile.passes.analysis import calibrate  # noqa: F401
from qcompile.passes.lowering import intonly  # noqa: F401
from qcompile.passes.quantize import fp_quantize, kv_cache, log_softmax, recipes, uniform  # noqa: F401
from qcompile.passes.transforms import (  # noqa: F401
    flatquant,
    intact_kv,
    linear_patch,
    noisy_bias,
    prune_layers,
    repq_layernorm,
    rotate,
    smooth,
)
