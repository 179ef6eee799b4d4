"""Errors that the command line turns into one line on stderr (no traceback).

Raise ``UserError`` for anything caused by the user's input: a bad flag value,
a missing or malformed file, a schedule for another model. The message must
name the problem *and* the fix, on one line.
"""


class UserError(Exception):
    """Bad input. The CLI prints ``parastep: error: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InvalidSchedule(UserError):
    """A schedule that parses but breaks an invariant of DESIGN §1 (``validate`` exits 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)
