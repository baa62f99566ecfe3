"""Integer-only kernels (issue 4): each op is a NumPy reference plus a `qcompile`-domain ONNX function whose
body uses only standard integer ONNX ops, so ONNX Runtime runs it without a plugin and tests compare the
two bit for bit."""
