"""Schedule YAML load/dump and JSON Schema export. Errors are one-line ``UserError`` subclasses.

Reading goes through ``parastep.yamlio`` (the one YAML reader for schedules and profiles);
validation is pydantic in strict mode (``model.py``), its first error reported in one line by
``yamlio.first_error``. A path that cannot be read raises ``InputPathError``; a file whose content
is not a schedule raises ``MalformedInput`` (``validate`` reports that as an invalid schedule,
other commands as bad input).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import MalformedInput
from ..yamlio import dump_yaml, first_error, read_yaml_file, shown_value
from .model import SCHEMA_VERSION, Schedule

REGENERATE = "regenerate it with 'parastep plan'"


def schedule_from_dict(data: Any, *, source: str = "schedule") -> Schedule:
    """Validate a parsed schedule (strict: no type coercion). Any problem is ``MalformedInput``."""
    if not isinstance(data, dict):
        raise MalformedInput(f"{source}: a schedule is a YAML mapping, got {type(data).__name__}; {REGENERATE}")
    version = data.get("parastep_schedule")
    if "parastep_schedule" not in data:
        raise MalformedInput(f"{source}: no 'parastep_schedule' key: not a parastep schedule (a schedule file holds "
                             f"'parastep_schedule: {SCHEMA_VERSION}'); {REGENERATE}")
    if type(version) is not int or version != SCHEMA_VERSION:  # noqa: E721 - True == 1 must not pass
        raise MalformedInput(f"{source}: 'parastep_schedule: {shown_value(version)}' is not a schedule version this "
                             f"parastep reads (expected {SCHEMA_VERSION}); {REGENERATE}")
    try:
        return Schedule.model_validate(data)
    except ValidationError as exc:
        raise MalformedInput(f"{source}: {first_error(exc)}; {REGENERATE}") from None


def load_schedule(path: str | Path) -> Schedule:
    data, _ = read_yaml_file(path, what="schedule", fix=REGENERATE)
    return schedule_from_dict(data, source=str(path))


def dump_schedule(schedule: Schedule) -> str:
    """YAML text; windows one per line (flow style) so a diff reads like the plan."""
    data = schedule.model_dump(mode="json", exclude_none=True)
    windows = data.pop("windows")
    head = dump_yaml(data, sort_keys=False, default_flow_style=None, width=120)
    lines = ["windows:"]
    for w in windows:
        if w.get("batch") is False:   # the default: unbatched windows read as they always did
            del w["batch"]
        lines.append("  - " + dump_yaml(w, default_flow_style=True, sort_keys=False, width=100000).strip())
    return head + "\n".join(lines) + "\n"


def schedule_json_schema() -> str:
    return json.dumps(Schedule.model_json_schema(), indent=2, sort_keys=True) + "\n"
