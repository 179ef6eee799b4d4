"""The one YAML reader (and writer) for parastep's files: schedules and profiles.

Everything a user can hand to parastep as YAML goes through ``read_yaml_file`` (or ``parse_yaml``
for text), which refuses, each in one line (``errors.MalformedInput`` / ``errors.InputPathError``):

- a path that does not exist, is a directory, is not a regular file, or cannot be read;
- a file larger than ``MAX_FILE_BYTES`` (checked before and while reading: a device or a growing
  file never makes it read more), binary content (a NUL byte) or text that is not UTF-8;
- YAML syntax errors, more than one document, and nesting deeper than ``MAX_DEPTH``
  (PyYAML's composer is recursive: 1,000 levels would end in a RecursionError);
- more than ``MAX_NODES`` values once aliases (``*name``) are expanded (a few lines of aliases can
  stand for billions of values), and an alias inside the value it names (a cycle); merge keys
  (``<<``) are plain keys here;
- a duplicate key in a mapping (PyYAML silently keeps the last one), or a key that is not a string;
- any tag outside the YAML core types a schedule or profile uses (str, int, float, bool, null,
  sequence, mapping): no ``!!timestamp`` (an unquoted date stays a string), ``!!binary``,
  ``!!set``, ``!!python/...`` or local ``!tags``; an explicit core tag whose text is not of that
  type (``!!int three``, ``!!bool maybe``);
- an integer outside ``[-MAX_INT, MAX_INT]`` (2**53: every count, size and byte total parastep
  meets is far below, and floats hold it exactly), checked before the number is built, so nothing
  downstream is ever sized by a huge one; and NaN (``.nan``), which passes every bound check
  unnoticed. Infinities pass to the models, which decide per field (a schedule refuses them; a
  profile may state an infinite bandwidth for "exchange costs nothing").

A file that parses but whose content fails its pydantic model (``Schedule``, ``Profile``) is
reported by ``first_error`` in one line: the field, the bad value, what was expected.

A leaf module (docs/design.md §6): it imports only ``errors``, so the schedule and the profile
contracts share it without importing each other; no torch, no ortools. The writer (``dump_yaml``)
never emits aliases, so what parastep writes this reader reads back.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode

from .errors import InputPathError, MalformedInput, one_line

if TYPE_CHECKING:
    from pydantic import ValidationError

MAX_FILE_BYTES = 16 * 1024 * 1024   # a T = 1000 profile is a few MB; PyYAML parses ~1 MB/s
MAX_DEPTH = 32                      # a profile nests 6 deep, a schedule 4
MAX_INT = 2**53                     # |n| above this is refused (exact in a float64, too)
MAX_NODES = 4_000_000              # values, aliases expanded (a "billion laughs" file stops here)
MAX_INT_CHARS = 64                  # an integer scalar longer than this is refused before int() sees it

_CORE = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_DROPPED_RESOLVERS = frozenset(_CORE + t for t in ("timestamp", "merge", "value"))
_NULL_TEXT = frozenset(("", "~", "null", "Null", "NULL"))


class _Refused(yaml.MarkedYAMLError):
    """A structural refusal with the place it happened."""

    def __init__(self, problem: str, mark, hint: str = "") -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint


def _where(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _show(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)


class _StrictResolver(yaml.resolver.Resolver):
    # a copy: editing Resolver's own table would change yaml.safe_load for every other user
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_RESOLVERS]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


class _StrictComposer(yaml.composer.Composer):
    """Composition with a depth limit, an expanded-size limit and no cyclic aliases."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0                        # values composed so far, aliases expanded
        self._open_anchors: list[str] = []     # anchors of the values being composed
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:   # an undefined alias is PyYAML's own error
                if event.anchor in self._open_anchors:
                    raise _Refused(f"alias '*{event.anchor}' refers to a value that contains it", event.start_mark,
                                   "a recursive value has no end: write the value out")
                self._count(self._expanded_size(node), event)
            return super().compose_node(parent, index)
        self._count(1, event)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open_anchors.append(anchor)
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nesting deeper than {MAX_DEPTH} levels", event.start_mark,
                               "a parastep file nests a few levels at most")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.pop()

    def _count(self, nodes: int, event) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values once aliases are expanded", event.start_mark,
                           "a parastep file is far smaller")

    def _expanded_size(self, node) -> int:
        """Values in ``node`` with every alias inside expanded (memoised: shared subtrees count once each use)."""
        key = id(node)
        if key not in self._sizes:
            if isinstance(node, ScalarNode):
                size = 1
            elif isinstance(node, MappingNode):
                size = 1 + sum(self._expanded_size(k) + self._expanded_size(v) for k, v in node.value)
            else:
                size = 1 + sum(self._expanded_size(v) for v in node.value)
            self._sizes[key] = size
        return self._sizes[key]

class _StrictConstructor(yaml.constructor.SafeConstructor):
    """Construction of the YAML core types only: tags, string keys once each, bounded numbers."""

    def construct_object(self, node, deep=False):
        if node.tag not in ALLOWED_TAGS:
            tag = node.tag.replace(_CORE, "!!")
            raise _Refused(f"tag '{tag}' is not allowed", node.start_mark,
                           "parastep files hold only strings, integers, floats, booleans, null, lists and "
                           "mappings: quote the value if it is text")
        return super().construct_object(node, deep=deep)

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, MappingNode):  # pragma: no cover - the tag check routes only mappings here
            raise _Refused("expected a mapping", node.start_mark)
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _CORE + "str"):
                shown = _show(key_node.value) if isinstance(key_node, ScalarNode) else f"a {key_node.id}"
                raise _Refused(f"mapping key {shown} is not a string", key_node.start_mark,
                               "keys are field names: quote it if it is one")
            key = key_node.value
            if key in seen:
                raise _Refused(f"duplicate key {_show(key)}", key_node.start_mark,
                               f"first at line {seen[key].line + 1}; a key may appear once in a mapping")
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        if len(text) > MAX_INT_CHARS:
            raise _Refused(f"integer of {len(text)} characters is out of range (|n| <= 2**53)", node.start_mark)
        try:
            value = super().construct_yaml_int(node)
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Refused(f"{_show(text)} is not an integer", node.start_mark) from None
        if abs(value) > MAX_INT:
            raise _Refused(f"integer {text} is out of range (|n| <= 2**53)", node.start_mark)
        return value

    def construct_yaml_float(self, node):
        text = self.construct_scalar(node)
        try:
            value = super().construct_yaml_float(node)
        except (ValueError, KeyError, IndexError, TypeError, OverflowError):
            raise _Refused(f"{_show(text)} is not a number", node.start_mark) from None
        if math.isnan(value):
            raise _Refused(f"{_show(text)} is not a number (NaN compares unequal to everything, so no bound holds "
                           f"for it)", node.start_mark)
        return value

    def construct_yaml_bool(self, node):
        text = self.construct_scalar(node)
        try:
            return super().construct_yaml_bool(node)
        except (KeyError, AttributeError, TypeError):
            raise _Refused(f"{_show(text)} is not a boolean (true or false)", node.start_mark) from None

    def construct_yaml_null(self, node):
        text = self.construct_scalar(node)
        if text not in _NULL_TEXT:
            raise _Refused(f"{_show(text)} is not null", node.start_mark)
        return None


_StrictConstructor.add_constructor(_CORE + "int", _StrictConstructor.construct_yaml_int)
_StrictConstructor.add_constructor(_CORE + "float", _StrictConstructor.construct_yaml_float)
_StrictConstructor.add_constructor(_CORE + "bool", _StrictConstructor.construct_yaml_bool)
_StrictConstructor.add_constructor(_CORE + "null", _StrictConstructor.construct_yaml_null)


class StrictLoader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _StrictComposer, _StrictConstructor,
                   _StrictResolver):
    """SafeLoader restricted to the YAML core types, with depth, alias, duplicate-key and number
    checks; PyYAML's pure-Python reader, scanner and parser."""

    def __init__(self, stream) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _StrictComposer.__init__(self)
        _StrictConstructor.__init__(self)
        _StrictResolver.__init__(self)


try:
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None

if _CParser is not None:
    class FastStrictLoader(_StrictComposer, _CParser, _StrictConstructor, _StrictResolver):
        """``StrictLoader`` with libyaml's scanner and parser (events in C, about 5x faster); the
        composition and construction, where every check lives, stay the Python ones above."""

        def __init__(self, stream) -> None:
            _CParser.__init__(self, stream)
            _StrictComposer.__init__(self)
            _StrictConstructor.__init__(self)
            _StrictResolver.__init__(self)
else:  # pragma: no cover
    FastStrictLoader = StrictLoader


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a PyYAML error: what, and where."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = exc.problem or exc.context or "malformed YAML"
        mark = exc.problem_mark or exc.context_mark
        hint = getattr(exc, "hint", "")
        return f"{what}{_where(mark)}" + (f" ({hint})" if hint else "")
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return f"character U+{char:04X} is not allowed in YAML (position {exc.position})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_yaml(text: str, *, source: str, fix: str) -> Any:
    """The one YAML document in ``text``. ``source`` names it in errors, ``fix`` says what to do."""
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return yaml.load(text, Loader=FastStrictLoader)  # noqa: S506 - a SafeLoader, narrowed
    except _Refused as exc:
        raise MalformedInput(f"{source}: {_yaml_problem(exc)}; {fix}") from None
    except yaml.YAMLError as exc:
        raise MalformedInput(f"{source} is not valid YAML: {_yaml_problem(exc)} (truncated or hand-edited?); {fix}") from None
    except UnicodeError:   # a lone surrogate: only possible in text that did not come from a UTF-8 file
        raise MalformedInput(f"{source} is not valid UTF-8 text; {fix}") from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps the composer far from the limit
        raise MalformedInput(f"{source}: nesting too deep; {fix}") from None


def read_text_file(path: str | Path, *, what: str, fix: str, max_bytes: int | None = None) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` (default ``MAX_FILE_BYTES``) bytes,
    line ends normalised as ``Path.read_text`` does; one-line errors otherwise."""
    max_bytes = MAX_FILE_BYTES if max_bytes is None else max_bytes
    p = Path(path)
    name = f"{what} file '{p}'"
    try:
        if p.is_dir():
            raise InputPathError(f"{name} is a directory, not a file; pass the {what} file inside it")
        if not p.exists():
            raise InputPathError(f"{name} does not exist; check the path")
        if not p.is_file():
            raise InputPathError(f"{name} is not a regular file; pass a {what} YAML file")
        if p.stat().st_size > max_bytes:
            raise MalformedInput(f"{name} is {p.stat().st_size} bytes, more than the {max_bytes}-byte limit; {fix}")
        with p.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise InputPathError(f"cannot read {name}: {exc.strerror or exc}; check its permissions") from None
    if len(data) > max_bytes:
        raise MalformedInput(f"{name} is more than the {max_bytes}-byte limit; {fix}")
    if b"\x00" in data:
        raise MalformedInput(f"{name} is binary, not YAML text; {fix}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"{name} is not UTF-8 text (byte {exc.start}); {fix}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # as Path.read_text: hashes of the text stay put


def read_yaml_file(path: str | Path, *, what: str, fix: str, max_bytes: int | None = None) -> tuple[dict, str]:
    """(the YAML mapping in ``path``, its text). ``what`` names the kind of file ('schedule',
    'profile'), ``fix`` ends every content error ('regenerate it with ...')."""
    text = read_text_file(path, what=what, fix=fix, max_bytes=max_bytes)
    data = parse_yaml(text, source=f"{what} file '{path}'", fix=fix)
    if not isinstance(data, dict):
        raise MalformedInput(f"{what} file '{path}' must hold a YAML mapping, got {_kind(data)}; {fix}")
    return data, text


def _kind(value: Any) -> str:
    return "an empty file" if value is None else f"a {type(value).__name__}"


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def dump_yaml(data: Any, **kwargs) -> str:
    """``yaml.safe_dump`` that never writes anchors or aliases: each value is written out where it is used."""
    return yaml.dump(data, Dumper=_NoAliasDumper, **kwargs)


def shown_value(value: Any) -> str:
    """A value as an error message quotes it: short lists and mappings as written, long ones by
    their type, anything else by its ``repr`` (cut to 80 characters)."""
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=repr)
        return text if len(text) <= 40 else type(value).__name__
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def first_error(exc: "ValidationError") -> str:
    """One line for a pydantic ``ValidationError`` of a parsed file: the field, the bad value and
    what was expected (and how many more problems there are)."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return f"field {shown_value(loc)}: {err['msg']} (got {shown_value(err.get('input'))}){more}"


__all__ = ["MAX_FILE_BYTES", "MAX_DEPTH", "MAX_INT", "ALLOWED_TAGS", "StrictLoader", "FastStrictLoader", "parse_yaml",
           "read_text_file", "read_yaml_file", "dump_yaml", "first_error", "shown_value", "one_line"]
