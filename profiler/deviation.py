"""How far a window's outputs move the latents off the reference trajectory (docs/design.md §2).

**Deviation tables**, per predictor p and start s (``last``: s >= 1, ``linear``: s >= 2): the
pipeline runs the schedule ``exact 0..s-1 | parallel(s, w = min(J, T - s)) | ...`` through the
executor's own hooks (``parastep.executor.hooks``) with the prefix *replayed* from the recorded
outputs (``override_outputs``: no forwards, except the single placeholder forward the hooks make
at step 0), offset 0 placed on a "remote" rank whose output is injected as the recorded ``e_s``
(no forward), and the run is stopped right after the window. So a start costs ``w`` forwards per
predictor (1 placeholder + w - 1 offsets): at most ``2 J`` per step for both predictors, on top of
the reference run. The observer yields ``xhat_{s+j}`` and ``ehat_{s+j}``; then, on scratch copies
of the *reference* scheduler state at step s+j::

    deviation[p][s][j] = RMS( step_{s+j}(x_{s+j}, ehat_{s+j}) - step_{s+j}(x_{s+j}, e_{s+j}) )

per sample (latent units), stored as mean and max over samples. Offset 0 is exactly 0.
``reuse_deviation[p][s][j]`` is the same with the predictor's stand-in (``stand_in``) in place of
``ehat`` (no forwards at all).

**Boundary deviations** (``boundary_deviations``, the quality model's input): every candidate
window run alone from the exact ``x_s``, its outputs chained through one scratch scheduler, and
the deviation it leaves at its end boundary. No forwards: the predictions are the ones the tables
were measured with. How such a deviation reaches the output is ``propagation``.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ..profiles.model import PREDICTORS
from .instrument import call_latents, first_output, load_torch
from .trajectory import Trajectory, rms_per_sample


class _Stop(Exception):
    """Raised from inside the pipeline's loop to end a run early (never escapes the profiler)."""


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


def _scratch_step(traj: Trajectory, sched_cls: type, i: int, *, model_output, sample):
    """``step_i(sample, model_output)`` on a fresh copy of the reference scheduler state at step i."""
    scratch = object.__new__(sched_cls)
    scratch.__dict__.update(copy.deepcopy(traj.states[i]))
    b = inspect.BoundArguments(traj.bound[i].signature, dict(traj.bound[i].arguments))
    b.arguments["model_output"] = model_output
    b.arguments["sample"] = sample
    return first_output(traj.step_fn(scratch, *b.args, **b.kwargs))


def window_predictions(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, start: int,
                       size: int, predictor: str) -> tuple[list, list, int]:
    """(xhat_{s+j}, ehat_{s+j}) for j = 0..size-1 of a parallel window, from the executor's hooks.

    The prefix is replayed from ``traj`` (no forwards but the hooks' step-0 placeholder); the run
    stops after the window. Returns the inputs, the outputs and the forwards made.
    """
    torch = load_torch()
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
            call_latents(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs)
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
    e_s: offset 0 is exact), the outputs the quality model chains through (``boundary_deviations``)."""
    torch = load_torch()
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
        x = first_output(traj.step_fn(scratch, *b.args, **b.kwargs))
        out.append(x)
    return out


def boundary_deviations(traj: Trajectory, sched_cls: type, predictions: Mapping, *, num_steps: int,
                        max_window: int) -> dict[int, list[tuple[tuple, Any]]]:
    """``{b: [((kind, predictor, s, w), x'_b - x_b, outputs), ...]}``: for every candidate window
    (s, w) with b = s + w, the deviation it leaves at its end boundary when it starts from the exact
    ``x_s``, and the ``w`` outputs it applied
    (kind ``parallel``: the offsets' predictions ``ehat``; ``reuse``: the predictor's stand-ins).
    No forwards: the predictions were made by ``deviation_tables``."""
    torch = load_torch()
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
