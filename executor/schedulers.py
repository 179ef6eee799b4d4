"""Which schedulers parastep runs exactly, and which it refuses: the audit as data.

Every scheduler class diffusers ships (``diffusers.schedulers``, 0.42) has one row in
:data:`AUDIT`: ``exact`` (docs/design.md §1 holds under parallel and reuse windows: every piece of state
its ``step`` reads or writes lives in the scheduler object, which the hooks snapshot at a parallel
window's start and restore before the replay, and its noise comes from the ``generator`` the
pipeline passes to ``step``, whose state is snapshotted too) or ``refused`` (with the reason and an
alternative, printed in one line by :func:`check_scheduler_supported` when parastep is applied).
``tests/test_compat.py`` runs every ``exact`` row through parallel and reuse windows against an
independent implementation of docs/design.md §1 and checks that the table covers every class diffusers
exports, so a new diffusers release with a new scheduler fails the tests until it is audited.

Reasons a scheduler is refused:

- more than one model call per step (order 2: Heun, KDPM2, Karras VE, score-SDE
  predictor-corrector): the schedule counts one forward per step;
- state kept *outside* the scheduler: ``CogVideoXDPMScheduler.step`` takes the previous step's
  ``old_pred_original_sample`` from the pipeline and hands the new one back, so a replay would
  reuse the stand-in chain's history (silently wrong by 0.03-0.08 on latents of magnitude ~3);
  RePaint jumps back in time with ``undo_step`` and takes the mask and image per step;
  Helios' DMD variant takes the pipeline's per-step tensors;
- noise not drawn from the step's generator (torchsde Brownian trees);
- not a continuous denoising loop: discrete-token samplers (aMUSEd, VQ-Diffusion, block
  refinement, entropy bound, discrete DDIM), a VAE decoder's sampler (consistency decoder),
  policy outputs (pi-Flow), protein structure generation (RFD4 Proteina), multi-stage schedulers
  driven by prior + decoder pipelines (Wuerstchen, Helios' pyramid stages).

A class not in the table (a user's own scheduler) inherits the row of its nearest audited base
class; a class with no audited base is accepted only if it is first-order (``order == 1``) and its
``step`` takes no argument beyond the common ones (:data:`PLAIN_STEP_ARGS`): any other argument may
carry state across steps from the pipeline, which a replay cannot restore.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Mapping, Optional

from ..errors import UserError

Status = Literal["exact", "refused"]


@dataclass(frozen=True)
class SchedulerAudit:
    status: Status
    reason: str                  # exact: what makes the replay exact; refused: why not
    alternative: str = ""        # refused: what to use instead (named in the refusal)
    stochastic: bool = False     # exact: its step always draws noise (needs a seeded generator)


def _exact(reason: str = "state in the scheduler object (snapshotted and restored by the hooks)", *,
           stochastic: bool = False) -> SchedulerAudit:
    return SchedulerAudit("exact", reason, stochastic=stochastic)


def _refused(reason: str, alternative: str) -> SchedulerAudit:
    return SchedulerAudit("refused", reason, alternative)


_NOISE = "noise from the step's generator (its state is snapshotted with the scheduler's)"
_MULTISTEP = "multistep history in the scheduler object (model_outputs, snapshotted and restored by the hooks)"
_TOKENS = "it samples discrete tokens, not continuous latents, so a reused model output is not a stand-in parastep can price"
_FIRST_ORDER = "a first-order scheduler such as DDIMScheduler, EulerDiscreteScheduler or DPMSolverMultistepScheduler"

AUDIT: Mapping[str, SchedulerAudit] = MappingProxyType({
    # ---- exact: deterministic, state in the scheduler object
    "DDIMScheduler": _exact("deterministic at eta=0; with eta > 0 the noise comes from the step's generator"),
    "DDIMParallelScheduler": _exact("as DDIMScheduler"),
    "DDIMInverseScheduler": _exact(),
    "CogVideoXDDIMScheduler": _exact(),
    "EulerDiscreteScheduler": _exact("deterministic at s_churn=0; with s_churn > 0 the noise comes from the step's generator"),
    "EDMEulerScheduler": _exact("as EulerDiscreteScheduler"),
    "FlowMatchEulerDiscreteScheduler": _exact("deterministic unless stochastic_sampling / s_churn; then " + _NOISE),
    "FlowMapEulerDiscreteScheduler": _exact(),
    "DPMSolverMultistepScheduler": _exact(_MULTISTEP + "; SDE variants draw " + _NOISE),
    "DPMSolverMultistepInverseScheduler": _exact(_MULTISTEP),
    "DPMSolverSinglestepScheduler": _exact(_MULTISTEP),
    "EDMDPMSolverMultistepScheduler": _exact(_MULTISTEP),
    "DEISMultistepScheduler": _exact(_MULTISTEP),
    "UniPCMultistepScheduler": _exact(_MULTISTEP + " (its corrector uses the previous step's output, also stored there)"),
    "LMSDiscreteScheduler": _exact("derivative history in the scheduler object"),
    "IPNDMScheduler": _exact("ets history in the scheduler object"),
    "PNDMScheduler": _exact("ets history and counter in the scheduler object (PLMS: with skip_prk_steps it makes "
                            "num_inference_steps + 1 steps, one model call each)"),
    "MiniMaxH3Scheduler": _exact("state in the scheduler object (makes num_inference_steps - 1 steps)"),
    # ---- exact: stochastic, noise replayed from the step's generator
    "DDPMScheduler": _exact(_NOISE, stochastic=True),
    "DDPMParallelScheduler": _exact(_NOISE, stochastic=True),
    "EulerAncestralDiscreteScheduler": _exact(_NOISE, stochastic=True),
    "LCMScheduler": _exact(_NOISE, stochastic=True),
    "TCDScheduler": _exact(_NOISE, stochastic=True),
    "CMStochasticIterativeScheduler": _exact(_NOISE, stochastic=True),
    "FlowMatchLCMScheduler": _exact(_NOISE, stochastic=True),
    "LTXEulerAncestralRFScheduler": _exact(_NOISE, stochastic=True),
    "SASolverScheduler": _exact(_MULTISTEP + "; " + _NOISE, stochastic=True),
    "UnCLIPScheduler": _exact(_NOISE + "; prev_timestep is a function of the timesteps, replayed as passed",
                              stochastic=True),
    # ---- refused
    "CogVideoXDPMScheduler": _refused(
        "its multistep history lives in the pipeline (step takes old_pred_original_sample and returns the next one), "
        "so a replayed window would reuse the stand-in chain's history", "CogVideoXDDIMScheduler"),
    "HeunDiscreteScheduler": _refused("it is of order 2 (two model calls per step)", "EulerDiscreteScheduler"),
    "KDPM2DiscreteScheduler": _refused("it is of order 2 (two model calls per step)", "DPMSolverMultistepScheduler"),
    "KDPM2AncestralDiscreteScheduler": _refused("it is of order 2 (two model calls per step)",
                                                "EulerAncestralDiscreteScheduler"),
    "FlowMatchHeunDiscreteScheduler": _refused("it is of order 2 (two model calls per step)",
                                               "FlowMatchEulerDiscreteScheduler"),
    "KarrasVeScheduler": _refused("it is of order 2 (a corrector model call per step) and takes sigma_hat/sample_hat "
                                  "from the pipeline", "EulerDiscreteScheduler"),
    "ScoreSdeVeScheduler": _refused("its predictor-corrector loop calls the model several times per step "
                                    "(step_pred/step_correct, no step())", "EulerAncestralDiscreteScheduler"),
    "ScoreSdeVpScheduler": _refused("it has no step() (step_pred only, for score-SDE pipelines)",
                                    "DDPMScheduler"),
    "DPMSolverSDEScheduler": _refused("it is of order 2 and its noise comes from a torchsde Brownian tree, "
                                      "not the step's generator",
                                      "DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++'"),
    "CosineDPMSolverMultistepScheduler": _refused("its noise comes from a torchsde Brownian tree, not the step's "
                                                  "generator (not replayable by parastep)",
                                                  "DPMSolverMultistepScheduler with algorithm_type='sde-dpmsolver++'"),
    "RePaintScheduler": _refused("its pipeline jumps back in time (undo_step) and passes the image and mask to every "
                                 "step", "run inpainting without parastep"),
    "HeliosDMDScheduler": _refused("step takes the pipeline's per-step tensors (dmd_noisy_tensor, cur_sampling_step), "
                                   "state a replay cannot restore", "run this pipeline without parastep"),
    "HeliosScheduler": _refused("it drives a multi-stage (pyramid) pipeline whose stages restart the schedule",
                                "run this pipeline without parastep"),
    "DDPMWuerstchenScheduler": _refused("it drives the two-stage Wuerstchen / Stable Cascade pipelines "
                                        "(prior + decoder)", "run this pipeline without parastep"),
    "PiflowScheduler": _refused("the model outputs a policy, not a denoising direction, so a reused output is not "
                                "a stand-in parastep can price", "run this pipeline without parastep"),
    "RFD4ProteinaScheduler": _refused("it generates protein structures, not images or video",
                                      "run this pipeline without parastep"),
    "ConsistencyDecoderScheduler": _refused("it drives a VAE decoder, not a denoising pipeline",
                                            "run the decoder without parastep"),
    "AmusedScheduler": _refused(_TOKENS, "run this pipeline without parastep"),
    "VQDiffusionScheduler": _refused(_TOKENS, "run this pipeline without parastep"),
    "BlockRefinementScheduler": _refused(_TOKENS, "run this pipeline without parastep"),
    "EntropyBoundScheduler": _refused(_TOKENS, "run this pipeline without parastep"),
    "DiscreteDDIMScheduler": _refused(_TOKENS, "run this pipeline without parastep"),
    "SCMScheduler": _refused("its timesteps include the end point (num_inference_steps + 1 of them; the pipeline "
                             "runs all but the last), which parastep's step count check cannot tell from a "
                             "mismatched schedule, and it samples in 1-4 steps, too few to parallelize",
                             "run this pipeline without parastep"),
})

# scheduler classes whose step draws noise by class: supported when the pipeline passes a seeded
# ``generator`` to ``step`` (its state is snapshotted with the scheduler's and restored before the replay)
STOCHASTIC_SCHEDULERS = frozenset(n for n, a in AUDIT.items() if a.stochastic)
# refused at apply time (see AUDIT for each one's reason and alternative)
UNSUPPORTED_SCHEDULERS = frozenset(n for n, a in AUDIT.items() if a.status == "refused")
# config values that make an otherwise deterministic scheduler draw noise in step
_SDE_ALGORITHMS = frozenset({"sde-dpmsolver", "sde-dpmsolver++"})
# step arguments that carry no state across steps (anything else may: refused for unaudited classes)
PLAIN_STEP_ARGS = frozenset({"self", "model_output", "timestep", "sample", "generator", "return_dict", "eta",
                             "use_clipped_model_output", "variance_noise", "s_churn", "s_tmin", "s_tmax", "s_noise"})


def audit_of(scheduler_or_class) -> Optional[tuple[str, SchedulerAudit]]:
    """(audited class name, its row) for a scheduler or class: its own row, or its nearest audited
    base class's; None when nothing in its MRO is audited."""
    cls = scheduler_or_class if isinstance(scheduler_or_class, type) else type(scheduler_or_class)
    for base in cls.__mro__:
        row = AUDIT.get(base.__name__)
        if row is not None:
            return base.__name__, row
    return None


def is_stochastic(scheduler) -> bool:
    """Does ``scheduler.step`` draw noise (by class or config; DDIM eta and Euler s_churn are step kwargs)?"""
    cfg = getattr(scheduler, "config", {}) or {}
    found = audit_of(scheduler)
    return ((found is not None and found[1].stochastic) or cfg.get("algorithm_type") in _SDE_ALGORITHMS
            or bool(cfg.get("stochastic_sampling")))


def check_scheduler_supported(scheduler) -> None:
    """Refuse, in one line naming the scheduler and an alternative, a scheduler parastep cannot run exactly."""
    name = type(scheduler).__name__
    found = audit_of(scheduler)
    if found is not None:
        row = found[1]
        if row.status == "exact":
            return
        why, alternative = row.reason, row.alternative
    else:
        extra = sorted(set(inspect.signature(type(scheduler).step).parameters) - PLAIN_STEP_ARGS) \
            if callable(getattr(type(scheduler), "step", None)) else ["(no step method)"]
        order = getattr(scheduler, "order", 1)
        if order != 1:
            why = f"it is of order {order} (several model calls per step)"
        elif extra:
            why = (f"its step takes {', '.join(extra)}, which may carry state from the pipeline across steps "
                   "that a replay cannot restore")
        else:
            return
        alternative = _FIRST_ORDER
    if alternative.startswith("run "):
        raise UserError(f"scheduler {name} is not supported by parastep: {why}; {alternative}")
    raise UserError(f"scheduler {name} is not supported by parastep: {why}; use {alternative}")


def check_folder_scheduler(folder) -> None:
    """``check_scheduler_supported`` on a pipeline folder's saved scheduler, before any weights load
    (built from its ``scheduler/scheduler_config.json``: cheap). Silent where the folder has no such
    config or names a class diffusers does not have: the check after loading covers those."""
    import json
    from pathlib import Path

    config = Path(folder) / "scheduler" / "scheduler_config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return
    import diffusers

    cls = getattr(diffusers, str(data.get("_class_name")), None) if isinstance(data, dict) else None
    if cls is None or not hasattr(cls, "from_config"):
        return
    try:
        scheduler = cls.from_config(data)
    except Exception:  # noqa: BLE001 - an odd config: leave it to the check after loading
        return
    check_scheduler_supported(scheduler)


_NOISING_ONLY = frozenset({"low_res_scheduler", "image_noising_scheduler"})


def check_pipeline_supported(pipe) -> None:
    """Refuse a multi-stage pipeline (a prior plus a decoder, each with its own denoising loop):
    parastep would parallelize one stage and run the other sequentially on every rank."""
    import torch

    stages = []
    for key, value in vars(pipe).items():
        if key == "scheduler" or key.startswith("_"):
            continue
        if hasattr(value, "set_timesteps") and hasattr(value, "config"):
            if key not in _NOISING_ONLY:   # these only add noise to a conditioning image: no loop of their own
                stages.append(key)
        elif hasattr(value, "components") and hasattr(value, "scheduler") and not isinstance(value, torch.nn.Module):
            stages.append(key)          # a sub-pipeline (combined pipelines hold prior_pipe / decoder_pipe)
    if stages:
        raise UserError(f"pipeline {type(pipe).__name__} has several denoising stages (also {', '.join(sorted(stages))}); "
                        "parastep plans one loop: run each stage's own pipeline (e.g. the prior, then the decoder "
                        "with parastep) instead of the combined one")
    check_scheduler_supported(pipe.scheduler)


def scheduler_state(scheduler) -> dict:
    """A deep copy of everything a scheduler keeps between steps (its instance ``__dict__``, less
    the hooks' own ``step`` / ``set_timesteps`` wrappers): restoring it with
    ``scheduler.__dict__.update(state)`` puts the scheduler back where it was (the profiler's
    reference trajectory; the hooks' window snapshot takes the same copy)."""
    import copy

    return {k: copy.deepcopy(v) for k, v in scheduler.__dict__.items() if k not in ("step", "set_timesteps")}
