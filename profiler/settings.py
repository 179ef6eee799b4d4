"""What the profiler measures (docs/design.md §2): the settings every measurement step reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class ProfilerSettings:
    """What to measure. ``call_kwargs`` are passed to every pipeline call (guidance_scale, height, ...)."""

    model: str
    num_steps: int
    max_window: int
    gpus: int
    prompts: tuple[Any, ...]
    seeds: tuple[int, ...]
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    interconnect: Optional[str] = None
    propagation_stride: int = 1
    quality_rank: int = 4
    timing_repeats: int = 3
    threads: int = 1
    measure_comm: bool = True
    comm_repeats: int = 20
    resolution_px: Optional[tuple[int, int]] = None
    calibration_plans: int = 0        # bootstrap plans of the calibration that follows (0: none); for the up-front estimate
