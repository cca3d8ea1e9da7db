"""Training inserted blocks in PyTorch: the ONNX graph as a torch module, the training loop,
its recipe (optimizer, schedule), data loading, devices and processes, and checkpoints.

Imports the layers below; PyTorch is imported only here."""
