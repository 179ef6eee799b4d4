"""The profile contract (models, I/O, registry, interconnect presets) and the profiler.

``model``, ``io``, ``interconnects`` and ``priors`` import neither torch nor ortools;
the profiler (``profiler``) does import torch and is only loaded by ``parastep profile``.
"""

from .io import dump_profile, load_profile, resolve_profile, shipped_profiles, write_profile
from .model import Profile

__all__ = ["Profile", "dump_profile", "load_profile", "resolve_profile", "shipped_profiles", "write_profile"]
