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
from typing import Any, Callable, Sequence

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
    torch = load_torch()
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "cuda", torch.cuda.device_count()
    return "cpu", os.cpu_count() or 1


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
