"""``parastep evaluate`` and ``executor.evaluate`` on the bundled digits model (few steps, so fast):
an exact-only schedule scores the PSNR cap on every image; a schedule with parallel windows scores
finite PSNR equal, image by image, to what a direct local run gives (differential); quality.json's
fields; bad input is one line, exit 2, nothing written, refused before the model loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import reference_impl as R
from clitools import run_cli
from parastep.schedules.io import dump_schedule

T = 12
PARALLEL = ([{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
             {"start": 2, "kind": "parallel", "placement": [0, 1], "predictor": "last"},
             {"start": 4, "kind": "parallel", "placement": [1, 0, 1], "predictor": "linear"},
             {"start": 7, "kind": "reuse", "size": 1, "predictor": "last"},
             {"start": 8, "kind": "exact"},
             {"start": 9, "kind": "parallel", "placement": [0, 1, 0], "predictor": "last"}])
EXACT = [{"start": i, "kind": "exact"} for i in range(T)]


def _schedule(windows):
    """A digits schedule (16x16 px, 1 channel, float32: 1 KiB per guided output)."""
    return R.make_schedule(windows, num_steps=T, world_size=2, output_bytes=16 * 16 * 4, model="digits",
                           scheduler="DDIMScheduler", guidance_scale=1.5, resolution_px=(16, 16))


def _write(folder: Path, windows, name: str) -> Path:
    path = folder / name
    path.write_text(dump_schedule(_schedule(windows)))
    return path


@pytest.fixture(scope="module")
def digits_pipe():
    from parastep.executor.registry import load_pipeline

    pipe = load_pipeline("digits", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_exact_only_schedule_scores_the_cap_on_every_image(tmp_path):
    sched = _write(tmp_path, EXACT, "exact.yaml")
    code, out, err = run_cli(["evaluate", str(sched), "--prompt", "3", "--prompt", "8", "--seed", "5", "--seed", "6",
                              "--out", str(tmp_path / "q")])
    assert code == 0, err
    assert out == ""
    q = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert [(im["prompt"], im["seed"]) for im in q["images"]] == [("3", 5), ("8", 5), ("3", 6), ("8", 6)]
    assert all(im["psnr_db"] == q["psnr_cap_db"] == 100.0 and im["identical"] for im in q["images"])
    assert all(im["ssim"] == pytest.approx(1.0, abs=1e-12) for im in q["images"])
    assert q["psnr_db"] == {"mean": 100.0, "median": 100.0, "p10": 100.0, "min": 100.0}
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "4 images" in lines[0] and "PSNR mean 100.0 / p10 100.0 / min 100.0 dB" in lines[0]


def test_parallel_schedule_equals_a_direct_local_run_per_image(tmp_path, digits_pipe):
    from parastep.executor.evaluate import psnr_db_per_sample, run_schedule_local, samples_of
    from parastep.executor.metrics import ssim_per_sample

    path = _write(tmp_path, PARALLEL, "par.yaml")
    code, _, err = run_cli(["evaluate", str(path), "--seed", "1000", "--out", str(tmp_path / "q")])
    assert code == 0, err
    q = json.loads((tmp_path / "q" / "quality.json").read_text())
    # defaults: every digit class, the given seed
    assert [im["prompt"] for im in q["images"]] == [str(d) for d in range(10)]
    assert {im["seed"] for im in q["images"]} == {1000}
    psnr = [im["psnr_db"] for im in q["images"]]
    assert all(math.isfinite(p) and 10 < p < 100 for p in psnr)
    assert not any(im["identical"] for im in q["images"])
    # differential: the same numbers from the library functions run directly
    prompts, seeds = samples_of([str(d) for d in range(10)], [1000])
    kw = {"guidance_scale": 1.5}   # what the schedule sets (the digits pipeline has no height/width)
    ref = run_schedule_local(digits_pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
    out = run_schedule_local(digits_pipe, _schedule(PARALLEL), num_steps=T, prompts=prompts, seeds=seeds,
                             call_kwargs=kw)
    assert ref.shape == out.shape and ref.shape[0] == 10 and 0 <= float(out.min()) and float(out.max()) <= 1
    assert psnr_db_per_sample(out, ref) == pytest.approx(psnr, abs=1e-9)
    assert ssim_per_sample(out, ref) == pytest.approx([im["ssim"] for im in q["images"]], abs=1e-9)
    # aggregates are those of the per-image values
    assert q["psnr_db"]["mean"] == pytest.approx(sum(psnr) / len(psnr))
    assert q["psnr_db"]["min"] == min(psnr) <= q["psnr_db"]["p10"] <= q["psnr_db"]["mean"]
    for key in ("mean", "median", "p10", "min"):
        assert 0 < q["ssim"][key] <= 1


def test_quality_json_fields(tmp_path):
    path = _write(tmp_path, PARALLEL, "par.yaml")
    code, _, err = run_cli(["evaluate", str(path), "--prompt", "1", "--out", str(tmp_path / "q")])
    assert code == 0, err
    q = json.loads((tmp_path / "q" / "quality.json").read_text())
    import hashlib

    assert q["schedule"] == {"path": str(path), "name": "par", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert q["model"] == "digits" and q["num_steps"] == T and q["world_size"] == 2 and q["device"] == "cpu"
    assert [(im["prompt"], im["seed"]) for im in q["images"]] == [("1", 1000), ("1", 1001)]   # default seeds
    assert set(q["images"][0]) >= {"prompt", "seed", "psnr_db", "ssim"}
    assert set(q["psnr_db"]) == set(q["ssim"]) == {"mean", "median", "p10", "min"}
    assert not [p.name for p in (tmp_path / "q").iterdir() if p.name.startswith(".")]   # no temp files left
    assert [im["file"] for im in q["images"]] == ["image_000.png", "image_001.png"] and q["frames"] is None
    assert (tmp_path / "q" / "image_001.png").is_file() and (tmp_path / "q" / "sequential" / "image_001.png").is_file()


def test_psnr_db_per_sample_semantics():
    import torch

    from parastep.executor.evaluate import psnr_db_per_sample

    ref = torch.zeros(3, 4, 4, 1)
    img = ref.clone()
    img[1] += 0.1                 # mse 0.01 -> 20 dB
    img[2, 0, 0, 0] = 1e-60       # below the cap's resolution -> the cap
    assert psnr_db_per_sample(img, ref) == [100.0, pytest.approx(20.0), 100.0]
    assert psnr_db_per_sample(img, ref, cap_db=15.0) == [15.0, 15.0, 15.0]


def _one_line_exit_2(argv, *, must: str):
    code, out, err = run_cli(argv)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and must in lines[0], err
    assert lines[0].startswith("parastep: error:") and "Traceback" not in err and out == ""


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch):
    import parastep.executor.registry as registry

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded for bad input")

    monkeypatch.setattr(registry, "load_pipeline", no_loading)
    good = _write(tmp_path, PARALLEL, "par.yaml")
    out = tmp_path / "q"
    _one_line_exit_2(["evaluate", str(tmp_path / "missing.yaml"), "--out", str(out)], must="missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("bytes_exchanged: ", "bytes_exchanged: 1"))
    _one_line_exit_2(["evaluate", str(bad), "--out", str(out)], must="invalid schedule")
    _one_line_exit_2(["evaluate", str(good), "--out", str(out), "--prompt", "cat"], must="class label")
    _one_line_exit_2(["evaluate", str(good), "--out", str(out), "--prompt", "12"], must="class label")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_exit_2(["evaluate", str(good), "--out", str(a_file)], must="existing file")
    _one_line_exit_2(["evaluate", str(good), "--out", str(a_file / "sub")], must="existing file")
    _one_line_exit_2(["evaluate", str(good)], must="--out")
    _one_line_exit_2(["evaluate", str(good), "--out", str(out), "--seed", "x"], must="--seed")
    _one_line_exit_2(["evaluate", str(good), "--out", str(out), "--model-path", str(tmp_path / "nowhere")],
                     must="does not exist")
    other = tmp_path / "other.yaml"
    other.write_text(good.read_text().replace("model: digits", "model: nosuchmodel"))
    _one_line_exit_2(["evaluate", str(other), "--out", str(out)], must="unknown model 'nosuchmodel'")
    assert not out.exists()
    assert a_file.read_text() == "x"


@pytest.mark.distributed
def test_evaluate_equals_a_two_rank_exec(tmp_path):
    """One device emulating every rank gives what 2 spawned ranks give, image for image: with two
    prompts, exec's image i is the sample (prompt i, seed) that evaluate scores (exec drew the whole
    batch from one generator before, so its second image was another sample: 14.7 dB off)."""
    import math
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    path = _write(tmp_path, PARALLEL, "par.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PARASTEP_TEST_EXIT_AT")}
    res = subprocess.run([sys.executable, "-m", "parastep.cli", "exec", str(path), "--reference", "--prompt", "4",
                          "--prompt", "9", "--seed", "11", "--out", str(tmp_path / "x")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = json.loads((tmp_path / "x" / "report.json").read_text())["reference"]
    code, _, err = run_cli(["evaluate", str(path), "--prompt", "4", "--prompt", "9", "--seed", "11", "--out", str(tmp_path / "q")])
    assert code == 0, err
    assert "2 images (2 prompts x 1 seed)" in err
    images = json.loads((tmp_path / "q" / "quality.json").read_text())["images"]
    assert [(im["prompt"], im["seed"]) for im in images] == [("4", 11), ("9", 11)]
    for k in range(2):
        a = np.asarray(Image.open(tmp_path / "x" / f"image_{k:03d}.png"))
        b = np.asarray(Image.open(tmp_path / "q" / f"image_{k:03d}.png"))
        assert np.array_equal(a, b), k
    # exec's reference PSNR is over the whole batch: the mean of the per-image squared errors
    batch_db = -10 * math.log10(sum(10 ** (-im["psnr_db"] / 10) for im in images) / len(images))
    assert batch_db == pytest.approx(ref["psnr_db"], abs=1e-6)


class _FakeGpuPipe:
    """Records the call; says it runs on CUDA (no CUDA is touched: nothing is computed)."""

    def __init__(self):
        import torch

        self.device = torch.device("cuda", 0)
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return kwargs


def test_seeds_draw_the_same_noise_on_every_device():
    """``evaluate`` seeds CPU generators whatever the pipeline's device, as ``exec`` does: on an H200 a
    generator on the pipeline's device drew other noise, so a GPU evaluation scored other images than
    exec makes from the same seeds (benchmarks/gpu_smoke.sh)."""
    import torch

    from parastep.executor.evaluate import call_pipeline

    pipe = _FakeGpuPipe()
    call_pipeline(pipe, prompts=[None, None], seeds=[7, 1234], num_steps=3, call_kwargs={})
    gens = pipe.calls[0]["generator"]
    assert [g.device.type for g in gens] == ["cpu", "cpu"]
    for g, seed in zip(gens, (7, 1234)):
        want = torch.randn(4, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.randn(4, generator=g), want)
