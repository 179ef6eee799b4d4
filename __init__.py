"""parastep: planned parallel denoising for diffusion models.

Stages (each a subpackage): ``profiles`` (what the planner knows), ``planner``
(profile -> optimal schedule), ``schedules`` (the YAML contract, validate,
simulate), ``executor`` (schedule -> a run on torch.distributed).
"""

__version__ = "0.1.0"
