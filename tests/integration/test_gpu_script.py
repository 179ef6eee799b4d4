"""On CPU (no GPU needed): ``benchmarks/bench_gpu_unet.py`` (SDXL-sized UNet forward at batch 1, 2, 4, 8, one
scheduler step, a batched plan against its sequential run, torch.compile's graph breaks around parastep's hooks)
and ``profiles/make_sdxl.py --compute`` (its JSON as the SDXL profile's measured compute, the BatchStep curve
included).

Two runs of the script as a subprocess: ``--dry`` (every section, the JSON, in seconds: it tests the script and is
refused as a measurement) and ``--tiny`` on CPU (a real measurement of a small model, spliced with --any-config)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parastep.profiles import make_sdxl
from parastep.profiles.io import dump_profile, load_profile
from parastep.profiles.model import Measured

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_gpu_unet.py"
BATCHES = ("1", "2", "4", "8")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu_unet", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The script as the device machine runs it (from the repo root), on one intra-op thread as every test here
    (tests/conftest.py: threaded kernels crawl on 2 shared cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "tiny.json"
    proc = _script("--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "2", "--warmup", "1",
                   "--no-plan", "--no-graph-breaks", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 1 / batch 2 =" in proc.stdout and f"wrote {out}" in proc.stdout and "DRY RUN" not in proc.stdout
    return out


@pytest.fixture(scope="module")
def dry(tmp_path_factory) -> tuple[dict, str]:
    """(JSON, stdout) of ``--dry --compile --cuda-graph``: every section the script has (about 20 s on 2 shared
    cores, most of it dynamo tracing; not asserted: timing is not behaviour, tests/conftest.py)."""
    out = tmp_path_factory.mktemp("dry") / "dry.json"
    proc = _script("--dry", "--compile", "--cuda-graph", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("DRY RUN") and "DRY RUN, not a measurement" in proc.stdout.splitlines()[-1]
    return json.loads(out.read_text()), proc.stdout


def test_script_writes_every_field(tiny_json):
    import diffusers
    import torch

    d = json.loads(tiny_json.read_text())
    assert d["config"] == "tiny" and d["dry"] is False and d["measurement"] == "measured"
    assert d["device"] == "cpu" and d["device_name"].startswith("cpu")
    assert d["torch"] == torch.__version__ and d["diffusers"] == diffusers.__version__ and d["dtype"] == "float32"
    dt.date.fromisoformat(d["date"])
    assert d["repeats"] == 2 and d["warmup"] == 1 and d["truncated"] is False and d["output_finite"] is True
    assert d["batches"] == [2, 1, 4, 8] and set(d["forward_s"]) == set(BATCHES)
    for b in BATCHES:
        s = d["forward_s"][b]
        assert len(s["runs"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]
        assert d["forward_over_batch2"][b] == pytest.approx(s["median"] / d["forward_s"]["2"]["median"])
    st = d["step_s"]
    assert len(st["runs"]) == 2 and 0 < st["min"] <= st["median"] <= st["max"]
    assert d["batch1_over_batch2"] == pytest.approx(d["forward_s"]["1"]["median"] / d["forward_s"]["2"]["median"])
    assert d["batch4_over_batch2"] == pytest.approx(d["forward_s"]["4"]["median"] / d["forward_s"]["2"]["median"])
    assert d["scheduler"]["class"] == "EulerDiscreteScheduler" and d["scheduler"]["num_steps"] == 50
    assert d["resolution_px"] == [64, 64] and d["latents"] == [4, 8, 8] and d["text_seq_len"] == 77
    assert d["batched_plan"] is None and d["graph_breaks"] is None and d["compile"] is None
    assert d["skipped"] == {"batched_plan": "--no-plan", "graph_breaks": "--no-graph-breaks"} and d["sections_truncated"] == []


# ---- --dry: every section, on CPU, in seconds -------------------------------------------------------------------

def test_dry_run_is_marked(dry):
    d, out = dry
    assert d["dry"] is True and d["config"] == "dry" and d["measurement"].startswith("DRY RUN")
    assert d["device"] == "cpu" and d["dtype"] == "float32" and d["latents"] == [4, 32, 32] and d["resolution_px"] == [256, 256]
    assert d["unet_config"]["block_out_channels"] == [16, 32] and d["unet_config"]["addition_embed_type"] == "text_time"
    assert d["truncated"] is False and d["sections_truncated"] == [] and d["output_finite"] is True
    assert set(d["section_s"]) == {"forwards_and_step", "batched_plan", "graph_breaks", "compile"}
    assert all(v > 0 for v in d["section_s"].values()) and d["elapsed_s"] > sum(d["section_s"].values())


def test_dry_run_times_every_batch(dry):
    d, _ = dry
    assert d["batches"] == [2, 1, 4, 8] and set(d["forward_s"]) == set(BATCHES)
    for b in BATCHES:
        s = d["forward_s"][b]
        assert len(s["runs"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]
    assert d["forward_cuda_graph_s"] is None and d["skipped"] == {"forward_cuda_graph_s": "CUDA graphs need --device cuda"}


def test_dry_run_batched_plan(dry):
    d, out = dry
    p = d["batched_plan"]
    assert (p["steps"], p["exact_steps"], p["window"], p["world_size"]) == (5, 1, 4, 1)
    assert p["windows"] == [{"start": 0, "kind": "exact", "split": None},
                            {"start": 1, "kind": "parallel", "placement": [0, 0, 0, 0], "predictor": "last", "batch": True}]
    for v in ("sequential_s", "unbatched_s", "batched_s"):
        assert len(p[v]["runs"]) == 1 and p[v]["median"] > 0
    assert p["speedup_batched_over_sequential"] == pytest.approx(p["sequential_s"]["median"] / p["batched_s"]["median"])
    assert p["sequential_denoiser_calls"] == 5 and p["unbatched_denoiser_calls"] == 5
    assert p["max_abs_diff_plan_vs_sequential"] > 0          # the window's stand-ins change the trajectory
    if p["batching_active"]:       # one call for the window's four offsets (batch 8), a few ulps from the unbatched run
        assert p["batched_denoiser_calls"] == 2 and p["batch_fallback_reasons"] == []
        assert p["max_abs_diff_batched_vs_unbatched"] < 1e-4
    else:                          # the executor without BatchStep runs the offsets one after another: the same run
        assert p["max_abs_diff_batched_vs_unbatched"] < 1e-5
    assert "speedup" in out and "batched vs unbatched max abs diff" in out


def test_dry_run_graph_breaks(dry):
    """Counted over whole runs: the UNet alone compiles to one graph; compiled outside the hooks (torch.compile
    before apply_parastep) the hooks add no graph break and batch as in eager; compiled inside them
    (unet.compile()) they still give the eager latents, and the breaks are recorded with where they sit."""
    d, out = dry
    gb = d["graph_breaks"]
    assert gb["torch"] == d["torch"] and gb["steps"] == 5 and gb["recompile_limit"] >= 1
    seq, inside, outside = gb["sequential"], gb["inside"], gb["outside"]
    assert (seq["graphs"], seq["graph_breaks"], seq["max_abs_diff_vs_eager"]) == (1, 0, 0.0)
    assert outside["graph_breaks"] == 0 and outside["break_reasons"] == {} and outside["max_abs_diff_vs_eager"] <= 1e-6
    assert outside["batching_active"] == d["batched_plan"]["batching_active"] and "compile" in outside["note"]
    if "error" not in inside:
        assert inside["max_abs_diff_vs_eager"] <= 1e-6 and inside["graphs"] >= 1
    assert inside["graph_breaks"] == sum(inside["break_reasons"].values())
    assert all(" at " in site for site in inside["break_sites"])
    if inside["graph_breaks"]:
        assert any("executor/" in site for site in inside["break_sites"]), inside["break_sites"]
    assert "graph breaks under torch.compile" in out


def test_dry_run_compile(dry):
    d, _ = dry
    c = d["compile"]
    assert (c["backend"], c["mode"], c["dynamic"]) == ("eager", "default", False) and set(c["per_batch"]) == {"2"}
    b2 = c["per_batch"]["2"]
    assert b2["first_call_s"] >= b2["forward_s"]["median"] > 0
    assert b2["compile_s"] == pytest.approx(b2["first_call_s"] - b2["forward_s"]["median"])
    assert b2["max_abs_diff_vs_eager"] <= 1e-6 and c["compile_s_total"] == pytest.approx(b2["compile_s"])
    bp = c["batched_plan"]
    assert bp["sequential_s"]["median"] > 0 and bp["batched_s"]["median"] > 0 and bp["max_abs_diff_batched_vs_eager_batched"] <= 1e-6
    assert "outside" not in c           # moved to graph_breaks


def test_make_sdxl_refuses_a_dry_run(dry, tmp_path, capsys):
    d, _ = dry
    path = tmp_path / "dry.json"
    path.write_text(json.dumps(d))
    for extra in ([], ["--any-config"]):
        with pytest.raises(SystemExit) as exc:
            make_sdxl.main(["--compute", str(path), *extra, "--out", str(tmp_path / "x.yaml")])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and "--dry run" in err[-1] and "measures nothing" in err[-1]
    assert not (tmp_path / "x.yaml").exists()


def test_dry_refuses_other_devices_and_bad_plans(capsys):
    bench = _bench_module()
    for argv in (["--dry", "--device", "cuda"], ["--dry", "--dtype", "float16"], ["--dry", "--tiny"],
                 ["--window", "1"], ["--steps", "3", "--exact-steps", "2"], ["--batches", "2,x"], ["--batches", "2,2"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
        assert ": error: " in capsys.readouterr().err.strip().splitlines()[-1]
    a = bench.parse_args(["--dry"])
    assert (a.device, a.dtype, a.repeats, a.warmup, a.steps, a.exact_steps, a.window, a.compile_backend, a.compile_batches) == \
        ("cpu", "float32", 2, 1, 5, 1, 4, "eager", (2,))
    a = bench.parse_args([])
    assert (a.device, a.dtype, a.repeats, a.steps, a.exact_steps, a.window, a.batches, a.compile_backend, a.compile_batches) == \
        ("cuda", "float16", 20, 20, 2, 4, (1, 2, 4, 8), "inductor", (1, 2, 4, 8))


def test_plan_windows_cover_the_steps():
    bench = _bench_module()
    ps = bench.import_parastep()
    wins = bench.plan_windows(ps, steps=20, exact_steps=2, window=4, batch=True, output_bytes=100)
    assert [(w.kind, w.start) for w in wins] == [("exact", 0), ("exact", 1)] + [("parallel", s) for s in (2, 6, 10, 14, 18)]
    assert [len(w.placement) for w in wins[2:]] == [4, 4, 4, 4, 2] and all(w.batch and set(w.placement) == {0} for w in wins[2:])
    tail = bench.plan_windows(ps, steps=7, exact_steps=2, window=4, batch=False, output_bytes=100)
    assert [(w.kind, w.start) for w in tail] == [("exact", 0), ("exact", 1), ("parallel", 2), ("exact", 6)]


def test_parastep_imports_from_a_checkout_named_otherwise(tmp_path):
    """The device machine runs a copy of the working tree in a folder not named parastep, with nothing installed:
    the script imports its repo root as the package (here: a copy without the editable install's path)."""
    root = tmp_path / "checkout"
    for name in ("__init__.py", "errors.py", "yamlio.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    for pkg in ("executor", "schedules", "profiles"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "measurements", "*.yaml"))
    (root / "benchmarks").mkdir()
    shutil.copy(SCRIPT, root / "benchmarks" / SCRIPT.name)
    code = ("import runpy, sys; sys.argv = ['x']; m = runpy.run_path('benchmarks/bench_gpu_unet.py'); ps = m['import_parastep'](); "
            "import parastep, parastep.executor.hooks as h; print(parastep.__file__); print(h.__file__); "
            "print(ps.apply_parastep.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(root / "__init__.py"), str(root / "executor" / "hooks.py"), "parastep.executor.hooks"]


# ---- profiles/make_sdxl.py --compute --------------------------------------------------------------------------

def _without_compute(profile) -> dict:
    data = profile.model_dump(mode="json", exclude_none=True)
    del data["name"], data["compute"], data["provenance"]["compute"]
    return data


def _curve_of(forward: dict) -> list[float]:
    """batched_forward_s written out: k = 1, 2, 4 from batches 2, 4, 8; k = 3 halfway between k = 2 and 4."""
    m2, m4, m8 = (forward[b]["median"] for b in ("2", "4", "8"))
    return [m2, m4, (m4 + m8) / 2, m8]


def test_make_sdxl_splices_the_measurement(tiny_json, tmp_path, capsys):
    d = json.loads(tiny_json.read_text())
    out = tmp_path / "sdxl.yaml"
    assert make_sdxl.main(["--compute", str(tiny_json), "--any-config", "--out", str(out)]) == 0
    prof, _ = load_profile(out)                   # validates
    prov = prof.provenance.compute
    assert isinstance(prov, Measured) and prov.source == "measured"
    assert prov.device == d["device_name"] and prov.date == d["date"]
    assert prov.packages["torch"] == d["torch"] and prov.packages["diffusers"] == d["diffusers"]
    assert "batch 1 / batch 2 = " in prov.notes and "random weights" in prov.notes
    whole, half = d["forward_s"]["2"]["median"], d["forward_s"]["1"]["median"]
    assert prof.compute.forward_s == pytest.approx([k * whole for k in range(1, make_sdxl.FORWARD_OFFSETS + 1)])
    assert prof.compute.batched_forward_s == pytest.approx(_curve_of(d["forward_s"]))
    assert prof.compute.half_forward_s == pytest.approx(half) and prof.compute.step_s == pytest.approx(d["step_s"]["median"])
    assert prof.can_split and prof.can_batch and "compute" not in prof.prior_parts()
    assert prof.name.startswith("sdxl-base-1.0-1024-euler-50-cpu") and "-measured-" in prof.name
    shipped = make_sdxl.build_profile()
    assert _without_compute(prof) == _without_compute(shipped)
    # without --compute the output is the shipped file, byte for byte
    again = tmp_path / "again.yaml"
    assert make_sdxl.main(["--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == dump_profile(shipped) == (make_sdxl.SHIPPED_DIR / "sdxl.yaml").read_text(encoding="utf-8")


def test_batched_forward_s_from_batches_1_2_4_8_interpolates_k3(tiny_json, tmp_path):
    """Synthetic medians at batches 1, 2, 4, 8: k = 1, 2, 4 measured (batches 2, 4, 8), k = 3 interpolated linearly
    between k = 2 and k = 4, and the notes say which."""
    d = json.loads(tiny_json.read_text())
    for b, median in (("1", 0.009), ("2", 0.010), ("4", 0.016), ("8", 0.030)):
        d["forward_s"][b]["median"] = median
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(d))
    compute, prov = make_sdxl.measured_compute([path], any_config=True)
    assert compute.batched_forward_s == pytest.approx([0.010, 0.016, 0.023, 0.030])
    assert compute.forward_s[:2] == pytest.approx([0.010, 0.020]) and compute.half_forward_s == pytest.approx(0.009)
    assert "k = 1 (batch 2) 10.00 ms, k = 2 (batch 4) 16.00 ms, k = 4 (batch 8) 30.00 ms" in prov.notes
    assert "k = 3 not measured: interpolated linearly" in prov.notes and "23.00 ms" in prov.notes


@pytest.mark.parametrize("medians,curve,guessed", [
    ({"1": 1.0, "2": 2.0, "4": 3.0}, [2.0, 3.0], []),                      # the shipped H200 runs' batches: K = 2
    ({"1": 1.0, "2": 2.0}, [2.0], []),                                       # batch 2 only: K = 1
    ({"2": 2.0, "8": 5.0}, [2.0, 3.0, 4.0, 5.0], [2, 3]),                    # k = 2, 3 between k = 1 and 4
    ({"1": 1.0, "2": 2.0, "3": 9.0, "6": 4.0, "8": 5.0}, [2.0, 3.0, 4.0, 5.0], [2]),   # odd batches are no offsets' call
])
def test_batch_curve(medians, curve, guessed):
    run = {"forward_s": {b: {"median": v} for b, v in medians.items()}}
    got, measured, interpolated = make_sdxl.batch_curve([run])
    assert got == pytest.approx(curve) and interpolated == guessed
    assert measured == sorted(int(b) // 2 for b in medians if int(b) % 2 == 0)


def test_make_sdxl_refuses_a_measurement_of_another_config(tiny_json, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        make_sdxl.main(["--compute", str(tiny_json), "--out", str(tmp_path / "x.yaml")])
    assert exc.value.code == 2 and "without --tiny" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forward_s": {"2": {"median": 0.1}}}))
    with pytest.raises(SystemExit):
        make_sdxl.main(["--compute", str(bad), "--any-config", "--out", str(tmp_path / "y.yaml")])
    assert "not a benchmarks/bench_gpu_unet.py result" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "y.yaml").exists()


def test_time_limit_truncates_and_keeps_one_run(tmp_path):
    out = tmp_path / "cut.json"
    assert _bench_module().main(["--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "50", "--warmup", "0",
                                 "--time-limit", "0", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["truncated"] is True and list(d["forward_s"]) == ["2"] and len(d["forward_s"]["2"]["runs"]) == 1
    assert len(d["step_s"]["runs"]) == 1 and d["batch1_over_batch2"] is None
    assert d["batched_plan"] is None and d["graph_breaks"] is None and d["sections_truncated"] == ["batched_plan", "graph_breaks"]
    assert d["skipped"]["batched_plan"] == d["skipped"]["graph_breaks"] == "past --time-limit 0 s"


def test_sdxl_config_is_sdxl_base_unet():
    """The written-out config builds SDXL base 1.0's UNet (2,567,463,684 parameters) and takes the pipeline's
    inputs at 1024x1024 — on the meta device: no memory, no time."""
    import torch
    from diffusers import UNet2DConditionModel

    bench = _bench_module()
    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel(**bench.SDXL_UNET)
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684
    unet = unet.to(torch.float16)
    inputs = bench.unet_inputs(torch, meta, torch.float16, bench.SDXL_UNET, 2, resolution_px=1024)
    assert tuple(inputs["encoder_hidden_states"].shape) == (2, 77, 2048)
    assert tuple(inputs["added_cond_kwargs"]["text_embeds"].shape) == (2, 1280)
    assert tuple(inputs["added_cond_kwargs"]["time_ids"].shape) == (2, 6)
    with torch.inference_mode():
        out = bench.call(unet, inputs)
    assert tuple(out.shape) == (2, 4, 128, 128) and out.dtype == torch.float16


def test_no_cuda_is_a_clear_refusal(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the refusal cannot be seen")
    with pytest.raises(SystemExit, match="CUDA is not available here"):
        _bench_module().main(["--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def _scaled_copy(d: dict, path: Path, factor: float, **update) -> Path:
    r = json.loads(json.dumps(d))
    for b in BATCHES:
        r["forward_s"][b]["median"] *= factor
    r["step_s"]["median"] *= factor
    r.update(update)
    path.write_text(json.dumps(r))
    return path


def test_make_sdxl_takes_the_median_of_several_runs_of_one_device(tiny_json, tmp_path, capsys):
    d = json.loads(tiny_json.read_text())
    files = [str(_scaled_copy(d, tmp_path / f"run{i}.json", f)) for i, f in enumerate((1.0, 3.0, 1.5))]
    out = tmp_path / "sdxl.yaml"
    assert make_sdxl.main(["--compute", *files, "--any-config", "--out", str(out)]) == 0
    prof, _ = load_profile(out)
    whole, half = 1.5 * d["forward_s"]["2"]["median"], 1.5 * d["forward_s"]["1"]["median"]
    assert prof.compute.forward_s == pytest.approx([k * whole for k in range(1, make_sdxl.FORWARD_OFFSETS + 1)])
    assert prof.compute.batched_forward_s == pytest.approx([1.5 * v for v in _curve_of(d["forward_s"])])
    assert prof.compute.half_forward_s == pytest.approx(half)
    assert prof.compute.step_s == pytest.approx(1.5 * d["step_s"]["median"])
    assert "3 run(s)" in prof.provenance.compute.notes and all(Path(f).name in prof.provenance.compute.notes for f in files)
    # runs of two devices, or a truncated run, are refused with one line and nothing written
    other = str(_scaled_copy(d, tmp_path / "other.json", 1.0, device_name="another GPU"))
    cut = str(_scaled_copy(d, tmp_path / "cut.json", 1.0, truncated=True))
    for bad, needle in (([files[0], other], "different devices"), ([cut], "truncated")):
        with pytest.raises(SystemExit) as exc:
            make_sdxl.main(["--compute", *bad, "--any-config", "--out", str(tmp_path / "no.yaml")])
        assert exc.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "no.yaml").exists()


def test_make_sdxl_prior_compute_restores_the_published_prior(tmp_path):
    out = tmp_path / "prior.yaml"
    assert make_sdxl.main(["--prior-compute", "--out", str(out)]) == 0
    prof, _ = load_profile(out)
    assert prof.provenance.compute.source == "prior" and "compute" in prof.prior_parts()
    assert prof.name == "sdxl-base-1.0-1024-euler-50-h100-nvlink-prior"
    assert prof.forward_time_s(1) == pytest.approx(make_sdxl.PUBLISHED_TOTAL_S / make_sdxl.PUBLISHED_STEPS)
    assert prof.compute.batched_forward_s is None and not prof.can_batch     # no measurement, no batch curve


def test_shipped_sdxl_compute_is_the_committed_h200_runs():
    assert [p.name for p in make_sdxl.SHIPPED_COMPUTE] == [f"sdxl_unet_h200_run{i}.json" for i in (1, 2, 3)]
    shipped, _ = load_profile(make_sdxl.SHIPPED_DIR / "sdxl.yaml")
    assert shipped == make_sdxl.build_profile(compute_paths=make_sdxl.SHIPPED_COMPUTE)
    assert isinstance(shipped.provenance.compute, Measured) and shipped.provenance.compute.device == "NVIDIA H200"
    # the batch curve: the H200 runs have batches 1, 2, 4, so k = 1, 2, measured (median of the runs' medians)
    runs = [json.loads(p.read_text()) for p in make_sdxl.SHIPPED_COMPUTE]
    medians = {b: sorted(r["forward_s"][b]["median"] for r in runs)[1] for b in ("2", "4")}
    assert shipped.compute.batched_forward_s == pytest.approx([medians["2"], medians["4"]])
    notes = shipped.provenance.compute.notes
    assert "batched_forward_s[k-1]" in notes and "measured on this device" in notes and "interpolated" not in notes
