"""``parastep exec`` end to end on a saved tiny SD 1.5 pipeline (--model-path), gloo, 1 thread/rank:
spawned world with --reference, a killed rank, torchrun single-node and 2-node on loopback,
and bad input refused before any process starts or any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reference_impl as R
import tiny_pipelines as TP
from parastep.executor.launch import free_port
from parastep.schedules.io import dump_schedule

pytestmark = pytest.mark.distributed

OUTPUT_BYTES = 4 * 16 * 16 * 4       # tiny sd15 at 32x32 px: a 4x16x16 float32 latent
WINDOWS = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
           {"start": 2, "kind": "parallel", "placement": [0, 1], "predictor": "last"},
           {"start": 4, "kind": "parallel", "placement": [1, 1, 0], "predictor": "linear"},
           {"start": 7, "kind": "reuse", "size": 1, "predictor": "last"},
           {"start": 8, "kind": "parallel", "placement": [1, 0], "predictor": "last"}]
NUM_STEPS = 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return TP.save_tiny_pipeline("sd15", tmp_path_factory.mktemp("model") / "sd15", scheduler="DDIMScheduler")


def _schedule_file(folder: Path, windows=WINDOWS, *, world_size: int = 2, name: str = "s.yaml") -> tuple[Path, object]:
    s = R.make_schedule(windows, num_steps=NUM_STEPS, world_size=world_size, output_bytes=OUTPUT_BYTES, model="sd15",
                        scheduler="DDIMScheduler", guidance_scale=7.5, resolution_px=(32, 32))
    path = folder / name
    path.write_text(dump_schedule(s))
    return path, s


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PARASTEP_TEST_EXIT_AT")}
    env.update(extra)
    return env


def _exec(args: list[str], *, cwd: Path, env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parastep.cli", "exec", *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _check_report(out: Path, sched) -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["num_steps"] == NUM_STEPS
    assert report["bytes_exchanged"] == sched.totals.bytes_exchanged == report["bytes_exchanged_schedule"]
    assert report["forwards_per_rank"] == sched.totals.forwards_per_rank
    assert [w["start"] for w in report["windows"]] == [w["start"] for w in WINDOWS]
    assert sum(w["bytes"] for w in report["windows"]) == report["bytes_exchanged"]
    assert report["latency_s"] > 0 and all(w["seconds"] >= 0 for w in report["windows"])
    assert report["images"] == ["image_000.png"] and (out / "image_000.png").is_file()
    assert not list(out.glob(".parastep-tmp-*"))
    return report


def test_exec_spawned_world_with_reference(tmp_path, model_dir):
    sched_path, sched = _schedule_file(tmp_path)
    out = tmp_path / "out"
    res = _exec([str(sched_path), "--model-path", str(model_dir), "--out", str(out), "--reference", "--seed", "3",
                 "--prompt", "a red cat", "--repeats", "3"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = _check_report(out, sched)
    ref = report["reference"]
    assert ref["latency_s"] > 0 and ref["speedup"] > 0 and 0 < ref["ssim"] <= 1
    assert ref["identical"] is False and ref["psnr_db"] > 10   # parallel windows approximate, so not identical
    # --repeats 3: a warm-up, then 3 timed runs of each side; medians and their ratio, every run kept
    assert report["repeats"] == 3 and report["warmup_runs"] == 1
    for side, spread in (("parallel", report["latency_spread_s"]), ("sequential", ref["latency_spread_s"])):
        runs = spread["runs"]
        assert len(runs) == 3 and all(t > 0 for t in runs), side
        assert spread["min"] == min(runs) and spread["max"] == max(runs) and spread["median"] == sorted(runs)[1], side
    assert report["latency_s"] == report["latency_spread_s"]["median"]
    assert ref["latency_s"] == ref["latency_spread_s"]["median"]
    assert ref["speedup"] == pytest.approx(ref["latency_s"] / report["latency_s"])
    # the run ends with ONE human line: ranks, latency vs sequential, speedup, PSNR, SSIM
    last = _last_line(res.stderr)
    assert last.startswith("parastep: 2 ranks on cpu: ") and "sequential" in last, last
    assert f"speedup {ref['speedup']:.2f}x" in last and f"PSNR {ref['psnr_db']:.1f} dB" in last
    assert f"SSIM {ref['ssim']:.4f}" in last and "median of 3 runs" in last


def test_killed_rank_fails_fast_with_one_clear_line(tmp_path, model_dir):
    sched_path, _ = _schedule_file(tmp_path)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = _exec([str(sched_path), "--model-path", str(model_dir), "--out", str(out), "--timeout", "20"], cwd=tmp_path,
                env=_env(PARASTEP_TEST_EXIT_AT="1:2"))
    elapsed = time.monotonic() - t0
    assert res.returncode == 1, res.stderr[-2000:]
    last = _last_line(res.stderr)
    assert last.startswith("parastep: error: rank 1 exited with code 17 without an error message"), last
    assert "Traceback" not in res.stderr
    assert not (out / "report.json").exists()
    assert elapsed < 90


def _torchrun(args: list[str], *, cwd: Path) -> subprocess.Popen:
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.Popen([str(torchrun), *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _two_nodes(common: list[str], out: Path, cwd: Path, *, tries: int = 2) -> None:
    """Two torchrun agents (--nnodes 2) on loopback; a port taken by another process between
    free_port() and the bind is retried on a fresh port."""
    errs: list[str] = []
    for _ in range(tries):
        port = str(free_port())
        nodes = [_torchrun(["--nnodes", "2", "--node-rank", str(i), "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
                            "--master-port", port, *common, "--out", str(out)], cwd=cwd) for i in (0, 1)]
        try:
            errs = [p.communicate(timeout=150)[1] for p in nodes]
        except subprocess.TimeoutExpired:
            errs = ["timed out"]
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.communicate()
        if [p.returncode for p in nodes] == [0, 0]:
            return
    raise AssertionError(f"2-node torchrun failed: {[e[-2000:] for e in errs]}")


def test_torchrun_single_node_and_two_nodes_on_loopback(tmp_path, model_dir):
    sched_path, sched = _schedule_file(tmp_path)
    common = ["-m", "parastep.cli", "exec", str(sched_path), "--model-path", str(model_dir), "--timeout", "120"]
    one = _torchrun(["--standalone", "--nproc-per-node", "2", *common, "--out", str(tmp_path / "single")], cwd=tmp_path)
    _, err = one.communicate(timeout=240)
    assert one.returncode == 0, err[-3000:]
    single = _check_report(tmp_path / "single", sched)
    _two_nodes(common, tmp_path / "multi", tmp_path)
    multi = _check_report(tmp_path / "multi", sched)
    assert (tmp_path / "single" / "image_000.png").read_bytes() == (tmp_path / "multi" / "image_000.png").read_bytes()
    assert single["bytes_received_per_rank"] == multi["bytes_received_per_rank"]


def test_bad_input_is_refused_before_loading(tmp_path):
    sched_path, _ = _schedule_file(tmp_path)
    # a torchrun world of 1 for a 2-rank schedule: refused before the (nonexistent) model is looked at
    res = _exec([str(sched_path), "--model-path", str(tmp_path / "nowhere")], cwd=tmp_path,
                env=_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1"))
    assert res.returncode == 2 and "world_size=2 but torchrun launched 1" in _last_line(res.stderr), res.stderr
    # unknown model name without --model-path
    text = sched_path.read_text().replace("model: sd15", "model: nosuchmodel")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    res = _exec([str(bad)], cwd=tmp_path)
    assert res.returncode == 2 and "unknown model 'nosuchmodel'" in res.stderr and "Traceback" not in res.stderr
    # a registry model missing from the (empty) HF cache: one line naming where it looked, before any rank starts
    bad.write_text(sched_path.read_text().replace("model: sd15", "model: sdxl"))
    res = _exec([str(bad)], cwd=tmp_path, env=_env(HF_HUB_CACHE=str(tmp_path / "empty-cache")))
    last = _last_line(res.stderr)
    assert res.returncode == 2 and "not in the local Hugging Face cache" in last and str(tmp_path / "empty-cache") in last
    assert "rank" not in last and "Traceback" not in res.stderr
    # totals that disagree with the windows
    bad.write_text(sched_path.read_text().replace("bytes_exchanged: ", "bytes_exchanged: 1"))
    res = _exec([str(bad)], cwd=tmp_path)
    assert res.returncode == 2 and "totals-bytes" in res.stderr and "Traceback" not in res.stderr


def test_exec_refuses_bad_out_prompts_and_repeats_before_any_process(tmp_path):
    """An --out that is a file, a digits prompt that is not a class, --repeats 0: one line, exit 2,
    before any rank starts (a nonexistent HF cache would fail later; nothing is written)."""
    s = R.make_schedule([{"start": i, "kind": "exact"} for i in range(4)], num_steps=4, world_size=2,
                        output_bytes=16 * 16 * 4, model="digits", scheduler="DDIMScheduler", guidance_scale=1.5,
                        resolution_px=(16, 16))
    path = tmp_path / "d.yaml"
    path.write_text(dump_schedule(s))
    a_file = tmp_path / "taken"
    a_file.write_text("keep")
    for args, must in (([ "--out", str(a_file)], "existing file"),
                       (["--prompt", "cat", "--out", str(tmp_path / "o")], "class label"),
                       (["--repeats", "0", "--out", str(tmp_path / "o")], "--repeats")):
        res = _exec([str(path), *args], cwd=tmp_path)
        last = _last_line(res.stderr)
        assert res.returncode == 2 and must in last and "rank" not in last, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert a_file.read_text() == "keep" and not (tmp_path / "o").exists()


def test_unconditional_pipeline_folder_world_of_one(tmp_path):
    """Any saved diffusers pipeline runs with --model-path (here unconditional DDIMPipeline, no prompt);
    a world of one runs in-process; an exact-only schedule reproduces the plain pipeline exactly."""
    import diffusers
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = tmp_path / "ddim"
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()).save_pretrained(str(folder))
    n = 5
    s = R.make_schedule([{"start": i, "kind": "exact"} for i in range(n)], num_steps=n, world_size=1,
                        output_bytes=3 * 16 * 16 * 4, model="my-ddim", scheduler="DDIMScheduler", guidance_scale=None)
    path = tmp_path / "s.yaml"
    path.write_text(dump_schedule(s))
    res = _exec([str(path), "--model-path", str(folder), "--out", str(tmp_path / "out"), "--reference"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["world_size"] == 1 and report["bytes_exchanged"] == 0 and report["forwards_per_rank"] == [n]
    assert report["reference"]["identical"] is True and report["reference"]["psnr_db"] is None
    assert report["reference"]["ssim"] == 1.0
    assert report["repeats"] == 1 and report["warmup_runs"] == 1 and len(report["latency_spread_s"]["runs"]) == 1
    assert "rank on cpu" in _last_line(res.stderr) and "identical to sequential" in _last_line(res.stderr)
    res = _exec([str(path), "--model-path", str(folder), "--prompt", "a cat"], cwd=tmp_path)
    assert res.returncode == 2 and "takes no prompt" in _last_line(res.stderr)
    # no --reference, no --repeats: one run, no warm-up (as before --repeats existed)
    res = _exec([str(path), "--model-path", str(folder), "--out", str(tmp_path / "out2")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["repeats"] == 1 and report["warmup_runs"] == 0 and "reference" not in report
