"""Issue 8: a folder from the compatibility table goes ``profile -> plan -> exec --reference`` with no
flag to guess, and ``plan --verify`` measures what the profile measured.

- DiT with guidance > 1 steps a doubled latent batch (``[x; x]``: k = 2 identical copies of the N
  samples). The profiler folds the rows into N samples (``measure.first_copy``) and perturbs every
  copy alike (``measure.tiled``); copies that differ are refused in one line (``latent_copies``).
- ``plan --verify`` calls the pipeline at the profile's recorded size and frames (video), and
  refuses image-to-image profiles in one line pointing to ``parastep evaluate SCHED --image PATH``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_dit_folder_profile_plan_exec(root, tmp_path):
    folder = _folder(root, "dit")
    prof = tmp_path / "dit.yaml"
    _ok(["profile", "--model-path", folder, "--gpus", 1, "--max-window", 2, "--steps", 3, "--seed", 1,
         "--class-label", "golden retriever", "--class-label", "2", "--out", prof])
    p, _ = load_profile(prof)
    assert p.pipeline_class == "DiTPipeline" and p.guidance_scale is not None and p.guidance_scale > 1
    oe = p.output_errors
    assert [(s.prompt, s.seed) for s in oe.samples] == [("golden retriever", 1), ("2", 1)]
    rows = [v for tab in (oe.parallel, oe.reuse) for pred in tab.values() for row in pred for v in row]
    assert rows and all(len(v) == 2 for v in rows)                   # one error per sample, not per latent row
    sched = tmp_path / "s.yaml"
    text, _ = _ok(["plan", "--profile", prof, "--gpus", 1])
    sched.write_text(text)
    _, err = _ok(["exec", sched, "--class-label", "golden retriever", "--out", tmp_path / "run", "--reference"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_labels"] == [1] and report["reference"]["identical"]
    assert "identical to sequential" in err.strip().splitlines()[-1]


def test_doubled_batch_quality_model_matches_end_to_end_runs():
    """Differential: on DiT's doubled batch, the linearised quality model (directions found on the
    folded samples, pushed through the run tiled over both copies) against every window run end to
    end (``direct``); both fold to one number per sample."""
    from parastep.profiler import measure as M

    pipe = TP.make_compat_pipeline("dit")
    prompts, seeds = ["0", "1"], [3, 3]
    T, J = 6, 2
    kw = {"guidance_scale": 1.5, "num_inference_steps": T}   # > 1: doubled; mild: nearly linear
    traj = M.record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
    assert traj.copies == 2 and traj.x[0].shape[0] == 4
    preds: dict = {}
    M.deviation_tables(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, max_window=J, call_kwargs=kw,
                       predictions=preds)
    gain, _ = M.propagation_gain(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw, delta=1e-3)
    bdev = M.boundary_deviations(traj, type(pipe.scheduler), preds, num_steps=T, max_window=J)
    common = dict(prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw, rank=8, gain=gain)
    lin, _, captured = M.window_output_errors(pipe, traj, bdev, **common)
    direct, _, _ = M.window_output_errors(pipe, traj, bdev, direct=True, **common)
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
    from parastep.profiler.measure import first_copy, latent_copies, rms_per_sample, tiled

    x = torch.randn(3, 4, 2, 2)
    two = torch.cat([x, x])
    assert latent_copies([x], samples=3) == 1 and latent_copies([two, two * 2], samples=3) == 2
    assert torch.equal(first_copy(two, 2), x) and torch.equal(tiled(x, 2), two)
    assert torch.allclose(rms_per_sample(two, 2), rms_per_sample(x))
    with pytest.raises(ValueError, match="^the scheduler steps 2 copies of each of the 3 samples and the copies differ"):
        latent_copies([torch.cat([x, x + 1e-3])], samples=3)
    with pytest.raises(ValueError, match="latent batch of 5 rows for 3 samples, not a whole number of copies"):
        latent_copies([torch.randn(5, 4)], samples=3)
