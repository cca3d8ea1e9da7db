"""se-onnx: Squeeze-and-Excitation passes on ONNX conv models."""

from se_onnx.detect import find_se
from se_onnx.errors import SeOnnxError
from se_onnx.fuse import fuse_se, unfuse_se
from se_onnx.insert import InsertOptions, InsertReport, insert_se
from se_onnx.model_io import load_model, save_model
from se_onnx.strip import strip_se
from se_onnx.verify import verify

__all__ = [
    "InsertOptions",
    "InsertReport",
    "SeOnnxError",
    "find_se",
    "fuse_se",
    "insert_se",
    "load_model",
    "save_model",
    "strip_se",
    "unfuse_se",
    "verify",
]
__version__ = "0.1.0"
