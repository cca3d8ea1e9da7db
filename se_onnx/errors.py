"""The error type that se-onnx raises for a user's mistake or an unsupported model."""

from __future__ import annotations


class SeOnnxError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The CLI prints the message and exits with status 2; library callers can catch it to tell
    bad input apart from bugs.
    """
