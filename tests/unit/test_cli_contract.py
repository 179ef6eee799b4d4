"""Snapshot of the public contract: ``parastep`` subcommands, each one's flag names, and the
schedule JSON Schema (docs/design.md §8: "keep these names"; torchtitan-style snapshot test).

A deliberate change: regenerate with ``PARASTEP_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_cli_contract.py``
and commit the diff of ``tests/snapshots/`` with the change that caused it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from parastep.cli import build_parser
from parastep.schedules.io import schedule_json_schema

SNAPSHOTS = Path(__file__).resolve().parents[1] / "snapshots"
UPDATE = os.environ.get("PARASTEP_UPDATE_SNAPSHOTS") == "1"

# docs/design.md §8 names that must never disappear (the snapshot may grow around them)
REQUIRED = {
    "plan": {"--model", "--gpus", "--steps", "--budget", "--min-psnr", "--policy", "--warmup", "--max-window", "--profile", "--interconnect"},
    "validate": {"schedule"},
    "simulate": {"schedule", "--plot"},
    "exec": {"schedule", "--prompt", "--seed", "--out", "--reference"},
    "profile": {"--model", "--gpus", "--steps", "--out"},
}


def cli_surface() -> dict:
    """{command: {"flags": sorted option strings and positional names, "required": [...], "choices": {...}}}."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out: dict = {}
    for name, cmd in sorted(sub.choices.items()):
        flags, required, choices = [], [], {}
        for action in cmd._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = list(action.option_strings) or [action.dest]
            flags.extend(names)
            key = max(names, key=len)
            if action.required and action.option_strings:
                required.append(key)
            if action.choices is not None:
                choices[key] = sorted(map(str, action.choices))
        out[name] = {"flags": sorted(flags), "required": sorted(required), "choices": dict(sorted(choices.items()))}
    return out


def _check(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if UPDATE or not path.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"snapshot {path} did not exist and was written; review and commit it")
        return
    want = path.read_text(encoding="utf-8")
    assert text == want, (f"the public contract changed ({name}); if deliberate, regenerate with "
                          f"PARASTEP_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_cli_contract.py and commit tests/snapshots/")


def test_cli_snapshot():
    _check("cli.json", json.dumps(cli_surface(), indent=2, sort_keys=True) + "\n")


def test_schedule_schema_snapshot():
    _check("schedule.schema.json", schedule_json_schema())


def test_design_names_are_present():
    surface = cli_surface()
    assert set(REQUIRED) <= set(surface)
    for cmd, names in REQUIRED.items():
        missing = names - set(surface[cmd]["flags"])
        assert not missing, f"parastep {cmd} lost {sorted(missing)} (docs/design.md §8)"
    assert surface["plan"]["choices"]["--policy"] == ["fixed", "fixed-batch", "optimal"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("plan", "validate", "simulate", "exec", "profile", "schema"):
        assert cmd in text


def test_schema_command_matches_snapshot(capsys):
    from parastep.cli import main

    assert main(["schema", "schedule"]) == 0
    assert capsys.readouterr().out == (SNAPSHOTS / "schedule.schema.json").read_text(encoding="utf-8")


# ---- main: every failure is one line on stderr ----------------------------------------------

def _boom(args):
    raise RuntimeError("boom\nsecond line")


def _run(argv, monkeypatch, capsys, *, env_debug: str | None = None):
    import parastep.schedules.command as command
    from parastep.cli import main

    monkeypatch.setattr(command, "run", _boom)
    if env_debug is None:
        monkeypatch.delenv("PARASTEP_DEBUG", raising=False)
    else:
        monkeypatch.setenv("PARASTEP_DEBUG", env_debug)
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_unexpected_error_is_one_line_exit_1_with_debug_pointer(monkeypatch, capsys):
    code, out, err = _run(["validate", "x.yaml"], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("parastep: error: unexpected RuntimeError: boom\\nsecond line")
    assert "--debug" in err


@pytest.mark.parametrize("argv,env", [(["--debug", "validate", "x.yaml"], None), (["validate", "x.yaml"], "1")])
def test_debug_prints_the_traceback(monkeypatch, capsys, argv, env):
    code, _, err = _run(argv, monkeypatch, capsys, env_debug=env)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "_boom" in err
    assert err.splitlines()[-1].startswith("parastep: error: unexpected RuntimeError")


def test_user_error_stays_exit_2_one_line(tmp_path, capsys):
    from parastep.cli import main

    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["simulate", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err
    assert main(["plan", "--gpus", "zero"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_user_error_message_is_one_line_whatever_it_quotes():
    from parastep.errors import UserError

    msg = str(UserError("key 'a\nb' value 'c\r\u2028d\x1b'"))
    assert "\n" not in msg and "\r" not in msg and len(msg.splitlines()) == 1
    assert "a\\nb" in msg and "\\u2028" in msg and "\\x1b" in msg
