"""Interconnect presets: alpha-beta models of exchanging guided outputs among g ranks.

Used when a profile cannot measure the exchange with the executor's own code (no GPUs here, or
fewer devices than the plan's world size). Each preset gives a per-message latency ``alpha``
(seconds per ring step) and an effective per-GPU unidirectional bandwidth ``beta`` (bytes/s),
derived from the vendor's nominal link rate times a stated achievable fraction.

The exchange at the end of a parallel window is an all-gather of the window's n guided outputs
among g ranks (every rank needs every output). We model it as NCCL's ring all-gather, whose
cost is (g - 1) latency steps plus (g - 1)/g of the data crossing each GPU's link (nccl-tests
``doc/PERFORMANCE.md``: all-gather bus bandwidth = algorithm bandwidth * (n - 1)/n,
https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md). In the profile's form
``latency_s + n * output_bytes / bandwidth_bytes_per_s`` (``profiles.model.Comm``) that is,
for g ranks::

    latency_s             = (g - 1) * alpha
    bandwidth_bytes_per_s = beta * g / (g - 1)

so ``comm_for`` writes one entry per g = 2..world_size. ``Profile.comm_entry`` falls back to
the largest entry for a g beyond the table (``Comm.preset`` set), which slightly underestimates
the latency term there; pass a ``world_size`` covering every plan you make.

No module-level mutable state: ``PRESETS`` is a read-only mapping of frozen records.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping

from ..errors import UserError
from .model import Comm, CommEntry, Prior, Profile

InterconnectName = Literal["nvlink", "pcie4", "pcie3", "ethernet-10g", "ethernet-1g"]


@dataclass(frozen=True)
class Interconnect:
    """One alpha-beta preset. ``bandwidth_bytes_per_s = nominal_bytes_per_s * achievable_fraction``."""

    name: str
    description: str
    latency_s: float               # alpha: one ring step (software + link latency)
    nominal_bytes_per_s: float     # vendor's per-GPU, per-direction figure
    achievable_fraction: float     # derating: what collectives reach in practice
    source: str                    # where the nominal figure and the derating come from

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.nominal_bytes_per_s * self.achievable_fraction


_GB = 1e9

PRESETS: Mapping[str, Interconnect] = MappingProxyType({
    "nvlink": Interconnect(
        name="nvlink",
        description="NVIDIA H100 SXM, NVLink 4 through NVSwitch (one HGX/DGX H100 node)",
        latency_s=5e-6,
        nominal_bytes_per_s=450 * _GB,
        achievable_fraction=0.80,
        source=("NVIDIA H100 datasheet (https://www.nvidia.com/en-us/data-center/h100/): NVLink 900 GB/s per GPU, "
                "both directions together = 450 GB/s per direction; 0.80 is the fraction of it nccl-tests all-gather "
                "bus bandwidth typically reaches on HGX H100 (~360 GB/s); alpha 5 us per ring step is NCCL's "
                "small-message latency order on NVLink (assumption)"),
    ),
    "pcie4": Interconnect(
        name="pcie4",
        description="PCIe 4.0 x16, GPU peer-to-peer through the host bridge or a PCIe switch",
        latency_s=10e-6,
        nominal_bytes_per_s=31.5 * _GB,
        achievable_fraction=0.80,
        source=("PCI-SIG PCIe 4.0 base specification: 16 GT/s per lane, 128b/130b encoding -> 31.5 GB/s per direction "
                "for x16; 0.80 for TLP/protocol overhead (peer-to-peer copies reach ~25 GB/s); alpha 10 us (assumption)"),
    ),
    "pcie3": Interconnect(
        name="pcie3",
        description="PCIe 3.0 x16, GPU peer-to-peer through the host bridge or a PCIe switch",
        latency_s=12e-6,
        nominal_bytes_per_s=15.75 * _GB,
        achievable_fraction=0.80,
        source=("PCI-SIG PCIe 3.0 base specification: 8 GT/s per lane, 128b/130b encoding -> 15.75 GB/s per direction "
                "for x16; 0.80 for TLP/protocol overhead (~12.6 GB/s); alpha 12 us (assumption)"),
    ),
    "ethernet-10g": Interconnect(
        name="ethernet-10g",
        description="10 Gigabit Ethernet between hosts, NCCL/Gloo over TCP sockets",
        latency_s=50e-6,
        nominal_bytes_per_s=1.25 * _GB,
        achievable_fraction=0.90,
        source=("IEEE 802.3ae (10GBASE-*): 10 Gbit/s = 1.25 GB/s per direction; 0.90 for Ethernet/IP/TCP framing "
                "(~94% goodput at MTU 1500) and socket-transport overhead; alpha 50 us for a TCP round through the kernel "
                "stack (assumption)"),
    ),
    "ethernet-1g": Interconnect(
        name="ethernet-1g",
        description="Gigabit Ethernet between hosts, NCCL/Gloo over TCP sockets",
        latency_s=100e-6,
        nominal_bytes_per_s=0.125 * _GB,
        achievable_fraction=0.90,
        source=("IEEE 802.3ab (1000BASE-T): 1 Gbit/s = 125 MB/s per direction; 0.90 for Ethernet/IP/TCP framing and "
                "socket overhead; alpha 100 us (assumption)"),
    ),
})


def preset(name: str) -> Interconnect:
    """The preset called ``name``; an unknown name is a UserError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown interconnect '{name}'; use one of: {', '.join(PRESETS)}") from None


def comm_entry_for(name: str, *, ranks: int) -> CommEntry:
    """The ring all-gather alpha-beta entry of preset ``name`` for ``ranks`` >= 2 ranks."""
    if ranks < 2:
        raise ValueError(f"an exchange needs at least 2 ranks, got {ranks}")
    ic = preset(name)
    return CommEntry(ranks=ranks, latency_s=(ranks - 1) * ic.latency_s,
                     bandwidth_bytes_per_s=ic.bandwidth_bytes_per_s * ranks / (ranks - 1), source="preset")


def pair_entry_for(name: str) -> CommEntry:
    """A CFG split's swap of raw halves between two ranks: each sends one output's bytes while it
    receives the partner's (full duplex), so one alpha plus bytes / beta."""
    ic = preset(name)
    return CommEntry(ranks=2, latency_s=ic.latency_s, bandwidth_bytes_per_s=ic.bandwidth_bytes_per_s, source="preset")


def comm_for(name: str, *, world_size: int) -> Comm:
    """``Comm`` with ``preset=name``, one entry per g = 2..max(2, world_size), and the pair swap."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    preset(name)  # validate the name first (UserError)
    return Comm(preset=name, entries=[comm_entry_for(name, ranks=g) for g in range(2, max(2, world_size) + 1)],
                pair=pair_entry_for(name))


def describe(name: str) -> str:
    """One line for provenance notes: the constants and their source."""
    ic = preset(name)
    return (f"{ic.name}: {ic.description}; alpha {ic.latency_s * 1e6:g} us per ring step, beta "
            f"{ic.nominal_bytes_per_s / _GB:g} GB/s nominal x {ic.achievable_fraction:g} = {ic.bandwidth_bytes_per_s / _GB:g} GB/s; "
            f"ring all-gather among g ranks: (g-1)*alpha + (g-1)/g * bytes / beta; CFG pair swap: alpha + bytes / beta; source: {ic.source}")


def with_interconnect(profile: Profile, name: str, *, world_size: int) -> Profile:
    """``profile`` with its exchange costs priced by preset ``name`` for up to ``world_size`` ranks
    (``comm_for``), its comm provenance saying so: the one way ``plan --interconnect``, ``simulate``
    (``--interconnect``, or the preset a plan recorded) and the benchmarks re-price a profile."""
    comm = comm_for(name, world_size=world_size)
    prov = profile.provenance.model_copy(update={"comm": Prior(
        rule=f"interconnect preset '{name}' (--interconnect; alpha-beta model, parastep.profiles.interconnects)",
        reference=describe(name))})
    return profile.model_copy(update={"comm": comm, "provenance": prov})
