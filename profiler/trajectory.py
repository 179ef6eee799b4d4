"""The reference trajectory every quality measurement is taken along (docs/design.md §2).

``record_reference`` runs the pipeline's own loop, unmodified, with ``scheduler.step`` wrapped on
the instance to record, before each step i, ``x_i``, the guided output ``e_i`` the pipeline passes
to ``step``, the step's other arguments, and a snapshot (deep copy of ``scheduler.__dict__``) of
the scheduler state. ``x_T`` is the output latent. T forwards.

A pipeline may step k identical copies of the samples (DiT with guidance > 1 steps ``[x; x]``):
``latent_copies`` finds k (and refuses copies that differ); every per-sample number is taken on the
first copy (``first_copy``) and every injected perturbation reaches all copies alike (``tiled``),
so each sample counts once.

``similarity`` compares adjacent guided outputs along the recorded run (cosine, relative L1).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import UserError
from ..executor.schedulers import scheduler_state
from ..profiles.model import Similarity
from .instrument import call_latents, count_forwards, denoiser, first_output, instance_override, load_torch


@dataclass
class Trajectory:
    """The recorded reference run of one batch: ``x[i]`` enters step i (``x[T]`` is the output)."""

    x: list[Any]
    e: list[Any]
    states: list[dict]
    bound: list[inspect.BoundArguments]
    step_fn: Callable            # the scheduler class's unbound ``step``
    forwards: int
    copies: int = 1              # the latent batch is ``copies`` identical copies of the samples (``latent_copies``)


def rms_per_sample(diff, copies: int = 1) -> "Any":
    """RMS over every dimension but the first (the batch): one value per sample (``first_copy``
    folds a batch of ``copies`` identical copies of the samples first)."""
    d = first_copy(diff.detach(), copies)
    return d.reshape(d.shape[0], -1).double().pow(2).mean(dim=1).sqrt()


def first_copy(t, copies: int):
    """Rows ``[0, N)`` of a latent batch that holds ``copies`` copies of N samples, viewed as
    ``(copies, N, ...)``. The copies are identical (``latent_copies`` refuses otherwise), so the
    first one is every reduction over them, and it is the one the pipeline decodes (DiT's
    ``latents, _ = latent_model_input.chunk(2)``)."""
    return t if copies == 1 else t.reshape(copies, -1, *t.shape[1:])[0]


def tiled(t, copies: int):
    """``t`` (N samples) repeated ``copies`` times along the batch: a perturbation every copy of a
    sample receives alike, so the copies stay identical (a pipeline may step every copy, as DiT's
    scheduler does, or re-sync them from the first, as DiT's loop does: both see the same change)."""
    return t if copies == 1 else t.repeat(copies, *([1] * (t.dim() - 1)))


def latent_copies(tensors: Sequence[Any], *, samples: int) -> int:
    """k where the scheduler steps a latent batch of k x ``samples`` rows holding k identical copies
    of the samples (DiT with guidance > 1 steps ``[x; x]``): 1 for one latent per sample.
    ValueError, one line, when the rows are not a whole number of copies or the copies differ."""
    rows = int(tensors[0].shape[0])
    if rows == samples:
        return 1
    if samples <= 0 or rows % samples:
        raise ValueError(f"the scheduler steps a latent batch of {rows} rows for {samples} samples, not a whole number of "
                         "copies of them: parastep cannot tell which rows are which sample; profile one sample per latent row")
    k = rows // samples
    worst = 0.0
    for t in tensors:
        v = t.detach().reshape(k, samples, -1).double()
        scale = float(v[0].abs().max())
        worst = max(worst, float((v - v[:1]).abs().max()) / max(scale, 1e-30))
    if worst > 1e-6:
        raise ValueError(f"the scheduler steps {k} copies of each of the {samples} samples and the copies differ (max relative "
                         f"difference {worst:.2g}): parastep measures one latent per sample; profile with a deterministic "
                         "scheduler (e.g. DDIMScheduler), whose copies stay identical")
    return k


def record_reference(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int,
                     call_kwargs: Mapping[str, Any]) -> Trajectory:
    """Run the unmodified pipeline once, recording x_i, e_i, step arguments and scheduler state."""
    torch = load_torch()
    sched = pipe.scheduler
    xs: list = []
    es: list = []
    states: list[dict] = []
    bounds: list[inspect.BoundArguments] = []
    last_out: list = []

    def factory(orig):
        sig = inspect.signature(orig)

        def impl(*args, **kwargs):
            b = sig.bind(*args, **kwargs)
            states.append(scheduler_state(sched))
            bounds.append(inspect.BoundArguments(sig, dict(b.arguments)))
            es.append(b.arguments["model_output"].detach().clone())
            xs.append(b.arguments["sample"].detach().clone())
            out = orig(*args, **kwargs)
            last_out[:] = [first_output(out).detach().clone()]
            return out

        return impl

    with torch.no_grad(), instance_override(sched, "step", factory), count_forwards(denoiser(pipe)) as n:
        call_latents(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=call_kwargs)
    if len(es) != num_steps:
        raise UserError(f"the pipeline made {len(es)} scheduler steps for num_inference_steps={num_steps}; "
                        "profile a first-order scheduler")
    step_fn = type(sched).step
    copies = latent_copies(xs + last_out + es, samples=len(prompts))
    return Trajectory(x=xs + last_out, e=es, states=states, bound=bounds, step_fn=step_fn, forwards=n[0], copies=copies)


def similarity(traj: Trajectory) -> Similarity:
    """Cosine similarity and relative L1 distance of adjacent guided outputs, mean over samples."""
    cos, rel = [], []
    for a, b in zip(traj.e[:-1], traj.e[1:]):
        a, b = first_copy(a, traj.copies), first_copy(b, traj.copies)
        fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
        c = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-30)
        r = (fb - fa).abs().sum(1) / fa.abs().sum(1).clamp_min(1e-30)
        cos.append(float(c.mean()))
        rel.append(float(r.mean()))
    return Similarity(cosine=cos, rel_l1=rel)
