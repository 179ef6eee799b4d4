"""Solver options, importable without OR-Tools (the DP path and the CLI never load it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SolverOptions:
    time_limit_s: float = 60.0
    workers: Optional[int] = None        # None: the machine's CPU count
    seed: int = 0
    deterministic: bool = False
    log: bool = False

    def resolved_workers(self) -> int:
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)
