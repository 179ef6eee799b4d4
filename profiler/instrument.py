"""How the profiler calls and instruments a pipeline (docs/design.md §2).

Every measurement calls the pipeline through the executor's own call (``call_latents``) with the
samples as the pipeline takes them (``sample_conditions``, ``calibration_samples``), and observes
it by replacing a method on the instance only (``instance_override``: the scheduler's ``step``, the
denoiser's ``forward``), never on the class. torch is imported lazily (``load_torch``), so the
profile command's argument checks start without it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence


def load_torch():
    import torch

    return torch


def first_output(out):
    """The first element of a scheduler's or denoiser's output (a tuple or a ``BaseOutput``)."""
    return out[0]


def denoiser(pipe):
    """The pipeline's denoiser module (the executor's lookup)."""
    from ..executor.hooks import denoiser_of   # imports torch: lazily

    return denoiser_of(pipe)[1]


def cfg_flag(pipe) -> Optional[bool]:
    """The executor's own test of a two-way guided batch."""
    from ..executor.hooks import cfg_flag as flag   # lazily: torch

    return flag(pipe)


def sample_conditions(pipe, prompts) -> tuple:
    """A profile's sample prompts as ``pipe`` is called with them: an unconditional pipeline's
    samples record the text 'None' and are called with no condition; others as recorded (text
    prompts, or class labels by index or name)."""
    from ..executor.inputs import takes_class_labels, takes_prompt

    if not takes_prompt(pipe) and not takes_class_labels(pipe):
        return tuple(None for _ in prompts)
    return tuple(prompts)


def calibration_samples(pipe, profile) -> tuple[list, list[int]]:
    """(conditions, seeds) of a profile's calibration samples, as ``pipe`` is called with them (one
    definition for calibration, corrections and the window audit)."""
    samples = profile.output_errors.samples
    return list(sample_conditions(pipe, [s.prompt for s in samples])), [s.seed for s in samples]


def call_latents(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int, call_kwargs: Mapping[str, Any],
                 output_type: str = "latent"):
    """The executor's one pipeline call for all samples, latents out unless ``call_kwargs`` says otherwise."""
    from ..executor.evaluate import call_pipeline

    kwargs = dict(call_kwargs)
    kwargs.setdefault("output_type", output_type)
    return call_pipeline(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=kwargs)


@contextlib.contextmanager
def instance_override(obj, name: str, impl_factory: Callable[[Callable], Callable]) -> Iterator[None]:
    """Temporarily replace ``obj.name`` (a method) by ``impl_factory(orig)`` on the instance."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    orig = getattr(obj, name)
    impl = impl_factory(orig)
    obj.__dict__[name] = functools.wraps(orig)(impl)
    try:
        yield
    finally:
        if had:
            obj.__dict__[name] = old
        else:
            obj.__dict__.pop(name, None)


@contextlib.contextmanager
def count_forwards(module) -> Iterator[list[int]]:
    """Counts calls of ``module`` (a forward pre-hook); use where no placeholder returns happen."""
    box = [0]

    def hook(mod, args, kwargs=None):
        box[0] += 1

    handle = module.register_forward_pre_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
