"""Issue 8 item 5: every input is checked before anything big happens, and refused in one line.

- the planner sizes the DP's table before allocating it (refuse ``--solver dp``, switch ``auto``);
- the profile contract rejects negative gains, mis-sized curves and duplicate entries;
- ``exec`` checks its arguments (output folder, timeout, world size against the machine,
  prompts against the model) before loading the model or spawning a process;
- non-finite numbers on the command line are one line, exit 2.
"""

from __future__ import annotations

import pytest

from clitools import run_cli
from parastep.planner import plan as plan_module
from parastep.profiles.io import write_profile
from strategies import make_profile


def _one_line_error(code, out, err, *, needle, exit_code=2):
    assert code == exit_code, (code, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parastep: error: "), err
    assert "Traceback" not in err
    assert needle in err, err


@pytest.fixture
def prior_file(tmp_path):
    path = tmp_path / "prior.yaml"
    write_profile(make_profile(num_steps=30, max_window=8, seed=4), path)
    return path


# ---- the DP's memory, sized before it is allocated ------------------------------------------


def test_dp_table_bytes_is_what_the_oracle_allocates(monkeypatch, prior_file):
    import numpy as np

    from parastep.planner.oracle import solve_dp

    allocated = []
    full = np.full

    def spy(*args, **kwargs):
        table = full(*args, **kwargs)
        allocated.append(table.nbytes)
        return table

    from parastep.cli import build_parser
    from parastep.planner.command import make_plan, request_from_args

    problem = make_plan(request_from_args(build_parser().parse_args(
        ["plan", "--profile", str(prior_file), "--gpus", "4", "--solver", "dp"]))).problem
    monkeypatch.setattr(np, "full", spy)
    solve_dp(problem)
    assert allocated and plan_module.dp_table_bytes(problem) == max(allocated)


def test_dp_too_big_is_refused_in_one_line(monkeypatch, prior_file):
    monkeypatch.setattr(plan_module, "DP_TABLE_LIMIT_BYTES", 1000)
    code, out, err = run_cli(["plan", "--profile", str(prior_file), "--gpus", "4", "--solver", "dp"])
    _one_line_error(code, out, err, needle="--solver dp: the DP's table would need")
    assert "--solver cp-sat" in err


def test_dp_too_big_switches_auto_to_cpsat(monkeypatch, prior_file):
    monkeypatch.setattr(plan_module, "DP_TABLE_LIMIT_BYTES", 1000)
    code, out, err = run_cli(["plan", "--profile", str(prior_file), "--gpus", "4", "--workers", "1", "--time-limit", "20"])
    assert code == 0, err
    assert "solving with CP-SAT instead" in err
    assert "solver: {name: cp-sat" in out or "name: cp-sat" in out


# ---- the profile contract: signs, curve lengths, duplicates ---------------------------------


def _profile_dict(**kw):
    return make_profile(num_steps=12, max_window=4, seed=3, **kw).model_dump(mode="json")


def _mutations():
    def negative_gain(d):
        d["propagation"]["gain"][3] = -0.5

    def short_similarity(d):
        d["similarity"]["cosine"] = d["similarity"]["cosine"][:1]

    def long_rel_l1(d):
        d["similarity"]["rel_l1"] = d["similarity"]["rel_l1"] + [0.1]

    def cosine_above_one(d):
        d["similarity"]["cosine"][0] = 1.5

    def negative_rel_l1(d):
        d["similarity"]["rel_l1"][0] = -0.1

    def duplicate_comm(d):
        d["comm"]["entries"].append(dict(d["comm"]["entries"][0]))

    def duplicate_sample(d):
        oe = d["output_errors"]
        oe["samples"][1] = dict(oe["samples"][0])

    return {"negative gain": (negative_gain, "propagation.gain"), "1-entry similarity": (short_similarity, "similarity.cosine"),
            "long rel_l1": (long_rel_l1, "similarity.rel_l1"), "cosine > 1": (cosine_above_one, "outside [-1, 1]"),
            "negative rel_l1": (negative_rel_l1, "negative"), "duplicate comm": (duplicate_comm, "comm.entries"),
            "duplicate sample": (duplicate_sample, "twice")}


@pytest.mark.parametrize("name", list(_mutations()))
def test_profile_contract_rejects(name):
    from pydantic import ValidationError

    from parastep.profiles.model import Profile

    mutate, needle = _mutations()[name]
    d = _profile_dict(samples=3)
    Profile.model_validate(d)                       # the unmutated profile is valid
    mutate(d)
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        Profile.model_validate(d)


def test_plan_refuses_a_profile_with_a_negative_gain_in_one_line(tmp_path):
    import yaml

    d = _profile_dict()
    d["propagation"]["gain"][0] = -1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    code, out, err = run_cli(["plan", "--profile", str(bad), "--gpus", "2"])
    _one_line_error(code, out, err, needle="propagation.gain")
