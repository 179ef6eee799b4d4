"""The profiler (docs/design.md §2): measure one pipeline along its own reference trajectory.

``measure_profile(pipe, settings)`` returns a :class:`parastep.profiles.model.Profile`. For a
batch of samples (every prompt x every seed, one generator per sample) it runs these steps, each
in its own module:

1. **Reference run** (``trajectory.record_reference``, T forwards): the unmodified pipeline, every
   step's input latent, guided output, step arguments and scheduler state recorded.
2. **Deviation tables** (``deviation.deviation_tables``, at most ``2 J`` forwards per step): per
   predictor, start and offset, how far a parallel window's predicted outputs (and a reuse window's
   stand-ins) move the next latent off the reference.
3. **Propagation** (``propagation.propagation_gain``, about ``T^2 / (2 stride)`` forwards): how a
   deviation made at step i reaches the output, at the scale of the measured deviations.
   **Quality model** (``deviation.boundary_deviations`` then ``propagation.window_output_errors``):
   every candidate window's own deviation at its end, pushed to the output per sample.
4. **Similarity** (``trajectory.similarity``) of adjacent guided outputs along the reference.
5. **Compute** (``compute.measure_compute``): batch-1 forward, step, overhead and CFG half forward.
6. **Comm** (``comm._comm_part``): the window exchange and the CFG pair swap, measured or from a preset.

``retime`` re-measures only the costs (5, 6) of an existing profile; ``add_split_costs`` adds the
CFG split costs to a profile whose other numbers stay. Every forward the profiler makes is counted
(``ProfileRun.forwards``).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..executor.launch import cpu_threads
from ..profiles.model import PREDICTORS, DeviationStats, Measured, Profile, Propagation, Provenances
from .comm import PAIR_HOW, _comm_part, lockstep_entry, lockstep_words, measure_lockstep, measure_pair
from .compute import batched_forward_note, half_forward_note, measure_compute, raw_half_bytes_of
from .deviation import boundary_deviations, deviation_tables
from .machine import device_description, load_average, package_versions
from .propagation import carries_history, output_error_tables, propagation_gain, window_output_errors
from .settings import ProfilerSettings
from .trajectory import Trajectory, record_reference, rms_per_sample, similarity


@dataclass
class ProfileRun:
    """A measured profile plus what it cost and the raw data the plot and tests use."""

    profile: Profile
    forwards: dict[str, int]
    trajectory: Optional[Trajectory] = None
    delta: float = 0.0
    notes: list[str] = field(default_factory=list)


def _stats(table: dict) -> dict:
    return {p: DeviationStats(mean=table[p]["mean"], max=table[p]["max"]) for p in PREDICTORS}


def measure_profile(pipe, settings: ProfilerSettings, *, progress: Optional[Callable[[str], None]] = None) -> ProfileRun:
    """Measure every part of docs/design.md §2 for ``pipe`` (see the module docstring)."""
    with cpu_threads(pipe, settings.threads):
        return _measure_profile(pipe, settings, progress=progress)


def planned_forwards(*, num_steps: int, max_window: int, stride: int, rank: int, direct: bool, calibration_plans: int,
                     calibration_world_sizes: int) -> dict[str, tuple[int, int]]:
    """(expected, at most) forwards of each part of a profile, each forward one call on all samples:
    the reference T; the deviation tables at most 2 J per step; propagation sum_i (T - 1 - i) over
    every ``stride``-th step; the quality model rank (T-1)(T-2)/2 (about 2 J T^2 where the scheduler
    carries outputs across steps); the calibration T per plan run, the reference included (its
    sweeps stop early when they pick no new plan: at most ``SWEEP_ROUNDS`` x world sizes x
    (targets + 1) picks)."""
    from .calibrate import SWEEP_ROUNDS, SWEEP_TARGETS_DB, calibration_cost_forwards

    T, J = num_steps, max_window
    prop = sum(T - 1 - i for i in range(0, T - 1, stride))
    quality = 2 * J * T * T if direct else rank * (T - 1) * (T - 2) // 2
    out = {"reference": (T, T), "deviation": (2 * J * T, 2 * J * T), "propagation": (prop, prop), "quality": (quality, quality)}
    if calibration_plans:
        most = SWEEP_ROUNDS * calibration_world_sizes * (len(SWEEP_TARGETS_DB) + 1)
        out["calibration"] = (calibration_cost_forwards(num_steps=T, bootstrap_plans=calibration_plans, picks=most // 2),
                              calibration_cost_forwards(num_steps=T, bootstrap_plans=calibration_plans, picks=most))
    return out


def _measure_profile(pipe, settings: ProfilerSettings, *, progress: Optional[Callable[[str], None]] = None) -> ProfileRun:
    say = progress or (lambda msg: None)
    T, J = settings.num_steps, min(settings.max_window, settings.num_steps)
    from ..executor.evaluate import samples_of

    prompts, seeds = samples_of(settings.prompts, settings.seeds)
    kw = dict(settings.call_kwargs)
    pipe.set_progress_bar_config(disable=True)
    forwards: dict[str, int] = {}
    notes: list[str] = []
    date = _dt.date.today().isoformat()

    t0 = time.perf_counter()
    traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
    forwards["reference"] = traj.forwards
    t_ref = time.perf_counter() - t0
    say(f"reference: {len(prompts)} samples x {T} steps, {traj.forwards} forwards, {t_ref:.1f} s")
    from .calibrate import verification_world_sizes

    plan = planned_forwards(num_steps=T, max_window=J, stride=settings.propagation_stride, rank=settings.quality_rank,
                            direct=carries_history(traj), calibration_plans=settings.calibration_plans,
                            calibration_world_sizes=len(verification_world_sizes(settings.gpus)))
    per_s = t_ref / max(1, traj.forwards)
    expected, most = sum(e for e, _ in plan.values()), sum(m for _, m in plan.values())
    say(f"plan: {len(prompts)} samples, {T} steps, windows up to {J}; forwards (one call on all samples each): "
        + ", ".join(f"{k} {e}" + (f" (at most {m})" if m != e else "") for k, (e, m) in plan.items())
        + f"; about {expected} in all, so about {expected * per_s / 60:.1f} min (at most {most * per_s / 60:.1f}) at the "
        f"reference's {per_s * 1e3:.0f} ms per forward, plus the timing of compute and exchanges")

    predictions: dict = {}
    dev, reuse, n_dev = deviation_tables(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, max_window=J,
                                         call_kwargs=kw, progress=say, predictions=predictions)
    forwards["deviation"] = n_dev
    nonzero = [v for p in PREDICTORS for row in dev[p]["mean"] for v in row if v > 0]
    if nonzero:
        delta = statistics.median(nonzero)
    else:
        delta = 1e-3 * float(rms_per_sample(traj.x[T], traj.copies).mean())
    gain, n_prop = propagation_gain(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw,
                                    delta=delta, stride=settings.propagation_stride, progress=say)
    forwards["propagation"] = n_prop
    t1 = time.perf_counter()
    bdev = boundary_deviations(traj, type(pipe.scheduler), predictions, num_steps=T, max_window=J)
    del predictions
    direct = carries_history(traj)
    errs, n_q, captured = window_output_errors(pipe, traj, bdev, prompts=prompts, seeds=seeds, num_steps=T,
                                               call_kwargs=kw, rank=settings.quality_rank, gain=gain, direct=direct,
                                               progress=say)
    del bdev
    forwards["quality"] = n_q
    say(f"quality model: {len(errs)} windows x {len(prompts)} samples, {n_q} forwards, {time.perf_counter() - t1:.1f} s, "
        f"captured energy {captured:.4f}")
    output_errors = output_error_tables(errs, prompts=prompts, seeds=seeds, num_steps=T, max_window=J,
                                        rank=settings.quality_rank, captured=captured)

    sim = similarity(traj)

    compute, out_bytes, cdet = measure_compute(pipe, prompt=settings.prompts[0], seed=settings.seeds[0], num_steps=T,
                                               call_kwargs=kw, max_window=J, repeats=settings.timing_repeats,
                                               threads=settings.threads)
    say(f"compute: forward {compute.forward_s[0] * 1e3:.3f} ms, step {compute.step_s * 1e3:.3f} ms, "
        f"overhead {compute.step_overhead_s * 1e3:.3f} ms, output {out_bytes} bytes; {half_forward_note(cdet)}")

    device_str = device_description(pipe, settings.threads)
    measured = Measured(device=device_str, date=date, prompts=[str(p) for p in settings.prompts],
                        seeds=[int(s) for s in settings.seeds], packages=package_versions())
    comm, comm_prov = _comm_part(pipe, settings, out_bytes=out_bytes, traj=traj, measured=measured, say=say, notes=notes,
                                 pair=compute.half_forward_s is not None, denoiser_call=cdet["denoiser_call"],
                                 swap_bytes=raw_half_bytes_of(cdet, out_bytes))

    sched_name = type(pipe.scheduler).__name__
    prov = Provenances(
        deviation=measured.model_copy(update={"notes": f"RMS in latent units over {len(prompts)} samples; "
                                                       f"forwards beyond the reference: {n_dev}"}),
        propagation=measured.model_copy(update={"notes": f"random direction of RMS delta={delta:.4g} added to x_(i+1), "
                                                         f"stride {settings.propagation_stride}; {n_prop} forwards"}),
        similarity=measured,
        compute=measured.model_copy(update={"notes": f"batch 1, median of {settings.timing_repeats} runs; forward_s[k-1] = "
                                                     f"k consecutive forwards as the executor runs a rank's offsets; "
                                                     f"{half_forward_note(cdet)}; {batched_forward_note(cdet)}"}),
        comm=comm_prov,
        output_errors=measured.model_copy(update={"notes": (
            (f"each candidate window run alone from the exact trajectory and on to the output, end to end (the scheduler "
             f"carries model outputs across steps); output RMS per sample in latent units; {n_q} forwards")
            if direct else
            (f"each candidate window run alone from the exact trajectory, its end-boundary deviation pushed to the output "
             f"along the top {settings.quality_rank} directions per boundary and sample (finite differences through the real run; "
             f"captured energy {captured:.4f}, rest priced by propagation.gain); output RMS per sample in latent units; "
             f"{n_q} forwards = rank x (T-1)(T-2)/2 + placeholders"))}),
    )
    guidance = kw.get("guidance_scale")
    profile = Profile(
        name=settings.name or f"{settings.model}-{sched_name}-{T}steps",
        model=settings.model,
        resolution_px=settings.resolution_px,
        scheduler=sched_name,
        guidance_scale=float(guidance) if guidance is not None else None,
        num_steps=T,
        max_window=J,
        output_bytes=out_bytes,
        raw_half_bytes=raw_half_bytes_of(cdet, out_bytes),
        provenance=prov,
        deviation=_stats(dev),
        reuse_deviation=_stats(reuse),
        propagation=Propagation(gain=gain),
        similarity=sim,
        compute=compute,
        comm=comm,
        output_errors=output_errors,
    )
    total_extra = n_dev
    say(f"forwards: reference {traj.forwards}, deviation {n_dev} ({total_extra / T:.1f} per step; bound {1 + 2 * J}), "
        f"propagation {n_prop}")
    return ProfileRun(profile=profile, forwards=forwards, trajectory=traj, delta=delta, notes=notes)


def retime(pipe, profile: Profile, settings: ProfilerSettings, *, say) -> Profile:
    """``profile`` with compute and exchange costs measured again on this machine (quality tables,
    which do not depend on hardware, are kept)."""
    T = profile.num_steps
    with cpu_threads(pipe, settings.threads):
        traj = record_reference(pipe, prompts=list(settings.prompts[:1]), seeds=[0], num_steps=T, call_kwargs=settings.call_kwargs)
        compute, out_bytes, cdet = measure_compute(pipe, prompt=settings.prompts[0], seed=0, num_steps=T,
                                                   call_kwargs=settings.call_kwargs, max_window=profile.max_window,
                                                   repeats=settings.timing_repeats, threads=settings.threads)
    say(f"compute: forward {compute.forward_s[0] * 1e3:.3f} ms, step {compute.step_s * 1e3:.3f} ms, "
        f"overhead {compute.step_overhead_s * 1e3:.3f} ms, output {out_bytes} bytes; {half_forward_note(cdet)}")
    measured = Measured(device=device_description(pipe, settings.threads), date=_dt.date.today().isoformat(),
                        prompts=[str(p) for p in settings.prompts[:1]], seeds=[0], packages=package_versions())
    notes: list[str] = []
    comm, comm_prov = _comm_part(pipe, settings, out_bytes=out_bytes, traj=traj, measured=measured, say=say, notes=notes,
                                 pair=compute.half_forward_s is not None, denoiser_call=cdet["denoiser_call"],
                                 swap_bytes=raw_half_bytes_of(cdet, out_bytes))
    prov = profile.provenance.model_copy(update={"compute": measured.model_copy(update={"notes": (
        f"batch 1, median of {settings.timing_repeats} runs; forward_s[k-1] = k consecutive forwards as the executor runs "
        f"a rank's offsets; {half_forward_note(cdet)}; {batched_forward_note(cdet)} (re-timed with --recalibrate --retime)")}),
        "comm": comm_prov})
    return profile.model_copy(update={"compute": compute, "comm": comm, "output_bytes": out_bytes,
                                      "raw_half_bytes": raw_half_bytes_of(cdet, out_bytes), "provenance": prov})


def add_split_costs(pipe, profile: Profile, settings: ProfilerSettings, *, say, pair_runs: int = 1,
                    pair_max_bytes: int = 64 * 2 ** 20) -> Profile:
    """``profile`` with the CFG split costs added and every other number kept: ``half_forward_s`` =
    the stored ``forward_s[0]`` x the half/whole ratio measured now (two forwards timed interleaved
    keep their ratio on a loaded machine, where absolute times do not), and ``Comm.pair``: the
    bandwidth of ``measure_pair``'s fit on 2 local ranks (``pair_runs`` runs, the median one kept;
    refused fits counted), one swap priced at what ``measure_lockstep`` paid in lock step with the
    real half forward (the swap plus the wait for the slower half). Every run and the load average
    at each are stated in the provenance. ValueError when the pipeline runs no two-way guided batch."""
    T = profile.num_steps
    load_compute = load_average()
    with cpu_threads(pipe, settings.threads):
        traj = record_reference(pipe, prompts=list(settings.prompts[:1]), seeds=[0], num_steps=T, call_kwargs=settings.call_kwargs)
        compute, out_bytes, cdet = measure_compute(pipe, prompt=settings.prompts[0], seed=0, num_steps=T,
                                                   call_kwargs=settings.call_kwargs, max_window=1,
                                                   repeats=settings.timing_repeats, threads=settings.threads)
    half = cdet["half_forward"]
    if not isinstance(half, dict):
        raise ValueError(f"profile '{profile.name}': {half}; no CFG split to price")
    if out_bytes != profile.output_bytes:
        raise ValueError(f"profile '{profile.name}' has output_bytes {profile.output_bytes}, the pipeline now {out_bytes}")
    date = _dt.date.today().isoformat()
    say(f"half forward: {half_forward_note(cdet)}; whole forward now {compute.forward_s[0] * 1e3:.3f} ms vs stored "
        f"{profile.compute.forward_s[0] * 1e3:.3f} ms ({load_compute})")
    half_s = profile.compute.forward_s[0] * half["ratio"]
    raw_half = raw_half_bytes_of(cdet, out_bytes)
    swap_bytes = raw_half if raw_half is not None else out_bytes
    e0 = traj.e[0]
    cuda = str(getattr(pipe, "device", "cpu")).startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    runs, refused = [], 0
    for r in range(max(1, pair_runs)):
        load = load_average()
        try:
            entry, raw = measure_pair(output_shape=[1, *e0.shape[1:]], dtype=str(e0.dtype).replace("torch.", ""),
                                      output_bytes=out_bytes, repeats=settings.comm_repeats, device="cuda" if cuda else "cpu",
                                      max_bytes=pair_max_bytes)
        except ValueError as exc:                      # a refused fit is no number: count it, keep going
            refused += 1
            say(f"pair swap run {r + 1}: {str(exc).splitlines()[0][:160]} ({load})")
            continue
        one = entry.latency_s + swap_bytes / entry.bandwidth_bytes_per_s
        runs.append((one, entry, raw, load))
        say(f"pair swap fit {r + 1}: latency {entry.latency_s * 1e6:.1f} us, bandwidth {entry.bandwidth_bytes_per_s / 1e9:.3g} GB/s, "
            f"one swap {one * 1e6:.1f} us ({load}; raw {raw['times']})")
    if not runs:
        raise ValueError(f"pair swap: all {refused} fits refused (the swap did not grow with the bytes sent); re-run on a quieter machine")
    one, fit, raw, load = sorted(runs, key=lambda run: run[0])[(len(runs) - 1) // 2]
    load_lock = load_average()
    wait_s, stats = measure_lockstep(cdet["denoiser_call"], mode="split", world_size=2, shape=[1, *e0.shape[1:]],
                                     dtype=str(e0.dtype).replace("torch.", ""), device="cuda" if cuda else "cpu",
                                     threads=settings.threads)
    pair = lockstep_entry(fit, wait_s, nbytes=swap_bytes, what="pair swap")
    say(f"pair swap in lock step: {wait_s * 1e6:.0f} us per split step beyond the half forward ({load_lock})")
    how = PAIR_HOW.format(repeats=settings.comm_repeats, sizes=", ".join(str(n) for n in raw["sizes"]))
    half_words = (f"half_forward_s = forward_s[0] x {half['ratio']:.4f}, the half/whole ratio measured on {date} ({load_compute}; "
                  f"the whole forward took {compute.forward_s[0] * 1e3:.3f} ms then) by add_split_costs: "
                  f"{half_forward_note(cdet).replace('half_forward_s = median', 'the half is the median', 1)} "
                  f"(absolute: half {half['half_s'] * 1e3:.3f} ms, whole {half['whole_s'] * 1e3:.3f} ms)")
    every = ", ".join(f"{o * 1e6:.0f} us ({ld.split(' (1 min)')[0].replace('load average ', 'load ')})" for o, _, _, ld in runs)
    pair_words = (f"CFG pair swap measured on {date} over {backend} ({load}): {how}; the median of {len(runs)} "
                  f"fitted run(s) kept for the bandwidth (one barrier-separated swap: {every}"
                  + (f"; {refused} more run(s) refused by the fit" if refused else "")
                  + f"); {lockstep_words(wait_s, stats, backend=backend, mode='split')} ({load_lock})")
    prov = profile.provenance
    comp_prov = prov.compute.model_copy(update={"notes" if prov.compute.source == "measured" else "rule":
                                                _join(prov.compute.notes if prov.compute.source == "measured" else prov.compute.rule, half_words)})
    comm_prov = prov.comm.model_copy(update={"notes" if prov.comm.source == "measured" else "rule":
                                             _join(prov.comm.notes if prov.comm.source == "measured" else prov.comm.rule, pair_words)})
    return profile.model_copy(update={
        "raw_half_bytes": raw_half,
        "compute": profile.compute.model_copy(update={"half_forward_s": half_s}),
        "comm": profile.comm.model_copy(update={"pair": pair}),
        "provenance": prov.model_copy(update={"compute": comp_prov, "comm": comm_prov})})


def add_batch_costs(pipe, profile: Profile, settings: ProfilerSettings, *, say) -> Profile:
    """``profile`` with BatchStep's batch curve added and every other number kept:
    ``batched_forward_s[k-1]`` = the stored ``forward_s[0]`` x the ratio of one call on k offsets'
    inputs to one on a single offset's, measured now with every k interleaved (ratios hold on a loaded
    machine, absolute times do not), k = 1..``profile.max_window``."""
    T = profile.num_steps
    load = load_average()
    with cpu_threads(pipe, settings.threads):
        compute, out_bytes, cdet = measure_compute(pipe, prompt=settings.prompts[0], seed=0, num_steps=T,
                                                   call_kwargs=settings.call_kwargs, max_window=1,
                                                   repeats=settings.timing_repeats, threads=settings.threads,
                                                   batch_offsets=profile.max_window)
    batched = cdet["batched_forward"]
    if not isinstance(batched, dict):
        raise ValueError(f"profile '{profile.name}': {batched}; no batch curve measured")
    if out_bytes != profile.output_bytes:
        raise ValueError(f"profile '{profile.name}' has output_bytes {profile.output_bytes}, the pipeline now {out_bytes}")
    curve = [profile.compute.forward_s[0] * r for r in batched["ratio"]]
    date = _dt.date.today().isoformat()
    say(f"batch curve: one call on k offsets / one offset = {', '.join(f'{r:.3f}' for r in batched['ratio'])} "
        f"(k = 1..{len(curve)}; {load})")
    words = (f"{batched_forward_note(cdet)}; measured on {date} ({load}; the single call took "
             f"{batched['batched_s'][0] * 1e3:.3f} ms then) by add_batch_costs (profile --recalibrate --batch-curve)")
    prov = profile.provenance
    field = "notes" if prov.compute.source == "measured" else "rule"
    comp_prov = prov.compute.model_copy(update={field: _join(getattr(prov.compute, field), words)})
    return profile.model_copy(update={"compute": profile.compute.model_copy(update={"batched_forward_s": curve}),
                                      "provenance": prov.model_copy(update={"compute": comp_prov})})


def _join(text: str, more: str) -> str:
    return f"{text}; {more}" if text else more
