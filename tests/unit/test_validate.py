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

from parastep.errors import UserError
from parastep.schedules.check import cautions, implied_totals, violations, window_size
from parastep.schedules.io import dump_schedule, schedule_from_dict
from parastep.schedules.model import ExactWindow, ParallelWindow, Schedule

from clitools import run_cli
from strategies import valid_schedules

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "schedules" / "examples").glob("*.yaml"))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def design_schedules(**kwargs):
    """Random schedules valid under docs/design.md §1 (``strategies.valid_schedules`` draws no size-1 parallel window)."""
    return valid_schedules(**kwargs)


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
@given(design_schedules())
def test_random_valid_schedules_have_no_violations(schedule):
    assert violations(schedule) == []


@FAST
@given(design_schedules())
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
@given(design_schedules(), st.data())
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
@given(design_schedules(), st.sampled_from(["parallel", "reuse"]))
def test_first_window_not_exact_is_rejected(schedule, kind):
    wins = windows_json(schedule)
    wins[0] = {"start": 0, "kind": "parallel", "placement": [0]} if kind == "parallel" else {"start": 0, "kind": "reuse", "size": 1}
    found = codes(rebuilt(schedule, windows=wins))
    assert "first-not-exact" in found
    assert "needs-e-ref" in found  # a parallel/reuse window at step 0 has no e_ref


@FAST
@given(design_schedules(), st.data())
def test_placement_rank_out_of_range_is_rejected(schedule, data):
    par = [i for i, w in enumerate(schedule.windows) if isinstance(w, ParallelWindow)]
    assume(par)
    i = data.draw(st.sampled_from(par))
    wins = windows_json(schedule)
    j = data.draw(st.integers(0, len(wins[i]["placement"]) - 1))
    wins[i]["placement"][j] = schedule.world_size + data.draw(st.integers(0, 3))
    assert "rank-out-of-range" in codes(rebuilt(schedule, windows=wins))


@FAST
@given(design_schedules())
def test_window_larger_than_max_window_is_rejected(schedule):
    largest = max(window_size(w) for w in schedule.windows)
    assume(largest >= 2)
    assert codes(rebuilt(schedule, max_window=largest - 1)) == {"window-too-large"}


@FAST
@given(design_schedules(), st.data())
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
@given(design_schedules(), st.sampled_from(["parallel", "reuse"]))
def test_linear_at_step_one_is_rejected(schedule, kind):
    assume(schedule.num_steps >= 2)
    wins = windows_json(schedule)
    size = schedule.window_bounds()[1][1] - 1   # window 1 covers steps 1..size: same extent, now linear
    assume(kind == "reuse" or size >= 2)        # a 1-step parallel window is a violation of its own
    if kind == "parallel":
        wins[1] = {"start": 1, "kind": "parallel", "placement": [0] * size, "predictor": "linear"}
    else:
        wins[1] = {"start": 1, "kind": "reuse", "size": size, "predictor": "linear"}
    mutated = rebuilt(schedule, windows=wins)
    mutated = rebuilt(mutated, totals=implied_totals(mutated.windows, world_size=mutated.world_size,
                                                     output_bytes=mutated.output_bytes).model_dump())
    assert codes(mutated) == {"linear-too-early"}


@FAST
@given(design_schedules(), st.data())
def test_wrong_forward_totals_are_rejected(schedule, data):
    fwd = list(schedule.totals.forwards_per_rank)
    r = data.draw(st.integers(0, len(fwd) - 1))
    fwd[r] += data.draw(st.sampled_from([-1, 1, 7])) if fwd[r] > 0 else 1
    totals = {"forwards_per_rank": fwd, "bytes_exchanged": schedule.totals.bytes_exchanged}
    assert codes(rebuilt(schedule, totals=totals)) == {"totals-forwards"}


@FAST
@given(design_schedules(), st.integers(1, 10**6))
def test_wrong_byte_totals_are_rejected(schedule, delta):
    totals = {"forwards_per_rank": list(schedule.totals.forwards_per_rank), "bytes_exchanged": schedule.totals.bytes_exchanged + delta}
    assert codes(rebuilt(schedule, totals=totals)) == {"totals-bytes"}


@FAST
@given(design_schedules(), st.data())
def test_removing_a_window_is_rejected(schedule, data):
    assume(len(schedule.windows) >= 2)
    i = data.draw(st.integers(1, len(schedule.windows) - 1))
    wins = windows_json(schedule)
    del wins[i]
    prev = schedule.windows[i - 1]
    expected = "coverage" if isinstance(prev, ExactWindow) else "size-mismatch"
    assert expected in codes(rebuilt(schedule, windows=wins))


@FAST
@given(design_schedules(), st.data())
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
@given(design_schedules(), st.sampled_from(["totals-bytes", "window-too-large", "first-not-exact"]))
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


# ---- docs/design.md §1 window sizes and the freshness rule ----------------------------------------

def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES[0].parent / name).read_text())


def _with_windows(data: dict, windows: list[dict]) -> dict:
    sched = Schedule.model_validate({**data, "windows": windows})
    totals = implied_totals(sched.windows, world_size=sched.world_size, output_bytes=sched.output_bytes)
    return {**data, "windows": windows, "totals": totals.model_dump()}


def _tiny(windows: list[dict], *, num_steps: int, world_size: int = 2, max_window: int = 4) -> dict:
    base = {"parastep_schedule": 1, "model": "toy", "scheduler": "DDIMScheduler", "num_steps": num_steps,
            "world_size": world_size, "max_window": max_window, "output_bytes": 8,
            "totals": {"forwards_per_rank": [0] * world_size, "bytes_exchanged": 0}}
    return _with_windows(base, windows)


def _validate_dict(tmp_path, data: dict, text: str | None = None) -> tuple[int, str]:
    path = tmp_path / "s.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    code, out, err = run_cli(["validate", str(path)])
    assert out == ""
    return code, err


def test_parallel_window_of_one_step_is_rejected(tmp_path):
    data = _tiny([{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [1]}], num_steps=2)
    assert codes(schedule_from_dict(data)) == {"parallel-too-small"}
    code, err = _validate_dict(tmp_path, data)
    assert code == 1 and "parallel-too-small" in err and err.count("\n") == 1


E, R, P = ({"kind": "exact"}, {"kind": "reuse", "size": 1}, {"kind": "parallel", "placement": [0, 1]})


def _chain(*kinds: dict, predictor: str = "last") -> list[dict]:
    out, s = [], 0
    for k in kinds:
        w = {"start": s, **k}
        if k["kind"] != "exact":
            w["predictor"] = predictor
        out.append(w)
        s += 1 if k["kind"] == "exact" else (k.get("size") or len(k["placement"]))
    return out


@pytest.mark.parametrize("kinds,predictor,caution", [
    ((E, E, R, P), "last", "stale-reference"),          # parallel right after a reuse step
    ((E, E, R, R), "last", "stale-reference"),          # reuse right after a reuse step
    ((E, E, R, E, P), "linear", "stale-linear-reference"),   # linear: step s-2 was a reuse step
    ((E, E, R, E, R), "linear", "stale-linear-reference"),
    ((E, E, R, E, P), "last", None),                    # last needs only s-1 computed
    ((E, E, R, E, E, P), "linear", None),
    ((E, E, P, R), "linear", None),                     # a parallel window's steps are computed
    ((E, P, P), "last", None),
])
def test_freshness_rule_warns_and_still_exits_0(tmp_path, kinds, predictor, caution):
    windows = _chain(*kinds, predictor=predictor)
    for w in windows[:-1]:           # only the last window carries the predictor under test
        if w["kind"] != "exact":
            w["predictor"] = "last"
    n = windows[-1]["start"] + (1 if windows[-1]["kind"] == "exact" else windows[-1].get("size") or len(windows[-1]["placement"]))
    data = _tiny(windows, num_steps=n)
    sched = schedule_from_dict(data)
    assert violations(sched) == []
    assert {c.code for c in cautions(sched)} == ({caution} if caution else set())
    code, err = _validate_dict(tmp_path, data)
    assert code == 0
    lines = err.splitlines()
    assert lines[-1].endswith(f"world size 2)") and "valid" in lines[-1]
    if caution:
        assert len(lines) == 2 and lines[0].startswith("parastep: warning: ") and caution in lines[0]
    else:
        assert len(lines) == 1


def test_examples_obey_the_freshness_rule():
    for path in EXAMPLES:
        assert cautions(schedule_from_dict(yaml.safe_load(path.read_text()))) == [], path
    mixed = schedule_from_dict(_example("mixed-4gpu.yaml"))
    kinds = {w.kind for w in mixed.windows}
    assert kinds == {"exact", "parallel", "reuse"}
    assert {w.predictor for w in mixed.windows if w.kind != "exact"} == {"last", "linear"}


# ---- strict parsing: no coercion, bounded integers, required = schema's required ------------

@pytest.mark.parametrize("change", [
    {"num_steps": "50"}, {"num_steps": 50.0}, {"num_steps": True}, {"world_size": 2.0}, {"parastep_schedule": True},
    {"parastep_schedule": 1.0}, {"parastep_schedule": "1"}, {"output_bytes": "131072"}, {"model": 5},
    {"resolution_px": [1024, "1024"]}, {"resolution_px": [1024, True]}, {"resolution_px": [1024]},
    {"guidance_scale": "5.0"}, {"guidance_scale": float("nan")}, {"guidance_scale": float("inf")},
    {"world_size": 2**62}, {"world_size": 10**20}, {"num_steps": 10**6}, {"policy": "best"},
    {"totals": {"forwards_per_rank": [50.0, 50], "bytes_exchanged": 0}},
    {"totals": {"forwards_per_rank": [50, 50], "bytes_exchanged": False}},
])
def test_no_type_coercion_and_bounded_integers(change):
    data = {**_example("exact-only.yaml"), **change}
    with pytest.raises(UserError):
        schedule_from_dict(data)


@pytest.mark.parametrize("window", [
    {"start": 1.0, "kind": "exact"}, {"start": "1", "kind": "exact"}, {"start": True, "kind": "exact"},
    {"start": 1, "kind": "parallel", "placement": [False, True]}, {"start": 1, "kind": "parallel", "placement": [0.0, 1]},
    {"start": 1, "kind": "reuse", "size": 1.0}, {"start": 1, "kind": "reuse", "size": "1"},
    {"start": 1, "kind": "reuse", "size": 1, "predictor": "Last"}, {"start": 1}, {"start": 1, "kind": "EXACT"},
])
def test_window_fields_are_strict(window):
    data = _example("exact-only.yaml")
    data["windows"] = [data["windows"][0], window] + data["windows"][2:]
    with pytest.raises(UserError):
        schedule_from_dict(data)


def test_float_fields_accept_integers():
    data = {**_example("exact-only.yaml"), "guidance_scale": 5}
    assert schedule_from_dict(data).guidance_scale == 5.0


def _required_paths(schema: dict, node: dict, prefix: tuple) -> set[tuple]:
    out = set()
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    for name in node.get("required", []):
        out.add(prefix + (name,))
    return out


def test_schema_required_fields_are_exactly_what_validation_requires():
    """Deleting a field the schema lists as required is refused; deleting any other keeps the
    schedule valid (top level, totals, and each window kind)."""
    schema = Schedule.model_json_schema()
    data = _example("mixed-4gpu.yaml")
    data["quality"] = {"budget": 1.0, "predicted": 0.5, "error_units_per_unit": 1e4, "budget_units": 10000, "predicted_units": 5000}
    assert violations(schedule_from_dict(data)) == []

    def check(container: dict, props: dict, required: set[str], where: str) -> None:
        for name in props:
            if name not in container:
                continue
            mutated = dict(container)
            del mutated[name]
            container_backup = dict(container)
            container.clear()
            container.update(mutated)
            try:
                try:
                    ok = violations(schedule_from_dict(data)) == []
                except UserError:
                    ok = False
            finally:
                container.clear()
                container.update(container_backup)
            assert ok == (name not in required), f"{where}.{name}: schema says required={name in required}, validation says {not ok}"

    check(data, schema["properties"], set(schema["required"]), "schedule")
    totals = schema["$defs"]["Totals"]
    check(data["totals"], totals["properties"], set(totals["required"]), "totals")
    quality = schema["$defs"]["Quality"]
    check(data["quality"], quality["properties"], set(quality["required"]), "quality")
    for kind, name in (("exact", "ExactWindow"), ("parallel", "ParallelWindow"), ("reuse", "ReuseWindow")):
        i = next(i for i, w in enumerate(data["windows"]) if w["kind"] == kind)
        d = schema["$defs"][name]
        check(data["windows"][i], d["properties"], set(d["required"]), f"windows.{i}")
    assert "parastep_schedule" in schema["required"]
    for name in ("ExactWindow", "ParallelWindow", "ReuseWindow"):
        assert "kind" in schema["$defs"][name]["required"]


# ---- the one YAML reader ---------------------------------------------------------------------

GOOD = (Path(__file__).resolve().parents[2] / "schedules" / "examples" / "exact-only.yaml").read_text()


@pytest.mark.parametrize("text,needle", [
    (GOOD.replace("num_steps: 50", "num_steps: 50\nnum_steps: 50"), "duplicate key 'num_steps'"),
    (GOOD.replace("num_steps: 50", "num_steps: !!int three"), "'three' is not an integer"),
    (GOOD.replace("policy: optimal", "policy: !!bool maybe"), "'maybe' is not a boolean"),
    (GOOD.replace("model: sdxl", "model: !!timestamp foo"), "!!timestamp"),
    (GOOD.replace("model: sdxl", "model: !!binary aGVsbG8="), "!!binary"),
    (GOOD.replace("model: sdxl", "model: !!python/object/apply:os.getcwd []"), "!!python/object/apply:os.getcwd"),
    (GOOD.replace("world_size: 2", "world_size: 100000000000000000000"), "out of range"),
    (GOOD.replace("world_size: 2", "world_size: " + "9" * 4301), "out of range"),
    (GOOD.replace("guidance_scale: 5.0", "guidance_scale: .nan"), "not a number"),
    (GOOD.replace("model: sdxl", "model: " + "[" * 1000 + "]" * 1000), "nesting"),
    (GOOD.replace("model: sdxl", "model: " + "[" * 40 + "]" * 40), "nesting deeper than 32"),
    (GOOD.replace("model: sdxl", "model: &m [1, *m]"), "refers to a value that contains it"),
    (GOOD.replace("model: sdxl", "model: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"x{i}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9))), "aliases are expanded"),
    (GOOD.replace("num_steps: 50", '"num\\nsteps": 50\nnum_steps: 50'), "'num\\nsteps'"),
    (GOOD + "---\nmore: 1\n", "another document"),
    ("", "empty file"),
    ("- 1\n- 2\n", "list"),
])
def test_reader_refuses_in_one_line(tmp_path, text, needle):
    code, err = _validate_dict(tmp_path, {}, text=text)
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("parastep: error: ") and "Traceback" not in err
    assert needle in err


@pytest.mark.parametrize("blob", [b"\x00\x01\x02binary\xff", b"model: caf\xe9\n", b"\xff\xfe\x00m\x00o\x00"])
def test_binary_and_non_utf8_files_are_refused(tmp_path, blob):
    path = tmp_path / "b.yaml"
    path.write_bytes(blob)
    code, out, err = run_cli(["validate", str(path)])
    assert code == 1 and err.count("\n") == 1 and ("binary" in err or "UTF-8" in err)


def test_too_large_file_is_refused_before_parsing(tmp_path, monkeypatch):
    from parastep import yamlio

    path = tmp_path / "big.yaml"
    path.write_text(GOOD + "#" * 2000 + "\n")
    monkeypatch.setattr(yamlio, "MAX_FILE_BYTES", len(GOOD) + 100)
    code, _, err = run_cli(["validate", str(path)])
    assert code == 1 and "byte limit" in err and err.count("\n") == 1


def test_directory_is_a_directory_not_missing(tmp_path):
    code, out, err = run_cli(["validate", str(tmp_path)])
    assert code == 2 and "is a directory" in err and "does not exist" not in err and err.count("\n") == 1


def test_unquoted_date_is_text_and_profiles_read_the_same(tmp_path):
    from parastep.profiles.io import load_profile, shipped_profiles
    from parastep.yamlio import parse_yaml

    assert parse_yaml("d: 2026-01-01", source="t", fix="f") == {"d": "2026-01-01"}
    for path in shipped_profiles().values():
        prof, sha = load_profile(path)
        assert prof.num_steps >= 1 and len(sha) == 64


def test_profile_reader_refuses_like_the_schedule_reader(tmp_path):
    from parastep.profiles.io import load_profile, shipped_profiles

    text = next(iter(shipped_profiles().values())).read_text()
    bad = tmp_path / "p.yaml"
    bad.write_text(text.replace("num_steps:", "num_steps: 3\nnum_steps:", 1))
    with pytest.raises(UserError, match="duplicate key 'num_steps'"):
        load_profile(bad)
    with pytest.raises(UserError, match="is a directory"):
        load_profile(tmp_path)


def test_validate_exit_code_does_not_depend_on_message_text(tmp_path, monkeypatch):
    """A content problem whose message happens to say 'does not exist' is still an invalid schedule."""
    text = GOOD.replace("model: sdxl", "model: sdxl\ndoes not exist: 1")
    code, err = _validate_dict(tmp_path, {}, text=text)
    assert code == 1 and "does not exist" in err


# ---- recorded numbers (tampered latency and quality must not pass as valid) ----------

@pytest.fixture(scope="module")
def planned() -> Schedule:
    from parastep.planner.plan import plan_schedule
    from parastep.profiles.io import resolve_profile

    profile, sha = resolve_profile("digits")
    return plan_schedule(profile, profile_sha256=sha, world_size=4).schedule


def _tampered(schedule: Schedule, part: str, **changes) -> Schedule:
    data = schedule.model_dump(mode="json")
    section = data[part]
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            section[outer][inner] = value
        else:
            section[key] = value
    return Schedule.model_validate(data)


@pytest.mark.parametrize("part,changes,code", [
    ("latency", {"predicted_s": 0.01}, "latency-speedup"),
    ("latency", {"speedup": 99.0}, "latency-speedup"),
    ("quality", {"predicted": 5.0}, "quality-budget"),
    ("quality", {"per_sample.within": 3}, "quality-counts"),
    ("quality", {"budget_units": 1}, "quality-counts"),
])
def test_tampered_recorded_numbers_are_rejected(planned, part, changes, code):
    assert violations(planned) == []
    assert codes(_tampered(planned, part, **changes)) == {code}


def test_a_plan_recorded_as_breaking_its_own_statement_is_rejected(planned):
    ps = planned.quality.per_sample
    over = [b + 1 for b in ps.budget_units]                       # every sample past its bound
    bad = _tampered(planned, "quality", **{"per_sample.predicted_units": over, "per_sample.within": 0,
                                           "predicted_units": sum(over)})
    assert codes(bad) == {"quality-budget"}
    msg = str(next(v for v in violations(bad) if v.code == "quality-budget"))
    assert f"only 0 of {ps.samples} samples" in msg and f"{ps.required} are required" in msg


def test_cli_reports_a_tampered_speedup_in_one_line(planned, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(dump_schedule(_tampered(planned, "latency", speedup=99.0)))
    code, out, err = run_cli(["validate", str(path)])
    assert code == 1 and out == "" and "latency-speedup" in err and len(err.strip().splitlines()) == 1


# ---- bad placement entries and unknown interconnects: one line that names the entry ---------

def _parallel_with_entry(entry) -> dict:
    data = _example("mixed-4gpu.yaml")
    for window in data["windows"]:
        if window["kind"] == "parallel":
            window["placement"] = [entry, *window["placement"][1:]]
            return data
    raise AssertionError("mixed-4gpu.yaml has no parallel window")


BAD_ENTRIES = [[0, 1, 0], [0], [], [0, -1], [0, "1"], [0, 1.5], -1, 10**9, False, True, "0", 1.5, None, {"rank": 0}]


@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=repr)
def test_a_bad_placement_entry_gets_one_line_naming_it(tmp_path, entry):
    code, err = _validate_dict(tmp_path, _parallel_with_entry(entry))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert ".placement.0'" in err, err                          # the entry, not a pydantic branch
    assert "constrained-int" not in err and "more problem" not in err, err
    assert "a rank" in err and "a pair of ranks" in err and "[0, 1]" in err, err


@FAST
@given(design_schedules(), st.text(min_size=1, max_size=12))
def test_an_interconnect_that_is_no_preset_is_rejected(schedule, name):
    from parastep.profiles.interconnects import PRESETS
    data = schedule.model_dump(mode="json")
    data["profile"] = {"name": "p", "sha256": "0" * 64, "interconnect": name}
    assert ("unknown-interconnect" in codes(Schedule.model_validate(data))) == (name not in PRESETS)
    data["profile"]["interconnect"] = next(iter(PRESETS))
    assert "unknown-interconnect" not in codes(Schedule.model_validate(data))


def test_cli_refuses_interconnect_pcie(planned, tmp_path):
    data = planned.model_dump(mode="json")
    data["profile"]["interconnect"] = "pcie"
    code, err = _validate_dict(tmp_path, data)
    assert code == 1 and "unknown-interconnect" in err and "pcie4" in err, err
