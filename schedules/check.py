"""The invariants of docs/design.md §1, each with a stable code so tests and users can tell them apart.

``violations(schedule)`` lists every broken invariant; ``implied_totals`` is the
single place that says what windows imply (forwards per rank, bytes exchanged),
used by the planner when it emits a schedule and by the checker when it reads one.

``cautions(schedule)`` lists what is valid but cannot be priced by the planner's error model:
the freshness rule of ``planner/problem.py``. A parallel or reuse window builds its stand-in from
the output applied at step s-1 (and s-2 for ``linear``); the profile measures deviations against
computed outputs there, so after a reuse step the stand-in is stale and its error compounds unseen.
The planner never emits such a window; ``validate`` warns about one (it still runs exactly as
docs/design.md §1 says, so it is not a violation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from ..profiles.interconnects import PRESETS
from .model import ExactWindow, ParallelWindow, ReuseWindow, Schedule, Totals, Window, held_by_all

ViolationCode = Literal[
    "coverage",            # windows do not cover 0..T-1 exactly once, in order
    "first-not-exact",     # the first window is not exact
    "window-too-large",    # a window is larger than max_window
    "size-mismatch",       # a window's declared size disagrees with the next start
    "rank-out-of-range",   # a placement or split names a rank >= world_size
    "split-same-rank",     # a CFG split pair names one rank twice
    "split-overlap",       # an exact window's split pairs share a rank
    "batch-split",         # a batched parallel window has a CFG-split entry
    "unknown-interconnect",  # profile.interconnect names no interconnect preset
    "parallel-too-small",  # a parallel window has fewer than 2 offsets (docs/design.md §1: w >= 2)
    "needs-e-ref",         # a parallel/reuse window starts at step 0
    "linear-too-early",    # a linear-predictor window starts before step 2
    "totals-forwards",     # declared forwards per rank differ from what the windows imply
    "totals-bytes",        # declared bytes exchanged differ from what the windows imply
    "latency-speedup",     # latency.speedup is not sequential_s / predicted_s
    "quality-counts",      # quality.per_sample disagrees with itself or with the quality totals
    "quality-budget",      # the plan's recorded prediction breaks the bound it records
]

# relative tolerance of the recorded floats' own arithmetic (they round-trip through YAML exactly)
RECORD_REL_TOL = 1e-9


CautionCode = Literal[
    "stale-reference",         # a parallel/reuse window right after a reuse step
    "stale-linear-reference",  # a linear window whose step s-2 was a reuse step
]


@dataclass(frozen=True)
class Violation:
    code: ViolationCode
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def window_size(window: Window) -> int | None:
    """The size a window declares (None for an exact window: always 1)."""
    if isinstance(window, ParallelWindow):
        return len(window.placement)
    if isinstance(window, ReuseWindow):
        return window.size
    return 1


def implied_totals(windows: Sequence[Window], *, world_size: int, output_bytes: int,
                   raw_half_bytes: Optional[int] = None) -> Totals:
    """Forwards (denoiser calls, whole or half) per rank and bytes received, summed over ranks,
    that ``windows`` imply.

    Exact: every rank calls the denoiser once (a split pair's ranks on one half each); nothing
    moves except, per split pair, each rank's raw half to its partner: 2 x ``raw_half_bytes``
    (default ``output_bytes``: a raw half of a CFG batch has the guided output's shape, except for a
    model whose raw output also carries a learned variance, like PixArt's or DiT's 2x channels).
    Reuse: nothing at all.
    Parallel of size w: rank r does the offsets placed on it (both ranks of a split, plus that
    pair's swap of halves); at the end every rank receives the w guided outputs from their first
    computing rank: (world_size - 1) * w outputs in all, whatever the placement, except when every
    rank already holds every output (all offsets split over the only two ranks): nothing then.
    """
    forwards = [0] * world_size
    outputs_moved = 0
    halves_moved = 0
    for w in windows:
        if isinstance(w, ExactWindow):
            forwards = [f + 1 for f in forwards]
            halves_moved += 2 * len(w.split or ())
        elif isinstance(w, ParallelWindow):
            for j in range(w.size):
                ranks = w.offset_ranks(j)
                for rank in ranks:
                    if rank < world_size:
                        forwards[rank] += 1
                if len(ranks) == 2:
                    halves_moved += 2
            if not held_by_all(w.placement, world_size):
                outputs_moved += (world_size - 1) * w.size
    half = raw_half_bytes if raw_half_bytes is not None else output_bytes
    return Totals(forwards_per_rank=forwards, bytes_exchanged=outputs_moved * output_bytes + halves_moved * half)


def _split_violations(w: Window, where: str, world_size: int) -> list[Violation]:
    """Ranks in range, pairs of two distinct ranks, an exact window's pairs disjoint."""
    if isinstance(w, ParallelWindow):
        groups = [w.offset_ranks(j) for j in range(w.size)]
    elif isinstance(w, ExactWindow) and w.split:
        groups = [tuple(p) for p in w.split]
    else:
        return []
    out = []
    bad = sorted({r for g in groups for r in g if r >= world_size})
    if bad:
        field = "placement" if isinstance(w, ParallelWindow) else "split"
        out.append(Violation("rank-out-of-range", f"{where}: {field} names rank(s) {bad} but world_size={world_size}"))
    same = [list(g) for g in groups if len(g) == 2 and g[0] == g[1]]
    if same:
        out.append(Violation("split-same-rank", f"{where}: split pair(s) {same} name one rank twice; "
                                                f"a split needs two ranks [rank_uncond, rank_cond] (or give the single rank)"))
    if isinstance(w, ExactWindow):
        seen: set[int] = set()
        shared = sorted({r for g in groups for r in g if r in seen or seen.add(r)})
        if shared:
            out.append(Violation("split-overlap", f"{where}: rank(s) {shared} appear in more than one split pair; "
                                                  f"each rank computes one half of one step"))
    return out


def violations(schedule: Schedule) -> list[Violation]:
    """Every broken invariant of docs/design.md §1, in window order. Empty means valid."""
    out: list[Violation] = []
    T = schedule.num_steps
    wins = schedule.windows
    if not isinstance(wins[0], ExactWindow) or wins[0].start != 0:
        out.append(Violation("first-not-exact", f"window 0 (start {wins[0].start}, kind {wins[0].kind}) must be an exact window at step 0"))
    for i, (w, (start, stop)) in enumerate(zip(wins, schedule.window_bounds())):
        where = f"window {i} (start {start}, kind {w.kind})"
        implied = stop - start
        if implied <= 0 or stop > T:
            out.append(Violation("coverage", f"{where}: next window starts at {stop}; starts must increase strictly and stay below num_steps={T}"))
            continue
        declared = window_size(w)
        if isinstance(w, ExactWindow) and implied != 1:
            out.append(Violation("coverage", f"{where}: an exact window covers one step but the next window starts at {stop}"))
        elif declared != implied:
            out.append(Violation("size-mismatch", f"{where}: declares size {declared} but the next window starts at {stop} (size {implied})"))
        if declared is not None and declared > schedule.max_window:
            out.append(Violation("window-too-large", f"{where}: size {declared} exceeds max_window={schedule.max_window}"))
        if isinstance(w, ParallelWindow) and len(w.placement) < 2:
            out.append(Violation("parallel-too-small", f"{where}: a parallel window has at least 2 offsets (docs/design.md §1); "
                                                       f"make a 1-step window exact"))
        out.extend(_split_violations(w, where, schedule.world_size))
        if isinstance(w, ParallelWindow) and w.batch and w.has_split:
            out.append(Violation("batch-split", f"{where}: a batched window (batch: true) cannot split CFG halves over a "
                                                f"pair of ranks; place each offset on one rank, or drop batch"))
        if isinstance(w, (ParallelWindow, ReuseWindow)):
            if start == 0:
                out.append(Violation("needs-e-ref", f"{where}: needs the output of step start-1, so it cannot start at step 0"))
            elif w.predictor == "linear" and start < 2:
                out.append(Violation("linear-too-early", f"{where}: predictor 'linear' needs the outputs of steps start-1 and start-2, so start must be >= 2"))
    implied = implied_totals(wins, world_size=schedule.world_size, output_bytes=schedule.output_bytes,
                             raw_half_bytes=schedule.raw_half_bytes)
    if list(schedule.totals.forwards_per_rank) != list(implied.forwards_per_rank):
        out.append(Violation("totals-forwards", f"totals.forwards_per_rank is {list(schedule.totals.forwards_per_rank)} but the windows imply {implied.forwards_per_rank}"))
    if schedule.totals.bytes_exchanged != implied.bytes_exchanged:
        out.append(Violation("totals-bytes", f"totals.bytes_exchanged is {schedule.totals.bytes_exchanged} but the windows imply {implied.bytes_exchanged}"))
    named = schedule.profile.interconnect if schedule.profile is not None else None
    if named is not None and named not in PRESETS:
        out.append(Violation("unknown-interconnect", f"profile.interconnect is '{named}', not an interconnect preset; "
                                                     f"use one of: {', '.join(PRESETS)} (or drop the field to price "
                                                     "with the profile's own exchange costs)"))
    return out + _record_violations(schedule)


def _record_violations(schedule: Schedule) -> list[Violation]:
    """The recorded numbers agree with each other (no profile needed): the speedup is the ratio of
    the two latencies, the per-sample counts add up to the totals and to ``within``, at least
    ``required`` samples are within, and a statement over every sample holds for the recorded mean."""
    out: list[Violation] = []
    lat = schedule.latency
    if lat is not None:
        expected = lat.sequential_s / lat.predicted_s if lat.predicted_s > 0 else 1.0
        if not math.isclose(lat.speedup, expected, rel_tol=RECORD_REL_TOL):
            out.append(Violation("latency-speedup", f"latency.speedup is {lat.speedup:.6g} but sequential_s / predicted_s = "
                                                    f"{lat.sequential_s:.6g} / {lat.predicted_s:.6g} = {expected:.6g}"))
    q = schedule.quality
    if q is None:
        return out
    ps = q.per_sample
    if ps is not None:
        n = ps.samples
        if len(ps.budget_units) != n or len(ps.predicted_units) != n or ps.required > n:
            out.append(Violation("quality-counts", f"quality.per_sample: {n} samples but {len(ps.budget_units)} bounds, "
                                                   f"{len(ps.predicted_units)} predictions and {ps.required} required"))
            return out
        within = sum(p <= b for p, b in zip(ps.predicted_units, ps.budget_units))
        if ps.within != within:
            out.append(Violation("quality-counts", f"quality.per_sample.within is {ps.within} but {within} of the recorded "
                                                   "predicted_units are at or below their budget_units"))
        if sum(ps.budget_units) != q.budget_units or sum(ps.predicted_units) != q.predicted_units:
            out.append(Violation("quality-counts", f"quality.budget_units / predicted_units are {q.budget_units} / "
                                                   f"{q.predicted_units} but the per-sample lists sum to {sum(ps.budget_units)} / "
                                                   f"{sum(ps.predicted_units)}"))
        if within < ps.required:
            out.append(Violation("quality-budget", f"only {within} of {n} samples are predicted within their bound but "
                                                   f"{ps.required} are required"))
    elif q.predicted_units > q.budget_units:
        out.append(Violation("quality-budget", f"quality.predicted_units {q.predicted_units} exceed budget_units {q.budget_units}"))
    every = ps is None or ps.required == ps.samples
    if every and q.predicted > q.budget * (1 + RECORD_REL_TOL):
        out.append(Violation("quality-budget", f"quality.predicted {q.predicted:.6g} exceeds the budget {q.budget:.6g} that "
                                               "every sample is bound by"))
    return out


@dataclass(frozen=True)
class Caution:
    """Valid, but outside what the planner's error model prices (see the module docstring)."""

    code: CautionCode
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def cautions(schedule: Schedule) -> list[Caution]:
    """Windows that break the freshness rule, in window order. Meaningful on a schedule with no
    ``violations`` (the step kinds are read from the windows' starts and declared sizes)."""
    reuse_step: dict[int, bool] = {}   # step -> applied a stand-in (a reuse step)
    for w, (start, stop) in zip(schedule.windows, schedule.window_bounds()):
        for step in range(start, max(start, stop)):
            reuse_step[step] = isinstance(w, ReuseWindow)
    out: list[Caution] = []
    for i, (w, (start, _)) in enumerate(zip(schedule.windows, schedule.window_bounds())):
        if not isinstance(w, (ParallelWindow, ReuseWindow)):
            continue
        where = f"window {i} (start {start}, kind {w.kind})"
        if reuse_step.get(start - 1, False):
            out.append(Caution("stale-reference", f"{where} starts right after a reuse step, so its stand-in reuses a stand-in "
                                                  f"and the profile cannot price its error; put an exact step before it"))
        elif w.predictor == "linear" and reuse_step.get(start - 2, False):
            out.append(Caution("stale-linear-reference", f"{where}: predictor 'linear' extrapolates from step {start - 2}, "
                                                         f"a reuse step, so the profile cannot price its error; use 'last' "
                                                         f"or put two computed steps before it"))
    return out
