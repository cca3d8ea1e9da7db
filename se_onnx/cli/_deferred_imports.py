"""Putting off imports that se-onnx commands never use, so that a command process starts faster.

onnx-ir imports sympy as it is imported, for arithmetic on symbolic dims (`ir.SymbolicDim("N") + 1`),
which no se-onnx command does; sympy was about half the start-up of `se-onnx insert`. Its module
and onnx-ir's one module that reads sympy at import time are stood in for by modules that import
the real ones the first time an attribute is read, so sympy still loads the moment anything uses it.

onnx-ir 1.1.0 (the newest release) offers no supported way to leave sympy out: `onnx_ir._core`
imports it at the top, with no option or environment variable. What this saves, measured with
`python benchmarks/bench_startup.py --runs 10` (`se-onnx inspect` on a committed sample, a new
process each run, interleaved, medians) on a shared, busy 2-core machine: 1.36 s against 3.01 s
with sympy imported eagerly, a median ratio of 2.3×. tests/test_fast_paths.py fails when onnx-ir
stops importing sympy eagerly (this module can go) or reads sympy on import in a module not put off
here.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

# sympy itself, and the onnx-ir module that reads sympy's functions when it is imported.
_DEFERRED = ("sympy", "onnx_ir._symbolic_shapes")


class _DeferredModule(types.ModuleType):
    """Stands in for a module until one of its attributes is read, then imports it and takes on
    its attributes. The import system reads only `__spec__` from a module already in sys.modules,
    which is set here, so `import x` finds this one without loading it (unlike
    importlib.util.LazyLoader's modules, which load on any attribute, `__spec__` included)."""

    if TYPE_CHECKING:  # set by __init__; declared for the checker only, so the class gains no __annotations__
        __spec__: importlib.machinery.ModuleSpec

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec

    def __getattr__(self, name: str) -> object:
        spec = self.__spec__
        if spec.loader is None:  # defer_unused_imports defers only modules that have one
            raise ImportError(f"no loader for {spec.name}", name=spec.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules[spec.name] = self
            raise
        self.__dict__.update(module.__dict__)
        return getattr(module, name)


def defer_unused_imports() -> None:
    """Put off importing sympy until it is used. A no-op where onnx-ir or sympy is imported
    already, or where either is not laid out as expected."""
    if any(name.split(".")[0] in sys.modules for name in (*_DEFERRED, "onnx_ir")):
        return
    specs = []
    for name in _DEFERRED:
        package, _, _ = name.rpartition(".")
        if package:
            parent = importlib.util.find_spec(package)
            locations = parent.submodule_search_locations if parent else None
            spec = importlib.machinery.PathFinder.find_spec(name, locations) if locations else None
        else:
            spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return
        specs.append(spec)
    for spec in specs:
        sys.modules[spec.name] = _DeferredModule(spec)
