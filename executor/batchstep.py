"""BatchStep: the offsets a rank holds in a batched parallel window, in one denoiser call.

docs/design.md §1 computes offset j of a parallel window at ``(xhat_{s+j}, t_{s+j})``, and the
reuse chain ``xhat_{s+j+1} = step_{s+j}(xhat_{s+j}, stand-in_j)`` does not depend on any output. So
at a rank's first offset j0 every later input of that rank is already known: the hooks run the
chain ahead on the scheduler (state and generators snapshotted and restored), predict the
denoiser's arguments for each of the rank's offsets, and make one call on them concatenated along
the batch, with per-row timesteps. When the pipeline asks for a later offset, its actual arguments
are compared with the prediction; equal (bit for bit), the precomputed slice is returned; different
(a callback edited the latents, ControlNet residuals change per step, inpainting mixes channels),
that offset is computed alone from the pipeline's own arguments, as the unbatched window would, and
counted (``WindowStats.batch_fallbacks``).

What the prediction assumes, checked at j0 against the pipeline's actual call (any mismatch: no
batch for that rank's offsets, every one computed alone and counted):

- the denoiser's sample (its first positional argument, or ``sample`` / ``hidden_states``) is
  ``m`` stacked copies of the latents the scheduler last returned (``m = 2`` with CFG), optionally
  through ``scheduler.scale_model_input`` (``CallForm.scaled``);
- its timestep (second positional argument, or ``timestep``) is the scheduler's timestep of that
  step, broadcast to the shape the pipeline used, or that divided by 1000 (Flux-style);
- every other argument (text states, class labels, added conditions, flags) is the same at every
  offset of the window: batched tensors (first dimension = the call's batch ``B``) are repeated
  ``k`` times; the rest passes as is.

The batched call's outputs are cut back into ``k`` slices of ``B`` rows in the denoiser's own
output type. Kernels depend on the batch size, so outputs equal the unbatched window's up to the
last bits (``tests/integration/test_batchstep.py`` bounds it), and a batching reference of §1 bit
for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch

Key = Union[int, str]      # a positional index or a keyword name
TimestepForm = Literal["plain", "per_mille"]


@dataclass(frozen=True)
class CallForm:
    """How the pipeline builds the denoiser's call from its latents and the step's timestep."""

    sample_key: Key
    timestep_key: Key
    batch: int                 # rows of one call (B)
    copies: int                # the sample is this many stacked copies of the latents
    scaled: bool               # ... passed through scheduler.scale_model_input
    timestep_form: TimestepForm
    timestep_shape: tuple[int, ...]
    timestep_dtype: torch.dtype


@dataclass
class RankBatch:
    """One rank's batched offsets of a window: the predicted calls and the computed slices."""

    offsets: tuple[int, ...]
    form: CallForm
    samples: list[torch.Tensor]       # predicted denoiser sample per offset (the first is the actual one)
    timesteps: list[torch.Tensor]     # predicted timestep argument per offset
    rest: tuple[tuple, dict]          # the first call's other arguments (cloned), for the check
    outputs: list[Any] = field(default_factory=list)


def get_arg(args: tuple, kwargs: dict, key: Key) -> Any:
    return args[key] if isinstance(key, int) else kwargs[key]


def with_arg(args: tuple, kwargs: dict, key: Key, value: Any) -> tuple[tuple, dict]:
    if isinstance(key, int):
        return args[:key] + (value,) + args[key + 1:], kwargs
    return args, {**kwargs, key: value}


def _sample_key(args: tuple, kwargs: dict) -> Optional[Key]:
    if args:
        return 0
    for name in ("sample", "hidden_states"):
        if isinstance(kwargs.get(name), torch.Tensor):
            return name
    return None


def _timestep_key(args: tuple, kwargs: dict) -> Optional[Key]:
    if len(args) > 1:
        return 1
    return "timestep" if "timestep" in kwargs else None


def timestep_arg(form: CallForm, t: torch.Tensor, device) -> torch.Tensor:
    """The timestep argument the pipeline passes at a step whose scheduler timestep is ``t``."""
    t = torch.as_tensor(t)
    if form.timestep_form == "plain":
        return t.to(device=device, dtype=form.timestep_dtype).expand(form.timestep_shape)
    return t.to(device).expand(form.timestep_shape).to(form.timestep_dtype) / 1000


def sample_arg(form: CallForm, scheduler, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The denoiser sample the pipeline builds from ``latents`` at timestep ``t`` (scheduler at that step)."""
    x = torch.cat([latents] * form.copies) if form.copies > 1 else latents
    return scheduler.scale_model_input(x, t) if form.scaled else x


def find_form(args: tuple, kwargs: dict, *, latents: Optional[torch.Tensor], t: torch.Tensor, scheduler) -> Union[CallForm, str]:
    """The ``CallForm`` that reproduces this call from ``latents`` and ``t`` bit for bit, or why none does.
    May call ``scheduler.scale_model_input``: run it on a state that is restored afterwards."""
    skey, tkey = _sample_key(args, kwargs), _timestep_key(args, kwargs)
    if skey is None or tkey is None:
        return "the denoiser call has no recognisable sample and timestep arguments"
    sample, tau = get_arg(args, kwargs, skey), get_arg(args, kwargs, tkey)
    if not isinstance(latents, torch.Tensor) or latents.dim() < 1:
        return "no latents from the previous step"
    if not isinstance(tau, torch.Tensor):
        return "the pipeline passes its timestep as a Python number"
    if sample.dim() != latents.dim() or sample.shape[1:] != latents.shape[1:] or sample.shape[0] % max(1, latents.shape[0]):
        return f"the denoiser's sample {tuple(sample.shape)} is not stacked copies of the latents {tuple(latents.shape)}"
    copies = sample.shape[0] // latents.shape[0]
    base = dict(sample_key=skey, timestep_key=tkey, batch=int(sample.shape[0]), copies=copies,
                timestep_shape=tuple(tau.shape), timestep_dtype=tau.dtype)
    for tf in ("plain", "per_mille"):
        probe = CallForm(**base, scaled=False, timestep_form=tf)
        try:
            ok = torch.equal(timestep_arg(probe, t, tau.device), tau)
        except RuntimeError:   # a shape that does not broadcast
            ok = False
        if ok:
            break
    else:
        return "the denoiser's timestep is not the scheduler's timestep of the step"
    for scaled in (False, True):
        form = CallForm(**base, scaled=scaled, timestep_form=tf)
        predicted = sample_arg(form, scheduler, latents, t)
        if predicted.shape == sample.shape and predicted.dtype == sample.dtype and torch.equal(predicted, sample):
            return form
    return "the denoiser's sample is not the scheduler's latents (stacked, through scale_model_input or not)"


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_clone(v) for v in value)
    return value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a is b or a == b)
    except Exception:   # an object without a usable ==
        return False


def _without(args: tuple, kwargs: dict, form: CallForm) -> tuple[tuple, dict]:
    """The call's arguments other than its sample and timestep (those are replaced by None)."""
    for key in (form.sample_key, form.timestep_key):
        args, kwargs = with_arg(args, kwargs, key, None)
    return args, kwargs


def rest_of(args: tuple, kwargs: dict, form: CallForm) -> tuple[tuple, dict]:
    """A clone of the call's other arguments, kept to check the later offsets' calls against."""
    a, k = _without(args, kwargs, form)
    return _clone(a), _clone(k)


def matches(batch: RankBatch, index: int, args: tuple, kwargs: dict) -> bool:
    """Is this actual call the one predicted for ``batch.offsets[index]``?"""
    form = batch.form
    try:
        sample, tau = get_arg(args, kwargs, form.sample_key), get_arg(args, kwargs, form.timestep_key)
    except (IndexError, KeyError):
        return False
    if not (_equal(sample, batch.samples[index]) and _equal(tau, batch.timesteps[index])):
        return False
    a, k = _without(args, kwargs, form)
    return _equal(a, batch.rest[0]) and _equal(k, batch.rest[1])


def _tile(value: Any, copies: int, rows: int) -> Any:
    """``value`` with every batched tensor (first dimension ``rows``) repeated ``copies`` times along it."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * copies) if value.dim() >= 1 and value.shape[0] == rows else value
    if isinstance(value, dict):
        return {k: _tile(v, copies, rows) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_tile(v, copies, rows) for v in value)
    return value


def batched_call(args: tuple, kwargs: dict, batch: RankBatch) -> tuple[tuple, dict]:
    """One call on every offset of ``batch``: samples concatenated, one timestep per row, the other
    batched arguments repeated (from the first offset's actual call ``args, kwargs``)."""
    form, k = batch.form, len(batch.offsets)
    a, kw = _without(args, kwargs, form)
    a, kw = _tile(a, k, form.batch), _tile(kw, k, form.batch)
    rows = [tau.reshape(-1).expand(form.batch) if tau.numel() == 1 else tau for tau in batch.timesteps]
    a, kw = with_arg(a, kw, form.sample_key, torch.cat(batch.samples))
    return with_arg(a, kw, form.timestep_key, torch.cat(rows))


def repeated_call(args: tuple, kwargs: dict, copies: int) -> tuple[tuple, dict]:
    """The call ``copies`` offsets at this same input make, shaped as ``batched_call`` shapes it (every
    batched tensor repeated, one timestep per row): what the profiler times for the batch curve."""
    skey, tkey = _sample_key(args, kwargs), _timestep_key(args, kwargs)
    if skey is None:
        raise ValueError("the denoiser call has no recognisable sample argument")
    rows = int(get_arg(args, kwargs, skey).shape[0])
    if tkey is not None:
        tau = get_arg(args, kwargs, tkey)
        if isinstance(tau, torch.Tensor) and tau.numel() == 1:
            args, kwargs = with_arg(args, kwargs, tkey, tau.reshape(-1).expand(rows))
    return _tile(args, copies, rows), _tile(kwargs, copies, rows)


def is_output_dict(value: Any) -> bool:
    return isinstance(value, dict) or hasattr(value, "to_tuple")   # diffusers BaseOutput (an OrderedDict dataclass)


def _cut(value: Any, lo: int, hi: int, rows: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[lo:hi] if value.dim() >= 1 and value.shape[0] == rows else value
    if is_output_dict(value):
        return type(value)(**{k: _cut(v, lo, hi, rows) for k, v in value.items()})
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cut(v, lo, hi, rows) for v in value)
    return value


def split_output(out: Any, *, offsets: int, batch: int) -> list[Any]:
    """The batched call's output as ``offsets`` outputs of ``batch`` rows, in the denoiser's own type."""
    rows = offsets * batch
    return [_cut(out, i * batch, (i + 1) * batch, rows) for i in range(offsets)]
