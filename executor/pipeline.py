"""The pipeline a schedule runs: found, checked against the profiled folder, loaded and prepared
(docs/design.md §4, §5).

- :func:`check_model`: the model's location (``registry.locate``; nothing loaded), refused in
  one line when its folder is not the one the profile measured (``registry.folder_identity``);
- :func:`pipeline_class_of`: the pipeline class a run would load, imported without reading any
  weights, so its inputs can be checked first (``inputs.check_request``);
- :func:`prepare_pipeline`: the pipeline loaded on a device with the schedule's scheduler.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..schedules.model import Schedule


def pipeline_class_of(model: str, model_path: Optional[str]):
    """The pipeline class a run would load (imported, no weights read), or None if unknown here
    (an unknown model or missing folder is reported by ``registry.locate``)."""
    from . import registry

    with _quiet_transformers():   # importing a class may log transformers' optional-backend notes: not ours to print
        return _pipeline_class_of(registry, model, model_path)


@contextlib.contextmanager
def _quiet_transformers():
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        yield
        return
    before = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(before)


def _pipeline_class_of(registry, model: str, model_path: Optional[str]):
    try:
        loc = registry.locate(model, model_path=model_path)
        if loc.class_name is not None:
            return registry._resolve_class(loc.class_name)
        name = registry._read_model_index(Path(loc.source))["_class_name"]
        cls = registry._custom_class_for(name)
        if cls is None:
            import diffusers

            cls = getattr(diffusers, name, None)
        return cls
    except (UserError, ImportError, AttributeError):
        return None


def check_model(schedule: Schedule, model_path: Optional[str]):
    """Find the pipeline ``schedule`` runs (nothing loaded; a missing model is one line) and refuse
    a folder whose identity (``registry.folder_identity``) is not the one the schedule's profile
    measured. A ``Profile`` (same two fields) works too. Returns the ``registry.Location``."""
    from .registry import REGISTRY, folder_identity, locate

    loc = locate(schedule.model, model_path=model_path)
    want = schedule.model_identity
    if want is not None and loc.folder is not None:
        have = folder_identity(loc.folder)
        if have != want:
            profiled = f"model '{schedule.model}'" if schedule.model in REGISTRY else f"folder {schedule.model}"
            raise UserError(f"the profiled {profiled} has identity {want[:12]}..., this folder ({loc.where}) has {have[:12]}... "
                            "(its model_index.json or component configs differ); re-profile it (parastep profile "
                            f"--model-path {loc.where}) and re-plan, or pass --model-path the folder that was profiled")
    return loc


def prepare_pipeline(schedule: Schedule, *, model_path: Optional[str], device, announce: bool = True):
    """Load the schedule's pipeline on ``device`` (a torch.device) with the schedule's scheduler:
    float32 on CPU (half precision is slow and lossy there), float16 on CUDA (bfloat16 for Flux).
    ``announce``: print the scheduler switch note and show progress bars (rank 0 / one process)."""
    import torch

    from .registry import SCHEDULER_NAMES, load_pipeline, set_scheduler

    if device.type == "cpu":
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if schedule.model == "flux" else torch.float16
    pipe = load_pipeline(schedule.model, model_path=model_path, device=str(device), dtype=dtype)
    have = type(pipe.scheduler).__name__
    if have != schedule.scheduler:
        if schedule.scheduler not in SCHEDULER_NAMES:
            raise UserError(f"the schedule was planned for scheduler {schedule.scheduler} but the pipeline uses {have}; "
                            f"re-profile and re-plan with {have}, or use one of {', '.join(SCHEDULER_NAMES)}")
        set_scheduler(pipe, schedule.scheduler)
        if announce:
            print(f"parastep: note: switched the pipeline's scheduler from {have} to {schedule.scheduler} as the schedule says",
                  file=sys.stderr)
    pipe.set_progress_bar_config(disable=not announce)
    return pipe
