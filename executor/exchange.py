"""Exchange of a parallel window's guided outputs at the window's end (DESIGN §1, §4).

Every rank ends a parallel window holding all ``w`` guided outputs ``ehat_{s+j}``. Each rank
*receives exactly the outputs it lacks*: no padding, nothing it already computed, and nothing
at all for exact or reuse windows (the hooks never call ``exchange`` for those).

Two implementations of one small protocol:

- ``LocalExchange``: a world of one process that owns every offset (single-process emulation of
  any schedule). It moves nothing. Because every forward sees the same input whichever rank
  computes it, a local run is bit-identical to a distributed one on the same device/threads.
- ``DistExchange``: torch.distributed (gloo on CPU, nccl on CUDA). If every rank of the world
  owns the same number ``n`` of the window's offsets it is one ``all_gather`` of ``n`` stacked
  outputs per rank (no padding needed); otherwise one ``broadcast`` per owning rank of its
  stacked outputs, in rank order. Bytes received by this rank are counted either way:
  ``sum over owners q != rank of n_q * output_bytes``, so the world receives
  ``(world_size - 1) * w * output_bytes`` per window (``schedules.check.implied_totals``).
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence

import torch


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Exchange(Protocol):
    rank: int
    world_size: int

    def owns(self, placement_rank: int) -> bool:
        """Does this process compute offsets placed on ``placement_rank``?"""

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[int], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """All ``len(placement)`` outputs in offset order, and the bytes this rank received.

        ``owned`` maps offset j -> the guided output this rank computed (exactly the offsets
        with ``owns(placement[j])``); ``like`` has the shape/dtype/device of one output.
        """


class LocalExchange:
    """One process playing every rank: owns every offset, moves nothing."""

    rank = 0
    world_size = 1

    def owns(self, placement_rank: int) -> bool:
        return True

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[int], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        missing = [j for j in range(len(placement)) if j not in owned]
        if missing:
            raise RuntimeError(f"LocalExchange: offsets {missing} were never computed")
        return [owned[j] for j in range(len(placement))], 0


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

    def exchange(self, owned: Mapping[int, torch.Tensor], placement: Sequence[int], *,
                 like: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        dist = self._dist
        w = len(placement)
        offsets_of: dict[int, list[int]] = {}
        for j, r in enumerate(placement):
            if not 0 <= r < self.world_size:
                raise RuntimeError(f"placement names rank {r} but world_size={self.world_size}")
            offsets_of.setdefault(r, []).append(j)
        mine = offsets_of.get(self.rank, [])
        if sorted(owned) != mine:
            raise RuntimeError(f"rank {self.rank} holds offsets {sorted(owned)} but placement gives it {mine}")
        out: list[torch.Tensor | None] = [None] * w
        for j in mine:
            out[j] = owned[j]
        one = tensor_nbytes(like)
        received = sum(len(js) for r, js in offsets_of.items() if r != self.rank) * one
        counts = {len(offsets_of.get(r, [])) for r in range(self.world_size)}
        if len(counts) == 1:
            # every rank owns the same number of offsets: one all_gather, no padding
            send = torch.stack([owned[j] for j in mine]).contiguous()
            bufs = [send if r == self.rank else torch.empty_like(send) for r in range(self.world_size)]
            dist.all_gather(bufs, send)
            for r in range(self.world_size):
                if r != self.rank:
                    for k, j in enumerate(offsets_of[r]):
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
                        out[j] = buf[k]
        return [t for t in out if t is not None], received
