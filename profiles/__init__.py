"""The profile contract (models, I/O, interconnect presets, prior rules) and the shipped profiles.

Data and pure functions only: nothing here imports torch, ortools or another parastep stage.
The profiler that *measures* profiles lives in ``parastep.profiler``.
"""

from .io import dump_profile, load_profile, resolve_profile, shipped_profiles, write_profile
from .model import Profile

__all__ = ["Profile", "dump_profile", "load_profile", "resolve_profile", "shipped_profiles", "write_profile"]
