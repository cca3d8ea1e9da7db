"""se-onnx: Squeeze-and-Excitation passes on ONNX conv models."""

from se_onnx.errors import SeOnnxError
from se_onnx.model_io import load_model, save_model

__all__ = ["SeOnnxError", "load_model", "save_model"]
__version__ = "0.1.0"
