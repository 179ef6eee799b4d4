"""``parastep validate | simulate | schema``."""

from __future__ import annotations

import sys

from ..errors import InvalidSchedule, MalformedInput, one_line
from .check import cautions, violations
from .io import load_schedule, schedule_json_schema


def _validate(args) -> int:
    """Exit 0 valid (cautions as warnings on stderr), 1 invalid (the file's content, whatever is
    wrong with it), 2 when the path cannot be read at all (``InputPathError`` passes through)."""
    try:
        schedule = load_schedule(args.schedule)
    except MalformedInput as exc:
        raise InvalidSchedule(str(exc)) from None
    problems = violations(schedule)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InvalidSchedule(f"{args.schedule}: invalid: {problems[0]}{more}")
    for caution in cautions(schedule):
        print(one_line(f"parastep: warning: {args.schedule}: {caution}"), file=sys.stderr)
    print(one_line(f"{args.schedule}: valid ({len(schedule.windows)} windows, {schedule.num_steps} steps, "
                   f"world size {schedule.world_size})"), file=sys.stderr)
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
    """The report on stdout; with ``--plot`` (checked writable before anything is printed) the
    per-rank timeline PNG."""
    from .simulate import format_report, plot_timeline, profile_for, simulate

    schedule = load_schedule(args.schedule)
    if args.plot:
        from ..outputs import check_out_file

        check_out_file(args.plot, flag="--plot")     # before the report: a run that fails prints nothing
    profile = profile_for(schedule, profile_path=args.profile, interconnect=args.interconnect)
    result = simulate(schedule, profile)
    sys.stdout.write(format_report(result, schedule, profile, source=str(args.schedule)))
    if args.plot:
        plot_timeline(result, schedule, args.plot)
        print(f"parastep: wrote timeline {args.plot}", file=sys.stderr)
    return 0


def run(args) -> int:
    return {"validate": _validate, "schema": _schema, "simulate": _simulate}[args.command](args)
