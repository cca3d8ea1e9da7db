"""se-onnx: Squeeze-and-Excitation passes on ONNX conv models."""

from se_onnx.detect import FindSE, find_se
from se_onnx.errors import SeOnnxError
from se_onnx.fuse import FuseSE, fuse_se
from se_onnx.insert import InsertOptions, InsertReport, InsertSE, insert_se
from se_onnx.model_io import load_model, save_model
from se_onnx.strip import StripSE, strip_se
from se_onnx.unfuse import UnfuseSE, unfuse_se
from se_onnx.verify import verify

__all__ = [
    "FindSE",
    "FuseSE",
    "InsertOptions",
    "InsertReport",
    "InsertSE",
    "SeOnnxError",
    "StripSE",
    "UnfuseSE",
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
