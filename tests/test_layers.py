"""The package's layers import only downward (docs/architecture.md): a test that fails on an upward import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own layer and any layer listed before it; layers that
# share a rank (the two front ends) may not import each other. The first matching prefix wins.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "errors", ("se_onnx.errors",)),
    (1, "ir", ("se_onnx.ir",)),
    (2, "passes", ("se_onnx.passes",)),
    (3, "runtime", ("se_onnx.runtime",)),
    (4, "training", ("se_onnx.training",)),
    (5, "service core", ("service.errors", "service.logs", "service.config", "service.tracing")),
    (6, "service runtime", ("service.runtime",)),
    (7, "data plane", ("service.dataplane",)),
    (8, "REST front end", ("service.rest",)),
    (8, "gRPC front end", ("service.grpc",)),
    (9, "server", ("service.app",)),
    (10, "command line", ("se_onnx.cli", "se_onnx.__main__")),
]
# The packages themselves: `service` holds the server's name and version, `se_onnx` is the public
# API, which reaches every layer of se_onnx lazily.
PACKAGES = {"service": (5, "service core"), "se_onnx": (10, "command line")}


def layer_of(module: str) -> tuple[int, str] | None:
    if module in PACKAGES:
        return PACKAGES[module]
    for rank, name, prefixes in LAYERS:
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank, name
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every se_onnx/service module `path` imports, at any depth (functions, TYPE_CHECKING too)."""
    found = []
    here = module_name(path) if path.is_relative_to(ROOT) else path.stem
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from package import module` names a module; `from module import name` a name in it.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("se_onnx", "service")]


def _resolve(name: str) -> str:
    """`a.b.c` where c may be a name inside module a.b: the longest prefix that is a module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ROOT.joinpath(*parts[:end])
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts[:end])
    return name


SOURCES = sorted(p for package in ("se_onnx", "service") for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_downward(path: Path):
    here = module_name(path)
    own = layer_of(here)
    assert own is not None, f"{here} belongs to no layer; add it to LAYERS and docs/architecture.md"
    upward = []
    for line, imported in imports_of(path):
        target = layer_of(_resolve(imported))
        if target is None or target[1] == own[1]:
            continue
        if target[0] >= own[0]:
            upward.append(f"{path.name}:{line} imports {imported} ({target[1]}) from the {own[1]} layer")
    assert not upward, "\n".join(upward)


def test_the_check_catches_an_upward_import(tmp_path):
    """The walk sees imports inside functions and relative imports, so a lazy upward import cannot hide."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from se_onnx.cli import main\n    from service.dataplane import DataPlane\n")
    names = [name for _, name in imports_of(source)]
    assert [layer_of(_resolve(name)) for name in names] == [(10, "command line"), (7, "data plane")]


def test_every_layer_is_in_the_architecture_page():
    page = (ROOT / "docs" / "architecture.md").read_text()
    missing = [prefix for _, _, prefixes in LAYERS for prefix in prefixes if f"`{prefix}" not in page]
    missing += [package for package in PACKAGES if f"`{package}`" not in page]
    assert not missing, f"docs/architecture.md does not name {missing}"
