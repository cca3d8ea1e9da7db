"""Triton's classification extension: an output asked for with `"classification": k` becomes the top k
classes of each row (over its last axis) as BYTES "score:index" or "score:index:label"."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from se_onnx.errors import SeOnnxError
from service.errors import bad_request

LABELS_FILE = "labels.txt"


def read_labels(model_file: Path) -> list[str]:
    """One label per line: in Triton's layout from labels.txt in the version folder or else the
    model's folder; for a single-file model `<name>.onnx`, from `<name>.labels.txt` beside it."""
    if model_file.parent.name.isdigit():
        candidates = [model_file.parent / LABELS_FILE, model_file.parent.parent / LABELS_FILE]
    else:
        candidates = [model_file.with_suffix(".labels.txt")]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return candidate.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as error:
                raise SeOnnxError(
                    f"{candidate}: cannot read the labels ({getattr(error, 'strerror', None) or error})"
                ) from None
    return []


def requested_classes(name: str, parameters: dict) -> int | None:
    """The k of `"classification": k` (None when not asked); 400 unless a positive integer."""
    k = parameters.get("classification")
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise bad_request(f"output {name!r}: classification must be a positive integer, not {k!r}")
    return k


def classify(name: str, array: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """The top min(k, classes) entries of each row of `array`, highest score first (ties: lower
    index first), shaped like `array` with its last axis replaced by them."""
    if array.ndim == 0 or array.dtype.kind not in "biuf":
        raise bad_request(f"output {name!r}: classification needs a numeric output with a class axis")
    k = min(k, array.shape[-1])
    scores = array.astype(np.float64, copy=False)
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(scores, order, axis=-1)
    entries = np.empty(order.shape, dtype=object)
    for position, (score, index) in enumerate(zip(top.reshape(-1), order.reshape(-1))):
        label = f":{labels[index]}" if index < len(labels) else ""
        entries.flat[position] = f"{score:f}:{index}{label}"
    return entries
