"""A folder from the compatibility table goes ``profile -> plan -> exec --reference`` with no
flag to guess, and ``plan --verify`` measures what the profile measured.

- DiT with guidance > 1 steps a doubled latent batch (``[x; x]``: k = 2 identical copies of the N
  samples). The profiler folds the rows into N samples (``trajectory.first_copy``) and perturbs every
  copy alike (``trajectory.tiled``); copies that differ are refused in one line (``latent_copies``).
- ``plan --verify`` calls the pipeline at the profile's recorded size and frames (video), and
  refuses image-to-image profiles in one line pointing to ``parastep evaluate SCHED --image PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
import torch

import tiny_pipelines as TP
from clitools import run_cli
from parastep.profiles.io import load_profile
from parastep.schedules.io import load_schedule


def _ok(argv):
    code, out, err = run_cli([str(a) for a in argv])
    assert code == 0, err[-3000:]
    return out, err


def _refused(argv, *, needle: str) -> str:
    code, _, err = run_cli([str(a) for a in argv])
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("parastep: error: ") or ln.startswith("Traceback")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("parastep: error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.exists():
        TP.make_compat_pipeline(name).save_pretrained(str(folder), safe_serialization=True)
        if name == "dit":                  # as the hub's DiT folders carry it (save_pretrained drops it)
            index = folder / "model_index.json"
            labels = {str(k): v for k, v in TP.DIT_LABELS.items()}
            index.write_text(json.dumps({**json.loads(index.read_text()), "id2label": labels}, indent=2))
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("profile-folders")


# ---- DiT: a doubled latent batch ------------------------------------------------------------------


@pytest.fixture(scope="module")
def dit_profile(root) -> Path:
    prof = root / "dit.yaml"
    _ok(["profile", "--no-calibration", "--model-path", _folder(root, "dit"), "--gpus", 1, "--max-window", 2, "--steps", 3, "--seed", 1,
         "--class-label", "golden retriever", "--class-label", "2", "--out", prof])
    return prof


def test_dit_folder_profile_plan_exec(dit_profile, tmp_path):
    p, _ = load_profile(dit_profile)
    assert p.pipeline_class == "DiTPipeline" and p.guidance_scale is not None and p.guidance_scale > 1
    oe = p.output_errors
    assert [(s.prompt, s.seed) for s in oe.samples] == [("golden retriever", 1), ("2", 1)]
    rows = [v for tab in (oe.parallel, oe.reuse) for pred in tab.values() for row in pred for v in row]
    assert rows and all(len(v) == 2 for v in rows)                   # one error per sample, not per latent row
    sched = tmp_path / "s.yaml"
    text, _ = _ok(["plan", "--profile", dit_profile, "--gpus", 1, "--verify", 2])   # held-out class labels
    sched.write_text(text)
    measured = load_schedule(sched).quality.measured
    assert measured.prompts == ["golden retriever", "2"] and measured.psnr_db_min == 100.0   # lossless on 1 GPU
    _, err = _ok(["exec", sched, "--class-label", "golden retriever", "--out", tmp_path / "run", "--reference"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_labels"] == [1] and report["reference"]["identical"]
    assert "identical to sequential" in err.strip().splitlines()[-1]


def test_doubled_batch_quality_model_matches_end_to_end_runs():
    """Differential: on DiT's doubled batch, the linearised quality model (directions found on the
    folded samples, pushed through the run tiled over both copies) against every window run end to
    end (``direct``); both fold to one number per sample."""
    from parastep.profiler import deviation, propagation, trajectory

    pipe = TP.make_compat_pipeline("dit")
    prompts, seeds = ["0", "1"], [3, 3]
    T, J = 6, 2
    kw = {"guidance_scale": 1.5, "num_inference_steps": T}   # > 1: doubled; mild: nearly linear
    traj = trajectory.record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
    assert traj.copies == 2 and traj.x[0].shape[0] == 4
    preds: dict = {}
    deviation.deviation_tables(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, max_window=J, call_kwargs=kw,
                               predictions=preds)
    gain, _ = propagation.propagation_gain(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw, delta=1e-3)
    bdev = deviation.boundary_deviations(traj, type(pipe.scheduler), preds, num_steps=T, max_window=J)
    common = dict(prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw, rank=8, gain=gain)
    lin, _, captured = propagation.window_output_errors(pipe, traj, bdev, **common)
    direct, _, _ = propagation.window_output_errors(pipe, traj, bdev, direct=True, **common)
    assert set(lin) == set(direct) and captured > 0.999
    assert all(len(v) == 2 for v in lin.values())
    pairs = [(a, b) for k in lin for a, b in zip(lin[k], direct[k])]
    linearised = [(a, b) for key in lin if key[2] + key[3] < T for a, b in zip(lin[key], direct[key])]   # ends before T
    rel = sorted(abs(a - b) / max(b, 1e-12) for a, b in pairs)
    assert rel[len(rel) // 2] < 0.05, rel
    # where the linearisation holds (small deviations, pushed through the run tiled over both
    # copies: a direction on one copy only would push nothing through DiT, which re-syncs from the
    # first), the two agree; the large ones early in a random model's run are nonlinear, as they
    # are without doubling
    small = [abs(a - b) / b for a, b in linearised if 0 < b < 0.1]
    assert len(small) >= 8 and max(small) < 0.1, small


def test_latent_copies_fold_and_refuse():
    from parastep.profiler.trajectory import first_copy, latent_copies, rms_per_sample, tiled

    x = torch.randn(3, 4, 2, 2)
    two = torch.cat([x, x])
    assert latent_copies([x], samples=3) == 1 and latent_copies([two, two * 2], samples=3) == 2
    assert torch.equal(first_copy(two, 2), x) and torch.equal(tiled(x, 2), two)
    assert torch.allclose(rms_per_sample(two, 2), rms_per_sample(x))
    with pytest.raises(ValueError, match="^the scheduler steps 2 copies of each of the 3 samples and the copies differ"):
        latent_copies([torch.cat([x, x + 1e-3])], samples=3)
    with pytest.raises(ValueError, match="latent batch of 5 rows for 3 samples, not a whole number of copies"):
        latent_copies([torch.randn(5, 4)], samples=3)


# ---- plan --verify calls the pipeline as the profiler did -------------------------------------------


def test_plan_verify_video_at_the_profiled_size_and_frames(root, tmp_path):
    """Latte: the profile's 32x32 px and its frames (``video_length``), not the pipeline's 512 px x 16."""
    prof = tmp_path / "latte.yaml"
    _ok(["profile", "--no-calibration", "--model-path", _folder(root, "latte"), "--gpus", 1, "--max-window", 2, "--steps", 3, "--seed", 1,
         "--prompt", "a cat", "--height", 32, "--width", 32, "--num-frames", TP.LATTE_FRAMES, "--out", prof])
    text, err = _ok(["plan", "--profile", prof, "--gpus", 2, "--interconnect", "nvlink", "--budget", 1e9, "--verify", 2])
    s = (tmp_path / "s.yaml")
    s.write_text(text)
    sched = load_schedule(s)
    assert any(w.kind != "exact" for w in sched.windows) and sched.num_frames == TP.LATTE_FRAMES
    m = sched.quality.measured
    assert (m.samples, m.prompts, m.seeds) == (2, ["a cat", "a cat"], [10_000, 10_001])
    assert 0 < m.psnr_db_min <= m.psnr_db_mean < 100
    assert "verify: 2 held-out images" in err


def test_plan_verify_unconditional(root, tmp_path):
    """DDIM: the samples' prompt is the text 'None'; the pipeline is called with no condition."""
    prof = tmp_path / "ddim.yaml"
    _ok(["profile", "--no-calibration", "--model-path", _folder(root, "ddim"), "--gpus", 1, "--max-window", 2, "--steps", 3, "--out", prof])
    text, _ = _ok(["plan", "--profile", prof, "--gpus", 1, "--verify", 2])
    (tmp_path / "s.yaml").write_text(text)
    assert load_schedule(tmp_path / "s.yaml").quality.measured.psnr_db_min == 100.0


def test_plan_verify_refuses_img2img_in_one_line(root, dit_profile, tmp_path):
    """No input image to run it on: one line pointing to evaluate, whether the profile records its
    strength (refused before loading) or predates that (refused once the class is known)."""
    from parastep.executor.registry import folder_identity

    folder = _folder(root, "sd15-img2img")
    data = yaml.safe_load(dit_profile.read_text())
    data.update(name="i2i", model=str(folder), pipeline_class="StableDiffusionImg2ImgPipeline",
                model_identity=folder_identity(folder))
    fix = "plan without --verify, then measure the schedule with 'parastep evaluate SCHED --image PATH'"
    for strength in (0.5, None):
        prof = tmp_path / f"i2i-{strength}.yaml"
        prof.write_text(yaml.safe_dump({**data, "strength": strength} if strength else data, sort_keys=False))
        line = _refused(["plan", "--profile", prof, "--gpus", 1, "--verify", 2],
                        needle="plan --verify needs an input image: profile 'i2i' is image-to-image")
        assert line.endswith(fix)
        _ok(["plan", "--profile", prof, "--gpus", 1])                  # without --verify: planned


# ---- PixArt: CFG decided in a local, raw halves carry a learned variance ------------------------


def test_pixart_folder_profile_prices_the_split_it_can_run(root, tmp_path):
    """PixArt decides CFG in a local of its ``__call__`` (no attribute) and its transformer returns
    epsilon + a learned variance: the profile still times a half forward (as the executor finds
    the guided batch), and prices the pair swap at a raw half of twice the guided output's bytes;
    a plan's schedule carries that size into its totals."""
    prof = tmp_path / "pixart.yaml"
    _ok(["profile", "--no-calibration", "--model-path", _folder(root, "pixart-sigma"), "--gpus", 2, "--max-window", 2, "--steps", 3,
         "--seed", 1, "--prompt", "a red cat", "--interconnect", "nvlink", "--out", prof])
    p, _ = load_profile(prof)
    assert p.pipeline_class == "PixArtSigmaPipeline" and p.compute.half_forward_s is not None and p.can_split
    assert p.raw_half_bytes == 2 * p.output_bytes == p.swap_bytes
    text, _ = _ok(["plan", "--profile", prof, "--gpus", 2, "--budget", 0])
    sched = tmp_path / "s.yaml"
    sched.write_text(text)
    s = load_schedule(sched)
    assert s.raw_half_bytes == p.raw_half_bytes
    _ok(["validate", sched])
