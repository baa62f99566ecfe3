"""TE definitions of the `qcompile` integer kernels, one module per kernel, each bit-exact against the
NumPy reference in `qcompile.intops` (tests/backends/test_tvm_kernels_*.py)."""
