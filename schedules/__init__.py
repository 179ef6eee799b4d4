"""The schedule contract: pydantic models, YAML I/O, invariant checks, simulation.

No torch, no ortools here (docs/design.md §6).
"""

from .check import Violation, implied_totals, violations
from .io import dump_schedule, load_schedule, schedule_from_dict
from .model import (
    SCHEMA_VERSION,
    ExactWindow,
    ParallelWindow,
    ReuseWindow,
    Schedule,
    Totals,
    Window,
)

__all__ = [
    "SCHEMA_VERSION", "ExactWindow", "ParallelWindow", "ReuseWindow", "Schedule", "Totals", "Window",
    "Violation", "implied_totals", "violations", "dump_schedule", "load_schedule", "schedule_from_dict",
]
