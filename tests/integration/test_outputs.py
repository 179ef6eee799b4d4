"""Where the commands write, and inputs found by an outside-in audit: each refusal is
one line, exit 2, before any work, with nothing left behind; a reused --out folder holds only the
new run's outputs; ``validate``'s number checks are in tests/test_validate.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reference_impl as R
import tiny_pipelines as TP
from clitools import run_cli
from parastep.errors import UserError
from parastep.outputs import check_out_dir, check_out_file, clear_earlier_outputs
from parastep.schedules.io import dump_schedule

UNWRITABLE = Path("/proc")     # not writable even by root: a probe there fails


def _refused(argv, *, needle: str) -> str:
    code, out, err = run_cli([str(a) for a in argv])
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("parastep: error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    return lines[0]


def _digits_schedule(tmp_path: Path, steps: int = 4) -> Path:
    s = R.make_schedule([{"start": i, "kind": "exact"} for i in range(steps)], num_steps=steps, world_size=2,
                        output_bytes=16 * 16 * 4, model="digits", scheduler="DDIMScheduler", guidance_scale=1.5,
                        resolution_px=(16, 16))
    path = tmp_path / "d.yaml"
    path.write_text(dump_schedule(s))
    return path


# ---- the checks themselves -----------------------------------------------------------------------

def test_out_file_checks(tmp_path):
    check_out_file(str(tmp_path / "p.yaml"))
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path, "is a folder"), (tmp_path / "missing" / "p.yaml", "does not exist"),
             (tmp_path / "afile" / "p.yaml", "is a file"), (UNWRITABLE / "p.yaml", "cannot write"),
             (tmp_path / ("n" * 300 + ".yaml"), "longer than")]
    for path, needle in cases:
        with pytest.raises(UserError, match=needle):
            check_out_file(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]          # the probe leaves nothing


def test_out_dir_checks(tmp_path):
    check_out_dir(str(tmp_path / "new" / "deeper"))
    (tmp_path / "afile").write_text("x")
    for path, needle in ((tmp_path / "afile" / "o", "existing file"), (UNWRITABLE / "o", "cannot write"),
                         (tmp_path / ("n" * 300), "longer than")):
        with pytest.raises(UserError, match=needle):
            check_out_dir(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_clear_earlier_outputs_removes_only_what_parastep_writes(tmp_path):
    ours = ["image_000.png", "image_011.png", "video_000.gif", "report.json", "quality.json",
            "video_000/frame_000.png", "video_000/frame_001.png", "sequential/image_000.png", "sequential/video_001.gif"]
    theirs = ["notes.txt", "image_a.png", "my_image_000.png", "video_000/notes.txt", "sequential/keep.md", "sub/image_000.png"]
    for name in ours + theirs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert clear_earlier_outputs(tmp_path) == len(ours)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(theirs)


# ---- commands ------------------------------------------------------------------------------------

def test_profile_refuses_an_unwritable_out_before_measuring(tmp_path):
    (tmp_path / "outdir").mkdir()
    _refused(["profile", "--model", "digits", "--steps", 2, "--out", tmp_path / "outdir"], needle="is a folder")
    _refused(["profile", "--model", "digits", "--steps", 2, "--out", UNWRITABLE / "p.yaml"], needle="cannot write")
    _refused(["profile", "--model", "digits", "--steps", 2, "--out", tmp_path / "p.yaml", "--plot", tmp_path / "outdir"],
             needle="--plot")
    assert [p.name for p in tmp_path.iterdir()] == ["outdir"] and not any((tmp_path / "outdir").iterdir())


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    import diffusers

    root = tmp_path_factory.mktemp("audit-folders")
    TP.make_compat_pipeline("ddim").save_pretrained(str(root / "ddim"))
    heun = TP.make_compat_pipeline("sd15")
    heun.scheduler = diffusers.HeunDiscreteScheduler.from_config(heun.scheduler.config)
    heun.save_pretrained(str(root / "heun"))
    return root


def test_profile_refuses_a_second_order_scheduler_up_front(folders, tmp_path):
    line = _refused(["profile", "--model-path", folders / "heun", "--gpus", 2, "--steps", 4, "--height", 32, "--width", 32,
                     "--out", tmp_path / "h.yaml"], needle="HeunDiscreteScheduler is not supported")
    assert "order 2" in line or "use" in line
    assert not any(tmp_path.iterdir())


def test_profile_refuses_a_folder_of_another_pipeline_than_the_named_model(folders, tmp_path):
    _refused(["profile", "--model", "digits", "--model-path", folders / "ddim", "--steps", 2, "--out", tmp_path / "m.yaml"],
             needle="holds a DDIMPipeline, but model 'digits' is a DigitsPipeline")
    assert not any(tmp_path.iterdir())


def test_a_moved_profiled_folder_is_named_as_such(tmp_path):
    from parastep.executor.registry import locate

    gone = tmp_path / "was-here"
    with pytest.raises(UserError, match="does not exist: moved or deleted"):
        locate(str(gone))
    gone.mkdir()
    with pytest.raises(UserError, match="has no model_index.json"):
        locate(str(gone))


def test_simulate_plot_under_a_file_is_one_line(tmp_path):
    sched = _digits_schedule(tmp_path, steps=50)               # the shipped profile's step count
    code, _, err = run_cli(["simulate", str(sched), "--plot", str(tmp_path / "ok.png")])
    assert code == 0 and (tmp_path / "ok.png").stat().st_size > 0, err
    (tmp_path / "afile").write_text("x")
    _refused(["simulate", sched, "--plot", tmp_path / "afile" / "t.png"], needle="is a file, not a folder")
    # the writer's own handler (a path that turns bad after the check) is one line too, not a crash in it
    from parastep.profiles.io import resolve_profile
    from parastep.schedules.io import load_schedule
    from parastep.schedules.simulate import plot_timeline, simulate

    schedule = load_schedule(sched)
    with pytest.raises(UserError, match="cannot write the timeline"):
        plot_timeline(simulate(schedule, resolve_profile("digits")[0]), schedule, tmp_path / "afile" / "t.png")


def test_exec_and_evaluate_refuse_an_unwritable_out_before_any_work(tmp_path):
    sched = _digits_schedule(tmp_path)
    _refused(["exec", sched, "--out", UNWRITABLE / "xx"], needle="cannot write")
    _refused(["evaluate", sched, "--out", UNWRITABLE / "xx"], needle="cannot write")
    _refused(["evaluate", sched, "--out", tmp_path / ("n" * 300)], needle="longer than")


def test_a_reused_evaluate_folder_holds_only_the_new_run(tmp_path):
    sched = _digits_schedule(tmp_path)
    out = tmp_path / "o"
    code, _, err = run_cli(["evaluate", str(sched), "--prompt", "3", "--prompt", "4", "--seed", "1", "--out", str(out)])
    assert code == 0, err
    (out / "report.json").write_text("{}")            # as an exec into the same folder leaves it
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(["evaluate", str(sched), "--prompt", "3", "--seed", "2", "--out", str(out)])
    assert code == 0, err
    assert "removed 6 output file(s) of an earlier run" in err       # 2 + 2 sequential images, quality.json, report.json
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["image_000.png", "notes.txt", "quality.json", "sequential/image_000.png"]
    q = json.loads((out / "quality.json").read_text())
    assert [(im["prompt"], im["seed"], im["file"]) for im in q["images"]] == [("3", 2, "image_000.png")]


@pytest.mark.parametrize("argv,needle", [
    (["plan", "--model", "digits", "--gpus", "2", "--min-psnr", "-5"], "above 0 dB"),
    (["plan", "--model", "digits", "--gpus", "2", "--min-psnr", "0"], "above 0 dB"),
    (["evaluate", "s.yaml", "--seed", "-5", "--out", "o"], "from 0 to 2**64 - 1"),
])
def test_flag_ranges(argv, needle):
    _refused(argv, needle=needle)


# ---- more outside-in inputs ----------------------------------------------------------------------

def test_flags_that_would_be_ignored_are_refused(tmp_path):
    _refused(["profile", "--model", "digits", "--retime", "--out", tmp_path / "p.yaml"], needle="add --recalibrate PROFILE")
    _refused(["profile", "--model", "digits", "--recalibrate", "x.yaml", "--verify", 6, "--steps", 4, "--out", tmp_path / "p.yaml"],
             needle="--steps cannot change with --recalibrate")
    _refused(["plan", "--model", "digits", "--gpus", 4, "--budget", 0.1, "--warmup", 3], needle="drop --warmup")
    _refused(["plan", "--model", "digits", "--gpus", 4, "--min-psnr", 35, "--warmup", 20], needle="drop --warmup")
    assert not any(tmp_path.iterdir())


def test_simulate_prices_a_plan_with_the_interconnect_it_was_planned_with(tmp_path):
    """plan --interconnect is recorded in the schedule, so simulate agrees with the plan's own
    latency (it priced with the profile's own exchange costs before: 0.0953 s against 0.0987 s)."""
    from parastep.schedules.io import load_schedule

    code, text, err = run_cli(["plan", "--model", "digits", "--gpus", "8", "--interconnect", "ethernet-1g"])
    assert code == 0, err
    path = tmp_path / "e.yaml"
    path.write_text(text)
    s = load_schedule(path)
    assert s.profile.interconnect == "ethernet-1g"
    code, out, err = run_cli(["simulate", str(path)])
    assert code == 0 and "interconnect preset 'ethernet-1g', as the plan was" in err, err
    simulated = float(next(ln for ln in out.splitlines() if ln.startswith("latency_s")).split()[1])
    assert simulated == pytest.approx(s.latency.predicted_s, rel=1e-5)
    code, out, _ = run_cli(["simulate", str(path), "--interconnect", "nvlink"])     # an explicit preset still wins
    assert code == 0
    assert float(next(ln for ln in out.splitlines() if ln.startswith("latency_s")).split()[1]) < s.latency.predicted_s
    code, text, _ = run_cli(["plan", "--model", "digits", "--gpus", "8"])
    path.write_text(text)
    assert load_schedule(path).profile.interconnect is None


def test_simulate_checks_the_plot_path_before_printing(tmp_path):
    sched = _digits_schedule(tmp_path, steps=50)
    code, out, err = run_cli(["simulate", str(sched), "--plot", str(tmp_path / "missing" / "t.png")])
    assert code == 2 and out == "" and "does not exist" in err


def test_evaluate_counts_a_repeated_sample_once_and_says_so(tmp_path):
    """Repeated seeds were dropped silently and repeated prompts kept (counted twice in the mean)."""
    sched = _digits_schedule(tmp_path)
    out = tmp_path / "dup"
    code, _, err = run_cli(["evaluate", str(sched), "--prompt", "3", "--prompt", "3", "--prompt", "7", "--seed", "5",
                            "--seed", "5", "--seed", "6", "--out", str(out)])
    assert code == 0, err
    assert "repeated --prompt 3 counted once" in err and "repeated --seed 5 counted once" in err
    assert "4 images (2 prompts x 2 seeds" in err
    q = json.loads((out / "quality.json").read_text())
    assert [(im["prompt"], im["seed"]) for im in q["images"]] == [("3", 5), ("7", 5), ("3", 6), ("7", 6)]
