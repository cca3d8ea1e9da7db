"""What every se-onnx pass shares: the report, the result that carries it, refusals, and the copying wrapper.

A pass is one class: it subclasses `SEPass`, checks what it cannot take in `requires()` (raising
SeOnnxError), and returns `SEResult(model, modified, report)` from `call()`. A pass with nothing to
do leaves the model as it was, returns `modified=False` and says why in `report.nothing_to_do`, so
that onnx-ir's `PassManager` can run it to convergence; the CLI turns that into its one-line error.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Generic, TypeVar, cast

import onnx_ir as ir

from se_onnx.errors import SeOnnxError

ReportT = TypeVar("ReportT")


@dataclasses.dataclass
class Report:
    """What a pass did; `nothing_to_do` is why it found nothing to work on (None when it found work)."""

    nothing_to_do: str | None = dataclasses.field(default=None, kw_only=True)

    def to_dict(self) -> dict:
        """The report as JSON. The CLI prints no report when there was nothing to do, so
        `nothing_to_do` is left out and the JSON keeps one shape."""
        fields = dataclasses.asdict(self)
        del fields["nothing_to_do"]
        return fields


@dataclasses.dataclass
class SEResult(ir.passes.PassResult, Generic[ReportT]):
    """A pass's result: the model, whether the pass changed it, and the pass's report.

    The report lives here and not on the pass, so one pass object can run on any number of models
    (a `PassManager` runs it once per step). onnx-ir's `Sequential` and `PassManager` return a
    plain `PassResult`; run a pass on its own to read its report.
    """

    report: ReportT


class Refused(SeOnnxError, ir.passes.PreconditionError):
    """A model that a pass's `requires()` refuses: a failed precondition to onnx-ir, and to the CLI
    and library callers the one-line SeOnnxError."""


class SEPass(ir.passes.InPlacePass, Generic[ReportT]):
    """An se-onnx pass: rewrites the model in place, returns an `SEResult`, and refuses with `Refused`."""

    def __call__(self, model_or_result: ir.Model | ir.passes.PassResult, /) -> SEResult[ReportT]:
        try:
            # PassBase returns what call() returned: an SEResult, as declared below.
            return cast("SEResult[ReportT]", super().__call__(model_or_result))
        except ir.passes.PreconditionError as error:
            # PassBase wraps whatever requires() raises in a PreconditionError; an SeOnnxError
            # (a user's mistake) must stay one, or the CLI would print a traceback.
            cause = error.__cause__
            if isinstance(cause, SeOnnxError) and not isinstance(error, SeOnnxError):
                raise Refused(str(cause)) from cause
            raise

    @abc.abstractmethod
    def call(self, model: ir.Model) -> SEResult[ReportT]: ...

    def on_copy(self, model: ir.Model) -> tuple[ir.Model, ReportT]:
        """A copy of `model` rewritten by this pass, and the report; `model` is not modified
        (onnx-ir's `functionalize`)."""
        # functionalize runs this pass on a clone, so its result is this pass's SEResult.
        result = cast("SEResult[ReportT]", ir.passes.functionalize(self)(model))
        return result.model, result.report
