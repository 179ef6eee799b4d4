"""``parastep simulate``: the latency of a schedule from its own op graph (docs/cost-model.md).

The graph is a networkx DAG whose nodes are timed ops, built per rank and per window exactly
as the executor runs them:

- exact window: ``forward(1) -> step`` on every rank (no communication);
- reuse window of size w: w ``step`` ops on every rank;
- parallel window of size w: on every rank, (w - 1) ``scratch`` steps (building the inputs by
  reuse) -> ``forward(n_r)`` (the rank's n_r offsets, computed one after another as the executor does, priced
  by the profile's ``forward_s[n_r - 1]``; absent when n_r = 0) -> the
  window's **shared** ``exchange`` node (one node for all ranks: a barrier) -> w ``step``
  (replay) ops. A batched window (``batch: true``): a rank with n_r >= 2 offsets runs the reuse chain
  from its first offset to its last again, ahead (``scratch`` ops), then one ``forward`` priced by
  the batch curve ``batched_forward_s[n_r - 1]``.
- CFG split (a pair ``[u, c]`` computing one offset, or one exact step): ``forward`` of one half
  (``half_forward_s``) on each of u and c, then a ``swap`` node shared by the two (a barrier of the
  pair: the raw halves cross); in an exact window with a split, a rank in no pair runs both halves
  itself (two half forwards, as the executor does so every rank's output is bit-identical), in the order the executor runs them: a parallel window with splits
  is built offset by offset on every rank (compute offset j if it is this rank's, then scratch step
  j), a whole offset priced as the increment ``fwd(n) - fwd(n - 1)`` of the rank's n-th forward. The
  end exchange is absent when every rank holds every output.

Each rank's ops are chained in program order, so windows follow each other. Start times come
from a topological pass (an op starts when all its predecessors have ended); the latency is
the longest node-weighted path, found with ``networkx.dag_longest_path`` and cross-checked
against the topological pass. Nothing here calls the planner or knows its formula.

No torch, no ortools (docs/design.md §6); matplotlib is imported only for ``--plot``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import networkx as nx

from ..errors import UserError
from ..profiles.model import Profile
from .check import violations, window_size
from .model import ExactWindow, ParallelWindow, ReuseWindow, Schedule, held_by_all

OpKind = Literal["forward", "scratch", "step", "exchange", "swap"]


@dataclass(frozen=True)
class TimedOp:
    """One op of the timeline. ``rank`` is -1 for a shared exchange or swap node in ``SimulationResult.critical_path``;
    in ``ops`` a shared node appears once per member rank (same times) so each rank's row shows it."""

    rank: int
    kind: OpKind
    window: int
    start_s: float
    end_s: float
    step: Optional[int] = None      # the denoising step a scratch/step op belongs to
    offsets: int = 0                # forwards: how many offsets this rank computes

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class SimulationResult:
    latency_s: float
    sequential_s: float
    speedup: float
    busy_s: tuple[float, ...]        # per rank: forwards + scheduler steps (compute)
    comm_s: tuple[float, ...]        # per rank: time inside exchanges
    idle_s: tuple[float, ...]        # per rank: latency - busy - comm (waiting at barriers, or done early)
    forwards: tuple[int, ...]        # per rank: offsets computed (exact windows count 1)
    ops: tuple[TimedOp, ...]         # every op, ordered by (start_s, rank)
    window_start_s: tuple[float, ...]  # when each window's first op starts
    critical_path: tuple[TimedOp, ...]


@dataclass(frozen=True)
class _Node:
    rank: int            # -1 for a shared node (exchange: every rank; swap: ``members``)
    kind: OpKind
    window: int
    index: int           # position inside the (rank, window) op list (for readers of the graph)
    duration_s: float
    step: Optional[int] = None
    offsets: int = 0
    members: tuple[int, ...] = ()   # a shared node's ranks (empty: all)


def build_graph(schedule: Schedule, profile: Profile) -> nx.DiGraph:
    """The op DAG of ``schedule`` with durations from ``profile``.

    Nodes are integers (creation order) with attribute ``op`` (a ``_Node``); every edge u -> v
    carries ``w`` = the duration of u, so a longest path over edge weights plus the last node's
    duration is the node-weighted longest path.
    """
    G = schedule.world_size
    step_s = profile.step_time_s()
    graph = nx.DiGraph()
    last: list[Optional[int]] = [None] * G   # each rank's latest op

    def add(node: _Node, *, after: list[Optional[int]]) -> int:
        idx = graph.number_of_nodes()
        graph.add_node(idx, op=node)
        graph.add_edges_from((prev, idx, {"w": graph.nodes[prev]["op"].duration_s}) for prev in after if prev is not None)
        return idx

    for i, (w, (start, stop)) in enumerate(zip(schedule.windows, schedule.window_bounds())):
        size = stop - start
        if isinstance(w, ExactWindow):
            for group in w.rank_groups(G):
                if len(group) == 1:
                    # with a split in this step, a rank in no pair runs both halves (bit-identical ranks)
                    r = group[0]
                    fwd_s = profile.forward_time_s(1) if not w.split else profile.half_forward_time_s(2)
                    f = add(_Node(r, "forward", i, 0, fwd_s, step=start, offsets=1), after=[last[r]])
                    last[r] = add(_Node(r, "step", i, 1, step_s, step=start), after=[f])
                    continue
                swap = _add_split(add, profile, group, last, window=i, index=0, step=start)
                for r in group:
                    last[r] = add(_Node(r, "step", i, 2, step_s, step=start), after=[swap])
        elif isinstance(w, ParallelWindow) and w.has_split:
            _add_split_window(add, profile, w, last, window=i, start=start, size=size, world_size=G, step_s=step_s)
        elif isinstance(w, ReuseWindow):
            for r in range(G):
                for j in range(size):
                    last[r] = add(_Node(r, "step", i, j, step_s, step=start + j), after=[last[r]])
        elif isinstance(w, ParallelWindow):
            counts = [0] * G
            for rank in w.placement:
                counts[rank] += 1
            ends: list[Optional[int]] = []
            for r in range(G):
                prev = last[r]
                for j in range(size - 1):
                    prev = add(_Node(r, "scratch", i, j, step_s, step=start + j), after=[prev])
                mine = [j for j, e in enumerate(w.placement) if e == r]
                if w.batch and len(mine) > 1:
                    # BatchStep: the reuse chain from the rank's first offset to its last, run ahead, then one call
                    for j in range(mine[0], mine[-1]):
                        prev = add(_Node(r, "scratch", i, size + j, step_s, step=start + j), after=[prev])
                    prev = add(_Node(r, "forward", i, 2 * size, profile.batched_forward_time_s(counts[r]),
                                     offsets=counts[r]), after=[prev])
                elif counts[r]:
                    prev = add(_Node(r, "forward", i, 2 * size, profile.forward_time_s(counts[r]), offsets=counts[r]), after=[prev])
                ends.append(prev)
            exchange = add(_Node(-1, "exchange", i, 0, profile.exchange_time_s(G, size)), after=ends)
            for r in range(G):
                prev: Optional[int] = exchange
                for j in range(size):
                    prev = add(_Node(r, "step", i, 2 * size + 1 + j, step_s, step=start + j), after=[prev])
                last[r] = prev
        else:  # pragma: no cover - the pydantic union has three kinds
            raise TypeError(f"unknown window kind {type(w).__name__}")
    return graph


def _add_split(add, profile: Profile, pair: tuple[int, ...], last: list, *, window: int, index: int, step: int) -> int:
    """One CFG-split offset on ``pair``: a half forward on each rank, then their shared swap node."""
    halves = [add(_Node(r, "forward", window, index, profile.half_forward_time_s(1), step=step, offsets=1), after=[last[r]])
              for r in pair]
    return add(_Node(-1, "swap", window, index + 1, profile.pair_exchange_time_s(), step=step, members=tuple(pair)), after=halves)


def _add_split_window(add, profile: Profile, w: ParallelWindow, last: list, *, window: int, start: int, size: int,
                      world_size: int, step_s: float) -> None:
    """A parallel window with CFG splits, offset by offset in the executor's order (module docstring)."""
    G = world_size
    whole_done = [0] * G
    for j in range(size):
        ranks = w.offset_ranks(j)
        if len(ranks) == 2:
            swap = _add_split(add, profile, ranks, last, window=window, index=3 * j, step=start + j)
            for r in ranks:
                last[r] = swap
        else:
            r = ranks[0]
            whole_done[r] += 1
            n = whole_done[r]
            inc = profile.forward_time_s(n) - profile.forward_time_s(n - 1)
            last[r] = add(_Node(r, "forward", window, 3 * j, inc, step=start + j, offsets=1), after=[last[r]])
        if j < size - 1:
            for r in range(G):
                last[r] = add(_Node(r, "scratch", window, 3 * j + 2, step_s, step=start + j), after=[last[r]])
    if not held_by_all(w.placement, G):
        exchange = add(_Node(-1, "exchange", window, 3 * size, profile.exchange_time_s(G, size)), after=list(last))
        last[:] = [exchange] * G
    for r in range(G):
        prev = last[r]
        for j in range(size):
            prev = add(_Node(r, "step", window, 3 * size + 1 + j, step_s, step=start + j), after=[prev])
        last[r] = prev


def _check_runnable(schedule: Schedule) -> None:
    problems = violations(schedule)
    if problems:
        raise UserError(f"the schedule is invalid: {problems[0]}; run 'parastep validate' on it and regenerate it")


def simulate(schedule: Schedule, profile: Profile) -> SimulationResult:
    """Latency, per-rank busy/comm/idle time and the timeline of ``schedule`` under ``profile``'s costs.

    The schedule must be valid (``UserError`` naming the first violation otherwise). The profile's
    compute and comm parts are used; its step count need not match (``profile_for`` checks that).
    """
    _check_runnable(schedule)
    try:
        graph = build_graph(schedule, profile)
    except ValueError as exc:  # e.g. no exchange cost for this many ranks
        raise UserError(f"{exc}; pass --interconnect NAME or a profile measured for world size {schedule.world_size}") from None
    G = schedule.world_size

    nodes: list[_Node] = [graph.nodes[i]["op"] for i in range(graph.number_of_nodes())]
    start = [0.0] * len(nodes)
    for v in nx.topological_sort(graph):
        start[v] = max((start[u] + nodes[u].duration_s for u in graph.predecessors(v)), default=0.0)
    latency_s = max((start[i] + nodes[i].duration_s for i in range(len(nodes))), default=0.0)

    # critical path: networkx's longest path over edge weights (w = duration of the edge's source);
    # a sink fed by every terminal node carries the last op's own duration (durations are >= 0, so a
    # longest path can always be extended to a terminal node)
    sink = len(nodes)
    graph.add_edges_from([(i, sink, {"w": nodes[i].duration_s}) for i in range(len(nodes)) if graph.out_degree(i) == 0])
    path = [i for i in nx.dag_longest_path(graph, weight="w") if i != sink] if nodes else []
    graph.remove_node(sink)
    path_s = math.fsum(nodes[i].duration_s for i in path)
    if not math.isclose(path_s, latency_s, rel_tol=1e-9, abs_tol=1e-12):
        raise AssertionError(f"critical path {path_s} s disagrees with the topological pass {latency_s} s")

    def timed(i: int, rank: int) -> TimedOp:
        n = nodes[i]
        return TimedOp(rank=rank, kind=n.kind, window=n.window, start_s=start[i], end_s=start[i] + n.duration_s,
                       step=n.step, offsets=n.offsets)

    ops: list[TimedOp] = []
    for i, n in enumerate(nodes):
        if n.rank >= 0:
            ops.append(timed(i, n.rank))
        else:
            ops.extend(timed(i, r) for r in (n.members or range(G)))
    ops.sort(key=lambda o: (o.start_s, o.rank, o.window, o.kind))

    busy = [0.0] * G
    comm = [0.0] * G
    fwd = [0] * G
    for op in ops:
        if op.kind in ("exchange", "swap"):
            comm[op.rank] += op.duration_s
        else:
            busy[op.rank] += op.duration_s
        if op.kind == "forward":
            fwd[op.rank] += op.offsets
    idle = [max(0.0, latency_s - b - c) for b, c in zip(busy, comm)]

    window_start = [math.inf] * len(schedule.windows)
    for op in ops:
        window_start[op.window] = min(window_start[op.window], op.start_s)
    sequential_s = schedule.num_steps * (profile.forward_time_s(1) + profile.step_time_s())
    return SimulationResult(
        latency_s=latency_s,
        sequential_s=sequential_s,
        speedup=sequential_s / latency_s if latency_s > 0 else math.inf,
        busy_s=tuple(busy), comm_s=tuple(comm), idle_s=tuple(idle), forwards=tuple(fwd),
        ops=tuple(ops),
        window_start_s=tuple(0.0 if math.isinf(t) else t for t in window_start),
        critical_path=tuple(timed(i, nodes[i].rank) for i in path),
    )


# ---- plot -----------------------------------------------------------------------------------

_COLORS = {"forward": "#1f77b4", "scratch": "#c7c7c7", "step": "#7f7f7f", "exchange": "#ff7f0e", "swap": "#2ca02c"}
_LABELS = {"forward": "forward (denoiser)", "scratch": "scratch step (build inputs)", "step": "scheduler step",
           "exchange": "exchange (all-gather)", "swap": "CFG split: swap of raw halves"}


def plot_timeline(result: SimulationResult, schedule: Schedule, path: str | Path, *, title: str = "") -> None:
    """Per-rank timeline PNG (broken_barh per op kind, window boundaries), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    G = schedule.world_size
    scale, unit = (1e3, "ms") if result.latency_s < 10 else (1.0, "s")
    fig = Figure(figsize=(12, min(2.0 + 0.45 * G, 18)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for kind in ("scratch", "step", "forward", "exchange", "swap"):
        for r in range(G):
            bars = [(o.start_s * scale, o.duration_s * scale) for o in result.ops if o.rank == r and o.kind == kind and o.duration_s > 0]
            if bars:
                ax.broken_barh(bars, (r - 0.38, 0.76), facecolors=_COLORS[kind], edgecolor="white", linewidth=0.3)
    kinds_of = [w.kind for w in schedule.windows]
    for i, t in enumerate(result.window_start_s):
        if i > 0:
            ax.axvline(t * scale, color="#444444", linewidth=0.6, linestyle=":", alpha=0.7 if len(schedule.windows) <= 100 else 0.2)
    # window kinds along the top, where a window is wide enough to hold its label
    bounds = list(result.window_start_s) + [result.latency_s]
    min_width = result.latency_s / 70 if result.latency_s > 0 else 0.0
    for i, w in enumerate(schedule.windows):
        if bounds[i + 1] - bounds[i] < min_width:
            continue
        label = {"exact": "E", "reuse": f"R{window_size(w)}", "parallel": f"P{window_size(w)}"}[w.kind]
        if isinstance(w, (ParallelWindow, ReuseWindow)) and w.predictor == "linear":
            label += "·lin"
        ax.text((bounds[i] + bounds[i + 1]) / 2 * scale, -0.5, label, ha="center", va="bottom", fontsize=7, color="#333333")
    ax.set_ylim(G - 0.5, -0.85)  # rank 0 on top, a band above it for the window labels
    ax.set_xlim(0, result.latency_s * scale * 1.01 if result.latency_s > 0 else 1)
    ax.set_yticks(range(G))
    ax.set_yticklabels([f"rank {r}" for r in range(G)], fontsize=8 if G <= 16 else 6)
    ax.set_xlabel(f"time ({unit});  windows: E exact, Pw parallel of w steps, Rw reuse of w steps, ·lin = linear predictor")
    n_par = sum(k == "parallel" for k in kinds_of)
    head = title or f"{schedule.model}: {schedule.num_steps} steps on {G} rank(s)"
    ax.set_title(f"{head}  |  {len(schedule.windows)} windows ({n_par} parallel)  |  "
                 f"latency {result.latency_s * scale:.4g} {unit} vs sequential {result.sequential_s * scale:.4g} {unit}: "
                 f"speedup {result.speedup:.2f}x", fontsize=9)
    rank_time = result.latency_s * G
    share = {k: math.fsum(o.duration_s for o in result.ops if o.kind == k) / rank_time if rank_time > 0 else 0.0 for k in _COLORS}
    share["idle"] = math.fsum(result.idle_s) / rank_time if rank_time > 0 else 0.0
    handles = [Patch(facecolor=_COLORS[k], label=f"{_LABELS[k]}: {100 * share[k]:.3g}%") for k in ("forward", "scratch", "step", "exchange", "swap")
               if any(o.kind == k for o in result.ops)]
    handles.append(Patch(facecolor="white", edgecolor="#999999", label=f"idle: {100 * share['idle']:.3g}%"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               title="share of rank-time", title_fontsize=8)
    ax.grid(axis="x", alpha=0.25)
    fig.tight_layout(rect=(0.0, 0.6 / fig.get_figheight(), 1.0, 1.0))   # keep ~0.6 in at the bottom for the legend
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(out)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:                   # no folder to remove it from (a file where a folder should be)
            pass
        raise UserError(f"cannot write the timeline to '{out}': {exc.strerror or exc}; pass a writable --plot path") from None


# ---- the profile a schedule is priced with --------------------------------------------------

def profile_for(schedule: Schedule, *, profile_path: Optional[str] = None, interconnect: Optional[str] = None) -> Profile:
    """The profile ``simulate`` prices ``schedule`` with: ``profile_path``, else the shipped one for
    its model; one that cannot price it (another model, output size or step count of a measured
    profile) is a one-line ``UserError``, another file than the plan's a warning on stderr. Exchange
    costs come from preset ``interconnect`` if given, else from the preset the plan recorded
    (``profile.interconnect``, with a note), else from the profile."""
    from ..profiles.interconnects import with_interconnect
    from ..profiles.io import load_profile, resolve_profile

    if profile_path is not None:
        profile, sha = load_profile(profile_path)
        where = f"profile '{profile_path}'"
    else:
        profile, sha = resolve_profile(schedule.model)
        where = f"the shipped profile for '{schedule.model}'"
    if schedule.profile is not None and schedule.profile.sha256 != sha:
        print(f"parastep: warning: {where} (sha256 {sha[:12]}...) is not the one this schedule was planned with "
              f"({schedule.profile.name}, sha256 {schedule.profile.sha256[:12]}...); latencies may differ from the plan's",
              file=sys.stderr)
    if profile.model != schedule.model:
        raise UserError(f"{where} is for model '{profile.model}' but the schedule is for '{schedule.model}'; pass --profile for '{schedule.model}'")
    if profile.output_bytes != schedule.output_bytes:
        raise UserError(f"{where} has output_bytes={profile.output_bytes} but the schedule has {schedule.output_bytes} "
                        f"(another resolution or dtype?); pass the matching --profile")
    if profile.swap_bytes != schedule.swap_bytes:
        raise UserError(f"{where} prices a CFG half swap of {profile.swap_bytes} bytes but the schedule says "
                        f"{schedule.swap_bytes} (raw_half_bytes); pass the matching --profile")
    if profile.num_steps != schedule.num_steps:
        if profile.provenance.deviation.source == "measured":
            raise UserError(f"{where} was measured for {profile.num_steps} steps but the schedule has {schedule.num_steps}; "
                            f"pass a profile made with 'parastep profile --steps {schedule.num_steps}'")
        # a prior profile is step-count independent where simulate looks (compute and comm)
        print(f"parastep: note: {where} describes {profile.num_steps} steps; its prior tables are re-derivable, and its "
              f"compute/comm costs do not depend on the step count, so they are used for {schedule.num_steps} steps", file=sys.stderr)
    name = interconnect
    if name is None and schedule.profile is not None and schedule.profile.interconnect is not None:
        name = schedule.profile.interconnect
        print(f"parastep: note: exchanges priced by interconnect preset '{name}', as the plan was (plan --interconnect); "
              "pass --interconnect NAME for another", file=sys.stderr)
    if name is not None:
        profile = with_interconnect(profile, name, world_size=schedule.world_size)
    return profile


def format_report(result: SimulationResult, schedule: Schedule, profile: Profile, *, source: str) -> str:
    G = schedule.world_size
    lines = [
        f"schedule      {source}: {schedule.model}, {schedule.num_steps} steps, world size {G}, {len(schedule.windows)} windows",
        f"profile       {profile.name}" + (f" (comm: {profile.comm.preset})" if profile.comm.preset else ""),
    ]
    prior = profile.prior_parts_for(G, uses_split=schedule.uses_split)
    if prior:
        lines.append(f"prior parts   {', '.join(prior)} (not measured)")
    lines += [
        f"latency_s     {result.latency_s:.6g}",
        f"sequential_s  {result.sequential_s:.6g}",
        f"speedup       {result.speedup:.4g}x",
    ]
    if schedule.latency is not None:
        lines.append(f"planned_s     {schedule.latency.predicted_s:.6g} (the plan's own prediction)")
    lines.append("")
    lines.append(f"{'rank':>4}  {'busy_s':>12}  {'comm_s':>12}  {'idle_s':>12}  {'forwards':>8}")
    for r in range(G):
        lines.append(f"{r:>4}  {result.busy_s[r]:>12.6g}  {result.comm_s[r]:>12.6g}  {result.idle_s[r]:>12.6g}  {result.forwards[r]:>8}")
    return "\n".join(lines) + "\n"
