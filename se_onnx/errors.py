"""The error type that se-onnx raises for a user's mistake or an unsupported model."""

from __future__ import annotations


class SeOnnxError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The CLI prints the message and exits with status 2; library callers can catch it to tell
    bad input apart from bugs.
    """


class OptionError(SeOnnxError):
    """A bad value of an option. The message names the option as the library spells it
    ("ratio must be in (0, 1], not 0"); the CLI names the flag instead ("--ratio …")."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option} {problem}")
        self.option = option
        self.problem = problem

    @property
    def flag(self) -> str:
        """The option as a command-line flag: `min_squeeze` is `--min-squeeze`."""
        return "--" + self.option.replace("_", "-")
