"""How a deviation made inside the run reaches the output (docs/design.md §2).

**Propagation gain** ``gain[i]`` (``propagation_gain``): replay the recorded outputs up to step i,
add to ``x_{i+1}`` a random direction of RMS ``delta`` (the median of the measured nonzero mean
deviations, so gains are taken at the scale that matters), run the remaining steps exactly,
``gain[i] = RMS(x_T' - x_T) / delta`` (mean over samples). Cost: ``T - 1 - i`` forwards for step i
plus one placeholder forward, i.e. about ``T^2 / 2 + T`` for the whole curve (``stride`` k measures
every k-th step and interpolates ``log gain`` linearly: about ``T^2 / (2k)``). ``gain[T-1] = 1`` by
definition.

**Per-sample output errors** (``window_output_errors``): each candidate window's own deviation at
its end boundary (``deviation.boundary_deviations``) pushed through the rest of the real run, per
calibration sample; ``output_error_tables`` stores them as the profile's ``output_errors``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from ..profiles.model import PREDICTORS, CalibrationSample, OutputErrors
from .instrument import call_latents, first_output, instance_override, load_torch
from .trajectory import Trajectory, first_copy, rms_per_sample, tiled


def perturbed_output(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, step: int,
                     direction, outputs: Optional[Mapping[int, Any]] = None) -> tuple[Any, int]:
    """x_T when ``direction`` (or None) is added to x_{step+1}; the prefix 0..step is replayed (no
    forwards but the hooks' step-0 placeholder) from the recorded outputs, or from ``outputs[i]``
    where given (a window's own outputs: the real scheduler then carries the window's history, as
    in a run). Returns (x_T', forwards)."""
    torch = load_torch()
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
                x = first_output(out) + direction.to(device=first_output(out).device, dtype=first_output(out).dtype)
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
    with instance_override(sched, "step", factory):
        handle = apply_parastep(pipe, cfg)
        try:
            with torch.no_grad():
                call_latents(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=call_kwargs)
        finally:
            forwards = handle.forwards
            remove_parastep(pipe)
    return final[0], forwards


def propagation_gain(pipe, traj: Trajectory, *, prompts, seeds, num_steps: int, call_kwargs, delta: float,
                     stride: int = 1, seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> tuple[list[float], int]:
    """``gain[i]`` for i = 0..T-1 (see the module docstring) and the forwards it cost."""
    torch = load_torch()
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


def carries_history(traj: Trajectory) -> bool:
    """Does the scheduler keep model outputs across steps (multistep solvers: a list of tensors in
    its state, e.g. DPM-Solver++'s ``model_outputs``, PNDM's ``ets``)?"""
    torch = load_torch()
    state = traj.states[-1]
    return any(isinstance(v, (list, tuple)) and any(torch.is_tensor(t) for t in v) for v in state.values())


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
    torch = load_torch()
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


def _round_sig(v: float, digits: int = 4) -> float:
    """``v`` to ``digits`` significant digits (the quality model is not more precise; keeps the YAML small)."""
    return float(f"{v:.{digits - 1}e}") if v > 0 else 0.0


def output_error_tables(errs: Mapping[tuple, list[float]], *, prompts, seeds, num_steps: int, max_window: int,
                        rank: int, captured: float) -> OutputErrors:
    """The profile's ``output_errors`` from ``window_output_errors``' entries: per kind and predictor,
    one row per start (empty where the predictor cannot start), one entry per window size, each a
    list over the samples (a parallel window of size 1 is exact: zeros)."""
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
