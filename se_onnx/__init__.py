"""se-onnx: Squeeze-and-Excitation passes on ONNX conv models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # For type checkers and editors only; `X as X` marks each as re-exported (`__all__` is computed).
    from se_onnx.errors import OptionError as OptionError
    from se_onnx.errors import SeOnnxError as SeOnnxError
    from se_onnx.ir.model_io import load_model as load_model
    from se_onnx.ir.model_io import save_model as save_model
    from se_onnx.passes.find import FindSE as FindSE
    from se_onnx.passes.find import find_se as find_se
    from se_onnx.passes.fuse import FuseSE as FuseSE
    from se_onnx.passes.fuse import fuse_se as fuse_se
    from se_onnx.passes.insert import InsertOptions as InsertOptions
    from se_onnx.passes.insert import InsertReport as InsertReport
    from se_onnx.passes.insert import InsertSE as InsertSE
    from se_onnx.passes.insert import insert_se as insert_se
    from se_onnx.passes.strip import StripSE as StripSE
    from se_onnx.passes.strip import strip_se as strip_se
    from se_onnx.passes.unfuse import UnfuseSE as UnfuseSE
    from se_onnx.passes.unfuse import unfuse_se as unfuse_se
    from se_onnx.runtime.fastest import fuse_fastest as fuse_fastest
    from se_onnx.runtime.verify import verify as verify

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
