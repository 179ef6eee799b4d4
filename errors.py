"""Errors that the command line turns into one line on stderr (no traceback).

Raise ``UserError`` for anything caused by the user's input: a bad flag value,
a missing or malformed file, a schedule for another model. The message must
name the problem *and* the fix, on one line: ``UserError`` escapes any line
break or other control character in it (a YAML key may hold a newline), so a
message is one line whatever values it quotes.

Which subclass says what went wrong, so callers never match message text:

- ``InputPathError``: a path given on the command line cannot be read at all
  (missing, a directory, not a regular file, no permission). Exit 2.
- ``MalformedInput``: the file was read but its content is not a valid file of
  its kind (not UTF-8, too large, not YAML, a duplicate key, a wrong type).
  Exit 2 for most commands; ``validate`` reports it as an invalid schedule.
- ``InvalidSchedule``: a schedule that parses but breaks an invariant of
  docs/design.md §1, or any content problem seen by ``validate``. Exit 1.
"""

from __future__ import annotations

import unicodedata

MAX_MESSAGE_CHARS = 2000


def one_line(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``, ``\\u2028``)
    and cut to ``limit`` characters: safe to print as one line of a terminal."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    line = "".join(out)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class UserError(Exception):
    """Bad input. The CLI prints ``parastep: error: <message>`` and exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(one_line(str(message)))
        self.exit_code = exit_code


class InputPathError(UserError):
    """A path that cannot be read: missing, a directory, not a regular file, unreadable (exit 2)."""


class MalformedInput(UserError):
    """A file that was read but is not a valid file of its kind: encoding, size, YAML syntax,
    duplicate keys, disallowed tags, out-of-range numbers, or a field of the wrong type (exit 2)."""


class InvalidSchedule(UserError):
    """A schedule that parses but breaks an invariant of docs/design.md §1 (``validate`` exits 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)
