"""A profile's compute costs (docs/design.md §2): the plain pipeline timed at batch 1, and the batch curve.

Batch-1 runs of the plain pipeline (the shape ``parastep exec`` runs), the denoiser's ``forward``
and ``scheduler.step`` timed on the instance. ``forward_s[k-1]`` is the median wall time of k
*consecutive* forward calls (the executor computes a rank's offsets one after another), ``step_s``
the median step, ``step_overhead_s`` the median of the remainder of a step's wall time (pipeline
bookkeeping: CFG concat/combine, callbacks, progress bar).

``half_forward_s`` (CFG split, one half of the guided batch): where the pipeline runs a two-way
guided batch, the denoiser's real call arguments at the middle step are cut to rows [0, B) of
every batched tensor and timed the same number of times, interleaved with the whole call (the
half/whole ratio goes to the provenance notes, ``half_forward_note``); absent otherwise, and the
notes say why.
"""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any, Mapping, Optional

from ..executor.launch import cpu_threads
from ..profiles.model import Compute
from .instrument import call_latents, cfg_flag, denoiser, first_output, instance_override, load_torch


def _map_tensors(value, fn):
    """``value`` with ``fn`` applied to every tensor inside it (dicts, lists and tuples are walked)."""
    torch = load_torch()
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def half_batch(args: tuple, kwargs: Mapping[str, Any], *, full: int, cond: bool = False) -> tuple[tuple, dict]:
    """The denoiser's call arguments for one CFG half: every tensor whose first dimension is the
    guided batch ``full`` (= 2B: latents, timestep per sample, encoder states, added conditions,
    class labels...) sliced to rows [0, B) (the unconditional half; [B, 2B) with ``cond``); the
    rest (a scalar timestep, flags) as is."""
    if full < 2 or full % 2:
        raise ValueError(f"a two-way guided batch has an even size >= 2, got {full}")
    b = full // 2
    lo = b if cond else 0

    def cut(t):
        return t[lo:lo + b] if t.dim() >= 1 and t.shape[0] == full else t

    return tuple(_map_tensors(a, cut) for a in args), {k: _map_tensors(v, cut) for k, v in kwargs.items()}


def _batch_of(args: tuple, kwargs: Mapping[str, Any]) -> Optional[int]:
    """The batch of the denoiser's sample: its first positional tensor, else a ``sample`` /
    ``hidden_states`` keyword."""
    torch = load_torch()
    for v in (*args[:1], kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            return int(v.shape[0])
    return None


WARMUP_ROUNDS = 2   # untimed rounds first: a new batch shape may build kernels


def _interleaved_medians(forward, calls: list[tuple[tuple, dict]], *, count: int, sync, first_output_of=None) -> list[float]:
    """Median wall time of each call over ``count`` rounds, every call once per round (so their
    ratios are measured under one load), after ``WARMUP_ROUNDS`` untimed rounds.
    ``first_output_of(out)`` is called with call 0's first output."""
    times: list[list[float]] = [[] for _ in calls]
    for r in range(count + WARMUP_ROUNDS):
        for k, ((args, kwargs), box) in enumerate(zip(calls, times)):
            sync()
            t0 = time.perf_counter()
            out = forward(*args, **kwargs)
            sync()
            if r >= WARMUP_ROUNDS:
                box.append(time.perf_counter() - t0)
            if k == 0 and r == 0 and first_output_of is not None:
                first_output_of(out)
    return [statistics.median(box) for box in times]


def _time_half_forward(forward, captured: dict, *, count: int, sync) -> dict:
    """Median wall time of ``count`` forwards on one CFG half of the captured call, interleaved
    with as many on the whole captured call, and the bytes of the half's raw output
    (``raw_half_bytes``: what a split pair swaps; twice the guided output's for a model that also
    predicts a learned variance)."""
    args, kwargs = captured["args"], captured["kwargs"]
    raw_half: list[int] = []

    def bytes_of(out) -> None:
        raw = out if isinstance(out, load_torch().Tensor) else first_output(out)    # a tensor, a tuple or a BaseOutput
        raw_half.append(int(raw.numel() * raw.element_size()))

    h, w = _interleaved_medians(forward, [half_batch(args, kwargs, full=captured["batch"]), (args, kwargs)],
                                count=count, sync=sync, first_output_of=bytes_of)
    return {"half_s": h, "whole_s": w, "ratio": h / w if w > 0 else float("nan"), "count": count,
            "step": captured["step"], "batch": captured["batch"], "raw_half_bytes": raw_half[0]}


def _time_batched_forward(forward, captured: dict, *, max_offsets: int, count: int, sync) -> dict:
    """BatchStep's batch curve: median wall time of one call on k offsets' inputs (the captured call
    repeated k times along the batch, one timestep per row: ``batchstep.repeated_call``), k = 1..K,
    the k's interleaved in every round."""
    from ..executor.batchstep import repeated_call

    calls = [repeated_call(captured["args"], captured["kwargs"], k) for k in range(1, max_offsets + 1)]
    medians = _interleaved_medians(forward, calls, count=count, sync=sync)
    return {"batched_s": medians, "ratio": [m / medians[0] if medians[0] > 0 else float("nan") for m in medians],
            "count": count, "step": captured["step"], "batch": captured["batch"]}


def batched_forward_note(details: Mapping[str, Any]) -> str:
    """The compute provenance's words on ``batched_forward_s`` (from ``measure_compute``'s details)."""
    b = details.get("batched_forward")
    if not isinstance(b, dict):
        return f"batched_forward_s absent: {b}"
    ratios = ", ".join(f"{r:.3f}" for r in b["ratio"])
    return (f"batched_forward_s[k-1] = forward_s[0] x the ratio of one call on k offsets' inputs (the denoiser's call at "
            f"step {b['step']} repeated k times along its batch {b['batch']}, one timestep per row) to the k = 1 call, "
            f"medians of {b['count']} rounds with every k interleaved: {ratios} for k = 1..{len(b['ratio'])}")


def raw_half_bytes_of(details: Mapping[str, Any], out_bytes: int) -> Optional[int]:
    """``Profile.raw_half_bytes`` from ``measure_compute``'s details: None where no CFG half was
    timed or a raw half has the guided output's size (the field's default)."""
    half = details.get("half_forward")
    raw = half.get("raw_half_bytes") if isinstance(half, dict) else None
    return None if raw is None or raw == out_bytes else int(raw)


BATCH_CURVE_ROUNDS = 30   # rounds of the batch curve (each times every k once): enough for a stable median


def measure_compute(pipe, *, prompt, seed: int, num_steps: int, call_kwargs, max_window: int, repeats: int,
                    threads: int, batch_offsets: Optional[int] = None) -> tuple[Compute, int, dict]:
    """Batch-1 timing of the plain pipeline: (Compute, output_bytes, details).

    ``half_forward_s``: when the pipeline runs a two-way guided batch (``do_classifier_free_guidance``
    true during the call and the denoiser's batch twice the guided output's), the denoiser's real
    call arguments at one step (the middle one of the warm-up run) are captured, cut to their first
    half (``half_batch``) and timed: median of as many forwards as ``forward_s[0]`` is the median of,
    interleaved with forwards on the whole captured batch (``details['half_forward']['ratio']``);
    otherwise None, and ``details['half_forward']`` says why.

    ``batched_forward_s`` (BatchStep, k = 1..``batch_offsets``, default ``max_window``): the same
    captured call repeated k times along the batch, every k timed in each round
    (``_time_batched_forward``); stored as ``forward_s[0]`` x (k's median / k = 1's median), so the
    curve and the unbatched table agree at k = 1 and only the measured ratio decides whether a
    window batches. ``details['batched_forward']`` holds the medians and ratios.
    ``details['denoiser_call']``: (denoiser, captured call) where a call was captured, for the
    lock-step exchange and pair swap (``comm.measure_lockstep``); else None.
    """
    batch_offsets = max_window if batch_offsets is None else batch_offsets
    torch = load_torch()
    den = denoiser(pipe)
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
        with torch.no_grad(), instance_override(den, "forward", fwd_factory), instance_override(sched, "step", step_factory):
            for r in range(repeats + 1):
                fwd_times.append([])
                step_times.append([])
                step_ends.append([])
                call_latents(pipe, prompts=[prompt], seeds=[seed], num_steps=num_steps, call_kwargs=call_kwargs)
                if not is_cpu and torch.cuda.is_available():
                    torch.cuda.synchronize()
            half = _half_forward_why_not(captured, guided_batch)
            sync = torch.cuda.synchronize if not is_cpu and torch.cuda.is_available() else (lambda: None)
            if half is None:
                half = _time_half_forward(den.forward, captured, count=sum(len(run) for run in fwd_times[1:]), sync=sync)
            batched = "no denoiser call was captured"
            if captured and batch_offsets > 1:
                rounds = max(5, min(BATCH_CURVE_ROUNDS, sum(len(run) for run in fwd_times[1:])))
                batched = _time_batched_forward(den.forward, captured, max_offsets=batch_offsets, count=rounds, sync=sync)
            elif batch_offsets <= 1:
                batched = "not measured (windows of one offset)"
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
               "threads": threads if is_cpu else None, "half_forward": half, "batched_forward": batched,
               "denoiser_call": (den, captured) if captured else None}
    half_s = half.get("half_s") if isinstance(half, dict) else None
    curve = [forward_s[0] * r for r in batched["ratio"]] if isinstance(batched, dict) else None
    return (Compute(forward_s=forward_s, step_s=step_s, step_overhead_s=overhead, half_forward_s=half_s,
                    batched_forward_s=curve), out_bytes[0], details)


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
