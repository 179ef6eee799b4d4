"""The profiler on tiny random-weight models: exact zeros, an independent recomputation of the
deviation tables (a direct loop, no executor), forward-count bound, YAML round trip, the CLI."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from parastep.models.digits.pipeline import NULL_CLASS, DigitsPipeline
from parastep.executor.evaluate import samples_of
from parastep.profiles.io import dump_profile, load_profile, write_profile
from parastep.profiles.model import Profile
from parastep.profiler.comm import fit_alpha_beta
from parastep.profiler.deviation import deviation_tables
from parastep.profiler.measure import measure_profile
from parastep.profiler.settings import ProfilerSettings
from parastep.profiler.trajectory import record_reference

T = 7
J = 4
PROMPTS = ("1", "7")
SEEDS = (0, 3)
GUIDANCE = 2.5


def tiny_digits(scheduler: str = "ddim") -> DigitsPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11,
                           block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    if scheduler == "ddim":
        sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    else:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2)
    pipe = DigitsPipeline(unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings(**kw) -> ProfilerSettings:
    base = dict(model="tiny", num_steps=T, max_window=J, gpus=8, prompts=PROMPTS, seeds=SEEDS,
                call_kwargs={"guidance_scale": GUIDANCE}, interconnect="nvlink", measure_comm=False, timing_repeats=1)
    base.update(kw)
    return ProfilerSettings(**base)


@pytest.fixture(scope="module", params=["ddim", "dpm++"])
def measured(request):
    torch.set_num_threads(1)
    pipe = tiny_digits(request.param)
    return request.param, pipe, measure_profile(pipe, settings())


# ---- an independent implementation: a direct loop over the UNet and a scheduler, no executor ----

def direct_reference(pipe, scheduler_kind: str):
    """x_i, e_i and a deep copy of the scheduler before each step, written out by hand."""
    prompts, seeds = samples_of(PROMPTS, SEEDS)
    labels = torch.tensor([int(p) for p in prompts])
    null = torch.full_like(labels, NULL_CLASS)
    x = torch.cat([torch.randn((1, 1, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(T)
    x = x * sched.init_noise_sigma

    def guide(xin, t):
        model_in = sched.scale_model_input(torch.cat([xin, xin]), t)
        u, c = pipe.unet(model_in, t, class_labels=torch.cat([null, labels])).sample.chunk(2)
        return u + GUIDANCE * (c - u)

    xs, es, states = [], [], []
    with torch.no_grad():
        for t in sched.timesteps:
            states.append(copy.deepcopy(sched))
            e = guide(x, t)
            xs.append(x)
            es.append(e)
            x = sched.step(e, t, x).prev_sample
    xs.append(x)
    return xs, es, states, guide


def rms(d):
    return d.reshape(d.shape[0], -1).double().pow(2).mean(1).sqrt()


def direct_parallel_deviation(pipe, ref, *, start: int, offset: int, predictor: str):
    """deviation[start][offset] per sample: reuse chain on a scratch scheduler, ehat by a forward,
    then step_{s+j}(x_{s+j}, ehat) vs step_{s+j}(x_{s+j}, e_{s+j}) on copies of the reference state."""
    xs, es, states, guide = ref

    def stand_in(k):
        return es[start - 1] if predictor == "last" else es[start - 1] + (k + 1) * (es[start - 1] - es[start - 2])

    with torch.no_grad():
        scratch = copy.deepcopy(states[start])
        xhat = xs[start]
        for k in range(offset):
            t = scratch.timesteps[start + k]
            xhat = scratch.step(stand_in(k), t, xhat).prev_sample
        i = start + offset
        t = states[i].timesteps[i]
        # guide() uses the scheduler captured in direct_reference for scale_model_input (identity for DDIM/DPM)
        ehat = guide(xhat, t)
        a = copy.deepcopy(states[i]).step(ehat, t, xs[i]).prev_sample
        b = copy.deepcopy(states[i]).step(es[i], t, xs[i]).prev_sample
    return rms(a - b)


def direct_reuse_deviation(ref, *, start: int, offset: int, predictor: str):
    xs, es, states, _ = ref
    k = offset
    a_k = es[start - 1] if predictor == "last" else es[start - 1] + (k + 1) * (es[start - 1] - es[start - 2])
    i = start + offset
    t = states[i].timesteps[i]
    with torch.no_grad():
        a = copy.deepcopy(states[i]).step(a_k, t, xs[i]).prev_sample
        b = copy.deepcopy(states[i]).step(es[i], t, xs[i]).prev_sample
    return rms(a - b)


# ---- tests --------------------------------------------------------------------------------------

def test_offset_zero_is_exactly_zero_and_rows_have_the_contract_shape(measured):
    _, _, run = measured
    p = run.profile
    for pred, first in (("last", 1), ("linear", 2)):
        for s in range(T):
            row = p.deviation[pred].mean[s]
            if s < first:
                assert row == [] and p.reuse_deviation[pred].mean[s] == []
                continue
            assert len(row) == min(J, T - s)
            assert row[0] == 0.0 and p.deviation[pred].max[s][0] == 0.0
            assert all(v > 0 for v in row[1:])
            assert all(m >= a for m, a in zip(p.deviation[pred].max[s], row))


def test_deviation_matches_a_direct_loop(measured):
    kind, pipe, run = measured
    p = run.profile
    ref = direct_reference(pipe, kind)
    # the recorded reference is the same trajectory
    torch.testing.assert_close(run.trajectory.x[T], ref[0][T], rtol=1e-5, atol=1e-6)
    for pred, s in (("last", 1), ("last", 3), ("linear", 2), ("linear", 4)):
        for j in range(1, min(J, T - s)):
            d = direct_parallel_deviation(pipe, ref, start=s, offset=j, predictor=pred)
            assert math.isclose(p.deviation[pred].mean[s][j], float(d.mean()), rel_tol=1e-4, abs_tol=1e-9), (pred, s, j)
            assert math.isclose(p.deviation[pred].max[s][j], float(d.max()), rel_tol=1e-4, abs_tol=1e-9), (pred, s, j)
        for j in range(0, min(J, T - s)):
            d = direct_reuse_deviation(ref, start=s, offset=j, predictor=pred)
            assert math.isclose(p.reuse_deviation[pred].mean[s][j], float(d.mean()), rel_tol=1e-4, abs_tol=1e-9)


def test_propagation_and_similarity_are_sane(measured):
    _, _, run = measured
    p = run.profile
    assert p.propagation.gain[T - 1] == 1.0
    assert all(g > 0 and math.isfinite(g) for g in p.propagation.gain)
    assert len(p.similarity.cosine) == T - 1 and all(-1 <= c <= 1 for c in p.similarity.cosine)
    assert all(r >= 0 for r in p.similarity.rel_l1)
    assert len(p.compute.forward_s) == J and p.compute.forward_s[0] > 0
    assert p.output_bytes == 8 * 8 * 4                      # one guided output of batch 1, float32


def test_forward_count_within_bound():
    """Count real UNet forwards independently (a hook inside the UNet, below the executor's
    placeholder wrapper) and hold the deviation measurement to (1 + 2J) per step."""
    pipe = tiny_digits()
    calls = [0]
    h = pipe.unet.conv_in.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    try:
        prompts, seeds = samples_of(PROMPTS, SEEDS)
        kw = {"guidance_scale": GUIDANCE}
        traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
        assert calls[0] == traj.forwards == T
        _, _, n = deviation_tables(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, max_window=J, call_kwargs=kw)
        assert calls[0] - T == n
        assert n <= (1 + 2 * J) * T
        # exactly: per start s and predictor, 1 placeholder forward at step 0 + (w - 1) offsets
        want = sum(min(J, T - s) for s in range(1, T) if min(J, T - s) >= 2) + \
            sum(min(J, T - s) for s in range(2, T) if min(J, T - s) >= 2)
        assert n == want
    finally:
        h.remove()


def test_profile_yaml_round_trip(measured, tmp_path):
    _, _, run = measured
    path = tmp_path / "p.yaml"
    write_profile(run.profile, path)
    back, sha = load_profile(path)
    assert back == run.profile
    assert dump_profile(back) == path.read_text()
    assert Profile.model_validate(back.model_dump(mode="json")) == back


def test_alpha_beta_fit_recovers_constants():
    pts = [(n, 2e-4 + n * 4096 / 5e8) for n in (2, 4, 8)]
    a, bw = fit_alpha_beta(pts, output_bytes=4096)
    assert math.isclose(a, 2e-4, rel_tol=1e-6) and math.isclose(bw, 5e8, rel_tol=1e-6)


def test_tiny_sdxl_profile_plans():
    """A text-conditioned pipeline with added conditions (tiny random SDXL) profiles and plans."""
    from tiny_pipelines import make_tiny_pipeline, tiny_call_kwargs

    from parastep.planner.plan import plan_schedule

    pipe = make_tiny_pipeline("sdxl")
    kw = {k: v for k, v in tiny_call_kwargs("sdxl").items() if k != "num_inference_steps"}
    run = measure_profile(pipe, ProfilerSettings(model="sdxl", num_steps=5, max_window=3, gpus=4, prompts=("a cat",),
                                                 seeds=(0,), call_kwargs=kw, interconnect="pcie4", measure_comm=False,
                                                 timing_repeats=1, propagation_stride=2))
    p = run.profile
    assert p.deviation["last"].mean[1][0] == 0.0 and p.deviation["last"].mean[1][1] > 0
    assert p.provenance.comm.source == "prior"
    res = plan_schedule(p, profile_sha256="0" * 64, world_size=4, max_window=3)
    assert res.schedule.num_steps == 5


@pytest.mark.distributed
def test_cli_profile_then_plan(tmp_path, capsys):
    """``parastep profile --model-path`` (a saved tiny digits folder; exchange measured over gloo
    with 2 spawned processes), ``--plot``, then ``parastep plan --profile`` on the result."""
    from parastep.cli import main

    folder = tmp_path / "tiny"
    tiny_digits().save_pretrained(folder)
    out = tmp_path / "prof.yaml"
    png = tmp_path / "curves.png"
    code = main(["profile", "--model", "tiny", "--model-path", str(folder), "--gpus", "2", "--steps", "8",
                 "--max-window", "3", "--out", str(out), "--plot", str(png), "--prompt", "3", "--prompt", "5",
                 "--seed", "1", "--seed", "2", "--seed", "3"])
    assert code == 0
    prof, _ = load_profile(out)
    assert prof.provenance.comm.source == "measured" and prof.comm.entries[0].ranks == 2
    assert png.stat().st_size > 10_000
    # calibrated by the plain command: --min-psnr works on the fresh profile, and the plan states its distribution
    cal = prof.calibration
    assert cal is not None and cal.level == 0.9 and len(cal.residuals_db) >= 9
    capsys.readouterr()
    assert main(["plan", "--model", "tiny", "--gpus", "2", "--profile", str(out)]) == 0
    assert "parastep_schedule: 1" in capsys.readouterr().out
    assert main(["plan", "--model", "tiny", "--gpus", "2", "--profile", str(out), "--min-psnr", "30"]) == 0
    res = capsys.readouterr()
    sched = yaml.safe_load(res.out)
    assert sched["quality"]["min_psnr_db"] == 30.0
    if sched["quality"]["predicted"] > 0:
        p = sched["quality"]["predicted_psnr"]
        assert p["p10_db"] <= p["median_db"] and p["residuals"] == len(cal.residuals_db)
        assert "predicted per-image PSNR median" in res.err


def test_cli_rejects_bad_input(tmp_path, capsys):
    from parastep.cli import main

    assert main(["profile", "--model", "nope", "--out", str(tmp_path / "x.yaml")]) == 2
    assert main(["profile", "--model", "digits", "--out", str(tmp_path / "missing" / "x.yaml")]) == 2
    assert main(["profile", "--model", "digits", "--verify", "2", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("parastep: error:") == 3


@pytest.mark.parametrize("interconnect", [None, "pcie4"])
def test_comm_ranks_beyond_the_machine(monkeypatch, interconnect):
    """CPU with fewer cores than --gpus: a preset covers the ranks beyond the cores (prior
    provenance); without one every g is measured by oversubscribing (measured provenance)."""
    import parastep.profiler.comm as prof
    from parastep.profiles.model import CommEntry

    measured_g: list[int] = []

    def fake_measure(*, world_sizes, **kw):
        measured_g.extend(world_sizes)
        return [CommEntry(ranks=g, latency_s=1e-4 * g, bandwidth_bytes_per_s=1e9) for g in world_sizes], {g: {} for g in world_sizes}

    monkeypatch.setattr(prof, "measure_comm", fake_measure)
    monkeypatch.setattr(prof, "local_device_slots", lambda device: ("cpu", 2))
    pipe = tiny_digits()
    prompts, seeds = samples_of(PROMPTS, SEEDS)
    traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=3, call_kwargs={"guidance_scale": GUIDANCE})
    st = settings(gpus=5, interconnect=interconnect, measure_comm=True)
    measured = prof.Measured(device="cpu", date="2026-01-01")
    comm, prov = prof._comm_part(pipe, st, out_bytes=256, traj=traj, measured=measured, say=lambda m: None, notes=[])
    assert sorted(e.ranks for e in comm.entries) == [2, 3, 4, 5]
    if interconnect is None:
        assert measured_g == [2, 3, 4, 5] and prov.source == "measured" and "oversubscribed" in prov.notes
    else:
        assert measured_g == [2] and prov.source == "prior" and comm.preset == "pcie4"
        assert next(e for e in comm.entries if e.ranks == 2).latency_s == 2e-4


# ---- the per-sample quality model vs a direct nonlinear run -----------------------------------

def direct_window_output_error(pipe, ref, *, kind: str, start: int, size: int, predictor: str):
    """Per sample, RMS(x_T' - x_T) when only this window is non-exact: written out by hand (the
    window's real trajectory on one scratch scheduler, then exact steps to the end, no linearisation)."""
    xs, es, states, guide = ref

    def stand_in(k):
        return es[start - 1] if predictor == "last" else es[start - 1] + (k + 1) * (es[start - 1] - es[start - 2])

    with torch.no_grad():
        outs = []
        for j in range(size):                           # the outputs the window applies
            if kind == "reuse":
                outs.append(stand_in(j))
            elif j == 0:
                outs.append(es[start])
            else:
                scratch = copy.deepcopy(states[start])
                xhat = xs[start]
                for k in range(j):
                    xhat = scratch.step(stand_in(k), scratch.timesteps[start + k], xhat).prev_sample
                outs.append(guide(xhat, states[start + j].timesteps[start + j]))
        sched = copy.deepcopy(states[start])
        x = xs[start]
        for i in range(start, T):
            e = outs[i - start] if i < start + size else guide(x, sched.timesteps[i])
            x = sched.step(e, sched.timesteps[i], x).prev_sample
    return rms(x - xs[T])


def test_window_output_errors_match_a_direct_run_of_each_window(measured):
    """Differential: the profile's per-sample output error of every window (end-boundary deviation
    exact, the rest of the run linearised along a few directions) against the window run alone,
    end to end, by hand. Agreement is close but not exact (linearisation, rank truncation)."""
    kind_, pipe, run = measured
    ref = direct_reference(pipe, kind_)
    oe = run.profile.output_errors
    assert oe is not None and len(oe.samples) == len(PROMPTS) * len(SEEDS)
    rel = []
    for kind in ("parallel", "reuse"):
        for pred in ("last", "linear"):
            for s in range(1 if pred == "last" else 2, T):
                for w in range(2 if kind == "parallel" else 1, min(J, T - s) + 1):
                    got = torch.tensor(run.profile.window_errors(kind, start=s, size=w, predictor=pred), dtype=torch.float64)
                    want = direct_window_output_error(pipe, ref, kind=kind, start=s, size=w, predictor=pred)
                    rel.extend(((got - want).abs() / want.clamp_min(1e-12)).tolist())
    rel.sort()
    assert len(rel) > 50
    assert rel[len(rel) // 2] < 0.05, f"median relative error {rel[len(rel) // 2]:.3f}"
    assert rel[int(0.9 * len(rel))] < 0.25, f"90th percentile relative error {rel[int(0.9 * len(rel))]:.3f}"


def test_a_refused_exchange_fit_is_measured_again_and_refused_only_when_every_try_is():
    """``measure_comm``'s tries (``_fitted_measurement``): a measurement whose fit is refused (a slow
    spell) is taken again, saying so, and the first fit that stands is kept; when all ``FIT_TRIES``
    are refused the refusal stands and says so."""
    from parastep.profiler.comm import FIT_TRIES, _fitted_measurement

    flat = {2: 1e-3, 8: 1e-3, 32: 0.9e-3}
    good = {2: 1e-4, 8: 2e-4, 32: 6e-4}
    tries, said = iter([flat, good, flat]), []
    (latency, bandwidth), kept = _fitted_measurement(lambda: next(tries), output_bytes=4096, what="exchange", say=said.append)
    assert kept is good and len(said) == 1 and "measuring again" in said[0]
    assert (latency, bandwidth) == fit_alpha_beta(sorted(good.items()), output_bytes=4096)
    calls, said = [], []
    with pytest.raises(ValueError, match=f"exchange fit refused.*{FIT_TRIES} measurements, each refused"):
        _fitted_measurement(lambda: calls.append(1) or flat, output_bytes=4096, what="exchange", say=said.append)
    assert len(calls) == FIT_TRIES and len(said) == FIT_TRIES - 1


def test_exchange_fit_with_a_flat_or_falling_slope_is_refused():
    """A clamped fit would be a number nobody measured."""
    with pytest.raises(ValueError, match="exchange fit refused"):
        fit_alpha_beta([(2, 1e-3), (8, 1e-3), (32, 0.9e-3)], output_bytes=4096)
    with pytest.raises(ValueError, match="exchange fit refused"):
        fit_alpha_beta([(2, 5e-3), (8, 4e-3), (32, 3e-3)], output_bytes=4096)


# ---- CFG split costs ---------------------------------------------------------

def _denoiser_calls(pipe, call):
    """Every denoiser call's (args, kwargs) during ``call()`` (a forward pre-hook)."""
    calls = []

    def hook(mod, args, kwargs):
        calls.append((args, dict(kwargs)))

    h = (pipe.unet if hasattr(pipe, "unet") else pipe.transformer).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            call()
    finally:
        h.remove()
    return calls


@pytest.mark.parametrize("name", ["digits", "sdxl"])
def test_half_batch_is_the_unconditional_half_of_the_real_call(name):
    """Cut to rows [0, B) (latents, timestep, class labels / encoder states, added conditions in
    a nested dict), the denoiser's real call gives exactly the first half of the whole call's output."""
    from parastep.profiler.compute import half_batch

    if name == "digits":
        pipe = tiny_digits()
        run = lambda: pipe(["1", "7"], num_inference_steps=2, guidance_scale=GUIDANCE, output_type="latent",
                           generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    else:
        from tiny_pipelines import make_tiny_pipeline, tiny_call_kwargs

        pipe = make_tiny_pipeline("sdxl")
        kw = dict(tiny_call_kwargs("sdxl", num_inference_steps=2), output_type="latent")
        run = lambda: pipe(["a cat", "a dog"], generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    args, kwargs = _denoiser_calls(pipe, run)[1]
    full = args[0].shape[0]
    assert full == 4
    hargs, hkwargs = half_batch(args, kwargs, full=full)
    assert hargs[0].shape[0] == 2
    if name == "sdxl":
        assert hkwargs["added_cond_kwargs"]["text_embeds"].shape[0] == 2
        assert hkwargs["encoder_hidden_states"].shape[0] == 2
    else:
        assert (hkwargs["class_labels"] == NULL_CLASS).all()
    den = pipe.unet
    with torch.no_grad():
        whole = den(*args, **kwargs)[0]
        half = den(*hargs, **hkwargs)[0]
    torch.testing.assert_close(half, whole[:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        half_batch(args, kwargs, full=3)


def test_compute_times_a_half_forward_only_with_a_two_way_guided_batch():
    from parastep.profiler.compute import half_forward_note, measure_compute

    pipe = tiny_digits()
    torch.set_num_threads(1)
    kw = dict(prompt="3", seed=0, num_steps=4, max_window=2, repeats=1, threads=1)
    c, _, det = measure_compute(pipe, call_kwargs={"guidance_scale": GUIDANCE}, **kw)
    half = det["half_forward"]
    assert c.half_forward_s == half["half_s"] > 0 and half["batch"] == 2 and half["count"] == 4
    assert 0 < half["ratio"] < 1.5                       # timing on a shared machine: only the shape is checked
    assert "half/whole" in half_forward_note(det)
    c, _, det = measure_compute(pipe, call_kwargs={"guidance_scale": 1.0}, **kw)
    assert c.half_forward_s is None and "no two-way guided batch" in det["half_forward"]
    assert half_forward_note(det).startswith("half_forward_s absent")


@pytest.mark.parametrize("name", ["digits", "pixart-sigma"])
def test_compute_measures_the_raw_half_a_split_pair_swaps(name):
    """The bytes of one CFG half of the denoiser's raw output, measured on the real call: the
    guided output's size for digits (no field), twice it for PixArt's learned variance."""
    from parastep.profiler.compute import measure_compute, raw_half_bytes_of

    torch.set_num_threads(1)
    if name == "digits":
        pipe, prompt, call_kwargs = tiny_digits(), "3", {"guidance_scale": GUIDANCE}
    else:
        from tiny_pipelines import make_tiny_pipeline, tiny_call_kwargs

        pipe, prompt = make_tiny_pipeline(name), "a red cat"
        call_kwargs = {k: v for k, v in tiny_call_kwargs(name, num_inference_steps=3).items() if k != "num_inference_steps"}
    _, out_bytes, det = measure_compute(pipe, prompt=prompt, seed=0, num_steps=3, call_kwargs=call_kwargs, max_window=1,
                                        repeats=1, threads=1)
    raw = det["half_forward"]["raw_half_bytes"]
    if name == "digits":
        assert raw == out_bytes and raw_half_bytes_of(det, out_bytes) is None
    else:
        den = pipe.transformer.config
        assert den.out_channels == 2 * den.in_channels                  # epsilon + learned variance
        assert raw == 2 * out_bytes == raw_half_bytes_of(det, out_bytes)


def test_profile_has_split_costs_with_cfg(measured):
    """The tiny CFG profile (exchange from the nvlink preset) can price a split."""
    _, _, run = measured
    p = run.profile
    assert p.compute.half_forward_s is not None and p.compute.half_forward_s > 0
    assert p.comm.pair is not None and p.comm.pair.ranks == 2 and p.can_split
    from parastep.profiles.interconnects import pair_entry_for

    assert p.comm.pair == pair_entry_for("nvlink")
    assert "half/whole" in p.provenance.compute.notes and "CFG pair swap included" in p.provenance.comm.rule


def test_profile_without_cfg_has_no_split_costs():
    pipe = tiny_digits()
    torch.set_num_threads(1)
    run = measure_profile(pipe, settings(num_steps=4, max_window=2, call_kwargs={"guidance_scale": 1.0},
                                         propagation_stride=2, prompts=("1",), seeds=(0,)))
    p = run.profile
    assert p.compute.half_forward_s is None and p.comm.pair is None and not p.can_split
    assert "half_forward_s absent: no two-way guided batch" in p.provenance.compute.notes
    assert "no CFG pair swap" in p.provenance.comm.rule
    with pytest.raises(ValueError, match="cannot price a CFG split"):
        p.half_forward_time_s(1)


def _small_profile_without_split_costs():
    """(tiny CFG pipeline, its settings, a 4-step profile of it with half_forward_s and pair removed)."""
    pipe = tiny_digits()
    torch.set_num_threads(1)
    st = settings(num_steps=4, max_window=2, propagation_stride=2, prompts=("1",), seeds=(0,))
    base = measure_profile(pipe, st).profile
    return pipe, st, base.model_copy(update={"compute": base.compute.model_copy(update={"half_forward_s": None}),
                                             "comm": base.comm.model_copy(update={"pair": None})})


def test_retime_fills_the_split_costs():
    """``profile --recalibrate FILE --retime`` (``measure.retime``) adds the half forward and the pair."""
    from parastep.profiler.measure import retime

    pipe, st, base = _small_profile_without_split_costs()
    assert not base.can_split
    again = retime(pipe, base, st, say=lambda m: None)
    assert again.can_split and again.deviation == base.deviation and again.output_errors == base.output_errors
    assert "re-timed" in again.provenance.compute.notes and "half/whole" in again.provenance.compute.notes


def test_pair_fit_with_a_flat_or_falling_slope_is_refused(monkeypatch, tmp_path):
    import json as _json

    import parastep.executor.launch as launch_mod
    import parastep.profiler.comm as prof

    with pytest.raises(ValueError, match="pair swap fit refused"):
        fit_alpha_beta([(1, 1e-3), (4, 1e-3), (16, 0.9e-3)], output_bytes=1024, what="pair swap")

    def flat_launch(worker, job, **kw):                  # the swap does not grow with the bytes: refused
        Path(job["out"]).write_text(_json.dumps({str(n): 5e-4 - 1e-6 * i for i, n in enumerate(job["sizes"])}))

    monkeypatch.setattr(launch_mod, "launch", flat_launch)
    with pytest.raises(ValueError, match="pair swap fit refused"):
        prof.measure_pair(output_shape=[1, 1, 16, 16], dtype="float32", output_bytes=1024, repeats=1)


@pytest.mark.parametrize("interconnect", [None, "pcie4"])
def test_comm_part_pair_measured_or_refused(monkeypatch, interconnect):
    """With a two-way guided batch the pair is measured on 2 local ranks (measured provenance); a
    refused pair fit falls back to a named preset (labelled prior) and is an error without one."""
    import parastep.profiler.comm as prof
    from parastep.profiles.interconnects import pair_entry_for
    from parastep.profiles.model import CommEntry

    monkeypatch.setattr(prof, "measure_comm", lambda *, world_sizes, **kw: (
        [CommEntry(ranks=g, latency_s=1e-4, bandwidth_bytes_per_s=1e9) for g in world_sizes], {g: {} for g in world_sizes}))
    monkeypatch.setattr(prof, "local_device_slots", lambda device: ("cpu", 2))
    pipe = tiny_digits()
    traj = record_reference(pipe, prompts=["1"], seeds=[0], num_steps=3, call_kwargs={"guidance_scale": GUIDANCE})
    st = settings(gpus=2, interconnect=interconnect, measure_comm=True)
    measured = prof.Measured(device="cpu", date="2026-01-01")
    good = CommEntry(ranks=2, latency_s=3e-4, bandwidth_bytes_per_s=8e8)
    monkeypatch.setattr(prof, "measure_pair", lambda **kw: (good, {"sizes": [1, 4], "times": {1: 3e-4, 4: 3.1e-4}}))
    modes = []

    def fake_lock(call, *, mode, world_size, **kw):
        modes.append((mode, world_size))
        wait = 3e-3 if mode == "split" else 2e-3
        return wait, [{"rounds": 5, "ranks": world_size, "step_s": 9e-3, "compute_s": 9e-3 - wait, "comm_wait_s": wait,
                       "comm_mean_s": 1e-3}]

    monkeypatch.setattr(prof, "measure_lockstep", fake_lock)
    comm, prov = prof._comm_part(pipe, st, out_bytes=256, traj=traj, measured=measured, say=lambda m: None, notes=[], pair=True,
                                 denoiser_call=("den", {}), swap_bytes=512)
    assert sorted(modes) == [("exchange", 2), ("split", 2)]
    # the fits' bandwidths; one swap of the raw half, one exchange of 2 outputs at the lock-step figures
    assert comm.pair.bandwidth_bytes_per_s == good.bandwidth_bytes_per_s
    assert comm.pair.latency_s + 512 / good.bandwidth_bytes_per_s == pytest.approx(3e-3)
    assert comm.entries[0].bandwidth_bytes_per_s == 1e9 and comm.entries[0].latency_s + 2 * 256 / 1e9 == pytest.approx(2e-3)
    assert prov.source == "measured"      # 2 ranks on 2 local slots: a preset, if named, prices nothing here
    assert "CFG pair swap measured over gloo" in prov.notes and "one exchange of 2 outputs" in prov.notes
    modes.clear()

    def refused(**kw):
        raise ValueError("pair swap fit refused: ...")

    monkeypatch.setattr(prof, "measure_pair", refused)
    if interconnect is None:
        with pytest.raises(ValueError, match="pair swap fit refused"):
            prof._comm_part(pipe, st, out_bytes=256, traj=traj, measured=measured, say=lambda m: None, notes=[], pair=True,
                            denoiser_call=("den", {}))
    else:
        comm, prov = prof._comm_part(pipe, st, out_bytes=256, traj=traj, measured=measured, say=lambda m: None, notes=[], pair=True,
                                     denoiser_call=("den", {}))
        assert comm.pair == pair_entry_for("pcie4") and prov.source == "prior" and "refused" in prov.rule
        assert comm.entries[0].latency_s == pytest.approx(2e-3 - 2 * 256 / 1e9)    # the window exchange stays measured


def test_pair_from_the_preset_without_two_local_devices(monkeypatch):
    import parastep.profiler.comm as prof
    from parastep.profiles.interconnects import pair_entry_for

    monkeypatch.setattr(prof, "measure_comm", lambda *, world_sizes, **kw: ([], {}))
    monkeypatch.setattr(prof, "measure_pair", lambda **kw: pytest.fail("nothing to measure on one device"))
    monkeypatch.setattr(prof, "local_device_slots", lambda device: ("cuda", 1))
    pipe = tiny_digits()
    traj = record_reference(pipe, prompts=["1"], seeds=[0], num_steps=3, call_kwargs={"guidance_scale": GUIDANCE})
    comm, prov = prof._comm_part(pipe, settings(gpus=4, measure_comm=True), out_bytes=256, traj=traj,
                                 measured=prof.Measured(device="gpu", date="2026-01-01"), say=lambda m: None, notes=[], pair=True)
    assert comm.pair == pair_entry_for("nvlink") and prov.source == "prior"
    assert "CFG pair swap from interconnect preset 'nvlink' (prior" in prov.rule


@pytest.mark.distributed
def test_pair_swap_measured_over_gloo():
    """The real swap in 2 spawned gloo processes, up to 64 MiB (so the bytes, not a loaded machine's
    jitter of a few ms, dominate the largest sizes and the fit is not refused): a positive latency
    and bandwidth."""
    from parastep.profiler.comm import measure_pair

    entry, raw = measure_pair(output_shape=[1, 1, 16, 16], dtype="float32", output_bytes=1024, repeats=3, device="cpu",
                              max_bytes=2 ** 26)
    assert entry.ranks == 2 and entry.latency_s >= 0 and entry.bandwidth_bytes_per_s > 0
    assert raw["sizes"] == [4 ** k for k in range(9)]


def test_split_swap_stats_price_the_slower_rank_and_the_fit_keeps_its_bandwidth():
    """The lock-step figure is the mean of the slower rank's half + swap minus the median half; a
    fit whose bytes term alone exceeds it is refused, not clamped."""
    from parastep.profiler.comm import lockstep_entry, lockstep_stats
    from parastep.profiles.model import CommEntry

    ranks = [{"compute_s": [5e-3, 5e-3, 7e-3], "comm_s": [3e-3, 3e-3, 1e-3]},
             {"compute_s": [7e-3, 5e-3, 5e-3], "comm_s": [1e-3, 3e-3, 3e-3]}]
    st = lockstep_stats(ranks)
    assert st["step_s"] == pytest.approx(8e-3) and st["compute_s"] == pytest.approx(5e-3) and st["ranks"] == 2
    assert st["comm_wait_s"] == pytest.approx(3e-3) and st["comm_mean_s"] == pytest.approx(14e-3 / 6)
    fit = CommEntry(ranks=2, latency_s=1e-4, bandwidth_bytes_per_s=1e6)
    entry = lockstep_entry(fit, 3e-3, nbytes=1000, what="pair swap")
    assert entry.latency_s == pytest.approx(2e-3) and entry.bandwidth_bytes_per_s == 1e6 and entry.ranks == 2
    with pytest.raises(ValueError, match="pair swap: the lock-step operation took 500 us"):
        lockstep_entry(fit, 0.5e-3, nbytes=1000, what="pair swap")


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["split", "exchange"])
def test_lock_step_on_two_gloo_ranks(mode):
    """The real lock-step split step and window exchange on the tiny digits model in 2 spawned
    processes: both ranks report every round, and the figure is the median run's slowest-rank step
    beyond the median compute."""
    from parastep.profiler.comm import measure_lockstep
    from parastep.profiler.compute import measure_compute

    pipe = tiny_digits()
    _, _, det = measure_compute(pipe, prompt="1", seed=0, num_steps=4, call_kwargs={"guidance_scale": GUIDANCE},
                                max_window=1, repeats=1, threads=1)
    den, captured = det["denoiser_call"]
    assert den is pipe.unet and captured["batch"] == 2
    wait, stats = measure_lockstep(det["denoiser_call"], mode=mode, world_size=2, shape=[1, 1, 8, 8], dtype="float32",
                                   rounds=4, runs=3, device="cpu")
    assert len(stats) == 3 and all(s["rounds"] == 4 and s["ranks"] == 2 and s["compute_s"] > 0 and s["comm_mean_s"] > 0
                                   for s in stats)
    assert wait == sorted(s["comm_wait_s"] for s in stats)[1]
    assert all(s["step_s"] >= s["compute_s"] for s in stats)


def test_add_split_costs_keeps_every_other_number(monkeypatch):
    """The splice used for the shipped digits profile: the stored forward times the ratio measured
    now, the median fitted pair run's bandwidth (refused runs counted), one swap at the lock-step
    figure measured on the real captured call, all else unchanged."""
    import parastep.profiler.measure as prof
    from parastep.profiles.model import CommEntry

    pipe, st, base = _small_profile_without_split_costs()
    fits = iter([CommEntry(ranks=2, latency_s=2e-3, bandwidth_bytes_per_s=1e9), None,
                 CommEntry(ranks=2, latency_s=4e-4, bandwidth_bytes_per_s=2e9),
                 CommEntry(ranks=2, latency_s=1e-4, bandwidth_bytes_per_s=4e9)])

    def fake_pair(**kw):
        e = next(fits)
        if e is None:
            raise ValueError("pair swap fit refused: flat")
        return e, {"sizes": [1, 4], "times": {1: e.latency_s, 4: e.latency_s}}

    calls = []

    def fake_lock(call, *, mode, world_size, **kw):
        calls.append(call)
        assert mode == "split" and world_size == 2
        return 2.5e-3, [{"rounds": 5, "ranks": 2, "step_s": 8e-3, "compute_s": 5.5e-3, "comm_wait_s": 2.5e-3, "comm_mean_s": 2e-3}]

    monkeypatch.setattr(prof, "measure_pair", fake_pair)
    monkeypatch.setattr(prof, "measure_lockstep", fake_lock)
    new = prof.add_split_costs(pipe, base, st, say=lambda m: None, pair_runs=4)
    den, captured = calls[0]
    assert den is pipe.unet and captured["batch"] == 2            # the real denoiser and its guided call
    assert new.comm.pair.bandwidth_bytes_per_s == 2e9 and new.can_split    # the median of 3 fitted runs
    assert new.pair_exchange_time_s() == pytest.approx(2.5e-3)
    ratio = new.compute.half_forward_s / base.compute.forward_s[0]
    assert 0 < ratio < 1.5 and f"x {ratio:.4f}" in new.provenance.compute.notes
    assert "median of 3 fitted run(s)" in new.provenance.comm.rule and "1 more run(s) refused" in new.provenance.comm.rule
    assert "lock step" in new.provenance.comm.rule
    strip = {"compute": base.compute, "comm": base.comm, "provenance": base.provenance}
    assert new.model_copy(update=strip) == base
    no_cfg = settings(num_steps=4, max_window=2, prompts=("1",), seeds=(0,), call_kwargs={"guidance_scale": 1.0})
    with pytest.raises(ValueError, match="no CFG split to price"):
        prof.add_split_costs(pipe, base, no_cfg, say=lambda m: None)


def test_verification_plans_are_distinct_valid_and_include_cfg_splits():
    """The calibration's verification plans (``sample_schedules``) on a profile that prices CFG
    splits: placements then hold [u, c] pairs (a regression: the de-duplication key could not hash
    them), every plan is valid, no two are the same, and some split."""
    from parastep.profiler.calibrate import sample_schedules
    from parastep.schedules.check import violations

    from strategies import make_profile

    prof = make_profile(num_steps=16, max_window=4, seed=11, samples=4, half_forward_ratio=0.55)
    plans = sample_schedules(prof, "0" * 64, count=8, world_sizes=(2, 4), seed=0)
    assert len(plans) == 8
    keys = {(s.world_size, tuple(w.model_dump_json() for w in s.windows)) for s in plans}
    assert len(keys) == 8
    assert all(violations(s) == [] for s in plans)
    assert any(getattr(w, "split", None) or any(isinstance(e, list) for e in getattr(w, "placement", []) or [])
               for s in plans for w in s.windows)


def test_window_audit_measures_what_a_direct_run_of_the_window_gives(measured):
    """Differential, exact on both sides: the audit's end-to-end run of one window (the executor's
    hooks, prefix replayed from the reference) against the hand-written loop above."""
    from parastep.profiler.audit import measure_window

    kind_, pipe, run = measured
    ref = direct_reference(pipe, kind_)
    prompts, seeds = samples_of(PROMPTS, SEEDS)
    traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs={"guidance_scale": GUIDANCE})
    for kind, pred, s, w in [("parallel", "linear", 2, 3), ("parallel", "last", 1, 2), ("reuse", "linear", 3, 2),
                             ("reuse", "last", T - 2, 2)]:
        got = torch.tensor(measure_window(pipe, traj, (kind, pred, s, w), prompts=prompts, seeds=seeds, num_steps=T,
                                          call_kwargs={"guidance_scale": GUIDANCE}), dtype=torch.float64)
        want = direct_window_output_error(pipe, ref, kind=kind, start=s, size=w, predictor=pred)
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-9), (kind, pred, s, w, got, want)


def test_window_audit_stores_measurements_for_every_window_its_plans_use(measured):
    from parastep.planner.plan import plan_schedule
    from parastep.profiler.audit import audit_windows, window_keys

    from strategies import every_window

    kind_, pipe, run = measured
    profile = run.profile
    audited, info = audit_windows(pipe, profile, "0" * 64, call_kwargs={"guidance_scale": GUIDANCE}, world_sizes=(2, 4),
                                  rounds=4)
    assert info["windows"] >= 1 and info["rounds"] >= 1
    # the patched tables hold the measurements; every other entry is the model's, untouched
    changed = sum(profile.window_errors(kind, start=s, size=w, predictor=pred)
                  != audited.window_errors(kind, start=s, size=w, predictor=pred) for kind, pred, s, w in every_window(profile))
    assert 0 < changed <= info["windows"]
    if info["rounds"] < 4:          # converged: plans made from the audited profile use measured windows only
        for G in (2, 4):
            s = plan_schedule(audited, profile_sha256="0" * 64, world_size=G, max_window=min(G, J)).schedule
            assert set(window_keys(s)) <= set(info["keys"]), G


def test_corrected_tables_never_promise_more_than_the_executor_delivers(measured):
    """``--correct`` (``correct.correct_profile``) on a tiny pipeline, checked from outside: every plan
    the corrected profile gives (fixed, default, three --min-psnr statements, G = 2/4/8) is run end to
    end by the executor, and no calibration image measures below the PSNR the corrected model predicts."""
    from parastep.executor.evaluate import psnr_db_per_sample, run_schedule_local
    from parastep.planner.plan import plan_schedule
    from parastep.profiler.calibrate import predicted_per_sample
    from parastep.profiler.correct import correct_profile, statements_for

    from strategies import with_calibration

    kind_, pipe, run = measured
    profile = with_calibration(run.profile, at_db=50.0, rank=1)
    out = correct_profile(pipe, profile, settings=settings(), rounds=20, say=lambda m: None)
    rec = out.output_errors.corrections
    assert rec is not None and rec.converged and rec.world_sizes == [2, 4, 8], rec
    assert rec.below_prediction_per_round[0] > 0 and rec.entries_raised > 0     # the model was too kind at first
    kw = {"guidance_scale": GUIDANCE}
    samples = out.output_errors.samples
    prompts, seeds = [s.prompt for s in samples], [s.seed for s in samples]
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
    for st in statements_for(out, world_sizes=(2, 4, 8), min_psnr_dbs=rec.min_psnr_dbs[1:4]):
        s = plan_schedule(out, profile_sha256="0" * 64, **st).schedule
        got = psnr_db_per_sample(run_schedule_local(pipe, s, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw), ref)
        pred = [out.calibration.psnr_db(v) if v > 0 else math.inf for v in predicted_per_sample(s, out)]
        assert all(p <= g + 1e-6 for p, g in zip(pred, got)), (st, pred, got)


def test_profile_correct_without_a_calibration_is_refused_before_measuring(tmp_path, capsys):
    from parastep.cli import main

    assert main(["profile", "--model", "digits", "--no-calibration", "--correct", "2", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--correct ROUNDS needs a calibration" in err[0] and "drop --no-calibration" in err[0]
    assert not (tmp_path / "x.yaml").exists()


def test_compute_measures_the_batch_curve_on_the_real_call():
    """BatchStep's curve: one call on k offsets' inputs, k = 1..max_window, stored relative to
    forward_s[0]; a profile without windows of two gets none."""
    from parastep.profiler.compute import batched_forward_note, measure_compute

    pipe = tiny_digits()
    torch.set_num_threads(1)
    kw = dict(prompt="3", seed=0, num_steps=4, repeats=1, threads=1, call_kwargs={"guidance_scale": GUIDANCE})
    c, _, det = measure_compute(pipe, max_window=3, **kw)
    b = det["batched_forward"]
    assert len(c.batched_forward_s) == 3 and c.batched_forward_s[0] == c.forward_s[0]
    assert b["ratio"][0] == 1.0 and all(r > 0 for r in b["ratio"]) and b["batch"] == 2 and b["count"] >= 5
    assert c.batched_forward_s == [c.forward_s[0] * r for r in b["ratio"]]
    assert "k = 1..3" in batched_forward_note(det)
    c, _, det = measure_compute(pipe, max_window=1, **kw)
    assert c.batched_forward_s is None and batched_forward_note(det).startswith("batched_forward_s absent")


def test_add_batch_costs_keeps_every_other_number():
    """``profile --recalibrate P --batch-curve``: the stored forward times the ratios measured now, all else unchanged."""
    import parastep.profiler.measure as prof

    pipe, st, base = _small_profile_without_split_costs()
    new = prof.add_batch_costs(pipe, base, st, say=lambda m: None)
    assert len(new.compute.batched_forward_s) == base.max_window and new.can_batch
    assert new.compute.batched_forward_s[0] == base.compute.forward_s[0]
    assert "add_batch_costs" in (new.provenance.compute.notes or new.provenance.compute.rule)
    strip = {"compute": base.compute, "provenance": base.provenance}
    assert new.model_copy(update=strip) == base
