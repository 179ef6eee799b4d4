"""validate: random valid schedules pass; every single invariant-breaking mutation is rejected
with the right code; YAML round-trips; the CLI's exit codes and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from parastep.schedules.check import implied_totals, violations, window_size
from parastep.schedules.io import dump_schedule, schedule_from_dict
from parastep.schedules.model import ExactWindow, ParallelWindow, Schedule

from clitools import run_cli
from strategies import valid_schedules

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "schedules" / "examples").glob("*.yaml"))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rebuilt(schedule: Schedule, **changes) -> Schedule:
    """A mutated copy that goes through pydantic again (what 'validate' would read from a file)."""
    data = schedule.model_dump(mode="json")
    data.update(changes)
    return Schedule.model_validate(data)


def windows_json(schedule: Schedule) -> list[dict]:
    return [w.model_dump(mode="json") for w in schedule.windows]


def codes(schedule: Schedule) -> set[str]:
    return {v.code for v in violations(schedule)}


# ---- valid schedules --------------------------------------------------------------------------

@FAST
@given(valid_schedules())
def test_random_valid_schedules_have_no_violations(schedule):
    assert violations(schedule) == []


@FAST
@given(valid_schedules())
def test_yaml_round_trip_is_lossless(schedule):
    text = dump_schedule(schedule)
    again = schedule_from_dict(yaml.safe_load(text))
    assert again == schedule
    assert dump_schedule(again) == text


def test_examples_are_valid():
    assert len(EXAMPLES) >= 3
    for path in EXAMPLES:
        schedule = schedule_from_dict(yaml.safe_load(path.read_text()))
        assert violations(schedule) == [], path
        kinds = {w.kind for w in schedule.windows}
        assert "exact" in kinds


# ---- mutations: each breaks exactly one invariant and must be named -----------------------

@FAST
@given(valid_schedules(), st.data())
def test_moving_a_start_is_rejected(schedule, data):
    wins = windows_json(schedule)
    bounds = schedule.window_bounds()
    movable = [i for i in range(1, len(wins)) if bounds[i][0] - 1 > bounds[i - 1][0] or bounds[i][0] + 1 < bounds[i][1]]
    assume(movable)
    i = data.draw(st.sampled_from(movable))
    prev_start, start, stop = bounds[i - 1][0], bounds[i][0], bounds[i][1]
    choices = [d for d in (-1, 1) if prev_start < start + d < stop]
    delta = data.draw(st.sampled_from(choices))
    wins[i]["start"] = start + delta
    mutated = rebuilt(schedule, windows=wins)
    prev = schedule.windows[i - 1]
    expected = "coverage" if isinstance(prev, ExactWindow) else "size-mismatch"
    assert expected in codes(mutated)


@FAST
@given(valid_schedules(), st.sampled_from(["parallel", "reuse"]))
def test_first_window_not_exact_is_rejected(schedule, kind):
    wins = windows_json(schedule)
    wins[0] = {"start": 0, "kind": "parallel", "placement": [0]} if kind == "parallel" else {"start": 0, "kind": "reuse", "size": 1}
    found = codes(rebuilt(schedule, windows=wins))
    assert "first-not-exact" in found
    assert "needs-e-ref" in found  # a parallel/reuse window at step 0 has no e_ref


@FAST
@given(valid_schedules(), st.data())
def test_placement_rank_out_of_range_is_rejected(schedule, data):
    par = [i for i, w in enumerate(schedule.windows) if isinstance(w, ParallelWindow)]
    assume(par)
    i = data.draw(st.sampled_from(par))
    wins = windows_json(schedule)
    j = data.draw(st.integers(0, len(wins[i]["placement"]) - 1))
    wins[i]["placement"][j] = schedule.world_size + data.draw(st.integers(0, 3))
    assert "rank-out-of-range" in codes(rebuilt(schedule, windows=wins))


@FAST
@given(valid_schedules())
def test_window_larger_than_max_window_is_rejected(schedule):
    largest = max(window_size(w) for w in schedule.windows)
    assume(largest >= 2)
    assert codes(rebuilt(schedule, max_window=largest - 1)) == {"window-too-large"}


@FAST
@given(valid_schedules(), st.data())
def test_declared_size_mismatch_is_rejected(schedule, data):
    grow = [i for i, w in enumerate(schedule.windows) if not isinstance(w, ExactWindow)]
    assume(grow)
    i = data.draw(st.sampled_from(grow))
    wins = windows_json(schedule)
    if wins[i]["kind"] == "reuse":
        wins[i]["size"] += 1
    else:
        wins[i]["placement"].append(0)
    found = codes(rebuilt(schedule, windows=wins))
    assert "size-mismatch" in found


@FAST
@given(valid_schedules(), st.sampled_from(["parallel", "reuse"]))
def test_linear_at_step_one_is_rejected(schedule, kind):
    assume(schedule.num_steps >= 2)
    wins = windows_json(schedule)
    size = schedule.window_bounds()[1][1] - 1   # window 1 covers steps 1..size: same extent, now linear
    if kind == "parallel":
        wins[1] = {"start": 1, "kind": "parallel", "placement": [0] * size, "predictor": "linear"}
    else:
        wins[1] = {"start": 1, "kind": "reuse", "size": size, "predictor": "linear"}
    mutated = rebuilt(schedule, windows=wins)
    mutated = rebuilt(mutated, totals=implied_totals(mutated.windows, world_size=mutated.world_size,
                                                     output_bytes=mutated.output_bytes).model_dump())
    assert codes(mutated) == {"linear-too-early"}


@FAST
@given(valid_schedules(), st.data())
def test_wrong_forward_totals_are_rejected(schedule, data):
    fwd = list(schedule.totals.forwards_per_rank)
    r = data.draw(st.integers(0, len(fwd) - 1))
    fwd[r] += data.draw(st.sampled_from([-1, 1, 7])) if fwd[r] > 0 else 1
    totals = {"forwards_per_rank": fwd, "bytes_exchanged": schedule.totals.bytes_exchanged}
    assert codes(rebuilt(schedule, totals=totals)) == {"totals-forwards"}


@FAST
@given(valid_schedules(), st.integers(1, 10**6))
def test_wrong_byte_totals_are_rejected(schedule, delta):
    totals = {"forwards_per_rank": list(schedule.totals.forwards_per_rank), "bytes_exchanged": schedule.totals.bytes_exchanged + delta}
    assert codes(rebuilt(schedule, totals=totals)) == {"totals-bytes"}


@FAST
@given(valid_schedules(), st.data())
def test_removing_a_window_is_rejected(schedule, data):
    assume(len(schedule.windows) >= 2)
    i = data.draw(st.integers(1, len(schedule.windows) - 1))
    wins = windows_json(schedule)
    del wins[i]
    prev = schedule.windows[i - 1]
    expected = "coverage" if isinstance(prev, ExactWindow) else "size-mismatch"
    assert expected in codes(rebuilt(schedule, windows=wins))


@FAST
@given(valid_schedules(), st.data())
def test_duplicating_a_window_is_rejected(schedule, data):
    i = data.draw(st.integers(0, len(schedule.windows) - 1))
    wins = windows_json(schedule)
    wins.insert(i + 1, dict(wins[i]))
    assert "coverage" in codes(rebuilt(schedule, windows=wins))


# ---- the command line -------------------------------------------------------------------

def test_cli_valid_exits_0():
    for path in EXAMPLES:
        code, out, err = run_cli(["validate", str(path)])
        assert code == 0, err
        assert out == ""
        assert "valid" in err


@settings(max_examples=15, deadline=None)
@given(valid_schedules(), st.sampled_from(["totals-bytes", "window-too-large", "first-not-exact"]))
def test_cli_invalid_exits_1_naming_the_code(schedule, code_wanted):
    if code_wanted == "totals-bytes":
        bad = rebuilt(schedule, totals={"forwards_per_rank": list(schedule.totals.forwards_per_rank),
                                        "bytes_exchanged": schedule.totals.bytes_exchanged + 1})
    elif code_wanted == "window-too-large":
        largest = max(window_size(w) for w in schedule.windows)
        assume(largest >= 2)
        bad = rebuilt(schedule, max_window=largest - 1)
    else:
        wins = windows_json(schedule)
        wins[0] = {"start": 0, "kind": "reuse", "size": 1}
        bad = rebuilt(schedule, windows=wins)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.yaml"
        path.write_text(dump_schedule(bad))
        code, out, err = run_cli(["validate", str(path)])
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("parastep: error: ")
    assert f"{code_wanted}:" in err


@pytest.mark.parametrize("cut", ["mid-window", "half"])
def test_cli_truncated_yaml_exits_1(tmp_path, cut):
    text = EXAMPLES[0].read_text()
    if cut == "mid-window":
        text = text[: text.rindex("kind:") + 7]      # '... {start: 49, kind: e' : unterminated flow mapping
    else:
        text = text[: len(text) // 2]
    path = tmp_path / "cut.yaml"
    path.write_text(text)
    code, out, err = run_cli(["validate", str(path)])
    assert code == 1
    assert err.count("\n") == 1 and "cut.yaml" in err


def test_cli_missing_file_exits_2(tmp_path):
    code, out, err = run_cli(["validate", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert err.count("\n") == 1 and "does not exist" in err


def test_cli_unknown_key_exits_1(tmp_path):
    text = EXAMPLES[0].read_text().replace("num_steps:", "num_stepz: 3\nnum_steps:")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    code, _, err = run_cli(["validate", str(path)])
    assert code == 1 and "num_stepz" in err


def test_cli_real_process_no_traceback(tmp_path):
    """The installed console script, in a real process: one line, right exit codes, no traceback."""
    bad = tmp_path / "bad.yaml"
    text = EXAMPLES[0].read_text()
    bad.write_text(text.replace("bytes_exchanged: 0", "bytes_exchanged: 5"))
    exe = Path(sys.executable).with_name("parastep")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "parastep.cli"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for path, want in ((EXAMPLES[0], 0), (bad, 1), (tmp_path / "missing.yaml", 2)):
        proc = subprocess.run(cmd + ["validate", str(path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        assert proc.returncode == want, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1
        assert proc.stdout == ""
    assert "totals-bytes" in subprocess.run(cmd + ["validate", str(bad)], capture_output=True, text=True, env=env, cwd=tmp_path).stderr
