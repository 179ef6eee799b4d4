"""Fuzzing ``parastep validate`` against an independent checker of docs/design.md §1.

Thousands of valid schedules (``strategies.valid_schedules``) are mutated: wrong types, out-of-range
and huge integers, deleted and unknown keys, moved starts, bad ranks and sizes, other kinds and
predictors, wrong totals; and at the text level duplicate keys, deep nesting, disallowed tags,
binary garbage, truncation. Each result goes through ``validate``'s entry point in-process (``cli.main`` is
covered by test_validate.py and test_cli_contract.py); the checker
below, written from docs/design.md §1 and the schedule contract (not from ``schedules/``), says what the
answer must be. The properties: no invalid schedule accepted (exit 0), no valid one rejected,
never anything but one ``parastep: error:`` line and exit 1 for a rejection (no traceback, no
"unexpected" error).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import random
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parastep.schedules.command as validate_command
from parastep.errors import UserError

from strategies import valid_schedules

# Limits the schedule contract states (schedules/model.py, yamlio.py), restated here.
MAX_INT = 2**53
MAX_STEPS = 100_000
MAX_WORLD_SIZE = 65_536
MAX_PIXELS = 1 << 20
TOP_REQUIRED = {"parastep_schedule", "model", "scheduler", "num_steps", "world_size", "max_window", "output_bytes",
                "totals", "windows"}
TOP_OPTIONAL = {"resolution_px", "guidance_scale", "policy", "profile", "quality", "latency", "solver"}
WINDOW_KEYS = {"exact": ({"start", "kind"}, set()),
               "parallel": ({"start", "kind", "placement"}, {"predictor", "batch"}),
               "reuse": ({"start", "kind", "size"}, {"predictor"})}

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                      HealthCheck.filter_too_much])


# ---- the independent checker -------------------------------------------------------------------

def _int(v, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def _all_ints_in_range(v) -> bool:
    """The reader's rule: every integer anywhere in the file within |n| <= 2**53; no NaN."""
    if isinstance(v, bool):
        return True
    if isinstance(v, int):
        return abs(v) <= MAX_INT
    if isinstance(v, float):
        return not math.isnan(v)
    if isinstance(v, dict):
        return all(isinstance(k, str) for k in v) and all(_all_ints_in_range(x) for x in v.values())
    if isinstance(v, list):
        return all(_all_ints_in_range(x) for x in v)
    return isinstance(v, str) or v is None


def design_valid(d) -> bool:
    """docs/design.md §1 invariants plus the contract's types (strict: no coercion) and bounds."""
    if not isinstance(d, dict) or not _all_ints_in_range(d):
        return False
    if not TOP_REQUIRED <= set(d) or not set(d) <= TOP_REQUIRED | TOP_OPTIONAL:
        return False
    if set(d) & {"profile", "quality", "latency", "solver"}:
        return False   # never generated here; the mutations below do not produce them
    if not _int(d["parastep_schedule"], 1, 1):
        return False
    if not all(isinstance(d[k], str) and d[k] for k in ("model", "scheduler")):
        return False
    T, G, J, B = d["num_steps"], d["world_size"], d["max_window"], d["output_bytes"]
    if not (_int(T, 1, MAX_STEPS) and _int(G, 1, MAX_WORLD_SIZE) and _int(J, 1, MAX_STEPS) and _int(B, 1, MAX_INT)):
        return False
    if "resolution_px" in d and d["resolution_px"] is not None:
        r = d["resolution_px"]
        if not (isinstance(r, list) and len(r) == 2 and all(_int(x, 1, MAX_PIXELS) for x in r)):
            return False
    if "guidance_scale" in d and d["guidance_scale"] is not None:
        g = d["guidance_scale"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            return False
    if "policy" in d and d["policy"] not in ("optimal", "fixed"):
        return False
    totals = d["totals"]
    if not (isinstance(totals, dict) and set(totals) == {"forwards_per_rank", "bytes_exchanged"}):
        return False
    fwd, nbytes = totals["forwards_per_rank"], totals["bytes_exchanged"]
    if not (isinstance(fwd, list) and len(fwd) <= MAX_WORLD_SIZE and all(_int(f, 0, MAX_INT) for f in fwd)
            and _int(nbytes, 0, MAX_INT)):
        return False
    wins = d["windows"]
    if not (isinstance(wins, list) and 1 <= len(wins) <= MAX_STEPS):
        return False
    sizes = []
    for w in wins:
        if not isinstance(w, dict) or not isinstance(w.get("kind"), str) or w["kind"] not in WINDOW_KEYS:
            return False
        required, optional = WINDOW_KEYS[w["kind"]]
        if not (required <= set(w) <= required | optional):
            return False
        if not _int(w["start"], 0, MAX_STEPS):
            return False
        if "predictor" in w and w["predictor"] not in ("last", "linear"):
            return False
        if w["kind"] == "exact":
            sizes.append(1)
        elif w["kind"] == "parallel":
            p = w["placement"]
            if not (isinstance(p, list) and 1 <= len(p) <= MAX_STEPS and all(_int(r, 0, MAX_INT) for r in p)):
                return False
            if len(p) < 2 or any(r >= G for r in p):          # w >= 2; every rank < world size
                return False
            if "batch" in w and not isinstance(w["batch"], bool):
                return False
            sizes.append(len(p))
        else:
            if not _int(w["size"], 1, MAX_STEPS):
                return False
            sizes.append(w["size"])
    # windows cover 0..T-1 exactly once, in order; the first is exact
    if wins[0]["kind"] != "exact" or wins[0]["start"] != 0:
        return False
    for i, w in enumerate(wins):
        nxt = wins[i + 1]["start"] if i + 1 < len(wins) else T
        if w["start"] + sizes[i] != nxt:
            return False
        if sizes[i] > J:
            return False
        if w["kind"] != "exact":
            first_ok = 2 if w.get("predictor", "last") == "linear" else 1
            if w["start"] < first_ok:
                return False
    # declared totals equal what the windows imply
    want = [0] * G
    moved = 0
    for w in wins:
        if w["kind"] == "exact":
            want = [f + 1 for f in want]
        elif w["kind"] == "parallel":
            for r in w["placement"]:
                want[r] += 1
            moved += (G - 1) * len(w["placement"])
    return fwd == want and nbytes == moved * B


# ---- inputs ----------------------------------------------------------------------------------

@st.composite
def base_dicts(draw) -> dict:
    """A valid schedule as the dict a YAML file holds, some optional keys present, some absent."""
    sched = draw(valid_schedules(max_steps=16, max_world=6, max_window=5))
    d = sched.model_dump(mode="json", exclude_none=True)
    if draw(st.booleans()):
        d["resolution_px"] = [draw(st.integers(1, 4096)), draw(st.integers(1, 4096))]
    if draw(st.booleans()):
        d["guidance_scale"] = draw(st.one_of(st.floats(0, 20, allow_nan=False), st.integers(0, 20)))
    if draw(st.booleans()):
        del d["policy"]
    for w in d["windows"]:
        if "predictor" in w and w["predictor"] == "last" and draw(st.booleans()):
            del w["predictor"]   # 'last' is the default
    assert design_valid(d), d
    return d


def _paths(v, prefix=()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, prefix + (i,))
    return out


def _get(d, path):
    for p in path:
        d = d[p]
    return d


def _wrong_values(v) -> list:
    """Values of another type (or the same type out of range) to put where ``v`` was."""
    out = [str(v), None, [v], {"x": v}, True, False, "", "abc"]
    if isinstance(v, bool):
        out += [int(v), 1, 0]
    elif isinstance(v, int):
        # an earlier retype may have put 10**4000 here: float(v) and v + 0.5 overflow past ~1.8e308
        # (OverflowError while generating, not a checker disagreement)
        out += ([float(v), v + 0.5] if abs(v) < 10**300 else []) + [
            -1, 0, -v - 1, MAX_INT, MAX_INT + 1, 2**62, 10**20, 10**4000, -(10**30), MAX_STEPS + 1, MAX_WORLD_SIZE + 1,
            float("inf")]
    elif isinstance(v, float):
        # likewise an earlier retype may have put inf here: int(inf) overflows
        out += ([int(v)] if math.isfinite(v) else []) + [float("inf"), float("-inf"), -1.0, 1e308]
    elif isinstance(v, str):
        out += [1, 1.5, v.upper(), v + "\n", "a\nb: c"]
    elif isinstance(v, list):
        out += [v + v[:1], v[:-1], [], list(reversed(v))]
    return out


@st.composite
def mutated_dicts(draw) -> dict:
    d = copy.deepcopy(draw(base_dicts()))
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(d)
        op = draw(st.sampled_from(["retype", "delete", "insert", "start", "rank", "size", "kind", "predictor",
                                   "totals", "top-int"]))
        try:
            _mutate(draw, d, op, paths)
        except (TypeError, KeyError, IndexError, AttributeError):
            pass   # an earlier mutation broke the structure this one edits
    return d


def _mutate(draw, d: dict, op: str, paths: list) -> None:
    """One mutation of ``d`` in place (may raise on a structure an earlier mutation broke)."""
    if op in ("retype", "delete", "insert"):
        if not paths:
            return
        path = draw(st.sampled_from(paths))
        parent, key = _get(d, path[:-1]), path[-1]
        if op == "retype":
            parent[key] = draw(st.sampled_from(_wrong_values(parent[key])))
        elif op == "delete":
            del parent[key]
        else:
            target = parent if isinstance(parent, dict) else d
            target[draw(st.sampled_from(["extra", "num_stepz", "Start", "kind ", "a\nb", "placement"]))] = \
                draw(st.sampled_from([0, 1, "x", [0, 1]]))
    elif op == "start":
        w = draw(st.sampled_from(d["windows"]))
        w["start"] = w["start"] + draw(st.sampled_from([-2, -1, 1, 2]))
    elif op == "rank":
        pars = [w for w in d["windows"] if w["kind"] == "parallel"]
        if pars:
            w = draw(st.sampled_from(pars))
            j = draw(st.integers(0, len(w["placement"]) - 1))
            w["placement"][j] = draw(st.sampled_from([d["world_size"], d["world_size"] - 1, d["world_size"] + 3, 0]))
    elif op == "size":
        w = draw(st.sampled_from(d["windows"]))
        if w["kind"] == "reuse":
            w["size"] = w["size"] + draw(st.sampled_from([-1, 1]))
        elif w["kind"] == "parallel":
            w["placement"] = w["placement"][:-1] if draw(st.booleans()) else w["placement"] + [0]
    elif op == "kind":
        i = draw(st.integers(0, len(d["windows"]) - 1))
        start = d["windows"][i]["start"]
        d["windows"][i] = draw(st.sampled_from([{"start": start, "kind": "exact"},
                                                {"start": start, "kind": "reuse", "size": 1},
                                                {"start": start, "kind": "parallel", "placement": [0]},
                                                {"start": start, "kind": "parallel", "placement": [0, 0]}]))
    elif op == "predictor":
        cands = [w for w in d["windows"] if w["kind"] != "exact"]
        if cands:
            w = draw(st.sampled_from(cands))
            w["predictor"] = draw(st.sampled_from(["linear", "last", "LINEAR", 1]))
    elif op == "totals":
        fwd = d["totals"]["forwards_per_rank"]
        r = draw(st.integers(0, len(fwd) - 1))
        fwd[r] += draw(st.sampled_from([-1, 1]))
    else:
        key = draw(st.sampled_from(["num_steps", "world_size", "max_window", "output_bytes"]))
        d[key] = draw(st.sampled_from([d[key] - 1, d[key] + 1, 0, 2**62, 10**20, MAX_INT]))


def _validate_text(tmp: Path, data: bytes) -> tuple[int, str]:
    """``parastep validate`` on ``data``, in-process through the command's entry point (what
    ``cli.main`` calls, minus building the parser), with ``main``'s handling of ``UserError``. Any
    other exception propagates and fails the test: a traceback is a failure."""
    path = tmp / "s.yaml"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = validate_command.run(argparse.Namespace(command="validate", schedule=str(path)))
        except UserError as exc:
            print(f"parastep: error: {exc}", file=sys.stderr)
            code = exc.exit_code
    out, err = out.getvalue(), err.getvalue()
    assert out == "", out
    if code == 0:
        assert err.splitlines()[-1].endswith(")") and "valid (" in err.splitlines()[-1], err
        assert all(line.startswith("parastep: warning: ") for line in err.splitlines()[:-1]), err
    else:
        assert code == 1, (code, err)
        assert err.count("\n") == 1 and err.startswith("parastep: error: "), err
    return code, err


def _dump(d) -> bytes:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)   # libyaml's emitter: the fuzz loop's hot spot
    return yaml.dump(d, Dumper=dumper, sort_keys=False, default_flow_style=None, width=120).encode("utf-8")


# ---- the properties --------------------------------------------------------------------------

@settings(FUZZ, max_examples=100)
@given(base_dicts())
def test_valid_schedules_are_accepted(tmp_path_factory, d):
    code, err = _validate_text(tmp_path_factory.getbasetemp(), _dump(d))
    assert code == 0, err


@pytest.mark.parametrize("half", [1, 2])   # two items of 650 examples: pytest-xdist runs them side by side
@settings(FUZZ, max_examples=650)
@given(d=mutated_dicts())
def test_mutated_schedules_match_the_independent_checker(tmp_path_factory, half, d):
    code, err = _validate_text(tmp_path_factory.getbasetemp(), _dump(d))
    expected_valid = design_valid(d)
    assert (code == 0) == expected_valid, (expected_valid, err, d)


@st.composite
def broken_texts(draw) -> bytes:
    """Text-level mutations of a valid file, each of which makes it invalid."""
    d = draw(base_dicts())
    text = _dump(d).decode()
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["duplicate", "nest", "tag", "garbage", "nul", "latin1", "bigint", "nan", "recursive"]))
    if op == "duplicate":   # a top-level key again, at the end (after the windows list), same or other value
        key = draw(st.sampled_from(sorted(d)))
        value = draw(st.sampled_from([_dup_value(d, key), 1, "x"]))
        return (text + f"{key}: {value}\n").encode()
    if op == "nest":
        depth = draw(st.integers(33, 3000))
        return text.replace("model: ", "model: " + "[" * depth + "]" * depth + "\nmodel_was: ", 1).encode()
    if op == "tag":
        tag = draw(st.sampled_from(["!!int three", "!!bool maybe", "!!timestamp foo", "!!binary aGk=", "!!float x",
                                    "!!python/name:os.system", "!!set {a}", "!local x", "!!null x", "!!int " + "9" * 4301]))
        key = draw(st.sampled_from(["num_steps", "world_size", "model", "max_window", "output_bytes"]))
        return _replace_value(text, key, tag).encode()
    if op == "garbage":
        junk = draw(st.binary(min_size=1, max_size=64)) + b"\xff\xfe\x00"
        cut = draw(st.integers(0, len(text)))
        return text.encode()[:cut] + junk + text.encode()[cut:]
    if op == "nul":
        return text.encode().replace(b"\n", b"\n\x00", 1)
    if op == "latin1":
        return text.replace("model: ", "model: caf\u00e9-", 1).encode("latin-1")
    if op == "bigint":
        key = draw(st.sampled_from(["num_steps", "world_size", "max_window", "output_bytes"]))
        return _replace_value(text, key, draw(st.sampled_from(["9" * 4301, str(2**62), str(10**20), str(MAX_INT + 1)]))).encode()
    if op == "nan":
        return _replace_value(text, "num_steps", draw(st.sampled_from([".nan", ".NaN", "-.nan"]))).encode()
    return text.replace("model: ", "model: &m [1, *m]\nmodel_was: ", 1).encode()


def _dup_value(d, key):
    v = d.get(key)
    return v if isinstance(v, (int, str)) and not isinstance(v, bool) and "\n" not in str(v) else 1


def _replace_value(text: str, key: str, value: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith(f"{key}:"):
            line = f"{key}: {value}\n"
        out.append(line)
    return "".join(out)


@settings(FUZZ, max_examples=450)
@given(broken_texts())
def test_broken_files_are_rejected_in_one_line(tmp_path_factory, data):
    code, err = _validate_text(tmp_path_factory.getbasetemp(), data)
    assert code == 1, err


@settings(FUZZ, max_examples=200)
@given(base_dicts(), st.data())
def test_truncated_files_match_the_checker(tmp_path_factory, d, data):
    text = _dump(d)
    cut = data.draw(st.integers(0, len(text) - 1))
    cut_text = text[:cut]
    try:
        parsed = yaml.safe_load(cut_text.decode("utf-8"))
        expected_valid = design_valid(parsed)
    except (yaml.YAMLError, UnicodeDecodeError):
        expected_valid = False
    code, err = _validate_text(tmp_path_factory.getbasetemp(), cut_text)
    assert (code == 0) == expected_valid, (expected_valid, err, cut_text)


def test_the_checker_agrees_with_the_shipped_examples():
    for path in sorted((Path(__file__).resolve().parents[2] / "schedules" / "examples").glob("*.yaml")):
        assert design_valid(yaml.safe_load(path.read_text())), path


def test_the_checker_rejects_what_design_forbids():
    rng = random.Random(0)
    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "schedules" / "examples" / "mixed-4gpu.yaml").read_text())
    assert design_valid(base)
    for change in ({"num_steps": "50"}, {"parastep_schedule": True}, {"world_size": 2**62}, {"max_window": 1}):
        assert not design_valid({**base, **change})
    bad = copy.deepcopy(base)
    bad["windows"][rng.choice([i for i, w in enumerate(bad["windows"]) if w["kind"] == "parallel"])]["placement"] = [0]
    assert not design_valid(bad)
