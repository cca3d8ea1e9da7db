"""What the server runs: model versions and their ONNX Runtime sessions, batching, the repository, tensors,
shared-memory regions, and the recorders behind metrics and statistics."""
