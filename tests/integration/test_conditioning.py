"""Conditioning on the command line, from the pipeline's own signature.

Tiny random-weight pipelines saved to folders go ``profile -> plan -> exec / evaluate`` through the
CLI: class labels (DiT, by index or label name), no conditioning at all (DDIM), an input image and a
strength (SD img2img: ``--steps`` are the steps actually run), video size and frames (Latte: PNG
frames + GIF from ``exec`` and ``evaluate``). Every refusal is one line, exit 2, before anything
loads, with nothing written. Profiles are measured with 3-4 steps on one rank (no exchange to
time); the DiT profile is the DDIM one re-labelled (the profiler cannot yet measure DiT's doubled
CFG latent batch per sample), which is all ``plan`` and ``exec`` need.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tiny_pipelines as TP
from clitools import run_cli
from parastep.errors import UserError
from parastep.executor.registry import folder_identity
from parastep.profiles.io import load_profile
from parastep.schedules.io import load_schedule

DIT_ID2LABEL = {"0": "tabby cat", "1": "golden retriever", "2": "goldfish, Carassius auratus"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Saved tiny pipelines, an input image, and one quick DDIM profile (module-wide: built once)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("conditioning")
    out = {}
    for name in ("dit", "ddim", "sd15-img2img", "latte"):
        out[name] = root / name
        TP.make_compat_pipeline(name).save_pretrained(str(out[name]), safe_serialization=True)
    index = out["dit"] / "model_index.json"        # as the hub's DiT folders carry it (save_pretrained drops it)
    index.write_text(json.dumps({**json.loads(index.read_text()), "id2label": DIT_ID2LABEL}, indent=2))
    out["image"] = root / "input.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")).save(out["image"])
    out["root"] = root
    return out


def _ok(argv):
    code, out, err = run_cli([str(a) for a in argv])
    assert code == 0, err[-3000:]
    return out, err


def _refused(argv, *, needle: str, out_dir: Path | None = None) -> str:
    code, out, err = run_cli([str(a) for a in argv])
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[transformers]")]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("parastep: error: "), err
    assert needle in lines[0], lines[0]
    if out_dir is not None:
        assert not out_dir.exists(), f"{out_dir} was written by a refused command"
    return lines[0]


def _profile(folder: Path, out: Path, *extra) -> Path:
    _ok(["profile", "--no-calibration", "--model-path", folder, "--gpus", 1, "--max-window", 2, "--seed", 1, "--out", out, *extra])
    return out


def _plan(profile: Path, out: Path, *extra) -> Path:
    text, _ = _ok(["plan", "--profile", profile, *extra])
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def ddim_profile(folders) -> Path:
    return _profile(folders["ddim"], folders["root"] / "ddim.yaml", "--steps", 4)


# ---- no conditioning at all ---------------------------------------------------------------------


def test_unconditional_ddim_end_to_end_and_refusals(folders, ddim_profile, tmp_path):
    sched = _plan(ddim_profile, tmp_path / "s.yaml", "--gpus", 1)
    _, err = _ok(["exec", sched, "--out", tmp_path / "run", "--reference"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["prompts"] is None and report["class_labels"] is None and report["images"] == ["image_000.png"]
    assert report["reference"]["identical"] and "identical to sequential" in err.strip().splitlines()[-1]
    out = tmp_path / "nothing"
    for flags, needle in ((["--prompt", "a cat"], "this pipeline takes no prompt; DDIMPipeline is unconditional: drop --prompt"),
                          (["--class-label", "3"], "takes no class labels; drop --class-label"),
                          (["--image", folders["image"]], "takes no input image"),
                          (["--strength", "0.5"], "takes no strength; drop --strength"),
                          (["--num-frames", "2"], "makes no video"),
                          (["--height", "16", "--width", "16"], "takes no height/width"),
                          (["--height", "16"], "pass both --height and --width")):
        for command in ("exec", "evaluate"):
            _refused([command, sched, "--out", out, *flags], needle=needle, out_dir=out)
    _refused(["profile", "--model-path", folders["ddim"], "--prompt", "x", "--out", tmp_path / "p.yaml"],
             needle="this pipeline takes no prompt")
    assert not (tmp_path / "p.yaml").exists()
    _ok(["profile", "--model-path", folders["ddim"], "--recalibrate", ddim_profile, "--retime", "--gpus", 1,
         "--out", tmp_path / "re.yaml"])          # its samples' prompt is the text 'None': called with no prompt
    # the calibration runs the samples unconditioned too (it passed the text 'None' as a prompt: refused)
    _refused(["profile", "--model-path", folders["ddim"], "--recalibrate", ddim_profile, "--verify", 6, "--gpus", 2,
              "--out", tmp_path / "cal.yaml"], needle="has no exchange costs for 2 ranks")       # profiled on 1 GPU
    _ok(["profile", "--model-path", folders["ddim"], "--steps", 8, "--gpus", 2, "--max-window", 2, "--verify", 6,
         "--out", tmp_path / "cal.yaml"])
    cal = load_profile(tmp_path / "cal.yaml")[0].calibration
    # split conformal at level 0.9 needs 9 held-out images or more: sampled until there were, never "sample more"
    assert cal is not None and cal.level == 0.9 and len(cal.residuals_db) >= 9 and cal.central_intercept_db is not None


# ---- class labels -------------------------------------------------------------------------------


def _dit_profile(folders, ddim_profile, path: Path) -> Path:
    """The DDIM profile re-labelled as the DiT folder's (same scheduler; the numbers are only priced)."""
    data = yaml.safe_load(ddim_profile.read_text())
    data.update(name="dit-by-hand", model=str(folders["dit"]), pipeline_class="DiTPipeline",
                model_identity=folder_identity(folders["dit"]), guidance_scale=4.0)
    data.pop("resolution_px", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_dit_class_labels_by_index_and_name(folders, ddim_profile, tmp_path):
    sched = _plan(_dit_profile(folders, ddim_profile, tmp_path / "dit.yaml"), tmp_path / "s.yaml", "--gpus", 1)
    _ok(["exec", sched, "--class-label", "golden retriever", "--class-label", "2", "--out", tmp_path / "run", "--reference"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["class_labels"] == [1, 2] and report["images"] == ["image_000.png", "image_001.png"]
    assert report["reference"]["identical"]
    _ok(["exec", sched, "--out", tmp_path / "default"])                  # no label: the first class
    assert json.loads((tmp_path / "default" / "report.json").read_text())["class_labels"] == [0]
    _ok(["evaluate", sched, "--class-label", "goldfish", "--seed", 5, "--out", tmp_path / "ev"])
    q = json.loads((tmp_path / "ev" / "quality.json").read_text())
    assert [(im["prompt"], im["seed"], im["file"]) for im in q["images"]] == [("goldfish", 5, "image_000.png")]
    out = tmp_path / "refused"
    for command in ("exec", "evaluate"):
        line = _refused([command, sched, "--class-label", "zebra", "--out", out],
                        needle="unknown class label 'zebra' for DiTPipeline; give an index 0..2 or a label name such as",
                        out_dir=out)
        assert "'golden retriever'" in line
        _refused([command, sched, "--class-label", "7", "--out", out], needle="unknown class label '7'", out_dir=out)
        _refused([command, sched, "--prompt", "a cat", "--out", out],
                 needle="this pipeline takes no prompt; DiTPipeline is class-conditional: give --class-label L", out_dir=out)
        _refused([command, sched, "--prompt", "a", "--class-label", "1", "--out", out], needle="not both", out_dir=out)


# ---- image to image -----------------------------------------------------------------------------


def test_img2img_image_and_strength(folders, tmp_path):
    prof = _profile(folders["sd15-img2img"], tmp_path / "i2i.yaml", "--steps", 3, "--prompt", "a cat",
                    "--image", folders["image"], "--strength", 0.5)
    p, _ = load_profile(prof)
    assert (p.num_steps, p.strength) == (3, 0.5)          # --steps: the steps run (the call asked for 6)
    from PIL import Image

    with Image.open(folders["image"]) as im:
        w, h = im.size
        im.resize((w + 16, h)).save(tmp_path / "wider.png")
    assert tuple(p.resolution_px) == (h, w)               # the output takes the input image's size
    sched = _plan(prof, tmp_path / "s.yaml", "--gpus", 1)
    assert load_schedule(sched).strength == 0.5
    _ok(["exec", sched, "--image", folders["image"], "--prompt", "a cat", "--out", tmp_path / "run", "--reference"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["strength"] == 0.5 and report["image"] == str(folders["image"]) and report["reference"]["identical"]
    out = tmp_path / "refused"
    _refused(["exec", sched, "--image", folders["image"], "--strength", 0.7, "--out", out],
             needle="--strength 0.7 differs from the schedule's 0.5 (its steps were planned for it); pass --strength 0.5, "
                    "or re-profile and re-plan with --image IMAGE --strength 0.7", out_dir=out)
    _refused(["exec", sched, "--out", out], needle="is image-to-image: pass --image PATH", out_dir=out)
    for command in ("exec", "evaluate"):
        _refused([command, sched, "--image", tmp_path / "wider.png", "--prompt", "a cat", "--out", out],
                 needle=f"is {h}x{w + 16} px but the schedule was measured on a {h}x{w} px image", out_dir=out)
    _refused(["exec", sched, "--image", tmp_path / "missing.png", "--out", out], needle="no such file", out_dir=out)
    _refused(["exec", sched, "--image", prof, "--out", out], needle="cannot read it as an image", out_dir=out)
    _refused(["exec", sched, "--image", folders["image"], "--strength", 0, "--out", out], needle="a strength in (0, 1]",
             out_dir=out)
    _refused(["profile", "--model-path", folders["ddim"], "--image", folders["image"], "--out", tmp_path / "p.yaml"],
             needle="takes no input image")
    old = load_schedule(sched).model_copy(update={"strength": None})     # planned before strength was recorded
    from parastep.schedules.io import dump_schedule

    (tmp_path / "old.yaml").write_text(dump_schedule(old))
    _refused(["exec", tmp_path / "old.yaml", "--image", folders["image"], "--out", out],
             needle="records no img2img strength", out_dir=out)


def test_steps_for_strength_and_pndm():
    from diffusers import DDIMScheduler, PNDMScheduler

    from parastep.executor.inputs import _steps_run, inference_steps_for

    ddim = DDIMScheduler(num_train_timesteps=1000)
    for T, S in ((3, 0.5), (10, 0.3), (7, 1.0), (50, 0.8)):
        n = inference_steps_for(ddim, T, strength=S)
        assert _steps_run(ddim, n, S) == T and min(int(n * S), n) == T
    pndm = PNDMScheduler(skip_prk_steps=True)
    assert inference_steps_for(pndm, 4) == 3 and _steps_run(pndm, 3, None) == 4     # PLMS: one step more than asked


def test_profile_runs_pndm(tmp_path):
    """Leftover: ``profile`` on a PNDM pipeline made num_inference_steps + 1 steps and failed; it
    now asks for the steps that make --steps and measures them."""
    folder = TP.save_tiny_pipeline("sd15", tmp_path / "sd15")
    p, _ = load_profile(_profile(folder, tmp_path / "p.yaml", "--steps", 3, "--prompt", "a cat"))
    assert (p.scheduler, p.num_steps) == ("PNDMScheduler", 3)


# ---- video --------------------------------------------------------------------------------------


def test_video_frames_from_exec_and_evaluate(folders, tmp_path):
    prof = _profile(folders["latte"], tmp_path / "latte.yaml", "--steps", 3, "--prompt", "a cat", "--height", 32,
                    "--width", 32, "--num-frames", TP.LATTE_FRAMES)
    p, _ = load_profile(prof)
    assert (tuple(p.resolution_px), p.num_frames) == ((32, 32), TP.LATTE_FRAMES)
    sched = _plan(prof, tmp_path / "s.yaml", "--gpus", 1)
    _ok(["exec", sched, "--prompt", "a cat", "--out", tmp_path / "run"])      # size and frames: the schedule's
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    frames = [f"video_000/frame_{k:03d}.png" for k in range(TP.LATTE_FRAMES)]
    assert report["frames"] == TP.LATTE_FRAMES and report["images"] == frames + ["video_000.gif"]
    assert all((run / f).is_file() for f in report["images"])
    from PIL import Image

    with Image.open(run / "video_000.gif") as gif:
        assert gif.n_frames == TP.LATTE_FRAMES and gif.size == (32, 32)
    par = _plan(prof, tmp_path / "par.yaml", "--gpus", 2, "--interconnect", "nvlink", "--budget", 1e9)
    assert any(w.kind != "exact" for w in load_schedule(par).windows)
    _ok(["evaluate", par, "--prompt", "a cat", "--seed", 1, "--seed", 2, "--out", tmp_path / "ev"])
    q = json.loads((tmp_path / "ev" / "quality.json").read_text())
    assert q["frames"] == TP.LATTE_FRAMES and [im["file"] for im in q["images"]] == ["video_000.gif", "video_001.gif"]
    assert all((tmp_path / "ev" / d / "video_001" / "frame_001.png").is_file() for d in (".", "sequential"))
    assert all(0 < im["psnr_db"] <= 100 for im in q["images"])
    out = tmp_path / "refused"
    _refused(["exec", sched, "--num-frames", 4, "--out", out],
             needle=f"--num-frames 4 differs from the schedule's {TP.LATTE_FRAMES} (its costs and quality were measured "
                    f"there); pass --num-frames {TP.LATTE_FRAMES}, or re-profile and re-plan with --num-frames 4", out_dir=out)
    _refused(["evaluate", sched, "--height", 64, "--width", 32, "--out", out],
             needle="--height 64 --width 32 differs from the schedule's size, 32x32 px", out_dir=out)


def test_settle_inputs_fills_and_refuses():
    from types import SimpleNamespace

    from parastep.executor.inputs import Inputs, settle_inputs

    rec = SimpleNamespace(resolution_px=(32, 48), num_frames=5, strength=None)
    got = settle_inputs(Inputs(prompts=("a",)), rec, what="schedule", fix="re-plan with")
    assert (got.height, got.width, got.num_frames, got.strength, got.prompts) == (32, 48, 5, None, ("a",))
    with pytest.raises(UserError, match="--strength 0.5 differs from the schedule's none .*; drop --strength"):
        settle_inputs(Inputs(strength=0.5), rec, what="schedule", fix="re-plan with")
    blank = SimpleNamespace(resolution_px=None, num_frames=None, strength=None)
    with pytest.raises(UserError, match="the pipeline's default size \\(not recorded\\).*drop --height/--width"):
        settle_inputs(Inputs(height=8, width=8), blank, what="profile", fix="profile anew with")


def test_config_fixed_call_arguments_need_no_flag():
    """A folder whose denoiser does not fit the pipeline's defaults still runs without a guessed flag:
    CogVideoX's text length comes from its transformer, PixArt bins only its released sizes."""
    from types import SimpleNamespace

    from parastep.executor.inputs import Inputs, generation_kwargs

    class CogLike:
        def __call__(self, prompt=None, max_sequence_length=226, num_frames=49):
            pass

    class PixArtLike:
        def __call__(self, prompt=None, use_resolution_binning=True, height=None, width=None):
            pass

    class Plain:
        def __call__(self, prompt=None, height=None, width=None):
            pass

    def pipe(cls, **cfg):
        p = cls()
        p.transformer = SimpleNamespace(config=SimpleNamespace(**cfg))
        return p

    assert generation_kwargs(pipe(CogLike, max_text_seq_length=16), Inputs()) == {"max_sequence_length": 16}
    assert generation_kwargs(pipe(PixArtLike, sample_size=8), Inputs()) == {"use_resolution_binning": False}
    assert generation_kwargs(pipe(PixArtLike, sample_size=128), Inputs()) == {}      # PixArt-Sigma 1024: binned
    assert generation_kwargs(pipe(Plain, sample_size=8, max_text_seq_length=16), Inputs()) == {}
