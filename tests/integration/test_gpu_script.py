"""On CPU (no GPU needed): ``benchmarks/bench_gpu_unet.py`` (SDXL-sized UNet forward at batch 1, 2, 4 and
one scheduler step) and ``profiles/make_sdxl.py --compute`` (its JSON as the SDXL profile's measured compute)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from parastep.profiles import make_sdxl
from parastep.profiles.io import dump_profile, load_profile
from parastep.profiles.model import Measured

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu_unet.py"
BATCHES = ("1", "2", "4")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu_unet", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "tiny.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "2",
                           "--warmup", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 1 / batch 2 =" in proc.stdout and f"wrote {out}" in proc.stdout
    return out


def test_script_writes_every_field(tiny_json):
    import diffusers
    import torch

    d = json.loads(tiny_json.read_text())
    assert d["config"] == "tiny" and d["device"] == "cpu" and d["device_name"].startswith("cpu")
    assert d["torch"] == torch.__version__ and d["diffusers"] == diffusers.__version__ and d["dtype"] == "float32"
    dt.date.fromisoformat(d["date"])
    assert d["repeats"] == 2 and d["warmup"] == 1 and d["truncated"] is False and d["output_finite"] is True
    assert set(d["forward_s"]) == set(BATCHES)
    for b in BATCHES:
        s = d["forward_s"][b]
        assert len(s["runs"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]
    st = d["step_s"]
    assert len(st["runs"]) == 2 and 0 < st["min"] <= st["median"] <= st["max"]
    assert d["batch1_over_batch2"] == pytest.approx(d["forward_s"]["1"]["median"] / d["forward_s"]["2"]["median"])
    assert d["batch4_over_batch2"] == pytest.approx(d["forward_s"]["4"]["median"] / d["forward_s"]["2"]["median"])
    assert d["scheduler"]["class"] == "EulerDiscreteScheduler" and d["scheduler"]["num_steps"] == 50
    assert d["resolution_px"] == [64, 64] and d["latents"] == [4, 8, 8] and d["text_seq_len"] == 77


def _without_compute(profile) -> dict:
    data = profile.model_dump(mode="json", exclude_none=True)
    del data["name"], data["compute"], data["provenance"]["compute"]
    return data


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
    assert prof.compute.half_forward_s == pytest.approx(half) and prof.compute.step_s == pytest.approx(d["step_s"]["median"])
    assert prof.can_split and "compute" not in prof.prior_parts()
    assert prof.name.startswith("sdxl-base-1.0-1024-euler-50-cpu") and "-measured-" in prof.name
    shipped = make_sdxl.build_profile()
    assert _without_compute(prof) == _without_compute(shipped)
    # without --compute the output is the shipped file, byte for byte
    again = tmp_path / "again.yaml"
    assert make_sdxl.main(["--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == dump_profile(shipped) == (make_sdxl.SHIPPED_DIR / "sdxl.yaml").read_text(encoding="utf-8")


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
        out = unet(**inputs, return_dict=False)[0]
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


def test_shipped_sdxl_compute_is_the_committed_h200_runs():
    assert [p.name for p in make_sdxl.SHIPPED_COMPUTE] == [f"sdxl_unet_h200_run{i}.json" for i in (1, 2, 3)]
    shipped, _ = load_profile(make_sdxl.SHIPPED_DIR / "sdxl.yaml")
    assert shipped == make_sdxl.build_profile(compute_paths=make_sdxl.SHIPPED_COMPUTE)
    assert isinstance(shipped.provenance.compute, Measured) and shipped.provenance.compute.device == "NVIDIA H200"
