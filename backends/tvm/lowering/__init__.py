"""Integer-only ONNX → Relax: static shapes, kernel fusion at the ONNX level, and the importer with one
converter per `qcompile` function (each becomes a single TE/TIR kernel, not its ONNX body op by op)."""
