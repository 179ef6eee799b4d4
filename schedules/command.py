"""``parastep validate | simulate | schema``."""

from __future__ import annotations

import sys

from ..errors import InvalidSchedule, UserError
from .check import violations
from .io import load_schedule, schedule_json_schema


def _validate(args) -> int:
    try:
        schedule = load_schedule(args.schedule)
    except UserError as exc:
        if "does not exist" in str(exc):
            raise
        raise InvalidSchedule(str(exc)) from None
    problems = violations(schedule)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidSchedule(f"{args.schedule}: invalid: {problems[0]}{more}")
    print(f"{args.schedule}: valid ({len(schedule.windows)} windows, {schedule.num_steps} steps, world size {schedule.world_size})", file=sys.stderr)
    return 0


def _schema(args) -> int:
    if args.what == "schedule":
        sys.stdout.write(schedule_json_schema())
    else:
        import json

        from ..profiles.model import Profile

        sys.stdout.write(json.dumps(Profile.model_json_schema(), indent=2, sort_keys=True) + "\n")
    return 0


def _simulate(args) -> int:
    from .simulate import simulate_command

    return simulate_command(args)


def run(args) -> int:
    return {"validate": _validate, "schema": _schema, "simulate": _simulate}[args.command](args)
