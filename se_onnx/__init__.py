"""se-onnx: Squeeze-and-Excitation passes on ONNX conv models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from se_onnx.errors import OptionError, SeOnnxError
    from se_onnx.ir.model_io import load_model, save_model
    from se_onnx.passes.find import FindSE, find_se
    from se_onnx.passes.fuse import FuseSE, fuse_se
    from se_onnx.passes.insert import InsertOptions, InsertReport, InsertSE, insert_se
    from se_onnx.passes.strip import StripSE, strip_se
    from se_onnx.passes.unfuse import UnfuseSE, unfuse_se
    from se_onnx.runtime.fastest import fuse_fastest
    from se_onnx.runtime.verify import verify

# Each public name and the module that defines it, imported when the name is first used (PEP 562):
# `import se_onnx` alone, and every `se-onnx` command, then loads only the modules it needs.
_EXPORTS = {
    "FindSE": "se_onnx.passes.find",
    "FuseSE": "se_onnx.passes.fuse",
    "InsertOptions": "se_onnx.passes.insert",
    "InsertReport": "se_onnx.passes.insert",
    "InsertSE": "se_onnx.passes.insert",
    "OptionError": "se_onnx.errors",
    "SeOnnxError": "se_onnx.errors",
    "StripSE": "se_onnx.passes.strip",
    "UnfuseSE": "se_onnx.passes.unfuse",
    "find_se": "se_onnx.passes.find",
    "fuse_fastest": "se_onnx.runtime.fastest",
    "fuse_se": "se_onnx.passes.fuse",
    "insert_se": "se_onnx.passes.insert",
    "load_model": "se_onnx.ir.model_io",
    "save_model": "se_onnx.ir.model_io",
    "strip_se": "se_onnx.passes.strip",
    "unfuse_se": "se_onnx.passes.unfuse",
    "verify": "se_onnx.runtime.verify",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'se_onnx' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
