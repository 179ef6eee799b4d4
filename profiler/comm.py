"""A profile's exchange costs (docs/design.md §2): the executor's own exchange, timed.

The executor's ``DistExchange`` over torch.distributed (gloo on CPU, nccl on CUDA) in ``g``
spawned processes, ``g = 2..G``, timing the window exchange of ``n`` outputs for several sizes and
fitting ``latency + n * output_bytes / bandwidth`` (``fit_alpha_beta``: Theil-Sen, robust to a slow
spell). Where this machine has fewer devices than G (CUDA devices, or CPU cores) and an
``interconnect`` preset is given, ranks beyond them come from the preset and the part's provenance
is ``prior``; on CPU without a preset the g processes oversubscribe the cores (said in the
provenance notes); on CUDA without a preset it is an error. With a two-way guided batch, also the
CFG pair swap (``Comm.pair``): 2 spawned processes swap n raw halves with the executor's
``DistExchange.swap``, n = 1, 4, 16, ... up to 64 MiB, fitted the same way; without 2 local
devices, the preset's (prior).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ..profiles.model import Comm, CommEntry, Measured, Prior
from .instrument import load_torch
from .settings import ProfilerSettings
from .trajectory import Trajectory


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
    return CommEntry(ranks=2, latency_s=a, bandwidth_bytes_per_s=bw, source="measured"), {"sizes": sizes, "times": res}


LOCKSTEP_ROUNDS = 60   # lock-step rounds per run: a mean over about one run of a 50-step schedule
LOCKSTEP_RUNS = 3      # runs; the median run's mean is kept
_UNTIMED = 3           # first rounds untimed: kernels for the shape, the group's sockets


def _lockstep_worker(ctx, job: dict) -> None:
    """One rank of a lock-step benchmark (module level: spawned processes import it): the real
    denoiser on the captured call ``job['call']``, then the executor's own exchange of its result,
    ``job['rounds']`` times in a row with no barrier between (as ``exec`` runs consecutive steps),
    ``job['runs']`` such runs (a barrier before each).
    ``mode`` "split": a CFG split step, rank 0 on the unconditional rows, rank 1 on the conditional
    ones, then ``DistExchange.swap`` of the raw halves; "exchange": a parallel window of one offset
    per rank, the whole call, then ``DistExchange.exchange`` of one guided output per rank
    (``job['shape']``). Rank 0 writes, per run, every rank's per-round (compute, communication) times."""
    import torch
    import torch.distributed as dist

    from ..executor.exchange import DistExchange
    from .compute import _map_tensors, half_batch

    module, captured = job["call"]
    module = module.to(ctx.device)
    args, kwargs = _map_tensors((captured["args"], captured["kwargs"]), lambda t: t.to(ctx.device))
    split = job["mode"] == "split"
    if split:
        args, kwargs = half_batch(args, kwargs, full=captured["batch"], cond=ctx.rank == 1)
    like = torch.zeros(job["shape"], dtype=getattr(torch, job["dtype"]), device=ctx.device)
    placement = list(range(ctx.world_size))
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    ex = DistExchange()
    blocks = []
    with torch.no_grad():
        for _ in range(job["runs"]):
            blocks.append(_lockstep_block(job, module, args, kwargs, ex, like, placement, split=split, sync=sync,
                                          rank=ctx.rank))
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, blocks)
    if ctx.rank == 0:
        Path(job["out"]).write_text(json.dumps([[g[b] for g in gathered] for b in range(job["runs"])]))


def _lockstep_block(job, module, args, kwargs, ex, like, placement, *, split: bool, sync, rank: int) -> dict:
    """One run of ``_lockstep_worker``: untimed rounds, a barrier, ``job['rounds']`` timed ones."""
    import torch
    import torch.distributed as dist

    from .instrument import first_output

    compute, comm = [], []
    for r in range(job["rounds"] + _UNTIMED):
        if r == _UNTIMED:
            dist.barrier()
        t0 = time.perf_counter()
        out = module(*args, **kwargs)
        raw = out if isinstance(out, torch.Tensor) else first_output(out)
        sync()
        t1 = time.perf_counter()
        if split:
            ex.swap([raw], 1 - rank)
        else:
            ex.exchange({rank: like + float(raw.flatten()[0])}, placement, like=like)
        sync()
        t2 = time.perf_counter()
        if r >= _UNTIMED:
            compute.append(t1 - t0)
            comm.append(t2 - t1)
    return {"compute_s": compute, "comm_s": comm}


def lockstep_stats(ranks: Sequence[Mapping[str, Sequence[float]]]) -> dict:
    """What one lock-step run says (every rank's per-round times): ``step_s`` the mean over rounds of
    the slowest rank's compute + communication (consecutive steps add up, so the mean is what a
    schedule pays), ``compute_s`` the median compute over all ranks, ``comm_wait_s`` = ``step_s -
    compute_s`` (the communication itself plus the wait for the slowest rank's compute), and the
    mean communication alone."""
    rounds = min(len(r["compute_s"]) for r in ranks)
    if rounds < 1:
        raise ValueError("a lock-step run with no rounds")
    step = [max(r["compute_s"][i] + r["comm_s"][i] for r in ranks) for i in range(rounds)]
    compute = statistics.median([t for r in ranks for t in r["compute_s"][:rounds]])
    return {"rounds": rounds, "ranks": len(ranks), "step_s": statistics.fmean(step), "compute_s": compute,
            "comm_wait_s": statistics.fmean(step) - compute,
            "comm_mean_s": statistics.fmean(t for r in ranks for t in r["comm_s"][:rounds])}


def measure_lockstep(call, *, mode: str, world_size: int, shape: Sequence[int], dtype: str,
                     rounds: int = LOCKSTEP_ROUNDS, runs: int = LOCKSTEP_RUNS, device: str = "auto",
                     threads: int = 1) -> tuple[float, list[dict]]:
    """A step's communication as ``exec`` pays it (``_lockstep_worker``; ``call`` = (denoiser,
    captured call)): ``world_size`` spawned ranks compute and then exchange (``mode`` "exchange") or
    swap CFG halves (``mode`` "split", 2 ranks), ``rounds`` steps in lock step, ``runs`` times.
    Returns (the median run's ``comm_wait_s``, every run's ``lockstep_stats``). Unlike
    ``measure_comm`` and ``measure_pair`` (a barrier before each timed operation) this includes the
    wait for the slowest rank: processes' forwards do not end together."""
    from ..executor.launch import launch

    if mode not in ("split", "exchange") or (mode == "split" and world_size != 2):
        raise ValueError(f"lock-step mode {mode!r} on {world_size} ranks: 'split' runs on 2, 'exchange' on 2 or more")
    with tempfile.TemporaryDirectory() as tmp:     # one launch, the runs one after another inside it
        out = Path(tmp) / "lockstep.json"
        launch(_lockstep_worker, {"call": call, "mode": mode, "rounds": rounds, "runs": max(1, runs), "shape": list(shape),
                                  "dtype": dtype, "out": str(out)}, world_size=world_size, device=device, threads=threads,
                   timeout_s=300.0)
        stats = [lockstep_stats(ranks) for ranks in json.loads(out.read_text())]
    return statistics.median(s["comm_wait_s"] for s in stats), stats


def lockstep_entry(fit: CommEntry, comm_wait_s: float, *, nbytes: int, what: str) -> CommEntry:
    """The entry that prices one operation of ``nbytes`` at the lock-step ``comm_wait_s``, with the
    fit's bandwidth for other sizes: latency = comm_wait_s - nbytes / bandwidth. ValueError when
    that is negative (the fitted bytes term alone exceeds what the lock-step operation took: the fit
    and the measurement disagree)."""
    latency = comm_wait_s - nbytes / fit.bandwidth_bytes_per_s
    if latency < 0:
        raise ValueError(f"{what}: the lock-step operation took {comm_wait_s * 1e6:.0f} us but the fitted bandwidth alone "
                         f"prices {nbytes} bytes at {nbytes / fit.bandwidth_bytes_per_s * 1e6:.0f} us; re-run on a quieter machine")
    return fit.model_copy(update={"latency_s": latency})      # ranks, bandwidth and source as the fit's


def lockstep_words(comm_wait_s: float, stats: Sequence[Mapping[str, float]], *, backend: str, mode: str) -> str:
    """Provenance words for ``measure_lockstep``'s figure."""
    every = ", ".join(f"{s['comm_wait_s'] * 1e6:.0f}" for s in stats)
    means = ", ".join(f"{s['comm_mean_s'] * 1e6:.0f}" for s in stats)
    what, part = (("one swap", "half forward + swap") if mode == "split" else
                  (f"one exchange of {stats[0]['ranks']} outputs", "forward + exchange"))
    return (f"latency set so that {what} costs {comm_wait_s * 1e6:.0f} us, the operation plus the wait for the slowest rank "
            f"measured in lock step over {backend} ({len(stats)} runs of {stats[0]['rounds']} steps of the real denoiser on "
            f"{stats[0]['ranks']} spawned processes, mean per step of the slowest rank's {part} minus the median compute; "
            f"median run kept; every run: {every} us; mean operation alone: {means} us); bandwidth from the fit")


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
                 repeats: int, device: str = "auto", say: Callable[[str], None] = lambda line: None
                 ) -> tuple[list[CommEntry], dict]:
    """(an alpha-beta fit per world size g of ``world_sizes`` over the executor's exchange on g
    spawned processes, the median time per size by g). A refused fit is measured again
    (``_fitted_measurement``), and ``say`` tells each refusal."""
    from ..executor.launch import launch

    entries, raw = [], {}
    for g in world_sizes:
        # outputs per exchange: g .. 4^5 g, up to 64 MiB, so the bytes term stands out of the latency
        sizes = [g * 4 ** k for k in range(6) if k == 0 or g * 4 ** k * output_bytes <= 64 * 2 ** 20]

        def once(g=g, sizes=sizes) -> dict:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "comm.json"
                launch(_comm_worker, {"shape": list(output_shape), "dtype": dtype, "sizes": sizes, "repeats": repeats,
                                      "out": str(out)}, world_size=g, device=device, threads=1, timeout_s=120.0)
                return {int(k): v for k, v in json.loads(out.read_text()).items()}

        (a, bw), raw[g] = _fitted_measurement(once, output_bytes=output_bytes, what="exchange",
                                              say=lambda line, g=g: say(f"comm g={g}: {line}"))
        entries.append(CommEntry(ranks=g, latency_s=a, bandwidth_bytes_per_s=bw, source="measured"))
    return entries, raw


FIT_TRIES = 3    # measure_comm measures an exchange whose fit is refused again (a slow spell on a shared machine), this often in all


def _fitted_measurement(once: Callable[[], dict], *, output_bytes: int, what: str,
                        say: Callable[[str], None]) -> tuple[tuple[float, float], dict]:
    """(``fit_alpha_beta`` of the first of up to ``FIT_TRIES`` measurements ``once()`` (n -> median
    time) whose fit is not refused, those times); ``say`` tells each refused one. Every try
    refused: the last refusal (ValueError), with the count."""
    for k in range(1, FIT_TRIES + 1):
        res = once()
        try:
            return fit_alpha_beta(sorted(res.items()), output_bytes=output_bytes, what=what), res
        except ValueError as exc:
            if k == FIT_TRIES:
                raise ValueError(f"{exc} ({FIT_TRIES} measurements, each refused)") from None
            say(f"{what} fit refused (measurement {k} of at most {FIT_TRIES}: did not grow with the bytes sent); measuring again")
    raise AssertionError("unreachable")


def local_device_slots(device: str) -> tuple[str, int]:
    """(device kind, how many ranks this machine hosts one per device): CUDA devices, or CPU cores."""
    torch = load_torch()
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "cuda", torch.cuda.device_count()
    return "cpu", os.cpu_count() or 1


def _comm_part(pipe, settings: ProfilerSettings, *, out_bytes: int, traj: Trajectory, measured: Measured, say,
               notes: list[str], pair: bool = False, denoiser_call=None, swap_bytes: Optional[int] = None):
    """(Comm, its provenance): the window exchange for g = 2..G and, with ``pair`` (the model runs a
    two-way guided batch), the CFG pair swap ``Comm.pair``: measured on 2 local ranks where this
    machine hosts them, else from the interconnect preset (then the part is labelled prior).
    Exchanges among no more ranks than this machine has devices (cores on CPU), and the pair swap,
    are then priced in lock step with the real denoiser (``measure_lockstep`` on ``denoiser_call`` =
    (denoiser, captured call); ``swap_bytes``: the raw half's bytes): the wait for the slowest
    rank's forward is part of what ``exec`` pays."""
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
                                repeats=settings.comm_repeats, device=kind, say=say) if sizes else ([], {})
    for e in entries:
        say(f"comm g={e.ranks}: latency {e.latency_s * 1e6:.1f} us, bandwidth {e.bandwidth_bytes_per_s / 1e9:.3g} GB/s "
            f"(raw {raw[e.ranks]})")
    lock_text = ""
    if denoiser_call is not None:
        for i, e in enumerate(entries):
            if e.ranks > slots:      # more processes than cores: lock step would time contention
                lock_text += f"; g = {e.ranks}: no lock-step figure ({e.ranks} processes on {slots} {kind} slots)"
                continue
            wait_s, stats = measure_lockstep(denoiser_call, mode="exchange", world_size=e.ranks, shape=shape, dtype=dtype,
                                             device=kind, threads=settings.threads)
            entries[i] = lockstep_entry(e, wait_s, nbytes=e.ranks * out_bytes, what=f"exchange among {e.ranks}")
            every = ", ".join(f"{st['comm_wait_s'] * 1e6:.0f}" for st in stats)
            say(f"comm g={e.ranks} in lock step: one exchange of {e.ranks} outputs {wait_s * 1e6:.0f} us after a forward "
                f"(runs {every} us)")
            lock_text += f"; g = {e.ranks}: {lockstep_words(wait_s, stats, backend='nccl' if kind == 'cuda' else 'gloo', mode='exchange')}"
    backend = "nccl" if kind == "cuda" else "gloo"
    pair_entry, pair_text, pair_prior = None, no_pair, False
    if pair:
        pair_entry, pair_text, pair_prior = _pair_part(settings, kind=kind, can=can, shape=shape, dtype=dtype,
                                                       out_bytes=out_bytes, backend=backend, say=say, split_call=denoiser_call,
                                                       swap_bytes=out_bytes if swap_bytes is None else swap_bytes)
    if can == G and not pair_prior:
        return Comm(entries=entries, pair=pair_entry), measured.model_copy(update={
            "notes": f"executor DistExchange over {backend}, g = 2..{G} spawned processes, Theil-Sen alpha-beta fit over n = g, 4g, "
                     f"16g, ... outputs (up to 64 MiB)" + lock_text + pair_text + "".join(f"; {n}" for n in notes)})
    if can == G:
        return Comm(preset=settings.interconnect, entries=entries, pair=pair_entry), Prior(
            rule=f"g = 2..{G} measured with the executor's DistExchange over {backend}" + lock_text + pair_text,
            reference=describe(settings.interconnect))
    preset = comm_for(settings.interconnect, world_size=G)
    extra = [e for e in preset.entries if e.ranks > can]
    measured_g = f"g = 2..{can} measured with the executor's DistExchange over {backend}; " if can >= 2 else ""
    return Comm(preset=settings.interconnect, entries=entries + extra, pair=pair_entry), Prior(
        rule=f"{measured_g}g = {max(2, can + 1)}..{G} from interconnect preset '{settings.interconnect}' (alpha-beta, "
             f"parastep.profiles.interconnects)" + lock_text + pair_text,
        reference=describe(settings.interconnect))


def _pair_part(settings: ProfilerSettings, *, kind: str, can: int, shape, dtype: str, out_bytes: int, backend: str,
               say, split_call, swap_bytes: int) -> tuple[CommEntry, str, bool]:
    """(pair entry, provenance words, whether it is a prior): measured on 2 local ranks where this
    machine hosts them (CPU processes, or 2 CUDA devices): the bandwidth from ``measure_pair``'s fit,
    one swap of ``swap_bytes`` at what ``measure_lockstep`` paid in lock step; else the
    interconnect preset's. A refused fit falls back to the preset when one is named, else it is an
    error."""
    from ..profiles.interconnects import pair_entry_for

    name = settings.interconnect
    if kind == "cuda" and can < 2:
        return pair_entry_for(name), f"; CFG pair swap from interconnect preset '{name}' (prior: fewer than 2 local devices)", True
    if split_call is None:
        raise ValueError("pair swap: no captured denoiser call to run the split step with (the pipeline ran no two-way guided batch)")
    try:
        fit, raw = measure_pair(output_shape=shape, dtype=dtype, output_bytes=out_bytes, repeats=settings.comm_repeats,
                                device=kind)
        say(f"pair swap fit: latency {fit.latency_s * 1e6:.1f} us, bandwidth {fit.bandwidth_bytes_per_s / 1e9:.3g} GB/s "
            f"(raw {raw['times']}); timing the split step in lock step")
        wait_s, stats = measure_lockstep(split_call, mode="split", world_size=2, shape=shape, dtype=dtype, device=kind,
                                         threads=settings.threads)
        entry = lockstep_entry(fit, wait_s, nbytes=swap_bytes, what="pair swap")
    except ValueError as exc:
        if name is None:
            raise
        say(f"pair swap: {str(exc).splitlines()[0]}; using preset '{name}'")
        return (pair_entry_for(name), f"; CFG pair swap from interconnect preset '{name}' (prior: its measurement here was "
                                      f"refused: {str(exc).splitlines()[0]})", True)
    runs = ", ".join(f"{st['comm_wait_s'] * 1e6:.0f}" for st in stats)
    say(f"pair swap: one swap {wait_s * 1e6:.0f} us in lock step (runs {runs} us; "
        f"the barrier-separated fit alone priced it at {(fit.latency_s + swap_bytes / fit.bandwidth_bytes_per_s) * 1e6:.0f} us)")
    how = PAIR_HOW.format(repeats=settings.comm_repeats, sizes=", ".join(str(n) for n in raw["sizes"]))
    return entry, f"; CFG pair swap measured over {backend}: {how}; {lockstep_words(wait_s, stats, backend=backend, mode='split')}", False
