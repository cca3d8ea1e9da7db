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
    # |b - a| / |a| over the elements where the relative tolerance dominates (|a| ≥ atol / rtol, or
    # a ≠ 0 when rtol is 0); None when there is none: |b - a| / |a| of an output near zero says
    # nothing (1e-9 against 3.7e-7 is 373), and such an output is judged by atol alone.
    max_rel: float | None
    within_tolerance: bool

    @property
    def judged_by(self) -> str:
        """ "atol" for an output near zero, where relative error is not meaningful; else "atol + rtol"."""
        return "atol" if self.max_rel is None else "atol + rtol"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"shape": list(self.shape), "judged_by": self.judged_by}


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
    dims: Mapping[str, int] | None = None,
) -> Verification:
    """Run both models on the same inputs (given, or seeded random) and compare every output.

    An element passes when |b - a| ≤ atol + rtol·|a| (numpy.isclose with A as the reference).
    Outputs are matched by name; the models must take the same inputs. Random inputs give a
    symbolic dim the size `dims` names for it, else `batch` on the first axis and 1 elsewhere.
    """
    import onnxruntime as ort

    session_a = make_session(model_a, provider)
    session_b = make_session(model_b, provider)
    _check_same_signature(session_a, session_b)
    dims = dict(dims or {})
    named = {dim for meta in session_a.get_inputs() for dim in meta.shape if isinstance(dim, str)}
    if set(dims) - named:
        unknown, known = ", ".join(sorted(set(dims) - named)), ", ".join(sorted(named)) or "none"
        raise SeOnnxError(f"--dim {unknown}: no input has a dim of that name (named dims: {known})")
    feeds = dict(inputs) if inputs is not None else random_inputs(session_a, batch=batch, seed=seed, dims=dims)
    expected_inputs = {meta.name for meta in session_a.get_inputs()}
    if set(feeds) != expected_inputs:
        raise SeOnnxError(f"inputs given for {sorted(feeds)}, but the models take {sorted(expected_inputs)}")
    names = [meta.name for meta in session_a.get_outputs()]
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure is reported below, in one line, not in ORT's log too
    try:
        outputs_a = session_a.run(names, feeds, quiet)
        outputs_b = session_b.run(names, feeds, quiet)
    except Exception as error:  # ORT reports bad feeds (shape, dtype) as its own exception types
        message = " ".join(str(error).split())
        guessed = [] if inputs is not None else _guessed_dims(session_a, dims)
        if guessed:
            name, axis, dim = guessed[0]
            fix = f"--dim {dim}=SIZE" if dim else "--inputs FILE.npz (the dim has no name)"
            raise SeOnnxError(
                f"input {name!r} has a dynamic dim {dim or '?'} (axis {axis}), which the random inputs set to 1, "
                f"and ONNX Runtime could not run the models with it; give it a size: {fix} ({message})"
            ) from None
        raise SeOnnxError(f"ONNX Runtime could not run the models: {message}") from None
    differences = [
        _difference(name, np.asarray(a), np.asarray(b), rtol, atol) for name, a, b in zip(names, outputs_a, outputs_b)
    ]
    return Verification(differences, rtol, atol)


def _guessed_dims(session, dims: Mapping[str, int]) -> list[tuple[str, int, str | None]]:
    """(input, axis, dim name) of every symbolic dim past the batch axis that no size was given for."""
    return [
        (meta.name, axis, dim if isinstance(dim, str) else None)
        for meta in session.get_inputs()
        for axis, dim in enumerate(meta.shape)
        if axis > 0 and not (isinstance(dim, int) and dim >= 0) and dim not in dims
    ]


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
    relative = (a64 != 0) & (np.abs(a64) >= atol / rtol if rtol > 0 else True)
    max_abs = float(error.max()) if error.size else 0.0
    max_rel = float((error[relative] / np.abs(a64[relative])).max()) if relative.any() else None
    within = bool(np.all(np.isclose(b64, a64, rtol=rtol, atol=atol, equal_nan=True)))
    return OutputDifference(name, a.shape, max_abs, max_rel, within)
