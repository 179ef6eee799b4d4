"""YAML load/dump of schedules, JSON Schema export. Errors are ``UserError`` one-liners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import UserError
from .model import Schedule


def first_error(exc: ValidationError) -> str:
    """One line naming the field, the bad value and what was expected."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"field '{loc}': {err['msg']} (got {shown}){more}"


def read_yaml(path: str | Path, *, what: str) -> Any:
    """Parse a YAML file; a missing, unreadable or malformed file is a UserError naming it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file '{p}' does not exist; check the path")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} file '{p}': {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{what} file '{p}' is not valid YAML{at} (truncated or hand-edited?); regenerate it") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file '{p}' must hold a YAML mapping, got {type(data).__name__}; regenerate it")
    return data


def schedule_from_dict(data: dict, *, source: str = "schedule") -> Schedule:
    version = data.get("parastep_schedule")
    if version != 1:
        raise UserError(f"{source}: 'parastep_schedule: {version}' is not a schedule version this parastep reads (expected 1); regenerate it with 'parastep plan'")
    try:
        return Schedule.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {first_error(exc)}") from None


def load_schedule(path: str | Path) -> Schedule:
    return schedule_from_dict(read_yaml(path, what="schedule"), source=str(path))


def dump_schedule(schedule: Schedule) -> str:
    """YAML text; windows one per line (flow style) so a diff reads like the plan."""
    data = schedule.model_dump(mode="json", exclude_none=True)
    windows = data.pop("windows")
    head = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    lines = ["windows:"]
    for w in windows:
        lines.append("  - " + yaml.safe_dump(w, default_flow_style=True, sort_keys=False, width=100000).strip())
    return head + "\n".join(lines) + "\n"


def schedule_json_schema() -> str:
    return json.dumps(Schedule.model_json_schema(), indent=2, sort_keys=True) + "\n"
