"""Every input is checked before anything big happens, and refused in one line.

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
    from parastep.planner.request import make_plan, request_from_args

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


# ---- exec checks every argument before loading or spawning -------------------------------------


@pytest.fixture
def digits_fixed(tmp_path):
    code, out, err = run_cli(["plan", "--model", "digits", "--gpus", "2", "--policy", "fixed"])
    assert code == 0, err
    path = tmp_path / "fixed.yaml"
    path.write_text(out)
    return path


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e300", "soon"])
def test_exec_timeout_must_be_positive_and_finite(tmp_path, digits_fixed, value):
    code, out, err = run_cli(["exec", str(digits_fixed), "--timeout", value, "--out", str(tmp_path / "o")])
    _one_line_error(code, out, err, needle="--timeout")
    assert "pass e.g. --timeout 300" in err or "expected a number" in err


@pytest.mark.parametrize("flag", ["exec", "evaluate"])
def test_exec_refuses_a_seed_torch_cannot_take(tmp_path, digits_fixed, flag):
    code, out, err = run_cli([flag, str(digits_fixed), "--seed", str(2 ** 64), "--out", str(tmp_path / "o")])
    _one_line_error(code, out, err, needle="--seed")


def test_exec_refuses_an_existing_file_as_out(tmp_path, digits_fixed):
    target = tmp_path / "taken"
    target.write_text("x")
    code, out, err = run_cli(["exec", str(digits_fixed), "--out", str(target)])
    _one_line_error(code, out, err, needle="is an existing file")
    assert target.read_text() == "x"


def test_exec_refuses_a_text_prompt_on_digits_before_loading(monkeypatch, tmp_path, digits_fixed):
    from parastep.executor import registry

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(registry, "load_pipeline", no_loading)
    code, out, err = run_cli(["exec", str(digits_fixed), "--prompt", "cat", "--out", str(tmp_path / "o")])
    _one_line_error(code, out, err, needle="class label")


def test_exec_refuses_more_cpu_ranks_than_memory_holds(tmp_path, digits_fixed):
    """A folder whose weights (a sparse 256 GiB file: nothing is read or allocated) cannot be
    loaded twice: refused before any process starts."""
    import shutil

    import yaml

    from parastep.executor.registry import locate
    from parastep.schedules.io import dump_schedule, schedule_from_dict

    folder = tmp_path / "huge"
    shutil.copytree(locate("digits").folder, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.png", "*.txt"))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(2 ** 38)
    data = yaml.safe_load(digits_fixed.read_text())
    data["model"] = str(folder)
    sched = tmp_path / "huge.yaml"
    sched.write_text(dump_schedule(schedule_from_dict(data)))
    code, out, err = run_cli(["exec", str(sched), "--device", "cpu", "--out", str(tmp_path / "o")])
    _one_line_error(code, out, err, needle="256.00 GiB of weights")
    assert "memory is available" in err and not (tmp_path / "o").exists()


def test_check_world():
    from parastep.errors import UserError
    from parastep.executor.launch import check_world

    gib = 2 ** 30
    check_world(1, device="cuda")                                   # one rank: nothing to check
    check_world(4, device="cpu", copy_bytes=gib, available_bytes=4 * gib)
    check_world(4, device="cpu", copy_bytes=None)                    # size unknown: not refused
    with pytest.raises(UserError, match=r"plan for at most 3 ranks \(parastep plan --gpus 3\)"):
        check_world(4, device="cpu", copy_bytes=gib, available_bytes=3 * gib + 1)
    with pytest.raises(UserError, match="more memory"):
        check_world(4, device="cpu", copy_bytes=gib, available_bytes=gib)
    import torch

    if torch.cuda.device_count() < 64:
        with pytest.raises(UserError, match="CUDA device"):
            check_world(64, device="cuda")


# ---- non-finite numbers on the command line -------------------------------------------------


@pytest.mark.parametrize("argv, needle", [
    (["--min-psnr", "nan"], "--min-psnr"), (["--min-psnr", "-inf"], "--min-psnr"), (["--min-psnr", "inf"], "--min-psnr"),
    (["--budget", "nan"], "--budget"), (["--budget", "inf"], "--budget"), (["--budget", "-1"], "--budget"),
    (["--budget", "0.1", "--coverage", "nan"], "--coverage"), (["--time-limit", "nan"], "--time-limit"),
])
def test_plan_refuses_non_finite_numbers(prior_file, argv, needle):
    code, out, err = run_cli(["plan", "--profile", str(prior_file), "--gpus", "2", *argv])
    _one_line_error(code, out, err, needle=needle)
