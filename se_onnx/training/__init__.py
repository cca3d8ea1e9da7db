"""Training inserted blocks in PyTorch: the ONNX graph as a torch module, and the training loop.

Imports the layers below; PyTorch is imported only here."""
