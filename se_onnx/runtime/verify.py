"""Numerical comparison of two models' outputs on the same inputs in ONNX Runtime."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

from se_onnx.errors import SeOnnxError
from se_onnx.runtime.sessions import make_session, random_inputs


@dataclasses.dataclass(frozen=True)
class OutputDifference:
    """How far one output of model B is from model A's, elementwise."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # |b - a| / |a|, over elements where a ≠ 0
    within_tolerance: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class Verification:
    outputs: list[OutputDifference]
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return all(output.within_tolerance for output in self.outputs)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "rtol": self.rtol,
            "atol": self.atol,
            "outputs": [output.to_dict() for output in self.outputs],
        }


def verify(
    model_a: str | os.PathLike | bytes,
    model_b: str | os.PathLike | bytes,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    provider: str = "cpu",
    batch: int = 1,
    seed: int = 0,
) -> Verification:
    """Run both models on the same inputs (given, or seeded random) and compare every output.

    An element passes when |b - a| ≤ atol + rtol·|a| (numpy.isclose with A as the reference).
    Outputs are matched by name; the models must take the same inputs.
    """
    session_a = make_session(model_a, provider)
    session_b = make_session(model_b, provider)
    _check_same_signature(session_a, session_b)
    feeds = dict(inputs) if inputs is not None else random_inputs(session_a, batch=batch, seed=seed)
    expected_inputs = {meta.name for meta in session_a.get_inputs()}
    if set(feeds) != expected_inputs:
        raise SeOnnxError(
            f"inputs given for {sorted(feeds)}, but the models take {sorted(expected_inputs)}"
        )
    names = [meta.name for meta in session_a.get_outputs()]
    try:
        outputs_a = session_a.run(names, feeds)
        outputs_b = session_b.run(names, feeds)
    except Exception as error:  # ORT reports bad feeds (shape, dtype) as its own exception types
        raise SeOnnxError(f"ONNX Runtime could not run the models: {' '.join(str(error).split())}") from None
    differences = [
        _difference(name, np.asarray(a), np.asarray(b), rtol, atol)
        for name, a, b in zip(names, outputs_a, outputs_b)
    ]
    return Verification(differences, rtol, atol)


def _check_same_signature(session_a, session_b) -> None:
    for what, a, b in (
        ("inputs", session_a.get_inputs(), session_b.get_inputs()),
        ("outputs", session_a.get_outputs(), session_b.get_outputs()),
    ):
        signature_a = sorted((meta.name, meta.type) for meta in a)
        signature_b = sorted((meta.name, meta.type) for meta in b)
        if signature_a != signature_b:
            raise SeOnnxError(f"the models' {what} differ: {signature_a} vs {signature_b}")


def _difference(name: str, a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> OutputDifference:
    if a.shape != b.shape:
        raise SeOnnxError(f"output {name!r} has shape {a.shape} in A but {b.shape} in B")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        equal = bool(np.array_equal(a, b))
        return OutputDifference(name, a.shape, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"), equal)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    error = np.abs(b64 - a64)
    nonzero = a64 != 0
    max_abs = float(error.max()) if error.size else 0.0
    max_rel = float((error[nonzero] / np.abs(a64[nonzero])).max()) if nonzero.any() else 0.0
    within = bool(np.all(np.isclose(b64, a64, rtol=rtol, atol=atol, equal_nan=True)))
    return OutputDifference(name, a.shape, max_abs, max_rel, within)
