"""The planning problem of docs/design.md §3 as integer data: a constrained shortest path over step boundaries.

Nodes are the step boundaries 0..T (boundary b = "steps 0..b-1 are done"). An edge s -> s+w is a
candidate window covering steps s..s+w-1; a path from 0 to T is a schedule. Each edge carries a
latency (docs/cost-model.md) and an error (``Profile.window_deviation``); the planner minimises total
latency subject to total error <= budget.

Candidate edges (``build_problem``):

- exact, w = 1, at every s (the only edge leaving boundary 0, so the first window is always exact);
- parallel, w in 2..J, s >= 1; predictor ``last`` (s >= 1) or ``linear`` (s >= 2);
- reuse, w in 1..J, s >= 1, same predictor rules.

Fresh reference outputs. A parallel or reuse window's stand-in is built from the guided output
applied at step s-1 (and s-2 for ``linear``). The profile's tables measure deviations against the
true e_{s-1} (e_{s-2}), which is what a step of an exact window applied, and approximately what a
parallel window's prediction applied. A *reuse* step applies a stand-in itself, so a window right
after a reuse window would extrapolate from a stale output and compound an error the tables do not
see (1 forward + T-1 chained reuse steps would look nearly free). So the planner requires:

- a parallel or reuse window starts only where step s-1 was not a reuse step;
- with ``linear``, step s-2 was not a reuse step either.

This is a path constraint, not a per-edge one. Its state at a boundary is how many of the steps
just before it applied a computed output (``fresh`` in 0..2): exact -> min(2, fresh + 1), parallel
-> 2, reuse -> 0; ``last`` needs fresh >= 1, ``linear`` fresh = 2 (``fresh_needed`` /
``fresh_after``). The CP-SAT model states it with adjacency constraints; the DP oracle and the
bounds expand the state into the graph.

A parallel window of size 1 is not a candidate: it costs fwd(1) + exchange + step, never less than
an exact window (fwd(1) + step) that has zero error.

Placement of a parallel window (``best_placement``). Without CFG split: round robin, offset j on
rank j % G. Its most loaded rank holds ceil(w / G) offsets; any placement of w offsets on G ranks
has some rank with at least ceil(w / G) offsets (pigeonhole) and the window's compute is max_r
fwd(n_r); since fwd is nondecreasing in k under the cost model the round robin's fwd(ceil(w / G))
is the least possible, and the exchange and step terms do not depend on the placement. So round
robin is optimal among unsplit placements. (If a measured forward table is not monotone the
latency below is still exact for the emitted placement; only this optimality claim weakens, and
``build_problem`` reports it in ``Problem.notes``.)

BatchStep (profiles with ``Profile.can_batch``): a rank may compute its offsets in one batched call,
costing ``bfwd(n) = profile.batched_forward_time_s(n)`` plus the reuse-chain steps it runs ahead to
build their inputs (its last offset minus its first, times a step). Where some rank holds two offsets
or more (w > G) the planner also prices the batched *block* placement (offsets j on rank
j // ceil(w / G)) and keeps it where it is faster. Among batched placements it is optimal: some rank
holds n >= ceil(w / G) offsets, its chain spans at least n - 1 steps, and the block placement meets
both bounds at once with bfwd nondecreasing. Batching adds no error the profile prices (the same
inputs, kernels' last bits aside), so like a split it is a per-window choice independent of the
path. ``allow_batch=False`` (``plan --batch off``) plans without it; a window does not batch and
split at once.

CFG split (profiles with ``Profile.can_split``): an offset may be split over a pair of ranks, each
computing one half (``half_forward_s``) and swapping raw halves (``pair_exchange_time_s``); it adds
no error, so for every window the planner takes the fastest placement of this family: ``p`` pairs
(ranks 2k, 2k+1) and ``q = G - 2p`` single ranks; ``x`` offsets split, round robin over the pairs,
the other ``w - x`` whole, round robin over the singles. Compute is ``max(ceil(x / p) * (half +
swap), fwd(ceil((w - x) / q)))`` (a pair's two ranks do the same work in lock step, so they never
wait for each other); the end exchange is skipped when every rank holds every output (G = 2, all
offsets split). The family is searched exhaustively over (p, x): O(G * w) per window size. An
exact window splits over pairs (0, 1), (2, 3), ... when G is even and half + swap < fwd(1). Ties
keep the unsplit placement (fewer bytes). Placements outside the family (a rank holding both whole
and half offsets) are not considered; ``--cfg-split off`` (``allow_split=False``) plans without
splits. Since a split adds no error the choice is per window and independent of the path, so the
CP-SAT model and the DP oracle see it as the edge's latency and stay exact over this family.

Dominance pruning (exact: it never changes the optimal value):

1. Per (start, size, kind) the two predictors have equal latency. ``last`` needs less history than
   ``linear``, so ``linear`` is kept only where its error is strictly lower on some sample (it then
   competes where two fresh outputs precede the window, ``last`` elsewhere).
2. An edge whose error alone exceeds the bound of so many samples that fewer than ``min_within``
   remain can be on no feasible path: dropped.
3. A parallel or reuse edge s -> s+w whose latency is at least w exact windows' latency is
   dominated by that chain of exact windows (zero error, no more latency, needs no history and
   leaves at least as many fresh outputs): dropped.

Integer data. Latency: ``latency_units = round(latency_s * latency_units_per_s)`` (default 1e6,
microseconds; rounding to the nearest unit, so a plan's integer latency is within T/2 units of its
float latency). Error: ``error_units = ceil(error * error_units_per_unit)``: rounded *up*, so a
path's integer error never understates its float error, and ``budget_units = floor(budget *
error_units_per_unit)``: a plan that is feasible in integers is feasible in floats. The scale is
1, 2 or 5 times a power of ten (readable), chosen so that the budget spans [1e4, 2.5e4) units
(``error_scale_for``): fine enough that rounding up costs at most one unit per window (<= 1e-4 of
the budget each), coarse enough that the DP oracle's table (boundaries x budget units, 25 M cells
at T = 1000) stays small. When the budget is the fixed plan's
own error (the default statement) the bound is that error rounded down like any other, so the
plan's float error never exceeds the fixed plan's; the fixed plan may then miss the integer bound
by its own rounding, and the planner emits it where no plan within the bound is faster
(``plan_schedule``), so the default plan never loses to it either.

Budget 0: only zero-error edges survive (an edge with any positive error has error_units >= 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace as dc_replace
from typing import Literal, Optional, Sequence

from ..profiles.model import Predictor, Profile
from ..schedules.model import entry_ranks, held_by_all

EdgeKind = Literal["exact", "parallel", "reuse"]
Placement = tuple  # per offset: a rank (int) or a CFG-split pair (rank_uncond, rank_cond)
DEFAULT_LATENCY_UNITS_PER_S = 1e6
ZERO_BUDGET_ERROR_SCALE = 1e6
NO_AGGREGATE_BOUND = 2 ** 62          # Problem.budget_units when some samples may exceed their bound


@dataclass(frozen=True)
class Edge:
    """One candidate window: steps ``start .. start+size-1``.

    Errors are per calibration sample (one entry for a profile without per-sample tables);
    ``error_units`` is their sum, the one number single-constraint machinery (the DP oracle, the
    Lagrangian bounds) works with."""

    start: int
    size: int
    kind: EdgeKind
    predictor: Optional[Predictor]        # None for exact windows
    placement: "Placement"                # rank (or CFG-split pair) of each offset (parallel only; empty otherwise)
    latency_s: float
    errors: tuple[float, ...]             # predicted output error per sample (profile units)
    latency_units: int
    sample_error_units: tuple[int, ...]   # ceil(errors[n] * scale)
    split: tuple[tuple[int, int], ...] = ()   # exact windows: CFG-split rank pairs
    batch: bool = False                       # parallel: each rank's offsets in one batched call (BatchStep)

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def error(self) -> float:
        """Mean over samples."""
        return math.fsum(self.errors) / len(self.errors)

    @property
    def error_units(self) -> int:
        return sum(self.sample_error_units)

    def planned(self) -> "PlannedWindow":
        return PlannedWindow(self.start, self.size, self.kind, self.predictor, self.placement, self.latency_s, self.errors,
                             split=self.split, batch=self.batch)


@dataclass(frozen=True)
class Problem:
    """Integer instance of the constrained shortest path; edges sorted by (start, size, kind).

    Quality statement: at least ``min_within`` of the N samples have a path error (sum of their
    ``sample_error_units``) at most their ``sample_budget_units``. With N = 1 (or every sample
    required) ``budget_units`` = the sum of the sample budgets is a valid single constraint on
    ``Edge.error_units`` (exact for N = 1: the DP's problem; a relaxation otherwise); with
    ``min_within < N`` there is no such constraint and ``budget_units`` is ``NO_AGGREGATE_BOUND``."""

    num_steps: int
    world_size: int
    max_window: int
    budget: float
    budget_units: int
    error_units_per_unit: float
    latency_units_per_s: float
    edges: tuple[Edge, ...]
    sample_budget_units: tuple[int, ...] = ()
    min_within: int = 1
    notes: tuple[str, ...] = ()
    out_edges: tuple[tuple[int, ...], ...] = field(default=(), repr=False)   # per boundary: edge indices leaving it
    in_edges: tuple[tuple[int, ...], ...] = field(default=(), repr=False)    # per boundary: edge indices entering it

    @property
    def samples(self) -> int:
        return len(self.sample_budget_units)

    @property
    def single_budget(self) -> bool:
        """One constraint says it all (the DP oracle's problem)."""
        return self.samples == 1

    def sample_totals(self, path) -> list[int]:
        totals = [0] * self.samples
        for i in path:
            for n, u in enumerate(self.edges[i].sample_error_units):
                totals[n] += u
        return totals

    def samples_within(self, path) -> int:
        return sum(1 for t, b in zip(self.sample_totals(path), self.sample_budget_units) if t <= b)

    def path_feasible(self, path) -> bool:
        """The quality statement holds for this path (edge indices)."""
        return self.samples_within(path) >= self.min_within

    def restricted(self, samples: Sequence[int], *, budget_units: Optional[Sequence[int]] = None) -> "Problem":
        """The same graph with only ``samples`` (all required), optionally with other integer bounds:
        a relaxation when every sample of ``self`` is required (any plan feasible here... is feasible
        for those samples alone), and the single-budget problem the DP solves when one sample is kept."""
        bounds = tuple(budget_units) if budget_units is not None else tuple(self.sample_budget_units[n] for n in samples)
        edges = tuple(dc_replace(e, sample_error_units=tuple(e.sample_error_units[n] for n in samples)) for e in self.edges)
        return dc_replace(self, edges=edges, sample_budget_units=bounds, min_within=len(bounds), budget_units=sum(bounds))

    def edge_index(self, *, start: int, size: int, kind: EdgeKind, predictor: Optional[Predictor] = None) -> Optional[int]:
        """The edge for this window (any predictor if ``predictor`` is None: the lowest error)."""
        found = None
        for i in self.out_edges[start]:
            e = self.edges[i]
            if e.size == size and e.kind == kind and (predictor is None or e.predictor == predictor):
                if found is None or e.error_units < self.edges[found].error_units:
                    found = i
        return found

    def state_edges(self) -> list[tuple[int, int, int]]:
        """The graph with the freshness state expanded: (edge index, from node, to node), node =
        3 * boundary + fresh; sorted by from node (a topological order). Path from node 0 to any
        node 3T + k."""
        out = []
        for b in range(self.num_steps):
            for k in range(3):
                for i in self.out_edges[b]:
                    e = self.edges[i]
                    if k >= fresh_needed(kind=e.kind, predictor=e.predictor):
                        out.append((i, 3 * b + k, 3 * e.stop + fresh_after(kind=e.kind, size=e.size, fresh_before=k)))
        return out


@dataclass(frozen=True)
class PlannedWindow:
    """A window of a plan with the planner's own numbers, whichever policy chose it (the fixed
    plan's windows, or an optimal path's edges: ``Edge.planned()``)."""

    start: int
    size: int
    kind: EdgeKind
    predictor: Optional[Predictor]
    placement: "Placement"
    latency_s: float
    errors: tuple[float, ...]             # per calibration sample (see Profile.window_errors)
    split: tuple[tuple[int, int], ...] = ()   # exact windows: CFG-split rank pairs
    batch: bool = False                       # parallel: BatchStep

    @property
    def error(self) -> float:
        return math.fsum(self.errors) / len(self.errors)


def block_placement(*, size: int, world_size: int) -> tuple[int, ...]:
    """BatchStep: consecutive offsets on one rank, ceil(w / G) per rank (the last ranks may hold
    fewer or none): the least batch and the shortest chain run ahead (see the module docstring)."""
    per = -(-size // world_size)
    return tuple(j // per for j in range(size))


def round_robin_placement(*, size: int, world_size: int) -> tuple[int, ...]:
    """Offset j on rank j % G (see the module docstring for why this is optimal without splits)."""
    return tuple(j % world_size for j in range(size))


def batched_span(placement: "Placement", rank: int) -> int:
    """Steps of the reuse chain a batched rank runs ahead: its last offset minus its first (0 for
    one offset: nothing to batch)."""
    mine = [j for j, e in enumerate(placement) if e == rank]
    return mine[-1] - mine[0] if len(mine) > 1 else 0


def window_latency_s(profile: Profile, *, kind: EdgeKind, size: int, world_size: int,
                     placement: "Placement" = (), split: Sequence[tuple[int, int]] = (), batch: bool = False) -> float:
    """Latency of one window under docs/cost-model.md. A placement entry is a rank or a CFG-split
    pair; a rank's compute is fwd(its whole offsets) + its halves * (half + swap). (For placements
    outside ``best_placement``'s family this ignores waits between pairs; ``simulate`` has them.)
    ``batch`` (BatchStep, no split entries): a rank's compute is bfwd(its offsets) plus the reuse-chain
    steps it runs ahead to build their inputs (``batched_span``)."""
    step = profile.step_time_s()
    if kind == "exact":
        if not split:
            return profile.forward_time_s(1) + step
        # ranks in no pair run both halves themselves (so every rank's output is bit-identical)
        paired = {r for p in split for r in p}
        half = profile.half_forward_time_s(1) + profile.pair_exchange_time_s()
        alone = profile.half_forward_time_s(2) if len(paired) < world_size else 0.0
        return max(half, alone) + step
    if kind == "reuse":
        return size * step
    whole = [0] * world_size
    halves = [0] * world_size
    for entry in placement:
        ranks = entry_ranks(entry)
        for rank in ranks:
            if len(ranks) == 1:
                whole[rank] += 1
            else:
                halves[rank] += 1
    swap_s = profile.half_forward_time_s(1) + profile.pair_exchange_time_s() if any(halves) else 0.0
    if batch:
        if any(halves):
            raise ValueError("a batched window has no CFG-split entries")
        compute = max(profile.rank_compute_time_s(n, batch=n > 1) + batched_span(placement, r) * step for r, n in enumerate(whole))
    else:
        compute = max(profile.forward_time_s(n) + h * swap_s for n, h in zip(whole, halves))
    exchange = 0.0 if held_by_all(placement, world_size) else profile.exchange_time_s(world_size, size)
    return (size - 1) * step + compute + exchange + size * step


def split_placement(*, size: int, world_size: int, pairs: int, split_offsets: int) -> "Placement":
    """The family of the module docstring: the first ``split_offsets`` offsets split round robin over
    pairs (2k, 2k+1), k < ``pairs``; the rest whole, round robin over ranks 2 * pairs .. G-1."""
    singles = list(range(2 * pairs, world_size))
    out: list = []
    for j in range(size):
        if j < split_offsets:
            k = j % pairs
            out.append((2 * k, 2 * k + 1))
        else:
            out.append(singles[(j - split_offsets) % len(singles)])
    return tuple(out)


def best_placement(profile: Profile, *, size: int, world_size: int, allow_split: bool,
                   allow_batch: bool = True) -> "tuple[Placement, float, bool]":
    """The fastest placement of a parallel window of ``size`` offsets, its latency, and whether it
    batches (module docstring: round robin, batched where the batch curve makes it faster, or the
    best of the CFG-split family)."""
    best = round_robin_placement(size=size, world_size=world_size)
    best_s = window_latency_s(profile, kind="parallel", size=size, world_size=world_size, placement=best)
    batched = False
    if allow_batch and profile.can_batch and size > world_size:     # some rank holds two offsets or more
        blocks = block_placement(size=size, world_size=world_size)
        lat = window_latency_s(profile, kind="parallel", size=size, world_size=world_size, placement=blocks, batch=True)
        if lat < best_s:
            best, best_s, batched = blocks, lat, True
    if not (allow_split and profile.can_split and world_size >= 2):
        return best, best_s, batched
    step = profile.step_time_s()
    half_s = profile.half_forward_time_s(1) + profile.pair_exchange_time_s()
    exchange_s = profile.exchange_time_s(world_size, size)
    for pairs in range(1, world_size // 2 + 1):
        singles = world_size - 2 * pairs
        for x in range(0 if singles else size, size + 1):      # x split offsets; with no singles all are split
            compute = max(-(-x // pairs) * half_s, profile.forward_time_s(-(-(size - x) // singles)) if size > x else 0.0)
            exch = 0.0 if (world_size == 2 and x == size) else exchange_s
            lat = (2 * size - 1) * step + compute + exch
            if lat < best_s:
                best = split_placement(size=size, world_size=world_size, pairs=pairs, split_offsets=x)
                best_s, batched = lat, False
    # the emitted placement priced by the one latency function (equal to the family's formula)
    return best, window_latency_s(profile, kind="parallel", size=size, world_size=world_size, placement=best, batch=batched), batched


def best_exact(profile: Profile, *, world_size: int, allow_split: bool) -> "tuple[tuple[tuple[int, int], ...], float]":
    """An exact window's CFG-split pairs (none, or (0, 1), (2, 3), ... for an even G) and latency."""
    plain = window_latency_s(profile, kind="exact", size=1, world_size=world_size)
    if not (allow_split and profile.can_split and world_size >= 2 and world_size % 2 == 0):
        return (), plain
    pairs = tuple((2 * k, 2 * k + 1) for k in range(world_size // 2))
    lat = window_latency_s(profile, kind="exact", size=1, world_size=world_size, split=pairs)
    return (pairs, lat) if lat < plain else ((), plain)


def default_max_window(profile: Profile, *, world_size: int, allow_batch: bool = True, policy: str = "optimal") -> int:
    """The largest window when ``--max-window`` is not given: one offset per rank (G), capped at the
    profile's; on one GPU with a batch curve, every window the profile holds (else one GPU would get
    no parallel window at all); the BatchStep hand plan: two offsets per rank.

    Why not the profile's windows at every G: the quality model underprices windows longer than the
    ones its corrections were measured on. At G = 4 on the digits profile, windows of up to 8 let the
    default plan (batched windows of 8) measure 38.4 dB mean against the hand plan's 40.2 dB on the
    acceptance tier's 100 held-out images, losing to the plan it must not lose to; with windows of G
    it measures above it. ``--max-window`` opens longer windows on purpose."""
    if policy == "fixed-batch":
        return min(2 * world_size, profile.max_window)
    if allow_batch and profile.can_batch and policy == "optimal" and world_size == 1:
        return profile.max_window
    return min(world_size, profile.max_window)


def error_scale_for(budget: float) -> float:
    """A 1-2-5 scale (1, 2 or 5 times a power of ten) such that ``budget * scale`` lies in
    [1e4, 2.5e4); ``ZERO_BUDGET_ERROR_SCALE`` for a zero (or negative) budget and for budgets below
    1e-100 (no profile's deviations are that small: such a budget admits only zero-error windows)."""
    if not budget > 1e-100:
        return ZERO_BUDGET_ERROR_SCALE
    exponent = 4 - math.floor(math.log10(budget)) - 1
    for _ in range(8):   # a few steps around the float log10 estimate
        for mantissa in (1.0, 2.0, 5.0):
            scale = mantissa * 10.0 ** exponent
            if 1e4 <= budget * scale < 2.5e4:
                return scale
        exponent += 1 if budget * 10.0 ** exponent < 1e4 else -1
    raise AssertionError(f"no error scale found for budget {budget!r}")


def error_units(error: float, *, scale: float) -> int:
    """Round up: an integer total never understates the float total."""
    return math.ceil(error * scale)


def latency_units(latency_s: float, *, scale: float) -> int:
    return round(latency_s * scale)


def budget_units_for(budget: float, *, scale: float) -> int:
    return math.floor(budget * scale)


def _window_errors(profile: Profile, *, kind: Literal["parallel", "reuse"], start: int, predictor: Predictor) -> list[tuple[float, ...]]:
    """``profile.window_errors(kind, start=start, size=w, predictor=predictor)`` for w = 1..J (per
    sample; bit for bit the profile's numbers)."""
    out = []
    w = 1
    while True:
        v = profile.window_errors(kind, start=start, size=w, predictor=predictor)
        if v is None:
            return out
        out.append(v)
        w += 1


def fresh_needed(*, kind: EdgeKind, predictor: Optional[Predictor]) -> int:
    """How many computed outputs must immediately precede a window of this kind (see module doc)."""
    if kind == "exact":
        return 0
    return 2 if predictor == "linear" else 1


def fresh_after(*, kind: EdgeKind, size: int, fresh_before: int) -> int:
    """Computed outputs immediately before the boundary after the window (capped at 2)."""
    if kind == "exact":
        return min(2, fresh_before + 1)
    if kind == "parallel":
        return 2
    return 0


def candidate_windows(profile: Profile, *, world_size: int, max_window: int, allow_split: bool = True,
                      allow_batch: bool = True,
                      ) -> list[tuple[int, int, EdgeKind, Optional[Predictor], "Placement", float, tuple[float, ...], bool]]:
    """Every candidate window after predictor dominance (rule 1), before budget pruning:
    (start, size, kind, predictor, placement, latency_s, per-sample errors, batch). An exact
    window's placement slot holds its CFG-split pairs."""
    T = profile.num_steps
    J = max_window
    exact_split, exact_s = best_exact(profile, world_size=world_size, allow_split=allow_split)
    placements, latency, batched = {}, {}, {}
    for w in range(2, J + 1):
        placements[w], latency[("parallel", w)], batched[w] = best_placement(profile, size=w, world_size=world_size,
                                                                             allow_split=allow_split, allow_batch=allow_batch)
    latency.update({("reuse", w): window_latency_s(profile, kind="reuse", size=w, world_size=world_size) for w in range(1, J + 1)})
    zero = (0.0,) * profile.quality_samples
    out = []
    for s in range(T):
        out.append((s, 1, "exact", None, exact_split, exact_s, zero, False))
        if s == 0:
            continue
        for kind in ("parallel", "reuse"):
            first = 2 if kind == "parallel" else 1
            last = _window_errors(profile, kind=kind, start=s, predictor="last")
            linear = _window_errors(profile, kind=kind, start=s, predictor="linear")
            placement_of = placements if kind == "parallel" else {}
            for w in range(first, min(J, T - s) + 1):
                lat = latency[(kind, w)]
                placement = placement_of.get(w, ())
                batch = kind == "parallel" and batched[w]
                if w <= len(last):
                    out.append((s, w, kind, "last", placement, lat, last[w - 1], batch))
                if w <= len(linear) and (w > len(last) or _better_somewhere(linear[w - 1], last[w - 1])):
                    out.append((s, w, kind, "linear", placement, lat, linear[w - 1], batch))
    return out


def _better_somewhere(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` lower than ``b`` on some sample. ``linear`` needs more history than ``last`` at equal
    latency, so where ``last`` is no worse on every sample it dominates and ``linear`` is dropped."""
    return any(x < y for x, y in zip(a, b))


def build_problem(profile: Profile, *, world_size: int, max_window: int, budget: float,
                  budget_units: Optional[int] = None, error_units_per_unit: Optional[float] = None,
                  sample_budgets: Optional[Sequence[float]] = None, sample_budget_units: Optional[Sequence[int]] = None,
                  min_within: Optional[int] = None, allow_split: bool = True, allow_batch: bool = True,
                  latency_units_per_s: float = DEFAULT_LATENCY_UNITS_PER_S) -> Problem:
    """The integer instance for ``profile`` on ``world_size`` ranks with windows up to ``max_window``.

    Quality statement: sample n's error at most ``sample_budgets[n]`` (default: ``budget`` for every
    sample) for at least ``min_within`` samples (default: all). ``sample_budget_units`` (or, with one
    sample, ``budget_units``) overrides ``floor(budget * scale)`` (used when the bounds are the fixed
    plan's per-sample errors, each rounded down). ``error_units_per_unit`` overrides ``error_scale_for`` of the least
    bound. A negative budget is allowed here (the instance is then infeasible); the CLI rejects it.
    """
    if world_size < 1 or max_window < 1:
        raise ValueError(f"world_size and max_window must be >= 1 (got {world_size}, {max_window})")
    if max_window > profile.max_window:
        raise ValueError(f"max_window={max_window} exceeds the profile's max_window={profile.max_window}")
    T = profile.num_steps
    N = profile.quality_samples
    budgets = tuple(sample_budgets) if sample_budgets is not None else (budget,) * N
    if len(budgets) != N:
        raise ValueError(f"{len(budgets)} sample budgets for a profile with {N} samples")
    K = N if min_within is None else min_within
    if not 1 <= K <= N:
        raise ValueError(f"min_within={K} must be in 1..{N}")
    scale = error_units_per_unit if error_units_per_unit is not None else error_scale_for(min(budgets))
    if sample_budget_units is not None:
        b_units = tuple(int(u) for u in sample_budget_units)
    elif budget_units is not None and N == 1:
        b_units = (int(budget_units),)
    else:
        b_units = tuple(budget_units_for(b, scale=scale) for b in budgets)
    notes = []
    for name, fwd in (("forward", profile.compute.forward_s), ("batched forward", profile.compute.batched_forward_s or [])):
        if any(b < a for a, b in zip(fwd, fwd[1:])):
            notes.append(f"profile {name} times are not nondecreasing in k: the placement may not be optimal")
    exact_units = latency_units(best_exact(profile, world_size=world_size, allow_split=allow_split)[1], scale=latency_units_per_s)
    edges: list[Edge] = []
    for (s, w, kind, pred, placement, lat_s, errs, batch) in candidate_windows(profile, world_size=world_size, max_window=max_window,
                                                                                allow_split=allow_split, allow_batch=allow_batch):
        e_units = tuple(error_units(x, scale=scale) for x in errs)
        l_units = latency_units(lat_s, scale=latency_units_per_s)
        if kind != "exact":
            if sum(1 for u, b in zip(e_units, b_units) if u <= b) < K:     # rule 2
                continue
            if l_units >= w * exact_units:               # rule 3
                continue
        split = placement if kind == "exact" else ()
        edges.append(Edge(start=s, size=w, kind=kind, predictor=pred, placement=() if kind == "exact" else placement,
                          latency_s=lat_s, errors=errs, latency_units=l_units, sample_error_units=e_units, split=split,
                          batch=batch))
    out_edges: list[list[int]] = [[] for _ in range(T + 1)]
    in_edges: list[list[int]] = [[] for _ in range(T + 1)]
    for i, e in enumerate(edges):
        out_edges[e.start].append(i)
        in_edges[e.stop].append(i)
    return Problem(num_steps=T, world_size=world_size, max_window=max_window, budget=budget,
                   budget_units=sum(b_units) if K == N else NO_AGGREGATE_BOUND, error_units_per_unit=scale,
                   latency_units_per_s=latency_units_per_s, edges=tuple(edges), sample_budget_units=b_units, min_within=K,
                   notes=tuple(notes), out_edges=tuple(tuple(x) for x in out_edges), in_edges=tuple(tuple(x) for x in in_edges))
