"""Graph-level building blocks every pass shares: constants, Q/DQ pairs, naming, graph walks, opset rules,
the SE block builder, and model I/O. Imports nothing else from se_onnx but `se_onnx.errors`."""
