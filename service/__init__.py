"""The se-onnx inference server: ONNX models over the Open Inference Protocol, as Triton serves it."""

from importlib.metadata import PackageNotFoundError, version

SERVER_NAME = "se-onnx"

try:
    __version__ = version("se-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
