"""Exchanges of the executor (docs/design.md §1, §4): a parallel window's guided outputs at its end, and a
CFG split pair's raw halves at every split forward.

Window end (``exchange``). Every rank ends a parallel window holding all ``w`` guided outputs
``ehat_{s+j}``. A placement entry is a rank ``r`` or a CFG split pair ``[u, c]``
(``schedules.model.entry_ranks``); both ranks of a pair hold the offset's guided output after the
pipeline's own combine. Offset j is sent from its *first* computing rank (``r``, or ``u``) to every
other rank, so the world receives ``(world_size - 1) * w`` outputs per window, or nothing at all when
every rank already holds every output (every offset split over the only two ranks of a 2-rank world)
(``schedules.check.implied_totals``). Nothing moves for exact or reuse windows.

CFG split (``swap``). The two ranks of a pair each compute one half of the guided batch and swap
the raw halves: each receives its partner's half (the same shapes as its own).

Two implementations of one small protocol:

- ``LocalExchange``: a world of one process that plays every rank, owns every offset and computes
  both halves of a split itself (the hooks run the two half forwards), so a local run emulates any
  schedule. It moves nothing. Because every forward sees the same input whichever rank computes
  it, a local run is bit-identical to a distributed one on the same device/threads.
- ``DistExchange``: torch.distributed (gloo on CPU, nccl on CUDA). At a window's end: if every rank
  of the world sends the same number ``n`` of the window's offsets it is one ``all_gather`` of ``n``
  stacked outputs per rank (no padding needed); otherwise one ``broadcast`` per sending rank of its
  stacked outputs, in rank order. ``swap``: point-to-point send/recv with the partner, the lower rank
  sending first (no NCCL deadlock without grouping). Bytes received by this rank are counted for
  both.
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, Union

import torch

from ..schedules.model import entry_ranks, held_by_all

PlacementEntry = Union[int, Sequence[int]]


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def senders(placement: Sequence[PlacementEntry]) -> list[int]:
    """The rank that sends each offset's guided output at the window's end: its first computing rank."""
    return [entry_ranks(e)[0] for e in placement]


class Exchange(Protocol):
    rank: int
    world_size: int

    def owns(self, placement_rank: int) -> bool:
        """Does this process compute what is placed on ``placement_rank``?"""

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[PlacementEntry], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """All ``len(placement)`` outputs in offset order, and the bytes this rank received.

        ``owned`` maps offset j -> the guided output this rank holds (exactly the offsets with
        ``owns(r)`` for a rank r of ``placement[j]``); ``like`` has the shape/dtype/device of one output.
        """

    def swap(self, mine: Sequence[torch.Tensor], partner: int) -> tuple[list[torch.Tensor], int]:
        """CFG split: send ``mine`` (this rank's raw half, as a list of tensors) to ``partner`` and
        return the partner's tensors (same shapes and dtypes) and the bytes received."""


class LocalExchange:
    """One process playing every rank: owns every offset and both halves of a split, moves nothing."""

    rank = 0
    world_size = 1

    def owns(self, placement_rank: int) -> bool:
        return True

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[PlacementEntry], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        missing = [j for j in range(len(placement)) if j not in owned]
        if missing:
            raise RuntimeError(f"LocalExchange: offsets {missing} were never computed")
        return [owned[j] for j in range(len(placement))], 0

    def swap(self, mine: Sequence[torch.Tensor], partner: int) -> tuple[list[torch.Tensor], int]:
        raise RuntimeError("LocalExchange owns both halves of a split: the hooks compute both, nothing is swapped")


class DistExchange:
    """torch.distributed exchange over the default (world) group."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("DistExchange needs torch.distributed to be initialized first")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def owns(self, placement_rank: int) -> bool:
        return placement_rank == self.rank

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[PlacementEntry], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        dist = self._dist
        w = len(placement)
        for e in placement:
            bad = [r for r in entry_ranks(e) if not 0 <= r < self.world_size]
            if bad:
                raise RuntimeError(f"placement names rank(s) {bad} but world_size={self.world_size}")
        held = [j for j, e in enumerate(placement) if self.rank in entry_ranks(e)]
        if sorted(owned) != held:
            raise RuntimeError(f"rank {self.rank} holds offsets {sorted(owned)} but placement gives it {held}")
        if held_by_all(placement, self.world_size):
            return [owned[j] for j in range(w)], 0
        out: list[torch.Tensor | None] = [None] * w
        for j in held:
            out[j] = owned[j]
        offsets_of: dict[int, list[int]] = {}
        for j, r in enumerate(senders(placement)):
            offsets_of.setdefault(r, []).append(j)
        mine = offsets_of.get(self.rank, [])
        one = tensor_nbytes(like)
        received = sum(len(js) for r, js in offsets_of.items() if r != self.rank) * one
        counts = {len(offsets_of.get(r, [])) for r in range(self.world_size)}
        if len(counts) == 1:
            # every rank sends the same number of offsets: one all_gather, no padding
            send = torch.stack([owned[j] for j in mine]).contiguous()
            bufs = [send if r == self.rank else torch.empty_like(send) for r in range(self.world_size)]
            dist.all_gather(bufs, send)
            for r in range(self.world_size):
                if r != self.rank:
                    for k, j in enumerate(offsets_of[r]):
                        if out[j] is None:        # a split partner keeps its own (identical) copy
                            out[j] = bufs[r][k]
        else:
            for r in sorted(offsets_of):
                js = offsets_of[r]
                if r == self.rank:
                    buf = torch.stack([owned[j] for j in js]).contiguous()
                else:
                    buf = torch.empty((len(js), *like.shape), dtype=like.dtype, device=like.device)
                dist.broadcast(buf, src=r)
                if r != self.rank:
                    for k, j in enumerate(js):
                        if out[j] is None:
                            out[j] = buf[k]
        return [t for t in out if t is not None], received

    def swap(self, mine: Sequence[torch.Tensor], partner: int) -> tuple[list[torch.Tensor], int]:
        dist = self._dist
        if partner == self.rank or not 0 <= partner < self.world_size:
            raise RuntimeError(f"rank {self.rank} cannot swap CFG halves with rank {partner} (world_size={self.world_size})")
        send = [t.contiguous() for t in mine]
        theirs = [torch.empty_like(t) for t in send]
        for a, b in zip(send, theirs):
            if self.rank < partner:
                ops = [dist.isend(a, partner), dist.irecv(b, partner)]
            else:
                ops = [dist.irecv(b, partner), dist.isend(a, partner)]
            for op in ops:
                op.wait()
        return theirs, sum(tensor_nbytes(t) for t in theirs)
