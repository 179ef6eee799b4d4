"""The profiler (DESIGN §2): measure one pipeline along its own reference trajectory.

``measure_profile(pipe, settings)`` returns a :class:`parastep.profiles.model.Profile`. What it
does, for a batch of samples (every prompt x every seed, one generator per sample):

1. **Reference run** (T forwards): the pipeline's own loop, unmodified, with ``scheduler.step``
   wrapped on the instance to record, before each step i, ``x_i``, the guided output ``e_i`` the
   pipeline passes to ``step``, the step's other arguments, and a snapshot (deep copy of
   ``scheduler.__dict__``) of the scheduler state. ``x_T`` is the output latent.
   A pipeline may step k identical copies of the samples (DiT with guidance > 1 steps ``[x; x]``):
   ``latent_copies`` finds k (and refuses copies that differ); every per-sample number below is
   taken on the first copy (``first_copy``) and every injected perturbation reaches all copies
   alike (``tiled``), so each sample counts once.
2. **Deviation tables**, per predictor p and start s (``last``: s >= 1, ``linear``: s >= 2):
   the pipeline runs the schedule ``exact 0..s-1 | parallel(s, w = min(J, T - s)) | ...`` through
   the executor's own hooks (``parastep.executor.hooks``) with the prefix *replayed* from the
   recorded outputs (``override_outputs``: no forwards, except the single placeholder forward the
   hooks make at step 0), offset 0 placed on a "remote" rank whose output is injected as the
   recorded ``e_s`` (no forward), and the run is stopped right after the window. So a start costs
   ``w`` forwards per predictor (1 placeholder + w - 1 offsets): at most ``2 J`` per step for both
   predictors, on top of the reference run. The observer yields ``xhat_{s+j}`` and
   ``ehat_{s+j}``; then, on scratch copies of the *reference* scheduler state at step s+j::

       deviation[p][s][j] = RMS( step_{s+j}(x_{s+j}, ehat_{s+j}) - step_{s+j}(x_{s+j}, e_{s+j}) )

   per sample (latent units), stored as mean and max over samples. Offset 0 is exactly 0.
   ``reuse_deviation[p][s][j]`` is the same with the predictor's stand-in in place of ``ehat``
   (no forwards at all).
3. **Propagation** ``gain[i]`` (how a deviation made at step i reaches the output): replay the
   recorded outputs up to step i, add to ``x_{i+1}`` a random direction of RMS ``delta`` (the
   median of the measured nonzero mean deviations, so gains are taken at the scale that matters),
   run the remaining steps exactly, ``gain[i] = RMS(x_T' - x_T) / delta`` (mean over samples).
   Cost: ``T - 1 - i`` forwards for step i plus one placeholder forward, i.e. about ``T^2 / 2 + T``
   for the whole curve (``propagation_stride`` k measures every k-th step and interpolates
   ``log gain`` linearly: about ``T^2 / (2k)``). ``gain[T-1] = 1`` by definition.
4. **Similarity** of adjacent guided outputs along the reference (cosine, relative L1).
5. **Compute**: batch-1 runs of the plain pipeline (the shape ``parastep exec`` runs), the
   denoiser's ``forward`` and ``scheduler.step`` timed on the instance. ``forward_s[k-1]`` is the
   median wall time of k *consecutive* forward calls (the executor computes a rank's offsets one
   after another), ``step_s`` the median step, ``step_overhead_s`` the median of the remainder of
   a step's wall time (pipeline bookkeeping: CFG concat/combine, callbacks, progress bar).
   ``half_forward_s`` (CFG split, one half of the guided batch): where the pipeline runs a two-way
   guided batch, the denoiser's real call arguments at the middle step are cut to rows [0, B) of
   every batched tensor and timed the same number of times, interleaved with the whole call (the
   half/whole ratio goes to the provenance notes); absent otherwise, and the notes say why.
6. **Comm**: the executor's own ``DistExchange`` over torch.distributed (gloo on CPU, nccl on
   CUDA) in ``g`` spawned processes, ``g = 2..G``, timing the window exchange of ``n`` outputs
   for four sizes and fitting ``latency + n * output_bytes / bandwidth`` (Theil-Sen, robust to a slow spell).
   Where this machine has fewer devices than G (CUDA devices, or CPU cores) and an ``interconnect``
   preset is given, ranks beyond them come from the preset and the part's provenance is ``prior``;
   on CPU without a preset the g processes oversubscribe the cores (said in the provenance notes);
   on CUDA without a preset it is an error. With a two-way guided batch, also the CFG pair swap
   (``Comm.pair``): 2 spawned processes swap n raw halves with the executor's ``DistExchange.swap``,
   n = 1, 4, 16, ... up to 64 MiB, fitted the same way; without 2 local devices, the preset's (prior).

Every forward the profiler makes is counted (``ProfileRun.forwards``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import functools
import inspect
import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from ..errors import UserError
from ..executor.launch import cpu_threads
from ..executor.schedulers import scheduler_state
from ..profiles.model import (
    CalibrationSample, Comm, CommEntry, Compute, DeviationStats, Measured, OutputErrors, Prior, Profile, Propagation,
    Provenances, Similarity,
)

PREDICTORS = ("last", "linear")


# ---- settings and results -------------------------------------------------------------------

@dataclass(frozen=True)
class ProfilerSettings:
    """What to measure. ``call_kwargs`` are passed to every pipeline call (guidance_scale, height, ...)."""

    model: str
    num_steps: int
    max_window: int
    gpus: int
    prompts: tuple[Any, ...]
    seeds: tuple[int, ...]
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    interconnect: Optional[str] = None
    propagation_stride: int = 1
    quality_rank: int = 4
    timing_repeats: int = 3
    threads: int = 1
    measure_comm: bool = True
    comm_repeats: int = 20
    resolution_px: Optional[tuple[int, int]] = None


@dataclass
class Trajectory:
    """The recorded reference run of one batch: ``x[i]`` enters step i (``x[T]`` is the output)."""

    x: list[Any]
    e: list[Any]
    states: list[dict]
    bound: list[inspect.BoundArguments]
    step_fn: Callable            # the scheduler class's unbound ``step``
    forwards: int
    copies: int = 1              # the latent batch is ``copies`` identical copies of the samples (``latent_copies``)


@dataclass
class ProfileRun:
    """A measured profile plus what it cost and the raw data the plot and tests use."""

    profile: Profile
    forwards: dict[str, int]
    trajectory: Optional[Trajectory] = None
    delta: float = 0.0
    notes: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Raised from inside the pipeline's loop to end a run early (never escapes the profiler)."""


# ---- small helpers --------------------------------------------------------------------------

def _torch():
    import torch

    return torch


def rms_per_sample(diff, copies: int = 1) -> "Any":
    """RMS over every dimension but the first (the batch): one value per sample (``first_copy``
    folds a batch of ``copies`` identical copies of the samples first)."""
    d = first_copy(diff.detach(), copies)
    return d.reshape(d.shape[0], -1).double().pow(2).mean(dim=1).sqrt()


def first_copy(t, copies: int):
    """Rows ``[0, N)`` of a latent batch that holds ``copies`` copies of N samples, viewed as
    ``(copies, N, ...)``. The copies are identical (``latent_copies`` refuses otherwise), so the
    first one is every reduction over them, and it is the one the pipeline decodes (DiT's
    ``latents, _ = latent_model_input.chunk(2)``)."""
    return t if copies == 1 else t.reshape(copies, -1, *t.shape[1:])[0]


def tiled(t, copies: int):
    """``t`` (N samples) repeated ``copies`` times along the batch: a perturbation every copy of a
    sample receives alike, so the copies stay identical (a pipeline may step every copy, as DiT's
    scheduler does, or re-sync them from the first, as DiT's loop does: both see the same change)."""
    return t if copies == 1 else t.repeat(copies, *([1] * (t.dim() - 1)))


def latent_copies(tensors: Sequence[Any], *, samples: int) -> int:
    """k where the scheduler steps a latent batch of k x ``samples`` rows holding k identical copies
    of the samples (DiT with guidance > 1 steps ``[x; x]``): 1 for one latent per sample.
    ValueError, one line, when the rows are not a whole number of copies or the copies differ."""
    rows = int(tensors[0].shape[0])
    if rows == samples:
        return 1
    if samples <= 0 or rows % samples:
        raise ValueError(f"the scheduler steps a latent batch of {rows} rows for {samples} samples, not a whole number of "
                         "copies of them: parastep cannot tell which rows are which sample; profile one sample per latent row")
    k = rows // samples
    worst = 0.0
    for t in tensors:
        v = t.detach().reshape(k, samples, -1).double()
        scale = float(v[0].abs().max())
        worst = max(worst, float((v - v[:1]).abs().max()) / max(scale, 1e-30))
    if worst > 1e-6:
        raise ValueError(f"the scheduler steps {k} copies of each of the {samples} samples and the copies differ (max relative "
                         f"difference {worst:.2g}): parastep measures one latent per sample; profile with a deterministic "
                         "scheduler (e.g. DDIMScheduler), whose copies stay identical")
    return k


def _first(out):
    return out[0]


def sample_conditions(pipe, prompts) -> tuple:
    """A profile's sample prompts as ``pipe`` is called with them: an unconditional pipeline's
    samples record the text 'None' and are called with no condition; others as recorded (text
    prompts, or class labels by index or name)."""
    from ..executor.evaluate import takes_class_labels, takes_prompt

    if not takes_prompt(pipe) and not takes_class_labels(pipe):
        return tuple(None for _ in prompts)
    return tuple(prompts)


def calibration_samples(pipe, profile) -> tuple[list, list[int]]:
    """(conditions, seeds) of a profile's calibration samples, as ``pipe`` is called with them (one
    definition for calibration, corrections and the window audit)."""
    samples = profile.output_errors.samples
    return list(sample_conditions(pipe, [s.prompt for s in samples])), [s.seed for s in samples]


def _denoiser(pipe):
    from ..executor.hooks import denoiser_of   # the executor's lookup (imports torch: lazily)

    return denoiser_of(pipe)[1]


def cfg_flag(pipe) -> Optional[bool]:
    from ..executor.hooks import cfg_flag as flag   # the executor's own test of a two-way guided batch (lazily: torch)

    return flag(pipe)


@contextlib.contextmanager
def _instance_override(obj, name: str, impl_factory: Callable[[Callable], Callable]) -> Iterator[None]:
    """Temporarily replace ``obj.name`` (a method) by ``impl_factory(orig)`` on the instance."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    orig = getattr(obj, name)
    impl = impl_factory(orig)
    obj.__dict__[name] = functools.wraps(orig)(impl)
    try:
        yield
    finally:
        if had:
            obj.__dict__[name] = old
        else:
            obj.__dict__.pop(name, None)


@contextlib.contextmanager
def count_forwards(module) -> Iterator[list[int]]:
    """Counts calls of ``module`` (a forward pre-hook); use where no placeholder returns happen."""
    box = [0]

    def hook(mod, args, kwargs=None):
        box[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def _scratch_step(traj: Trajectory, sched_cls: type, i: int, *, model_output, sample):
    """``step_i(sample, model_output)`` on a fresh copy of the reference scheduler state at step i."""
    scratch = object.__new__(sched_cls)
    scratch.__dict__.update(copy.deepcopy(traj.states[i]))
    b = inspect.BoundArguments(traj.bound[i].signature, dict(traj.bound[i].arguments))
    b.arguments["model_output"] = model_output
    b.arguments["sample"] = sample
    return _first(traj.step_fn(scratch, *b.args, **b.kwargs))


# ---- pipeline calls -------------------------------------------------------------------------

def _call(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int, call_kwargs: Mapping[str, Any],
          output_type: str = "latent"):
    """The executor's one pipeline call for all samples, latents out unless ``call_kwargs`` says otherwise."""
    from ..executor.evaluate import call_pipeline

    kwargs = dict(call_kwargs)
    kwargs.setdefault("output_type", output_type)
    return call_pipeline(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=kwargs)


# ---- 1. reference -----------------------------------------------------------------------------

def record_reference(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int,
                     call_kwargs: Mapping[str, Any]) -> Trajectory:
    """Run the unmodified pipeline once, recording x_i, e_i, step arguments and scheduler state."""
    torch = _torch()
    sched = pipe.scheduler
    xs: list = []
    es: list = []
    states: list[dict] = []
    bounds: list[inspect.BoundArguments] = []
    last_out: list = []

    def factory(orig):
        sig = inspect.signature(orig)

        def impl(*args, **kwargs):
            b = sig.bind(*args, **kwargs)
            states.append(scheduler_state(sched))
            bounds.append(inspect.BoundArguments(sig, dict(b.arguments)))
            es.append(b.arguments["model_output"].detach().clone())
            xs.append(b.arguments["sample"].detach().clone())
            out = orig(*args, **kwargs)
            last_out[:] = [_first(out).detach().clone()]
            return out

        return impl

    with torch.no_grad(), _instance_override(sched, "step", factory), count_forwards(_denoiser(pipe)) as n:
        _call(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=call_kwargs)
    if len(es) != num_steps:
        raise UserError(f"the pipeline made {len(es)} scheduler steps for num_inference_steps={num_steps}; "
                        "profile a first-order scheduler")
    step_fn = type(sched).step
    copies = latent_copies(xs + last_out + es, samples=len(prompts))
    return Trajectory(x=xs + last_out, e=es, states=states, bound=bounds, step_fn=step_fn, forwards=n[0], copies=copies)


# ---- 2. deviation tables ----------------------------------------------------------------------

class _InjectExchange:
    """A pretend world of two ranks: this process is rank 0 and computes every offset placed on 0;
    offset 0 sits on 'rank 1', whose output is the recorded e_s (no forward needed)."""

    rank = 0
    world_size = 2

    def __init__(self, e_start) -> None:
        self.e_start = e_start

    def owns(self, placement_rank: int) -> bool:
        return placement_rank == 0

    def exchange(self, owned, placement, *, like):
        out = [self.e_start.to(device=like.device, dtype=like.dtype)]
        out += [owned[j] for j in range(1, len(placement))]
        return out, 0


def stand_in(traj: Trajectory, *, predictor: str, start: int, k: int):
    """The predictor's stand-in for the k-th reused step of a window starting at ``start``."""
    e1 = traj.e[start - 1]
    if predictor == "last":
        return e1
    e2 = traj.e[start - 2]
    return e1 + (k + 1) * (e1 - e2)


def window_predictions(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, start: int,
                       size: int, predictor: str) -> tuple[list, list, int]:
    """(xhat_{s+j}, ehat_{s+j}) for j = 0..size-1 of a parallel window, from the executor's hooks.

    The prefix is replayed from ``traj`` (no forwards but the hooks' step-0 placeholder); the run
    stops after the window. Returns the inputs, the outputs and the forwards made.
    """
    torch = _torch()
    from ..executor.hooks import ParaStepConfig, StepRecord, apply_parastep, remove_parastep
    from ..schedules.model import ExactWindow, ParallelWindow

    T = num_steps
    windows = [ExactWindow(start=i) for i in range(start)]
    windows.append(ParallelWindow(start=start, placement=[1] + [0] * (size - 1), predictor=predictor))
    windows += [ExactWindow(start=i) for i in range(start + size, T)]
    got: dict[int, tuple] = {}
    stop_at = start + size - 1

    def observer(rec: StepRecord) -> None:
        if start <= rec.step <= stop_at:
            got[rec.step] = (rec.denoiser_input.detach().clone(), rec.guided_output.detach().clone(),
                             rec.latents_in.detach().clone())
        if rec.step == stop_at:
            raise _Stop()

    cfg = ParaStepConfig(windows=windows, num_steps=T, exchange=_InjectExchange(traj.e[start]), observer=observer,
                         override_outputs={i: traj.e[i] for i in range(start)})
    handle = apply_parastep(pipe, cfg)
    try:
        with torch.no_grad():
            _call(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs)
    except _Stop:
        pass
    finally:
        forwards = handle.forwards
        remove_parastep(pipe)
    if len(got) != size:
        raise RuntimeError(f"profiler: window at step {start} produced {len(got)} of {size} records")
    x_start = got[start][2]
    if not torch.allclose(x_start, traj.x[start], rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"profiler: replaying the recorded prefix did not reproduce x_{start}; "
                           "is the pipeline deterministic (seeded generator, first-order deterministic scheduler)?")
    return [got[start + j][0] for j in range(size)], [got[start + j][1] for j in range(size)], forwards


def deviation_tables(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, max_window: int, call_kwargs,
                     progress: Optional[Callable[[str], None]] = None,
                     predictions: Optional[dict] = None) -> tuple[dict, dict, int]:
    """``(deviation, reuse_deviation, forwards)``; tables are ``{pred: {"mean": rows, "max": rows}}``.

    ``predictions``, if given, receives ``{(predictor, s): [ehat_s, ..., ehat_{s+size-1}]}`` (ehat_s =
    e_s: offset 0 is exact), the outputs the quality model chains through (``window_output_errors``)."""
    torch = _torch()
    T, J = num_steps, max_window
    sched_cls = type(pipe.scheduler)
    ref_next = []
    with torch.no_grad():
        for i in range(T):
            ref_next.append(_scratch_step(traj, sched_cls, i, model_output=traj.e[i], sample=traj.x[i]))
    dev: dict = {p: {"mean": [], "max": []} for p in PREDICTORS}
    reuse: dict = {p: {"mean": [], "max": []} for p in PREDICTORS}
    forwards = 0
    t0 = time.perf_counter()
    for s in range(T):
        size = min(J, T - s)
        for p in PREDICTORS:
            first_valid = 1 if p == "last" else 2
            if s < first_valid:
                for tab in (dev, reuse):
                    tab[p]["mean"].append([])
                    tab[p]["max"].append([])
                continue
            # reuse window: stand-ins, no forwards
            r_mean, r_max = [], []
            with torch.no_grad():
                for j in range(size):
                    a = stand_in(traj, predictor=p, start=s, k=j)
                    d = rms_per_sample(_scratch_step(traj, sched_cls, s + j, model_output=a, sample=traj.x[s + j])
                                       - ref_next[s + j], traj.copies)
                    r_mean.append(float(d.mean()))
                    r_max.append(float(d.max()))
            reuse[p]["mean"].append(r_mean)
            reuse[p]["max"].append(r_max)
            # parallel window: offset 0 is exact, offsets j >= 1 need ehat_{s+j}
            d_mean, d_max = [0.0], [0.0]
            if size >= 2:
                _, ehat, n = window_predictions(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T,
                                                call_kwargs=call_kwargs, start=s, size=size, predictor=p)
                forwards += n
                if predictions is not None:
                    predictions[(p, s)] = [traj.e[s]] + list(ehat[1:])
                with torch.no_grad():
                    for j in range(1, size):
                        d = rms_per_sample(_scratch_step(traj, sched_cls, s + j, model_output=ehat[j], sample=traj.x[s + j])
                                           - ref_next[s + j], traj.copies)
                        d_mean.append(float(d.mean()))
                        d_max.append(float(d.max()))
            dev[p]["mean"].append(d_mean)
            dev[p]["max"].append(d_max)
        if progress is not None and (s % 10 == 9 or s == T - 1):
            progress(f"deviation: start {s + 1}/{T}, {forwards} forwards, {time.perf_counter() - t0:.1f} s")
    return dev, reuse, forwards


# ---- 3. propagation ---------------------------------------------------------------------------

def perturbed_output(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, step: int,
                     direction, outputs: Optional[Mapping[int, Any]] = None) -> tuple[Any, int]:
    """x_T when ``direction`` (or None) is added to x_{step+1}; the prefix 0..step is replayed (no
    forwards but the hooks' step-0 placeholder) from the recorded outputs, or from ``outputs[i]``
    where given (a window's own outputs: the real scheduler then carries the window's history, as
    in a run). Returns (x_T', forwards)."""
    torch = _torch()
    from ..executor.hooks import ParaStepConfig, StepRecord, apply_parastep, remove_parastep
    from ..schedules.model import ExactWindow

    T = num_steps
    calls = [0]
    final: list = []

    def factory(orig):
        def impl(*args, **kwargs):
            out = orig(*args, **kwargs)
            i = calls[0]
            calls[0] += 1
            if i == step and direction is not None:
                x = _first(out) + direction.to(device=_first(out).device, dtype=_first(out).dtype)
                if isinstance(out, tuple):
                    return (x, *out[1:])
                out.prev_sample = x
            return out

        return impl

    def observer(rec: StepRecord) -> None:
        if rec.step == T - 1:
            final[:] = [rec.latents_out.detach().clone()]

    cfg = ParaStepConfig(windows=[ExactWindow(start=i) for i in range(T)], num_steps=T, observer=observer,
                         override_outputs={i: (outputs or {}).get(i, traj.e[i]) for i in range(step + 1)})
    sched = pipe.scheduler
    with _instance_override(sched, "step", factory):
        handle = apply_parastep(pipe, cfg)
        try:
            with torch.no_grad():
                _call(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs)
        finally:
            forwards = handle.forwards
            remove_parastep(pipe)
    return final[0], forwards


def propagation_gain(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, delta: float,
                     stride: int = 1, seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> tuple[list[float], int]:
    """``gain[i]`` for i = 0..T-1 (see module docstring) and the forwards it cost."""
    torch = _torch()
    T = num_steps
    measured: dict[int, float] = {T - 1: 1.0}
    points = sorted(set(range(0, T - 1, max(1, stride))) | ({T - 2} if T >= 2 else set()))
    forwards = 0
    t0 = time.perf_counter()
    for n_done, i in enumerate(points):
        x_next = first_copy(traj.x[i + 1], traj.copies)
        g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + i)
        d = torch.randn(x_next.shape, generator=g, dtype=torch.float64)
        d = d / rms_per_sample(d).view(-1, *([1] * (d.dim() - 1)))      # unit RMS per sample
        direction = (d * delta).to(x_next.dtype)
        applied = rms_per_sample(direction.double())
        out, n = perturbed_output(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs,
                                  step=i, direction=tiled(direction, traj.copies))
        forwards += n
        measured[i] = float((rms_per_sample(out - traj.x[T], traj.copies) / applied).mean())
        if progress is not None and (n_done % 10 == 9 or n_done == len(points) - 1):
            progress(f"propagation: {n_done + 1}/{len(points)} injection steps, {forwards} forwards, {time.perf_counter() - t0:.1f} s")
    known = sorted(measured)
    gain = []
    for i in range(T):
        if i in measured:
            gain.append(measured[i])
            continue
        lo = max(k for k in known if k < i)
        hi = min(k for k in known if k > i)
        a, b = math.log(max(measured[lo], 1e-30)), math.log(max(measured[hi], 1e-30))
        gain.append(math.exp(a + (b - a) * (i - lo) / (hi - lo)))
    return gain, forwards


# ---- 3b. quality model: each window's own deviation, propagated to the output ---------------------

def _chain(traj: Trajectory, sched_cls: type, *, start: int, outputs: Sequence[Any]) -> list:
    """``x'_{start+j+1}`` for j = 0..len(outputs)-1: the scheduler stepped from the exact ``x_start``
    with ``outputs[j]`` applied at step start+j, on ONE scratch copy of the reference state at
    ``start`` (so a multistep scheduler's history holds the window's own outputs, as in a run)."""
    scratch = object.__new__(sched_cls)
    scratch.__dict__.update(copy.deepcopy(traj.states[start]))
    x = traj.x[start]
    out = []
    for j, e in enumerate(outputs):
        b = inspect.BoundArguments(traj.bound[start + j].signature, dict(traj.bound[start + j].arguments))
        b.arguments["model_output"] = e
        b.arguments["sample"] = x
        x = _first(traj.step_fn(scratch, *b.args, **b.kwargs))
        out.append(x)
    return out


def carries_history(traj: Trajectory) -> bool:
    """Does the scheduler keep model outputs across steps (multistep solvers: a list of tensors in
    its state, e.g. DPM-Solver++'s ``model_outputs``, PNDM's ``ets``)?"""
    torch = _torch()
    state = traj.states[-1]
    return any(isinstance(v, (list, tuple)) and any(torch.is_tensor(t) for t in v) for v in state.values())


def boundary_deviations(traj: Trajectory, sched_cls: type, predictions: Mapping, *, num_steps: int,
                        max_window: int) -> dict[int, list[tuple[tuple, Any]]]:
    """``{b: [((kind, predictor, s, w), x'_b - x_b, outputs), ...]}``: for every candidate window
    (s, w) with b = s + w, the deviation it leaves at its end boundary when it starts from the exact
    ``x_s``, and the ``w`` outputs it applied
    (kind ``parallel``: the offsets' predictions ``ehat``; ``reuse``: the predictor's stand-ins).
    No forwards: the predictions were made by ``deviation_tables``."""
    torch = _torch()
    T, J = num_steps, max_window
    out: dict[int, list] = {}
    with torch.no_grad():
        for p in PREDICTORS:
            for s in range(1 if p == "last" else 2, T):
                size = min(J, T - s)
                applied_outputs = {"reuse": [stand_in(traj, predictor=p, start=s, k=j) for j in range(size)]}
                if (p, s) in predictions:
                    applied_outputs["parallel"] = list(predictions[(p, s)])
                chains = {kind: _chain(traj, sched_cls, start=s, outputs=outs) for kind, outs in applied_outputs.items()}
                for kind, xs in chains.items():
                    applied = applied_outputs[kind]
                    for j, x in enumerate(xs):
                        if kind == "parallel" and j == 0:
                            continue                      # a parallel window has w >= 2
                        out.setdefault(s + j + 1, []).append(((kind, p, s, j + 1), x - traj.x[s + j + 1], applied[: j + 1]))
    return out


def window_output_errors(pipe, traj: Trajectory, deviations: Mapping[int, list], *, prompts, seeds, num_steps: int,
                         call_kwargs, rank: int, gain: Sequence[float], direct: bool = False,
                         progress: Optional[Callable[[str], None]] = None) -> tuple[dict, int, float]:
    """Per sample, the output RMS (latent units) of every candidate window run alone (every other
    step exact): ``errors[(kind, predictor, s, w)] = [per sample]``; plus forwards and the least
    captured energy fraction.

    The window's own steps are exact (``boundary_deviations``); what follows it is linearised: the
    rest of the run maps a deviation D at boundary b to about ``J_b D`` at the output. All windows
    ending at b share ``J_b``, and their D's (per sample) lie close to a few directions: the top
    ``rank`` right singular vectors V of the stacked D's. Each direction is pushed through the
    rest of the real run once, at the size of the deviations themselves (a finite difference,
    ``perturbed_output``), so ``J_b D ~ (D V^T) (J_b V)``. Cost: ``rank`` runs of ``T - b`` steps
    per boundary, ``rank (T-1)(T-2)/2`` forwards in all, independent of the window count.
    The part of D outside the top directions (residual R) is priced with the random-direction gain
    ``gain[b-1]`` and added in quadrature: ``|O|^2 = |(D V^T)(J_b V)|^2 + (gain[b-1] |R|)^2``, so no
    window looks cheaper than its deviation warrants. The captured share (energy-weighted over all
    windows and samples) is returned and recorded in the profile.

    ``direct=True`` (schedulers that carry model outputs across steps, ``carries_history``) runs every
    window end to end instead, the window's outputs replayed through the real scheduler: exact, and
    ``(T - b)`` forwards per window (about ``4 J T^2 / 2`` in all).
    """
    torch = _torch()
    T = num_steps
    x_T = traj.x[T]
    errors: dict[tuple, list[float]] = {}
    forwards = 0
    kept_total, norm_total = 0.0, 0.0
    t0 = time.perf_counter()
    for n_done, b in enumerate(sorted(deviations)):
        keys = [k for k, _, _ in deviations[b]]
        M = torch.stack([first_copy(d, traj.copies).reshape(-1, d[0].numel()).double() for _, d, _ in deviations[b]],
                        dim=1)                                                      # N x m x dim
        N, m, dim = M.shape
        if direct and b < T:
            # the scheduler carries model outputs across steps: the window's own history changes
            # what follows it, which no perturbation of x_b alone shows. Run each window end to end.
            rms_out = torch.zeros(N, m, dtype=torch.float64)
            for i, ((_kind, _p, s, _w), _d, applied) in enumerate(deviations[b]):
                out, n = perturbed_output(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs,
                                          step=b - 1, direction=None, outputs={s + j: e for j, e in enumerate(applied)})
                forwards += n
                rms_out[:, i] = rms_per_sample(out - x_T, traj.copies)
            kept_total += float(M.pow(2).sum())
            norm_total += float(M.pow(2).sum())
        elif b == T:
            rms_out = M.pow(2).mean(-1).sqrt()             # the last step's deviation is the output's
        else:
            _, S, Vh = torch.linalg.svd(M, full_matrices=False)
            r = min(rank, Vh.shape[1])
            V = Vh[:, :r]                                   # N x r x dim, orthonormal rows
            coeff = M @ V.transpose(1, 2)                   # N x m x r
            norms = M.pow(2).sum(-1)
            kept = coeff.pow(2).sum(-1)
            kept_total += float(kept.sum())
            norm_total += float(norms.sum())
            residual_ms = (norms - kept).clamp_min(0.0) / dim     # mean square of the unpropagated part
            # step size: the median RMS of this sample's nonzero deviations at b (the scale that matters)
            rms = (norms / dim).sqrt()
            eps = torch.stack([row[row > 0].median() if bool((row > 0).any()) else torch.tensor(0.0, dtype=row.dtype)
                               for row in rms])                                      # N
            JV = torch.zeros(N, r, x_T[0].numel(), dtype=torch.float64)
            for k in range(r):
                if not bool((eps > 0).any()):
                    break
                scale = (eps * math.sqrt(dim)).view(N, 1)    # unit-L2 direction -> RMS eps
                direction = (V[:, k] * scale).reshape(N, *traj.x[b].shape[1:]).to(traj.x[b].dtype)
                out, n = perturbed_output(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T,
                                          call_kwargs=call_kwargs, step=b - 1, direction=tiled(direction, traj.copies))
                forwards += n
                diff = first_copy(out - x_T, traj.copies).reshape(N, -1).double()
                JV[:, k] = torch.where(scale > 0, diff / scale.clamp_min(1e-300), torch.zeros_like(diff))
            O = coeff @ JV                                  # N x m x dim_out
            rms_out = (O.pow(2).mean(-1) + (gain[b - 1] ** 2) * residual_ms).sqrt()      # N x m
        for i, key in enumerate(keys):
            errors[key] = [float(v) for v in rms_out[:, i]]
        if progress is not None and (n_done % 10 == 9 or n_done == len(deviations) - 1):
            progress(f"quality model: boundary {n_done + 1}/{len(deviations)}, {forwards} forwards, "
                     f"{time.perf_counter() - t0:.1f} s")
    return errors, forwards, (kept_total / norm_total if norm_total > 0 else 1.0)


# ---- 4. similarity ----------------------------------------------------------------------------

def similarity(traj: Trajectory) -> Similarity:
    cos, rel = [], []
    for a, b in zip(traj.e[:-1], traj.e[1:]):
        a, b = first_copy(a, traj.copies), first_copy(b, traj.copies)
        fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
        c = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-30)
        r = (fb - fa).abs().sum(1) / fa.abs().sum(1).clamp_min(1e-30)
        cos.append(float(c.mean()))
        rel.append(float(r.mean()))
    return Similarity(cosine=cos, rel_l1=rel)


# ---- 5. compute -------------------------------------------------------------------------------

def _map_tensors(value, fn):
    """``value`` with ``fn`` applied to every tensor inside it (dicts, lists and tuples are walked)."""
    torch = _torch()
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def half_batch(args: tuple, kwargs: Mapping[str, Any], *, full: int) -> tuple[tuple, dict]:
    """The denoiser's call arguments for one CFG half: every tensor whose first dimension is the
    guided batch ``full`` (= 2B: latents, timestep per sample, encoder states, added conditions,
    class labels...) sliced to rows [0, B) (the unconditional half); the rest (a scalar timestep,
    flags) as is."""
    if full < 2 or full % 2:
        raise ValueError(f"a two-way guided batch has an even size >= 2, got {full}")
    b = full // 2

    def cut(t):
        return t[:b] if t.dim() >= 1 and t.shape[0] == full else t

    return tuple(_map_tensors(a, cut) for a in args), {k: _map_tensors(v, cut) for k, v in kwargs.items()}


def _batch_of(args: tuple, kwargs: Mapping[str, Any]) -> Optional[int]:
    """The batch of the denoiser's sample: its first positional tensor, else a ``sample`` /
    ``hidden_states`` keyword."""
    torch = _torch()
    for v in (*args[:1], kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return int(v.shape[0])
    return None


def _time_half_forward(forward, captured: dict, *, count: int, sync) -> dict:
    """Median wall time of ``count`` forwards on one CFG half of the captured call, interleaved
    with as many on the whole captured call (their ratio is then measured under one load), and the
    bytes of the half's raw output (``raw_half_bytes``: what a split pair swaps; twice the guided
    output's for a model that also predicts a learned variance)."""
    args, kwargs = captured["args"], captured["kwargs"]
    hargs, hkwargs = half_batch(args, kwargs, full=captured["batch"])
    half, whole = [], []
    raw_half_bytes = None
    for r in range(count + 2):                        # two warm-up rounds: a new batch shape may build kernels
        for fn_args, fn_kwargs, box in ((hargs, hkwargs, half), (args, kwargs, whole)):
            sync()
            t0 = time.perf_counter()
            out = forward(*fn_args, **fn_kwargs)
            sync()
            if r >= 2:
                box.append(time.perf_counter() - t0)
            if box is half and raw_half_bytes is None:
                raw = out if isinstance(out, _torch().Tensor) else _first(out)    # a tensor, a tuple or a BaseOutput
                raw_half_bytes = int(raw.numel() * raw.element_size())
    h, w = statistics.median(half), statistics.median(whole)
    return {"half_s": h, "whole_s": w, "ratio": h / w if w > 0 else float("nan"), "count": count,
            "step": captured["step"], "batch": captured["batch"], "raw_half_bytes": raw_half_bytes}


def raw_half_bytes_of(details: Mapping[str, Any], out_bytes: int) -> Optional[int]:
    """``Profile.raw_half_bytes`` from ``measure_compute``'s details: None where no CFG half was
    timed or a raw half has the guided output's size (the field's default)."""
    half = details.get("half_forward")
    raw = half.get("raw_half_bytes") if isinstance(half, dict) else None
    return None if raw is None or raw == out_bytes else int(raw)


def measure_compute(pipe, *, prompt, seed: int, num_steps: int, call_kwargs, max_window: int, repeats: int,
                    threads: int) -> tuple[Compute, int, dict]:
    """Batch-1 timing of the plain pipeline: (Compute, output_bytes, details).

    ``half_forward_s``: when the pipeline runs a two-way guided batch (``do_classifier_free_guidance``
    true during the call and the denoiser's batch twice the guided output's), the denoiser's real
    call arguments at one step (the middle one of the warm-up run) are captured, cut to their first
    half (``half_batch``) and timed: median of as many forwards as ``forward_s[0]`` is the median of,
    interleaved with forwards on the whole captured batch (``details['half_forward']['ratio']``);
    otherwise None, and ``details['half_forward']`` says why.
    """
    torch = _torch()
    den = _denoiser(pipe)
    sched = pipe.scheduler
    fwd_times: list[list[float]] = []
    step_times: list[list[float]] = []
    step_ends: list[list[float]] = []
    out_bytes = [0]
    guided_batch: list[int] = []
    captured: dict = {}
    capture_at = num_steps // 2

    def fwd_factory(orig):
        def impl(*args, **kwargs):
            if len(fwd_times) == 1 and len(fwd_times[-1]) == capture_at and not captured:   # warm-up run only
                captured.update(args=_map_tensors(args, lambda t: t.detach().clone()),
                                kwargs=_map_tensors(dict(kwargs), lambda t: t.detach().clone()),
                                batch=_batch_of(args, kwargs), step=capture_at,
                                cfg=bool(cfg_flag(pipe)))
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            fwd_times[-1].append(time.perf_counter() - t0)
            return out

        return impl

    def step_factory(orig):
        sig = inspect.signature(orig)

        def impl(*args, **kwargs):
            e = sig.bind(*args, **kwargs).arguments["model_output"]
            out_bytes[0] = e.numel() * e.element_size()
            if len(step_times) == 1 and len(step_times[-1]) == capture_at:
                guided_batch.append(int(e.shape[0]))
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            t1 = time.perf_counter()
            step_times[-1].append(t1 - t0)
            step_ends[-1].append(t1)
            return out

        return impl

    is_cpu = str(getattr(pipe, "device", "cpu")).startswith("cpu")
    with cpu_threads(pipe, threads):
        with torch.no_grad(), _instance_override(den, "forward", fwd_factory), _instance_override(sched, "step", step_factory):
            for r in range(repeats + 1):
                fwd_times.append([])
                step_times.append([])
                step_ends.append([])
                _call(pipe, prompts=[prompt], seeds=[seed], num_steps=num_steps, call_kwargs=call_kwargs)
                if not is_cpu and torch.cuda.is_available():
                    torch.cuda.synchronize()
            half = _half_forward_why_not(captured, guided_batch)
            if half is None:
                sync = torch.cuda.synchronize if not is_cpu and torch.cuda.is_available() else (lambda: None)
                half = _time_half_forward(den.forward, captured, count=sum(len(run) for run in fwd_times[1:]), sync=sync)
    fwd_times, step_times, step_ends = fwd_times[1:], step_times[1:], step_ends[1:]   # first run: warm-up
    forward_s = []
    for k in range(1, max_window + 1):
        sums = [sum(run[i:i + k]) for run in fwd_times for i in range(0, len(run) - k + 1)]
        forward_s.append(statistics.median(sums) if sums else k * statistics.median([t for run in fwd_times for t in run]))
    step_s = statistics.median([t for run in step_times for t in run])
    overheads = []
    for f, s, ends in zip(fwd_times, step_times, step_ends):
        for i in range(1, len(ends)):
            overheads.append(ends[i] - ends[i - 1] - f[i] - s[i])
    overhead = max(0.0, statistics.median(overheads)) if overheads else 0.0
    details = {"forward_median_s": statistics.median([t for run in fwd_times for t in run]), "repeats": repeats,
               "threads": threads if is_cpu else None, "half_forward": half}
    half_s = half.get("half_s") if isinstance(half, dict) else None
    return (Compute(forward_s=forward_s, step_s=step_s, step_overhead_s=overhead, half_forward_s=half_s),
            out_bytes[0], details)


def _half_forward_why_not(captured: dict, guided_batch: list[int]) -> Optional[str]:
    """None when the captured call is one two-way guided batch; else why no half forward is timed."""
    if not captured:
        return "no denoiser call was captured"
    if not captured["cfg"]:
        return "no two-way guided batch (do_classifier_free_guidance false during the call: guidance scale <= 1 or distilled guidance)"
    full, guided = captured["batch"], (guided_batch[0] if guided_batch else None)
    if full is None or guided is None or full != 2 * guided:
        return (f"the denoiser's batch ({full}) is not twice the guided output's ({guided}): the pipeline does not run "
                "its CFG halves as one batch")
    return None


def half_forward_note(details: Mapping[str, Any]) -> str:
    """The compute provenance's words on ``half_forward_s`` (from ``measure_compute``'s details)."""
    half = details.get("half_forward")
    if isinstance(half, dict):
        return (f"half_forward_s = median of {half['count']} forwards on the denoiser's call at step {half['step']} cut to its "
                f"first half (rows [0, {half['batch'] // 2}) of every argument with batch {half['batch']}: the unconditional half), "
                f"interleaved with as many on the whole call: half/whole = {half['ratio']:.3f}")
    return f"half_forward_s absent: {half}"


# ---- 6. comm ----------------------------------------------------------------------------------

def _time_per_size(ctx, job: dict, op_for: Callable[[int], Callable[[], Any]]) -> None:
    """Every rank: for each n in ``job['sizes']``, the median of ``job['repeats']`` timed calls of
    ``op_for(n)()`` (two warm-up calls first, a barrier before each); rank 0 writes the slowest
    rank's time per n to ``job['out']`` (the operation ends when the last rank is done)."""
    import torch
    import torch.distributed as dist

    results = {}
    for n in job["sizes"]:
        op = op_for(n)
        times = []
        for r in range(job["repeats"] + 2):
            dist.barrier()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            op()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[n] = statistics.median(times[2:])
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, results)
    if ctx.rank == 0:
        worst = {n: max(g[n] for g in gathered) for n in job["sizes"]}
        Path(job["out"]).write_text(json.dumps({str(k): v for k, v in worst.items()}))


def _comm_worker(ctx, job: dict) -> None:
    """One rank of the exchange benchmark (module level: spawned processes import it)."""
    import torch

    from ..executor.exchange import DistExchange

    ex = DistExchange()
    like = torch.zeros(job["shape"], dtype=getattr(torch, job["dtype"]), device=ctx.device)

    def op_for(n: int):
        placement = [j % ctx.world_size for j in range(n)]
        owned = {j: like + j for j in range(n) if placement[j] == ctx.rank}
        return lambda: ex.exchange(owned, placement, like=like)

    _time_per_size(ctx, job, op_for)


def _pair_worker(ctx, job: dict) -> None:
    """One rank of the CFG pair benchmark: ranks 0 and 1 swap ``n`` raw halves (stacked into one
    tensor) with the executor's own ``DistExchange.swap`` (module level: spawned processes import it)."""
    import torch

    from ..executor.exchange import DistExchange

    ex = DistExchange()
    like = torch.zeros(job["shape"], dtype=getattr(torch, job["dtype"]), device=ctx.device)
    partner = 1 - ctx.rank

    def op_for(n: int):
        mine = [torch.full((n, *like.shape), float(ctx.rank + 1), dtype=like.dtype, device=ctx.device)]
        return lambda: ex.swap(mine, partner)

    _time_per_size(ctx, job, op_for)


PAIR_HOW = ("the executor's DistExchange.swap of n raw halves (one tensor) each way between 2 spawned processes, "
            "median of {repeats} per n, Theil-Sen alpha-beta fit over n = {sizes}")


def measure_pair(*, output_shape: Sequence[int], dtype: str, output_bytes: int, repeats: int,
                 device: str = "auto", max_bytes: int = 64 * 2 ** 20) -> tuple[CommEntry, dict]:
    """The CFG pair swap on 2 local ranks: each rank sends n tensors of ``output_shape`` while it
    receives its partner's, for n = 1, 4, 16, ... up to 64 MiB, fitted ``latency + n *
    output_bytes / bandwidth`` (``fit_alpha_beta``: a non-positive slope is refused). The bandwidth
    is in bytes per second, so ``Profile.pair_exchange_time_s`` prices a raw half of any size
    (``Profile.swap_bytes``)."""
    from ..executor.launch import launch

    sizes = [4 ** k for k in range(10) if k == 0 or 4 ** k * output_bytes <= max_bytes]
    if len(sizes) < 2:
        raise ValueError(f"max_bytes {max_bytes} leaves one swap size for outputs of {output_bytes} bytes: no slope to fit")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pair.json"
        launch(_pair_worker, {"shape": list(output_shape), "dtype": dtype, "sizes": sizes, "repeats": repeats,
                              "out": str(out)}, world_size=2, device=device, threads=1, timeout_s=120.0)
        res = {int(k): v for k, v in json.loads(out.read_text()).items()}
    a, bw = fit_alpha_beta(sorted(res.items()), output_bytes=output_bytes, what="pair swap")
    return CommEntry(ranks=2, latency_s=a, bandwidth_bytes_per_s=bw), {"sizes": sizes, "times": res}


def fit_alpha_beta(points: Sequence[tuple[int, float]], *, output_bytes: int, what: str = "exchange") -> tuple[float, float]:
    """Robust line ``t = a + n * b`` over (n, t) (Theil-Sen: median of pairwise slopes, then the
    median intercept; one slow spell on a shared machine does not skew it). Returns
    (latency_s >= 0, bandwidth_bytes_per_s > 0)."""
    pts = [(float(n), float(t)) for n, t in points]
    slopes = [(t2 - t1) / (n2 - n1) for i, (n1, t1) in enumerate(pts) for (n2, t2) in pts[i + 1:] if n2 != n1]
    b = statistics.median(slopes) if slopes else 0.0
    a = statistics.median(t - b * n for n, t in pts)
    if not b > 0 or a < 0:
        # a clamped fit would be a number nobody measured: refuse it
        raise ValueError(f"{what} fit refused: time per output {b:.3g} s and latency {a:.3g} s from {pts}; the {what} "
                         "did not grow with the bytes sent (noise or contention): re-run on an idle machine, or pass "
                         "--interconnect NAME to price the exchange from a preset")
    return a, output_bytes / b


def measure_comm(*, world_sizes: Sequence[int], output_shape: Sequence[int], dtype: str, output_bytes: int,
                 repeats: int, device: str = "auto") -> tuple[list[CommEntry], dict]:
    from ..executor.launch import launch

    entries, raw = [], {}
    for g in world_sizes:
        # outputs per exchange: g .. 4^5 g, up to 64 MiB, so the bytes term stands out of the latency
        sizes = [g * 4 ** k for k in range(6) if k == 0 or g * 4 ** k * output_bytes <= 64 * 2 ** 20]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "comm.json"
            launch(_comm_worker, {"shape": list(output_shape), "dtype": dtype, "sizes": sizes, "repeats": repeats,
                                  "out": str(out)}, world_size=g, device=device, threads=1, timeout_s=120.0)
            res = {int(k): v for k, v in json.loads(out.read_text()).items()}
        a, bw = fit_alpha_beta(sorted(res.items()), output_bytes=output_bytes)
        entries.append(CommEntry(ranks=g, latency_s=a, bandwidth_bytes_per_s=bw))
        raw[g] = res
    return entries, raw


def local_device_slots(device: str) -> tuple[str, int]:
    """(device kind, how many ranks this machine hosts one per device): CUDA devices, or CPU cores."""
    torch = _torch()
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "cuda", torch.cuda.device_count()
    return "cpu", os.cpu_count() or 1


def device_description(pipe, threads: int) -> str:
    torch = _torch()
    dev = str(getattr(pipe, "device", "cpu"))
    if dev.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(dev))
    proc = platform.processor() or platform.machine()
    return f"cpu: {os.cpu_count()} cores ({proc}), {threads} thread(s) per rank"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("parastep", "torch", "diffusers", "transformers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


# ---- the whole profile ------------------------------------------------------------------------

def _stats(table: dict) -> dict:
    return {p: DeviationStats(mean=table[p]["mean"], max=table[p]["max"]) for p in PREDICTORS}


def measure_profile(pipe, settings: ProfilerSettings, *, progress: Optional[Callable[[str], None]] = None) -> ProfileRun:
    """Measure every part of DESIGN §2 for ``pipe`` (see the module docstring)."""
    with cpu_threads(pipe, settings.threads):
        return _measure_profile(pipe, settings, progress=progress)


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
    say(f"reference: {len(prompts)} samples x {T} steps, {traj.forwards} forwards, {time.perf_counter() - t0:.1f} s")

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
    output_errors = _output_errors(errs, prompts=prompts, seeds=seeds, num_steps=T, max_window=J,
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
                                 pair=compute.half_forward_s is not None)

    sched_name = type(pipe.scheduler).__name__
    prov = Provenances(
        deviation=measured.model_copy(update={"notes": f"RMS in latent units over {len(prompts)} samples; "
                                                       f"forwards beyond the reference: {n_dev}"}),
        propagation=measured.model_copy(update={"notes": f"random direction of RMS delta={delta:.4g} added to x_(i+1), "
                                                         f"stride {settings.propagation_stride}; {n_prop} forwards"}),
        similarity=measured,
        compute=measured.model_copy(update={"notes": f"batch 1, median of {settings.timing_repeats} runs; forward_s[k-1] = "
                                                     f"k consecutive forwards as the executor runs a rank's offsets; "
                                                     f"{half_forward_note(cdet)}"}),
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
                                 pair=compute.half_forward_s is not None)
    prov = profile.provenance.model_copy(update={"compute": measured.model_copy(update={"notes": (
        f"batch 1, median of {settings.timing_repeats} runs; forward_s[k-1] = k consecutive forwards as the executor runs "
        f"a rank's offsets; {half_forward_note(cdet)} (re-timed with --recalibrate --retime)")}), "comm": comm_prov})
    return profile.model_copy(update={"compute": compute, "comm": comm, "output_bytes": out_bytes,
                                      "raw_half_bytes": raw_half_bytes_of(cdet, out_bytes), "provenance": prov})


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def add_split_costs(pipe, profile: Profile, settings: ProfilerSettings, *, say, pair_runs: int = 1,
                    pair_max_bytes: int = 64 * 2 ** 20) -> Profile:
    """``profile`` with the CFG split costs added and every other number kept: ``half_forward_s`` =
    the stored ``forward_s[0]`` x the half/whole ratio measured now (two forwards timed interleaved
    keep their ratio on a loaded machine, where absolute times do not), and ``Comm.pair`` measured on
    2 local ranks (``measure_pair``), ``pair_runs`` times: the run whose fit prices one swap lowest
    is kept (other jobs only ever slow a swap down; every run and the load average at each is stated
    in the provenance). For a profile whose compute was timed on an idle machine that this one no
    longer is. ValueError when the pipeline runs no two-way guided batch."""
    T = profile.num_steps
    load_compute = _load()
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
    runs, refused = [], 0
    for r in range(max(1, pair_runs)):
        load = _load()
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
        say(f"pair swap run {r + 1}: latency {entry.latency_s * 1e6:.1f} us, bandwidth {entry.bandwidth_bytes_per_s / 1e9:.3g} GB/s, "
            f"one swap {one * 1e6:.1f} us ({load}; raw {raw['times']})")
    if not runs:
        raise ValueError(f"pair swap: all {refused} fits refused (the swap did not grow with the bytes sent); re-run on a quieter machine")
    one, pair, raw, load = min(runs, key=lambda run: run[0])
    how = PAIR_HOW.format(repeats=settings.comm_repeats, sizes=", ".join(str(n) for n in raw["sizes"]))
    half_words = (f"half_forward_s = forward_s[0] x {half['ratio']:.4f}, the half/whole ratio measured on {date} ({load_compute}; "
                  f"the whole forward took {compute.forward_s[0] * 1e3:.3f} ms then) by add_split_costs: "
                  f"{half_forward_note(cdet).replace('half_forward_s = median', 'the half is the median', 1)} "
                  f"(absolute: half {half['half_s'] * 1e3:.3f} ms, whole {half['whole_s'] * 1e3:.3f} ms)")
    every = ", ".join(f"{o * 1e6:.0f} us ({ld.split(' (1 min)')[0].replace('load average ', 'load ')})" for o, _, _, ld in runs)
    pair_words = (f"CFG pair swap measured on {date} over {'nccl' if cuda else 'gloo'} ({load}): {how}; the lowest of {len(runs)} "
                  f"fitted run(s) kept, one swap {one * 1e6:.0f} us (all: {every}"
                  + (f"; {refused} more run(s) refused by the fit" if refused else "")
                  + "); other jobs shared this machine, so it is an upper bound of an idle machine's swap")
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


def _join(text: str, more: str) -> str:
    return f"{text}; {more}" if text else more


def _round_sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant digits (the quality model is not more precise; keeps the YAML small)."""
    return float(f"{v:.{digits - 1}e}") if v > 0 else 0.0


def _output_errors(errs: Mapping[tuple, list[float]], *, prompts, seeds, num_steps: int, max_window: int, rank: int,
                   captured: float) -> OutputErrors:
    T, J = num_steps, max_window
    n = len(prompts)
    tables: dict = {kind: {} for kind in ("parallel", "reuse")}
    for kind in tables:
        for p in PREDICTORS:
            rows = []
            for s in range(T):
                if s < (1 if p == "last" else 2):
                    rows.append([])
                    continue
                row = []
                for w in range(1, min(J, T - s) + 1):
                    v = errs.get((kind, p, s, w))
                    row.append([_round_sig(x) for x in v] if v is not None else [0.0] * n)   # parallel w = 1: exact
                rows.append(row)
            tables[kind][p] = rows
    return OutputErrors(samples=[CalibrationSample(prompt=str(pr), seed=int(sd)) for pr, sd in zip(prompts, seeds)],
                        parallel=tables["parallel"], reuse=tables["reuse"], rank=rank,
                        captured_energy=max(0.0, min(1.0, captured)))


def _comm_part(pipe, settings: ProfilerSettings, *, out_bytes: int, traj: Trajectory, measured: Measured, say,
               notes: list[str], pair: bool = False):
    """(Comm, its provenance): the window exchange for g = 2..G and, with ``pair`` (the model runs a
    two-way guided batch), the CFG pair swap ``Comm.pair``: measured on 2 local ranks where this
    machine hosts them, else from the interconnect preset (then the part is labelled prior)."""
    from ..profiles.interconnects import comm_for, describe

    G = settings.gpus
    if G < 2:
        return Comm(), measured.model_copy(update={"notes": "world size 1: no exchange" + (" and no CFG pair swap" if pair else "")})
    dev = str(getattr(pipe, "device", "cpu"))
    kind, slots = local_device_slots("cuda" if dev.startswith("cuda") else "cpu")
    e0 = traj.e[0]
    shape = [1, *e0.shape[1:]]
    dtype = str(e0.dtype).replace("torch.", "")
    no_pair = "" if pair else "; no CFG pair swap (the model runs no two-way guided batch)"
    if not settings.measure_comm:
        if settings.interconnect is None:
            raise ValueError("measure_comm=False needs an interconnect preset")
        comm = comm_for(settings.interconnect, world_size=G)
        return comm.model_copy(update={"pair": comm.pair if pair else None}), Prior(
            rule=f"interconnect preset '{settings.interconnect}' (alpha-beta, parastep.profiles.interconnects)"
                 + (", CFG pair swap included" if pair else no_pair),
            reference=describe(settings.interconnect))
    # ranks beyond this machine's devices: the preset if one is named; on CPU without one, oversubscribe the cores
    can = min(G, slots) if (kind == "cuda" or settings.interconnect is not None) else G
    if can == G and G > slots:
        msg = f"exchange measured with {G} gloo processes on {slots} CPU cores (oversubscribed)"
        notes.append(msg)
        say(msg)
    if can < G and settings.interconnect is None:
        raise ValueError(f"this machine has {slots} CUDA device(s), fewer than --gpus {G}: pass --interconnect NAME "
                         "for the ranks beyond them")
    sizes = list(range(2, can + 1))
    entries, raw = measure_comm(world_sizes=sizes, output_shape=shape, dtype=dtype, output_bytes=out_bytes,
                                repeats=settings.comm_repeats, device=kind) if sizes else ([], {})
    for e in entries:
        say(f"comm g={e.ranks}: latency {e.latency_s * 1e6:.1f} us, bandwidth {e.bandwidth_bytes_per_s / 1e9:.3g} GB/s "
            f"(raw {raw[e.ranks]})")
    backend = "nccl" if kind == "cuda" else "gloo"
    pair_entry, pair_text, pair_prior = None, no_pair, False
    if pair:
        pair_entry, pair_text, pair_prior = _pair_part(settings, kind=kind, can=can, shape=shape, dtype=dtype,
                                                       out_bytes=out_bytes, backend=backend, say=say)
    if can == G and not pair_prior:
        return Comm(entries=entries, pair=pair_entry), measured.model_copy(update={
            "notes": f"executor DistExchange over {backend}, g = 2..{G} spawned processes, Theil-Sen alpha-beta fit over n = g, 4g, "
                     f"16g, ... outputs (up to 64 MiB)" + pair_text + "".join(f"; {n}" for n in notes)})
    if can == G:
        return Comm(preset=settings.interconnect, entries=entries, pair=pair_entry), Prior(
            rule=f"g = 2..{G} measured with the executor's DistExchange over {backend}" + pair_text,
            reference=describe(settings.interconnect))
    preset = comm_for(settings.interconnect, world_size=G)
    extra = [e for e in preset.entries if e.ranks > can]
    measured_g = f"g = 2..{can} measured with the executor's DistExchange over {backend}; " if can >= 2 else ""
    return Comm(preset=settings.interconnect, entries=entries + extra, pair=pair_entry), Prior(
        rule=f"{measured_g}g = {max(2, can + 1)}..{G} from interconnect preset '{settings.interconnect}' (alpha-beta, "
             f"parastep.profiles.interconnects)" + pair_text,
        reference=describe(settings.interconnect))


def _pair_part(settings: ProfilerSettings, *, kind: str, can: int, shape, dtype: str, out_bytes: int, backend: str,
               say) -> tuple[CommEntry, str, bool]:
    """(pair entry, provenance words, whether it is a prior): measured on 2 local ranks where this
    machine hosts them (CPU processes, or 2 CUDA devices), else the interconnect preset's; a refused
    fit falls back to the preset when one is named, else it is an error."""
    from ..profiles.interconnects import pair_entry_for

    name = settings.interconnect
    if kind == "cuda" and can < 2:
        return pair_entry_for(name), f"; CFG pair swap from interconnect preset '{name}' (prior: fewer than 2 local devices)", True
    try:
        entry, raw = measure_pair(output_shape=shape, dtype=dtype, output_bytes=out_bytes, repeats=settings.comm_repeats,
                                  device=kind)
    except ValueError as exc:
        if name is None:
            raise
        say(f"pair swap: {str(exc).splitlines()[0]}; using preset '{name}'")
        return (pair_entry_for(name), f"; CFG pair swap from interconnect preset '{name}' (prior: its measurement here was "
                                      f"refused, the swap time did not grow with the bytes sent)", True)
    say(f"pair swap: latency {entry.latency_s * 1e6:.1f} us, bandwidth {entry.bandwidth_bytes_per_s / 1e9:.3g} GB/s "
        f"(raw {raw['times']})")
    how = PAIR_HOW.format(repeats=settings.comm_repeats, sizes=", ".join(str(n) for n in raw["sizes"]))
    return entry, f"; CFG pair swap measured over {backend}: {how}", False
