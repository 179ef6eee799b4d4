"""``parastep plan`` from the outside: stdout is only a valid schedule, errors are one line, exit 2."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from parastep.cli import main
from parastep.profiles.io import shipped_profiles, write_profile
from parastep.schedules.check import violations
from parastep.schedules.io import schedule_from_dict

from strategies import make_profile


@pytest.fixture
def prior_file(tmp_path):
    path = tmp_path / "prof.yaml"
    write_profile(make_profile(num_steps=30, max_window=8, seed=4, calibration=True), path)
    return path


@pytest.fixture
def measured_file(tmp_path):
    path = tmp_path / "measured.yaml"
    write_profile(make_profile(num_steps=30, max_window=8, seed=6, provenance="measured"), path)
    return path


def _plan(capsys, *argv):
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_user_error(code, out, err, *, needle):
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parastep: error: "), err
    assert "Traceback" not in err
    assert needle in err, err


def test_plan_writes_only_a_valid_schedule_to_stdout(capsys, prior_file):
    code, out, err = _plan(capsys, "--model", "random", "--gpus", "4", "--profile", str(prior_file), "--workers", "1")
    assert code == 0
    s = schedule_from_dict(yaml.safe_load(out))
    assert violations(s) == [] and s.world_size == 4 and s.solver.status == "OPTIMAL"
    (prior,) = [line for line in err.splitlines() if "priced by priors, not measurements" in line]   # one-line prior warning
    assert prior.startswith("parastep plan: warning: ") and "deviation" in prior
    assert "speedup" in err and "OPTIMAL" in err                           # one-line summary


def test_plan_fixed_policy_and_dp_solver(capsys, prior_file):
    code, out, _ = _plan(capsys, "--model", "random", "--gpus", "8", "--profile", str(prior_file), "--policy", "fixed", "--warmup", "3")
    s = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and s.policy == "fixed" and [w.kind for w in s.windows[:4]] == ["exact"] * 3 + ["parallel"]
    code, out, _ = _plan(capsys, "--model", "random", "--gpus", "8", "--profile", str(prior_file), "--solver", "dp")
    assert code == 0 and schedule_from_dict(yaml.safe_load(out)).solver.name == "dp"


def test_min_psnr_uses_the_calibration(capsys, prior_file):
    code, out, _ = _plan(capsys, "--model", "random", "--gpus", "4", "--profile", str(prior_file), "--min-psnr", "40", "--workers", "1")
    s = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and s.quality.min_psnr_db == 40.0 and s.quality.coverage == 0.9
    # the target became the per-image bound through the profile's calibration (measured quality
    # against such targets is checked two-sided on held-out seeds in test_quality.py)
    from parastep.profiles.io import load_profile

    cal = load_profile(prior_file)[0].calibration
    assert math.isclose(s.quality.budget, cal.deviation_for_psnr(40.0), rel_tol=1e-12)
    assert math.isclose(cal.psnr_db(s.quality.budget), 40.0, abs_tol=1e-9)


def test_min_psnr_uses_the_calibration_of_its_world_size(capsys, prior_file, tmp_path):
    """A calibration with a part for G = 2 (Mondrian): --gpus 2 converts the target through that
    part; --gpus 4 has none, so it uses the pooled one and says so in one warning line that names
    the command calibrating it. A plan the calibration ran is stated by its measurement."""
    from parastep.profiles.io import dump_profile, load_profile
    from parastep.schedules.model import plan_identity

    prof = load_profile(prior_file)[0]
    c = prof.calibration
    pooled = c.model_copy(update={"central_intercept_db": c.intercept_db + 2.0, "level": 0.9,
                                  "residuals_db": [-2.0 + 0.1 * k for k in range(40)]})
    part = pooled.model_copy(update={"intercept_db": pooled.intercept_db + 6.0})
    path = tmp_path / "mondrian.yaml"
    path.write_text(dump_profile(prof.model_copy(update={"calibration": pooled.model_copy(update={"by_world_size": {2: part}})})))
    code, out, err = _plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(path), "--min-psnr", "40", "--workers", "1")
    s2 = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and math.isclose(s2.quality.budget, part.deviation_for_psnr(40.0), rel_tol=1e-12)
    assert "calibrated per world size" not in err
    code, out, err = _plan(capsys, "--model", "random", "--gpus", "4", "--profile", str(path), "--min-psnr", "40", "--workers", "1")
    s4 = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and math.isclose(s4.quality.budget, pooled.deviation_for_psnr(40.0), rel_tol=1e-12)
    (note,) = [line for line in err.splitlines() if "calibrated per world size at G = 2, not 4" in line]
    assert "parastep profile --recalibrate PROFILE --calibration-samples 24 --gpus 4 --out NEW.yaml" in note
    lossy = ("--model", "random", "--gpus", "2", "--profile", str(path), "--budget", "1", "--workers", "1")
    code, out, err = _plan(capsys, *lossy)
    s2 = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and s2.quality.predicted_psnr is not None and s2.quality.predicted_psnr.measured_on == 0
    n = prof.quality_samples                         # the same plan, once the calibration ran it: its measurement states it
    known = pooled.model_copy(update={"by_world_size": {2: part}, "measured_plans": {plan_identity(2, s2.windows): [33.0] * n}})
    path.write_text(dump_profile(prof.model_copy(update={"calibration": known})))
    code, out, err = _plan(capsys, *lossy)
    again = schedule_from_dict(yaml.safe_load(out))
    got = again.quality.predicted_psnr
    assert code == 0 and got.measured_on == n and got.measured_median_db == 33.0 == got.measured_p10_db
    # one calibration image is too few for a plan's own residuals (a bound at 0.9 needs 9): the model's prediction
    assert got.residuals_of == "picks" and got.median_db == s2.quality.predicted_psnr.median_db
    assert "this plan measured 33.0 / 33.0 dB on the profile's" in err


@pytest.mark.parametrize("argv,needle", [
    (["--model", "no-such-model", "--gpus", "2"], "no shipped profile for model 'no-such-model'"),
    (["--model", "random", "--gpus", "2", "--profile", "/nonexistent/p.yaml"], "does not exist"),
    (["--model", "random", "--gpus", "0"], "expected a positive integer"),
    (["--model", "random", "--gpus", "2", "--budget", "-1"], "expected a finite number >= 0"),
    (["--model", "random", "--gpus", "2", "--budget", "1", "--per-image-bound"], "--per-image-bound applies to --min-psnr"),
])
def test_bad_flags_are_one_line_exit_2(capsys, argv, needle):
    _assert_user_error(*_plan(capsys, *argv), needle=needle)


def test_min_psnr_plans_to_the_predicted_share_and_per_image_bound_keeps_the_bound(capsys):
    """On the shipped digits profile at G = 4, --min-psnr 30 emits a plan whose predicted share of
    images at 30 dB meets the 0.9 coverage and that is at least as fast as --per-image-bound's, whose
    statement is the calibration's per-image bound for 30 dB (or below it, after a measured miss)."""
    from parastep.planner.plan import predicted_per_sample
    from parastep.profiles.io import resolve_profile
    from parastep.schedules.model import plan_identity

    profile, _ = resolve_profile("digits")
    cal = profile.calibration.at(4)
    args = ("--model", "digits", "--gpus", "4", "--min-psnr", "30", "--workers", "1", "--deterministic")
    code, out, err = _plan(capsys, *args)
    share_plan = schedule_from_dict(yaml.safe_load(out))
    code2, out2, _ = _plan(capsys, *args, "--per-image-bound")
    bound_plan = schedule_from_dict(yaml.safe_load(out2))
    assert code == code2 == 0
    assert share_plan.latency.speedup >= bound_plan.latency.speedup - 1e-9
    assert bound_plan.quality.budget <= cal.deviation_for_psnr(30.0) * (1 + 1e-12)
    measured = profile.calibration.measured_plans.get(plan_identity(4, share_plan.windows))
    assert cal.predicted_share(predicted_per_sample(share_plan, profile), 30.0, measured=measured) >= 0.9
    assert "lowered by" not in _plan(capsys, *args, "--per-image-bound")[2]


def test_malformed_and_truncated_profiles(capsys, tmp_path, prior_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parastep_profile: 1\nname: [unclosed\n")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(bad)), needle="not valid YAML")
    half = tmp_path / "half.yaml"
    half.write_text(prior_file.read_text()[: len(prior_file.read_text()) // 2].rsplit("\n", 1)[0] + "\n")
    code, out, err = _plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(half))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_profile_for_another_model_and_bad_warmup(capsys, prior_file):
    _assert_user_error(*_plan(capsys, "--model", "sdxl", "--gpus", "2", "--profile", str(prior_file)), needle="is for model 'random'")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(prior_file), "--warmup", "30"),
                       needle="--warmup 30 must be less than the number of steps (30)")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(prior_file), "--policy", "fixed", "--budget", "1"),
                       needle="apply to --policy optimal")


def test_measured_profile_refuses_other_steps_and_windows(capsys, measured_file):
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(measured_file), "--steps", "40"),
                       needle="re-profile with --steps 40")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(measured_file), "--max-window", "12"),
                       needle="re-profile with --max-window 12")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(measured_file), "--min-psnr", "30"),
                       needle="needs a profile with a PSNR calibration")
    _assert_user_error(*_plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(measured_file), "--min-psnr", "30"),
                       needle="'parastep profile --recalibrate PROFILE --calibration-samples 24 --gpus 2 --out NEW.yaml'")
    code, out, err = _plan(capsys, "--model", "random", "--gpus", "2", "--profile", str(measured_file), "--workers", "1")
    assert code == 0 and "WARNING" not in err and "priced by priors" not in err   # measured: no prior warning


@pytest.mark.skipif("sdxl" not in shipped_profiles(), reason="the shipped sdxl profile is not in this checkout")
def test_shipped_sdxl_plans_optimally_with_the_prior_warning(capsys):
    code, out, err = _plan(capsys, "--model", "sdxl", "--gpus", "8")
    s = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and violations(s) == [] and s.solver.status == "OPTIMAL" and s.model == "sdxl"
    assert sum("priced by priors, not measurements" in line for line in err.splitlines()) == 1
    assert s.latency.speedup > 1.0 and s.quality.predicted <= s.quality.budget


@pytest.mark.skipif("sdxl" not in shipped_profiles(), reason="the shipped sdxl profile is not in this checkout")
def test_sdxl_prior_is_rederived_for_other_steps_and_interconnects(capsys):
    code, out, _ = _plan(capsys, "--model", "sdxl", "--gpus", "4", "--steps", "20", "--max-window", "20")
    s = schedule_from_dict(yaml.safe_load(out))
    assert code == 0 and s.num_steps == 20 and s.max_window == 20 and violations(s) == []
    code, out_nv, _ = _plan(capsys, "--model", "sdxl", "--gpus", "8", "--policy", "fixed")
    code2, out_eth, _ = _plan(capsys, "--model", "sdxl", "--gpus", "8", "--policy", "fixed", "--interconnect", "ethernet-1g")
    nv, eth = (schedule_from_dict(yaml.safe_load(o)) for o in (out_nv, out_eth))
    assert code == code2 == 0 and eth.latency.predicted_s > nv.latency.predicted_s and any(p.startswith("comm for 8 ranks") for p in eth.profile.prior_parts)
    _assert_user_error(*_plan(capsys, "--model", "sdxl", "--gpus", "8", "--interconnect", "carrier-pigeon"), needle="unknown interconnect")


def test_console_script_subprocess(tmp_path, prior_file):
    exe = str(Path(sys.executable).with_name("parastep"))
    assert Path(exe).exists() or shutil.which("parastep"), "the parastep console script is not installed"
    exe = exe if Path(exe).exists() else shutil.which("parastep")
    ok = subprocess.run([exe, "plan", "--model", "random", "--gpus", "2", "--profile", str(prior_file), "--workers", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    s = schedule_from_dict(yaml.safe_load(ok.stdout))
    assert violations(s) == [] and math.isfinite(s.latency.speedup)
    sched = tmp_path / "s.yaml"
    sched.write_text(ok.stdout)
    assert subprocess.run([exe, "validate", str(sched)], capture_output=True, text=True, timeout=60).returncode == 0
    bad = subprocess.run([exe, "plan", "--model", "nope", "--gpus", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_relaxed_min_psnr_states_each_warning_once(capsys):
    """--min-psnr on the shipped digits profile at a world size it has no calibration part for:
    the relaxation solves several statements, each of which notes the pooled calibration; the
    user reads the note once, with the command that adds the world size."""
    code, out, err = _plan(capsys, "--model", "digits", "--gpus", "16", "--interconnect", "nvlink", "--min-psnr", "30",
                           "--workers", "1")
    assert code == 0, err
    notes = [line for line in err.splitlines() if "is calibrated per world size at G = 2, 4, 8, not 16" in line]
    assert len(notes) == 1 and "--recalibrate PROFILE --calibration-samples 24 --gpus 16 --out NEW.yaml" in notes[0]
    assert any("lowered by" in line for line in err.splitlines())      # the relaxation did run more than one solve
    assert len(err.splitlines()) == len(set(err.splitlines()))
