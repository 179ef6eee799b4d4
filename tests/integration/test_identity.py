"""A folder is enough, and exec refuses a folder that is not the one profiled.

``executor.registry.folder_identity`` hashes a pipeline folder's model_index.json and component
config JSONs (not weights); ``profile`` records it with the pipeline class, the schedule carries
both, and ``exec`` / ``evaluate`` / ``plan --verify`` refuse another folder in one line before
loading anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from clitools import run_cli
from parastep.executor.registry import folder_identity, locate, weights_bytes
from parastep.schedules.io import dump_schedule, schedule_from_dict


def _digits_folder() -> Path:
    return Path(locate("digits").folder)


@pytest.fixture
def digits_copy(tmp_path) -> Path:
    folder = tmp_path / "digits-copy"
    shutil.copytree(_digits_folder(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.png", "*.txt"))
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=4))


# ---- the identity function ------------------------------------------------------------------


def test_identity_is_stable_across_copies_and_resaves(digits_copy):
    ident = folder_identity(_digits_folder())
    assert len(ident) == 64 and int(ident, 16) >= 0
    assert folder_identity(digits_copy) == ident                  # a copy elsewhere
    _edit_json(digits_copy / "unet" / "config.json", _diffusers_version="9.9.9")
    _edit_json(digits_copy / "model_index.json", _diffusers_version="9.9.9", _name_or_path="/somewhere/else")
    assert folder_identity(digits_copy) == ident                  # re-saved by another version / from another path
    weights = digits_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert folder_identity(digits_copy) == ident                  # weights are not part of it


@pytest.mark.parametrize("file, change", [
    ("unet/config.json", {"norm_eps": 1e-3}),
    ("scheduler/scheduler_config.json", {"beta_schedule": "linear"}),
    ("model_index.json", {"_class_name": "OtherPipeline"}),
])
def test_identity_changes_with_any_config(digits_copy, file, change):
    _edit_json(digits_copy / file, **change)
    assert folder_identity(digits_copy) != folder_identity(_digits_folder())


def test_identity_changes_with_a_new_component_config(digits_copy):
    (digits_copy / "unet" / "extra_config.json").write_text("{}")
    assert folder_identity(digits_copy) != folder_identity(_digits_folder())


def test_weights_bytes_counts_each_component_once(digits_copy):
    unet = digits_copy / "unet"
    plain = (unet / "diffusion_pytorch_model.safetensors").stat().st_size
    assert weights_bytes(digits_copy) == plain
    shutil.copy(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model.fp16.safetensors")
    assert weights_bytes(digits_copy) == plain                    # a variant beside the plain file is not loaded


def test_a_folder_path_is_a_model_name(digits_copy):
    loc = locate(str(digits_copy))
    assert Path(loc.folder) == digits_copy and loc.class_name is None


# ---- exec / evaluate refuse another folder, before loading ------------------------------------


def _digits_schedule(tmp_path, **fields) -> Path:
    code, out, err = run_cli(["plan", "--model", "digits", "--gpus", "2", "--policy", "fixed"])
    assert code == 0, err
    data = yaml.safe_load(out)
    data.update(fields)
    path = tmp_path / "sched.yaml"
    path.write_text(dump_schedule(schedule_from_dict(data)))
    return path


def _refused(code, out, err, *, needle):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parastep: error: "), err
    assert needle in err, err


@pytest.mark.parametrize("command", ["exec", "evaluate"])
def test_exec_and_evaluate_refuse_another_folder(tmp_path, digits_copy, command):
    _edit_json(digits_copy / "unet" / "config.json", norm_eps=1e-3)
    sched = _digits_schedule(tmp_path, model=str(digits_copy.parent / "profiled"),
                             pipeline_class="DigitsPipeline", model_identity=folder_identity(_digits_folder()))
    code, out, err = run_cli([command, str(sched), "--model-path", str(digits_copy), "--out", str(tmp_path / "out")])
    _refused(code, out, err, needle=f"has identity {folder_identity(_digits_folder())[:12]}")
    assert folder_identity(digits_copy)[:12] in err and "re-profile" in err
    assert not (tmp_path / "out").exists()


def test_exec_refuses_a_registry_model_whose_folder_changed(tmp_path):
    sched = _digits_schedule(tmp_path, model_identity="0" * 64)
    code, out, err = run_cli(["exec", str(sched), "--out", str(tmp_path / "out")])
    _refused(code, out, err, needle="the profiled model 'digits' has identity 000000000000")


def test_check_model_accepts_the_profiled_folder_under_any_path(tmp_path, digits_copy):
    from parastep.executor.pipeline import check_model

    sched = schedule_from_dict(yaml.safe_load(_digits_schedule(tmp_path, model_identity=folder_identity(_digits_folder())).read_text()))
    assert Path(check_model(sched, None).folder) == _digits_folder()
    assert Path(check_model(sched, str(digits_copy)).folder) == digits_copy
    old = sched.model_copy(update={"model_identity": None, "pipeline_class": None})   # an old schedule: nothing to check
    assert check_model(old, str(digits_copy)).folder == str(digits_copy)


def test_profile_needs_a_model_or_a_folder(tmp_path):
    code, out, err = run_cli(["profile", "--out", str(tmp_path / "p.yaml")])
    _refused(code, out, err, needle="--model NAME or --model-path DIR")


# ---- the whole chain from a folder alone --------------------------------------------------------


def test_folder_alone_profile_plan_exec(tmp_path, digits_copy):
    """``profile --model-path DIR`` (no --model) records the class and identity, ``plan --profile``
    carries them into the schedule, ``exec`` without --model-path finds the folder and runs it;
    a changed copy of the folder is refused."""
    from parastep.profiles.io import load_profile

    prof = tmp_path / "prof.yaml"
    code, out, err = run_cli(["profile", "--no-calibration", "--model-path", str(digits_copy), "--gpus", "1", "--steps", "4",
                              "--max-window", "2", "--prompt", "3", "--seed", "1", "--out", str(prof)])
    assert code == 0, err
    p, _ = load_profile(prof)
    assert p.model == str(digits_copy.resolve()) and p.pipeline_class == "DigitsPipeline"
    assert p.model_identity == folder_identity(digits_copy) and p.name.startswith("digits-copy-")
    code, out, err = run_cli(["plan", "--profile", str(prof), "--gpus", "1"])
    assert code == 0, err
    sched = tmp_path / "sched.yaml"
    sched.write_text(out)
    s = schedule_from_dict(yaml.safe_load(out))
    assert (s.model, s.pipeline_class, s.model_identity) == (p.model, "DigitsPipeline", p.model_identity)
    code, out, err = run_cli(["exec", str(sched), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["world_size"] == 1
    other = tmp_path / "other"
    shutil.copytree(digits_copy, other)
    _edit_json(other / "scheduler" / "scheduler_config.json", beta_end=0.03)
    code, out, err = run_cli(["exec", str(sched), "--model-path", str(other), "--out", str(tmp_path / "run2")])
    _refused(code, out, err, needle="the profiled folder")
