"""ParaStep hooks: run a schedule (docs/design.md §1) inside an *unmodified* diffusers pipeline.

Usage::

    handle = apply_parastep(pipe, ParaStepConfig(windows=schedule.windows, num_steps=T,
                                                 exchange=LocalExchange()))
    out = pipe(prompt, num_inference_steps=T, generator=...)   # the pipeline's own loop
    handle.stats()                                             # per-window timings, bytes, forwards
    remove_parastep(pipe)                                      # the pipeline is unchanged again

How it works. The pipeline's own ``__call__`` runs every step; three instance attributes are
wrapped (and restored by ``remove_parastep``):

- ``scheduler.set_timesteps``: starts a run (``handle.reset()``) and refuses a scheduler whose
  timestep count differs from the schedule's ``num_steps`` (second-order Heun/KDPM2...).
- the denoiser's ``forward`` (``pipe.unet`` or ``pipe.transformer``): computes for real when this
  rank must (exact window; parallel offset placed on this rank), otherwise returns a cheap
  placeholder: the last raw output this rank computed (same structure/shape/dtype, finite, so a
  pipeline's guidance rescale never divides by zero). A second call in one scheduler step is
  refused (``UserError``).
  CFG split (an exact window's ``split`` pair, a parallel offset placed on ``[u, c]``): every
  batched argument (dim 0 = the sample's batch 2B, through nested dicts/lists/tuples; a 0-d or
  size-1 timestep is shared) is cut to rows [0, B) on rank u (unconditional half) or [B, 2B) on
  rank c (conditional half); the rank computes its half, swaps raw halves with its partner
  (``Exchange.swap``) and returns [uncond; cond] in the denoiser's own output type, so the
  pipeline's guidance combine runs unchanged. A process playing both ranks (``LocalExchange``)
  runs both halves; in a split exact window so does every rank outside the pairs, so all ranks
  apply bit-identical outputs (kernels depend on the batch size in the last bits). Refused
  (``UserError``, at the first split forward) without a two-way guided batch: an odd batch, or a
  pipeline whose ``do_classifier_free_guidance`` (attribute, or local of its ``__call__``) is False
  or absent (guidance_scale <= 1; Flux-dev's distilled guidance).
- ``scheduler.step``: receives the pipeline-guided output ``e`` and decides:
  * exact: applies ``e`` (or ``override_outputs[i]``).
  * reuse (start s, k-th step): applies the predictor's stand-in; no forward anywhere.
  * parallel [s, s+w), offset j: at j = 0 snapshots the scheduler state (deep copy of its
    ``__dict__``) and the real latents ``x_s``; records ``e`` when offset j is this rank's; for
    j < w-1 returns ``step(xhat_{s+j}, stand-in_j)`` (the reuse chain that builds the next
    input ``xhat_{s+j+1}``); at j = w-1 exchanges the outputs, restores the snapshot, replays
    ``x_{s+k+1} = step_{s+k}(x_{s+k}, ehat_{s+k})`` for k = 0..w-1 and returns ``x_{s+w}`` in
    the type the pipeline expects (the original ``step``'s own return value).

Stand-ins (k = 0, 1, ...): ``last``: ``e_{s-1}``; ``linear``: ``e_{s-1} + (k+1)(e_{s-1} - e_{s-2})``,
where ``e_{s-1}, e_{s-2}`` are the guided outputs *applied* to the real trajectory at steps s-1,
s-2 (a reuse step's applied output is its stand-in).

Stochastic first-order schedulers (DDPM, Euler ancestral, DPM-Solver++ SDE, LCM/TCD, flow-match
with ``stochastic_sampling``, DDIM with ``eta > 0``, Euler with ``s_churn > 0``) are exact too when
the pipeline passes a seeded ``generator`` to ``step`` (diffusers pipelines do): the generator
state is snapshotted with the scheduler at a parallel window's start and restored before the
replay, so step i always draws the noise a sequential run draws at step i (the scratch steps draw
the same noise on their copy: docs/design.md §1's ``step`` includes its noise). Every rank seeds the same
generator, so exact and reuse steps draw identical noise everywhere.

Refused (``UserError``, at apply time or at the first offending call): schedulers of order != 1
(Heun, KDPM2, DPM-Solver SDE), noise not drawn from a step ``generator``, a pipeline that calls
its denoiser more than once per step, a run with more steps than the schedule.

Profiler API (observer and replay):

- ``ParaStepConfig.observer(record: StepRecord)`` is called once per *real* step i, in order,
  after ``x_{i+1}`` is known, on every rank: ``step``, ``window_start``, ``window_kind``,
  ``offset``, ``timestep``, ``latents_in`` (x_i), ``denoiser_input`` (the sample the denoiser saw
  at step i: x_i for exact/reuse, the reuse-chain ``xhat_i`` for a parallel offset),
  ``guided_output`` (``e_i`` / ``ehat_i``; None in a reuse window), ``applied_output`` (what
  ``step`` applied), ``latents_out`` (x_{i+1}). Tensors are the live ones: clone to keep.
  With an exact-only schedule the records are the reference trajectory of docs/design.md §1.
- ``ParaStepConfig.override_outputs: Mapping[int, Tensor]``: for these steps (exact windows
  only) the denoiser is not run (it returns the placeholder; only if this rank has no
  placeholder yet, i.e. at the very first step, it runs once) and the given tensor is applied
  as the guided output. Lets a profiler replay a recorded prefix without forwards.
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch

from ..errors import UserError
from ..schedules.model import ExactWindow, ParallelWindow, ReuseWindow, entry_ranks
from . import batchstep
from .exchange import Exchange, LocalExchange
from .schedulers import (STOCHASTIC_SCHEDULERS, UNSUPPORTED_SCHEDULERS, check_pipeline_supported,  # noqa: F401
                         check_scheduler_supported, is_stochastic, scheduler_state)  # the scheduler policy's one home

WindowKind = Literal["exact", "parallel", "reuse"]
# what this process's denoiser call does at one step: the whole guided batch; one CFG half, swapping
# raw halves with the partner; both halves in two forwards (a process playing both ranks of a split
# pair: LocalExchange); or nothing (a placeholder)
Role = Literal["whole", "half", "halves", "none"]
Half = Literal["uncond", "cond"]

_ATTR = "_parastep_handle"


@dataclass(frozen=True)
class StepRecord:
    step: int
    window_start: int
    window_kind: WindowKind
    offset: int
    timestep: Any
    latents_in: torch.Tensor
    denoiser_input: torch.Tensor
    guided_output: Optional[torch.Tensor]
    applied_output: torch.Tensor
    latents_out: torch.Tensor


@dataclass
class WindowStats:
    start: int
    kind: WindowKind
    size: int
    seconds: float = 0.0
    bytes_received: int = 0
    exchange_s: float = 0.0
    snapshot_s: float = 0.0   # scheduler snapshot at the window start + restore at its end
    replay_s: float = 0.0     # the w real steps after the exchange
    forwards: int = 0         # steps this rank computed: the whole batch, one CFG half, or both halves
    half_forwards: int = 0    # half-batch denoiser passes among them (CFG split: 1 for a half, 2 for both)
    swap_s: float = 0.0       # CFG split: swapping raw halves with the partner (included in exchange_s)
    calls: int = 0            # denoiser calls this rank made (a batched window: one per rank, unless it fell back)
    batch_fallbacks: int = 0  # batched window: offsets computed alone because the call was not the predicted one


@dataclass(frozen=True)
class _StepPlan:
    window: int
    kind: WindowKind
    start: int
    size: int
    offset: int
    placement: tuple[int | tuple[int, ...], ...]   # parallel: entries (a rank or a CFG split pair)
    predictor: str
    groups: tuple[tuple[int, ...], ...] = ()   # who computes this step: one rank, or a split pair (uncond, cond) each
    role: Role = "none"                        # what THIS process's denoiser call does
    half: Optional[Half] = None                # role "half": the half this rank computes
    partner: Optional[int] = None              # role "half": the rank computing the other half
    group: tuple[int, ...] = ()                # batched window, role "whole": the offsets on this offset's rank


@dataclass
class ParaStepConfig:
    windows: Sequence[Any]                     # schedules.model windows (validated schedule)
    num_steps: int
    exchange: Exchange = field(default_factory=LocalExchange)
    observer: Optional[Callable[[StepRecord], None]] = None
    override_outputs: Mapping[int, torch.Tensor] = field(default_factory=dict)
    sync_timing: bool = False   # CUDA: synchronize at each step's end so window timings are wall-accurate


def _role(group: Sequence[int], exchange: Exchange) -> tuple[Role, Optional[Half], Optional[int]]:
    """This process's part in computing one offset whose computing ranks are ``group`` (one rank,
    or a CFG split pair ``(rank_uncond, rank_cond)``)."""
    mine = [exchange.owns(r) for r in group]
    if not any(mine):
        return "none", None, None
    if len(group) == 1:
        return "whole", None, None
    if all(mine):
        return "halves", None, None
    k = mine.index(True)
    return "half", ("uncond", "cond")[k], group[1 - k]


def _step_plan(windows: Sequence[Any], num_steps: int, exchange: Optional[Exchange] = None) -> list[_StepPlan]:
    """One entry per step: its window, who computes it, and what this process computes there.

    Exact window: every rank computes. With a ``split``, a rank in a pair computes its half; every
    other rank computes the whole batch as the same two half-batch forwards ("halves"), so that all
    ranks apply bit-identical outputs (a whole-batch forward may differ in the last bits: kernels
    depend on the batch size) and end the step with identical latents, as docs/design.md §1 requires. A
    process playing every rank (``LocalExchange``) computes both halves. (A rank outside the pairs
    is the step's slowest either way, so this costs no latency.) Parallel window: the rank(s) of
    ``placement[j]`` compute offset j: a pair's two ranks one half each."""
    exchange = exchange if exchange is not None else LocalExchange()
    starts = [w.start for w in windows] + [num_steps]
    plan: list[_StepPlan] = []
    for k, w in enumerate(windows):
        size = starts[k + 1] - w.start
        if isinstance(w, ExactWindow):
            kind, placement, pred = "exact", (), "last"
        elif isinstance(w, ParallelWindow):
            kind, pred = "parallel", w.predictor
            placement = tuple(e if isinstance(e, int) else tuple(e) for e in w.placement)
        elif isinstance(w, ReuseWindow):
            kind, placement, pred = "reuse", (), w.predictor
        else:
            raise TypeError(f"unknown window {w!r}")
        if size < 1 or (kind == "parallel" and size != len(placement)) or (kind == "exact" and size != 1):
            raise UserError(f"window {k} (start {w.start}) has an inconsistent size; run 'parastep validate' on the schedule")
        for j in range(size):
            if kind == "exact":
                world = max([exchange.world_size] + [r + 1 for pair in w.split or () for r in pair])
                groups = tuple(w.rank_groups(world))
                mine = next(g for g in groups if exchange.rank in g)
                role = ("whole", None, None) if not w.split else _role(mine, exchange)
                if w.split and role[0] == "whole":
                    role = ("halves", None, None)
            elif kind == "parallel":
                groups = (entry_ranks(placement[j]),)
                role = _role(groups[0], exchange)
            else:
                groups, role = (), ("none", None, None)
            batch = ()
            if kind == "parallel" and w.batch and role[0] == "whole":
                batch = tuple(i for i, e in enumerate(placement) if e == placement[j])
            plan.append(_StepPlan(k, kind, w.start, size, j, placement, pred, groups, *role, group=batch))
    if len(plan) != num_steps:
        raise UserError(f"windows cover {len(plan)} steps but num_steps={num_steps}; run 'parastep validate' on the schedule")
    return plan


def denoiser_of(pipe) -> tuple[str, torch.nn.Module]:
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return name, module
    raise UserError(f"pipeline {type(pipe).__name__} has neither a 'unet' nor a 'transformer'; parastep cannot find its denoiser")


def _generators(value: Any) -> list[torch.Generator]:
    if isinstance(value, torch.Generator):
        return [value]
    if isinstance(value, (list, tuple)):
        return [g for g in value if isinstance(g, torch.Generator)]
    return []


def _wrapper(orig: Callable, impl: Callable) -> Callable:
    """A plain function calling ``impl`` that carries ``orig``'s signature (pipelines inspect
    ``scheduler.step``'s parameters to decide which kwargs to pass)."""

    @functools.wraps(orig)
    def wrapped(*args, **kwargs):
        return impl(*args, **kwargs)

    return wrapped


def _first(out: Any) -> torch.Tensor:
    return out[0]   # SchedulerOutput (BaseOutput) and tuples both index the sample at 0


# ---- CFG split: the guided batch's halves ------------------------------------------------------

_MISSING = object()


def _sample_batch(args: tuple, kwargs: Mapping[str, Any]) -> Optional[int]:
    """Batch of the denoiser's sample input: its first positional argument, or ``sample`` /
    ``hidden_states`` given by keyword (None if it is not a tensor with a batch dimension)."""
    x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else None


def _rows(value: Any, lo: int, hi: int, batch: int) -> Any:
    """``value`` with every batched tensor (dim 0 == ``batch``) cut to rows [lo, hi), through nested
    dicts, lists and tuples; 0-d and size-1 tensors (a shared timestep) and non-tensors unchanged."""
    if isinstance(value, torch.Tensor):
        return value[lo:hi] if value.dim() >= 1 and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {k: _rows(v, lo, hi, batch) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_rows(v, lo, hi, batch) for v in value)
    return value


def _leaves(out: Any) -> list[torch.Tensor]:
    """The tensors of a denoiser output (tensor, tuple/list, BaseOutput/dict), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if batchstep.is_output_dict(out):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _leaves(v)]
    return []


def _rebuild(like: Any, leaves: Any) -> Any:
    """``like``'s structure with its tensors taken in order from the iterator ``leaves``."""
    if isinstance(like, torch.Tensor):
        return next(leaves)
    if batchstep.is_output_dict(like):
        return type(like)(**{k: _rebuild(v, leaves) for k, v in like.items()})
    if isinstance(like, (list, tuple)):
        return type(like)(_rebuild(v, leaves) for v in like)
    return like


def _cat_halves(uncond: Any, cond: Any) -> Any:
    """The whole-batch output [uncond; cond] in the denoiser's own output type."""
    if isinstance(uncond, torch.Tensor):
        return torch.cat([uncond, cond])
    if batchstep.is_output_dict(uncond):
        return type(uncond)(**{k: _cat_halves(v, cond[k]) for k, v in uncond.items()})
    if isinstance(uncond, (list, tuple)):
        return type(uncond)(_cat_halves(a, b) for a, b in zip(uncond, cond))
    return uncond


def _pipeline_local(pipe, name: str) -> Any:
    """``name`` among the locals of the pipeline's running ``__call__`` (found by ``self is pipe`` up
    the stack): pipelines that decide CFG in a local (PixArt) rather than an attribute."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            local = frame.f_locals
            if local.get("self") is pipe and name in local:
                return local[name]
            frame = frame.f_back
    finally:
        del frame
    return _MISSING


def cfg_flag(pipe) -> Optional[bool]:
    """The running pipeline's ``do_classifier_free_guidance``: its attribute, else the local of its
    ``__call__`` (PixArt, DiT-style pipelines decide CFG in a local); None where it has neither
    (distilled guidance). Call it from inside the pipeline's call (e.g. a denoiser hook)."""
    flag = getattr(pipe, "do_classifier_free_guidance", _MISSING)
    if flag is _MISSING:
        flag = _pipeline_local(pipe, "do_classifier_free_guidance")
    return None if flag is _MISSING else bool(flag)


class ParaStepHandle:
    """State of the hooks on one pipeline; ``reset()`` starts a fresh run (done by set_timesteps)."""

    def __init__(self, pipe, config: ParaStepConfig) -> None:
        self.pipe = pipe
        self.config = config
        self.exchange = config.exchange
        self.plan = _step_plan(config.windows, config.num_steps, self.exchange)
        self.denoiser_name, self.denoiser = denoiser_of(pipe)
        self.scheduler = pipe.scheduler
        check_pipeline_supported(pipe)   # multi-stage pipelines and the scheduler audit
        self._orig_step = self.scheduler.step                      # bound method (or earlier wrapper)
        self._orig_set_timesteps = self.scheduler.set_timesteps
        self._orig_forward = self.denoiser.forward
        self._had = {"step": "step" in self.scheduler.__dict__,
                     "set_timesteps": "set_timesteps" in self.scheduler.__dict__,
                     "forward": "forward" in self.denoiser.__dict__}
        self._stochastic = is_stochastic(self.scheduler)
        self._step_sig = inspect.signature(self._orig_step)
        for needed in ("model_output", "sample"):
            if needed not in self._step_sig.parameters:
                raise UserError(f"scheduler {type(self.scheduler).__name__}.step has no '{needed}' argument; parastep cannot wrap it")
        self.reset()

    # ---- lifecycle -----------------------------------------------------------------------------

    def reset(self) -> None:
        self.step_index = 0
        self.calls_this_step = 0
        self.last_raw: Any = None
        self.applied: list[torch.Tensor] = []          # last two applied outputs: [e_{i-2}, e_{i-1}]
        self.forwards = 0
        self.windows: list[WindowStats] = []
        self._win: Optional[dict] = None
        self._reuse_applied: list[torch.Tensor] = []
        self._cfg_checked = False
        self._t_last = time.perf_counter()
        self._batches: dict[tuple[int, ...], Any] = {}   # batched window: per rank's offsets, a RankBatch or why not
        self._last_step: Optional[inspect.BoundArguments] = None   # the previous scheduler.step call
        self._latents_out: Optional[torch.Tensor] = None          # what that call returned (the pipeline's latents)
        self._begin = 0                                           # index of step 0 in scheduler.timesteps
        self.batch_fallback_reasons: list[str] = []

    def install(self) -> None:
        sched, den = self.scheduler, self.denoiser
        sched.step = _wrapper(self._orig_step, self._step)
        sched.set_timesteps = _wrapper(self._orig_set_timesteps, self._set_timesteps)
        den.forward = _wrapper(self._orig_forward, self._forward)
        object.__setattr__(self.pipe, _ATTR, self)

    def uninstall(self) -> None:
        for obj, name, orig in ((self.scheduler, "step", self._orig_step),
                                (self.scheduler, "set_timesteps", self._orig_set_timesteps),
                                (self.denoiser, "forward", self._orig_forward)):
            if self._had[name]:
                obj.__dict__[name] = orig
            else:
                obj.__dict__.pop(name, None)
        self.pipe.__dict__.pop(_ATTR, None)

    @property
    def steps_done(self) -> int:
        return self.step_index

    def stats(self) -> list[WindowStats]:
        return list(self.windows)

    # ---- wrappers ------------------------------------------------------------------------------

    def _set_timesteps(self, *args, **kwargs):
        out = self._orig_set_timesteps(*args, **kwargs)
        self.reset()
        self._timesteps_n = len(self.scheduler.timesteps)   # checked at the first step: img2img (strength) starts
        return out                                           # at the scheduler's begin_index, set after this call

    def _check_steps_run(self, timestep) -> None:
        n = getattr(self, "_timesteps_n", None)
        begin = getattr(self.scheduler, "begin_index", None)
        if begin is None and timestep is not None:   # no begin index (DDIM): where the first step's timestep sits
            t = torch.as_tensor(timestep).flatten()
            hits = (torch.as_tensor(self.scheduler.timesteps).cpu() == t[0].cpu()).nonzero() if t.numel() else []
            begin = int(hits[0, 0]) if len(hits) else 0
        self._begin = int(begin or 0)
        if n is not None and n - begin != self.config.num_steps:
            raise UserError(f"scheduler {type(self.scheduler).__name__} produced {n - begin} timesteps for a schedule of "
                            f"{self.config.num_steps} steps (higher-order scheduler, or num_inference_steps or strength "
                            "differs); use a first-order scheduler and the steps the schedule was planned for")

    def _forward(self, *args, **kwargs):
        self.calls_this_step += 1
        if self.calls_this_step > 1:
            raise UserError(f"pipeline {type(self.pipe).__name__} calls its denoiser {self.calls_this_step} times per step; "
                            "parastep needs one call per step (disable true-CFG/skip-layer guidance or batch the calls)")
        i = self.step_index
        if i >= len(self.plan):
            raise UserError(f"pipeline {type(self.pipe).__name__} runs more than the schedule's {len(self.plan)} steps; "
                            "call it with num_inference_steps=schedule.num_steps")
        p = self.plan[i]
        role = "none" if p.kind == "exact" and i in self.config.override_outputs else p.role
        if role == "none" and self.last_raw is not None:
            return self.last_raw
        stats = self._window_stats(p)
        if role in ("half", "halves"):
            out = self._split_forward(p, stats, args, kwargs)
        elif role == "whole" and len(p.group) > 1:
            out = self._batched_forward(p, stats, args, kwargs)
        else:   # the whole batch (or the very first call, to have a placeholder)
            out = self._orig_forward(*args, **kwargs)
            self.forwards += 1
            stats.forwards += 1
            stats.calls += 1
        self.last_raw = out
        return out

    def _check_cfg_batch(self, batch: Optional[int], step: int) -> None:
        """Refuse a CFG split where the denoiser's batch is not [uncond; cond] (one line)."""
        why = None
        if batch is None:
            why = "its denoiser's sample input has no batch dimension"
        elif batch % 2:
            why = f"its denoiser batch is {batch} (odd)"
        elif not self._cfg_checked:
            flag = cfg_flag(self.pipe)
            if flag is None:
                why = "it reports no do_classifier_free_guidance (distilled guidance, e.g. Flux-dev, has none)"
            elif not flag:
                why = "it runs without classifier-free guidance (do_classifier_free_guidance is False: guidance_scale <= 1)"
        if why:
            raise UserError(f"the schedule splits CFG at step {step} but pipeline {type(self.pipe).__name__} has no "
                            f"two-way guided batch: {why}; use guidance_scale > 1 or a schedule without 'split' pairs")
        self._cfg_checked = True

    def _split_forward(self, p: _StepPlan, stats: WindowStats, args: tuple, kwargs: dict) -> Any:
        """CFG split: rows [0, B) of every batched argument are the unconditional half, [B, 2B) the
        conditional one (diffusers concatenates [uncond, cond]). Compute this rank's half and swap raw
        halves with the partner (or, playing both ranks, compute both), then return the whole raw
        output [uncond; cond] in the denoiser's own output type: the pipeline's guidance combine
        sees exactly what a whole-batch forward gives it (up to kernels' batch-size effects)."""
        batch = _sample_batch(args, kwargs)
        self._check_cfg_batch(batch, self.step_index)
        b = batch // 2

        def half_forward(lo: int) -> Any:
            out = self._orig_forward(*_rows(args, lo, lo + b, batch), **_rows(kwargs, lo, lo + b, batch))
            stats.half_forwards += 1
            return out

        self.forwards += 1
        stats.forwards += 1
        stats.calls += 2 if p.role == "halves" else 1
        if p.role == "halves":
            return _cat_halves(half_forward(0), half_forward(b))
        mine = half_forward(0 if p.half == "uncond" else b)
        t0 = time.perf_counter()
        received, nbytes = self.exchange.swap(_leaves(mine), p.partner)
        dt = time.perf_counter() - t0
        stats.swap_s += dt
        stats.exchange_s += dt
        stats.bytes_received += nbytes
        theirs = _rebuild(mine, iter(received))
        return _cat_halves(mine, theirs) if p.half == "uncond" else _cat_halves(theirs, mine)

    # ---- BatchStep (batchstep.py) -----------------------------------------------------------------

    def _timestep(self, step: int) -> torch.Tensor:
        return self.scheduler.timesteps[self._begin + step]

    def _batched_forward(self, p: _StepPlan, stats: WindowStats, args: tuple, kwargs: dict) -> Any:
        """This rank's offsets ``p.group`` of a batched window: one call at the first, the precomputed
        slice at the others when their call is the predicted one, else a call of their own (counted)."""
        self.forwards += 1
        stats.forwards += 1
        if p.offset == p.group[0]:
            prepared = self._prepare_batch(p, args, kwargs)
            self._batches[p.group] = prepared
            if not isinstance(prepared, str):
                b_args, b_kwargs = batchstep.batched_call(args, kwargs, prepared)
                out = self._orig_forward(*b_args, **b_kwargs)
                stats.calls += 1
                prepared.outputs = batchstep.split_output(out, offsets=len(p.group), batch=prepared.form.batch)
                return prepared.outputs[0]
        else:
            prepared = self._batches.get(p.group)
            index = p.group.index(p.offset)
            if isinstance(prepared, batchstep.RankBatch) and batchstep.matches(prepared, index, args, kwargs):
                return prepared.outputs[index]
            if isinstance(prepared, batchstep.RankBatch):
                self.batch_fallback_reasons.append(f"step {self.step_index}: the pipeline's denoiser arguments differ from "
                                                   "the predicted ones (it edits latents or conditions per step)")
        stats.batch_fallbacks += 1
        stats.calls += 1
        return self._orig_forward(*args, **kwargs)

    def _prepare_batch(self, p: _StepPlan, args: tuple, kwargs: dict) -> "batchstep.RankBatch | str":
        """Run the reuse chain ahead from this offset to the rank's last one on the live scheduler
        (state and generators restored after) and predict each offset's call; or say why not."""
        i = self.step_index
        if self._last_step is None:
            return self._no_batch(i, "no scheduler step ran before the window")
        sched = self.scheduler
        snap = scheduler_state(sched)
        gens = [(g, g.get_state()) for g in _generators(self._last_step.arguments.get("generator"))]
        try:
            form = batchstep.find_form(args, kwargs, latents=self._latents_out, t=self._timestep(i), scheduler=sched)
            if isinstance(form, str):
                return self._no_batch(i, form)
            tau = batchstep.get_arg(args, kwargs, form.timestep_key)
            samples = [batchstep.get_arg(args, kwargs, form.sample_key)]
            timesteps = [tau]
            x = self._latents_out
            for j in range(p.offset, p.group[-1]):
                t = self._timestep(p.start + j)
                bound = inspect.BoundArguments(self._last_step.signature, dict(self._last_step.arguments))
                bound.arguments["timestep"] = t
                x = _first(self._call_step(bound, model_output=self._stand_in(p.predictor, j, p.start), sample=x))
                if j + 1 in p.group:
                    t_next = self._timestep(p.start + j + 1)
                    samples.append(batchstep.sample_arg(form, sched, x, t_next))
                    timesteps.append(batchstep.timestep_arg(form, t_next, tau.device))
        finally:
            self._restore(snap, gens)
        return batchstep.RankBatch(offsets=p.group, form=form, samples=samples, timesteps=timesteps,
                                   rest=batchstep.rest_of(args, kwargs, form))

    def _restore(self, snap: dict, gens: list) -> None:
        """Put the scheduler (``scheduler_state``) and the generators back where a snapshot took them."""
        d = self.scheduler.__dict__
        for k in [k for k in d if k not in snap and k not in ("step", "set_timesteps")]:
            del d[k]
        d.update(snap)
        for g, state in gens:
            g.set_state(state)

    def _no_batch(self, step: int, why: str) -> str:
        self.batch_fallback_reasons.append(f"step {step}: {why}")
        return why

    def _window_stats(self, p: _StepPlan) -> WindowStats:
        if not self.windows or self.windows[-1].start != p.start:
            self.windows.append(WindowStats(start=p.start, kind=p.kind, size=p.size))
        return self.windows[-1]

    def _stand_in(self, predictor: str, k: int, start: int) -> torch.Tensor:
        if not self.applied:
            raise UserError(f"a window starting at step {start} needs the output applied at step {start - 1}; the schedule is invalid")
        e1 = self.applied[-1]
        if predictor == "last":
            return e1
        if len(self.applied) < 2:
            raise UserError(f"a 'linear' window starting at step {start} needs outputs of steps {start - 1} and {start - 2}")
        e2 = self.applied[-2]
        return e1 + (k + 1) * (e1 - e2)

    def _apply(self, e: torch.Tensor) -> None:
        self.applied = [self.applied[-1], e] if self.applied else [e]

    def _call_step(self, bound: inspect.BoundArguments, *, model_output, sample):
        bound.arguments["model_output"] = model_output
        bound.arguments["sample"] = sample
        return self._orig_step(*bound.args, **bound.kwargs)

    def _observe(self, p: _StepPlan, step: int, offset: int, timestep, x_in, den_in, guided, applied, x_out) -> None:
        if self.config.observer is not None:
            self.config.observer(StepRecord(step=step, window_start=p.start, window_kind=p.kind, offset=offset,
                                            timestep=timestep, latents_in=x_in, denoiser_input=den_in,
                                            guided_output=guided, applied_output=applied, latents_out=x_out))

    def _check_step_kwargs(self, args: Mapping[str, Any]) -> None:
        eta, churn = args.get("eta"), args.get("s_churn")
        noisy = (self._stochastic or (eta is not None and float(eta) > 0)
                 or (churn is not None and float(churn) > 0))
        if noisy and not _generators(args.get("generator")) and args.get("variance_noise") is None:
            raise UserError(f"{type(self.scheduler).__name__}.step draws noise but the pipeline passes it no generator; "
                            "parastep replays noise only from a seeded generator: pass generator=torch.Generator().manual_seed(S)")

    def _step(self, *args, **kwargs):
        bound = self._step_sig.bind(*args, **kwargs)
        self._check_step_kwargs(bound.arguments)
        i = self.step_index
        if i == 0:
            self._check_steps_run(bound.arguments.get("timestep"))
        if i >= len(self.plan):
            raise UserError(f"pipeline {type(self.pipe).__name__} runs more than the schedule's {len(self.plan)} steps; "
                            "call it with num_inference_steps=schedule.num_steps")
        p = self.plan[i]
        self.calls_this_step = 0
        e = bound.arguments["model_output"]
        x = bound.arguments["sample"]
        t = bound.arguments.get("timestep")
        stats = self._window_stats(p)
        if p.kind == "exact":
            if i in self.config.override_outputs:
                e = self.config.override_outputs[i].to(device=e.device, dtype=e.dtype)
            out = self._call_step(bound, model_output=e, sample=x)
            self._apply(e)
            self._observe(p, i, 0, t, x, x, e, e, _first(out))
        elif p.kind == "reuse":
            # the window's references e_{s-1}, e_{s-2} stay fixed: history moves at the window's end
            a = self._stand_in(p.predictor, p.offset, p.start)
            out = self._call_step(bound, model_output=a, sample=x)
            self._observe(p, i, p.offset, t, x, x, None, a, _first(out))
            self._reuse_applied.append(a)
            if p.offset == p.size - 1:
                for a_k in self._reuse_applied:
                    self._apply(a_k)
                self._reuse_applied = []
        else:
            out = self._parallel_step(p, i, bound, e, x, t, stats)
        self._last_step = bound
        self._latents_out = _first(out)
        self.step_index = i + 1
        if self.config.sync_timing and e.is_cuda:
            torch.cuda.synchronize(e.device)
        now = time.perf_counter()
        stats.seconds += now - self._t_last
        self._t_last = now
        return out

    def _parallel_step(self, p: _StepPlan, i: int, bound, e, x, t, stats: WindowStats):
        j = p.offset
        if j == 0:
            t0 = time.perf_counter()
            snap = scheduler_state(self.scheduler)
            gens = [(g, g.get_state()) for g in _generators(bound.arguments.get("generator"))]
            stats.snapshot_s += time.perf_counter() - t0
            self._win = {"snap": snap, "gens": gens, "x": x, "owned": {}, "calls": [], "inputs": []}
        win = self._win
        if p.role != "none":     # this rank computed offset j (whole, or a split half: it holds the guided e too)
            win["owned"][j] = e
        win["calls"].append(bound)
        win["inputs"].append((t, x))
        if j < p.size - 1:
            return self._call_step(bound, model_output=self._stand_in(p.predictor, j, p.start), sample=x)
        t0 = time.perf_counter()
        outputs, received = self.exchange.exchange(win["owned"], p.placement, like=e)
        t1 = time.perf_counter()
        stats.exchange_s += t1 - t0
        stats.bytes_received += received
        self._restore(win["snap"], win["gens"])
        t2 = time.perf_counter()
        stats.snapshot_s += t2 - t1
        xk = win["x"]
        out = None
        for k in range(p.size):
            out = self._call_step(win["calls"][k], model_output=outputs[k], sample=xk)
            x_next = _first(out)
            self._apply(outputs[k])
            tk, xhat = win["inputs"][k]
            self._observe(p, p.start + k, k, tk, xk, xhat, outputs[k], outputs[k], x_next)
            xk = x_next
        stats.replay_s += time.perf_counter() - t2
        self._win = None
        self._batches = {}
        return out


def apply_parastep(pipe, config: ParaStepConfig) -> ParaStepHandle:
    """Wrap ``pipe``'s denoiser and scheduler so its own loop runs ``config``'s schedule."""
    if _ATTR in pipe.__dict__:
        raise UserError("parastep is already applied to this pipeline; call remove_parastep(pipe) first")
    handle = ParaStepHandle(pipe, config)
    handle.install()
    return handle


def remove_parastep(pipe) -> None:
    """Undo ``apply_parastep``: the pipeline, its denoiser and its scheduler are as before."""
    handle = pipe.__dict__.get(_ATTR)
    if handle is not None:
        handle.uninstall()
