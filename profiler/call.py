"""How the profiler calls a pipeline, and ``plan --verify`` calls it the same way (docs/design.md §2).

- :func:`default_call`: the call's defaults for a model: the registry's guidance scale and
  resolution (a package pipeline's own signature defaults), the default prompts (digits: every
  class; text pipelines: ``TEXT_PROMPTS``; class-conditional or unconditional ones: from their
  signature) and step count;
- :func:`generation`: the conditioning and size flags (``executor.inputs.Inputs``) put into the
  call, with the ``num_inference_steps`` that runs exactly the profiled steps; it returns the size
  and frame count the profile records.
"""

from __future__ import annotations

import inspect

DIGIT_PROMPTS = tuple(str(d) for d in range(10))
TEXT_PROMPTS = ("a photo of an astronaut riding a horse on the moon", "a red sports car parked by the sea at sunset",
                "a bowl of fruit on a wooden table, studio lighting")


def default_call(pipe, model: str):
    """(call kwargs, resolution_px, default prompts, default steps) for ``pipe``."""
    from ..executor.registry import DIGIT_PIPELINES, REGISTRY

    spec = REGISTRY.get(model)
    digits = type(pipe).__name__ in DIGIT_PIPELINES
    params = inspect.signature(type(pipe).__call__).parameters
    kwargs: dict = {}
    if "guidance_scale" in params:
        own = params["guidance_scale"].default
        if spec is not None and spec.source != "package":
            kwargs["guidance_scale"] = spec.default_guidance_scale
        elif isinstance(own, (int, float)):
            kwargs["guidance_scale"] = float(own)      # our own pipelines: their signature default is authoritative
    resolution = None
    if "height" in params and "width" in params:
        if spec is not None:
            resolution = tuple(spec.default_resolution_px)
            kwargs["height"], kwargs["width"] = resolution
    else:
        # a pixel-space denoiser's sample size is the image size: a UNet pipeline's, or a bundled digit model's transformer
        denoiser = getattr(pipe, "unet", None) if hasattr(pipe, "unet") else (getattr(pipe, "transformer", None) if digits else None)
        size = getattr(denoiser, "config", {}).get("sample_size") if denoiser is not None else None
        if isinstance(size, int):
            resolution = (size, size)
    prompts = DIGIT_PROMPTS if digits else TEXT_PROMPTS
    if not digits and "prompt" not in params:      # class labels (DiT) or no conditioning (DDPM): never prompt=
        from ..executor.inputs import default_prompts

        prompts = tuple(default_prompts(pipe))
    steps = spec.default_steps if spec is not None else 50
    return kwargs, resolution, prompts, steps


def generation(pipe, inputs, *, kwargs: dict, resolution, num_steps: int):
    """Put ``inputs``' image, strength, size and frames into the call ``kwargs`` and the
    ``num_inference_steps`` that runs exactly ``num_steps`` steps (PNDM runs one more than asked;
    img2img with strength S about S of them); returns the (resolution, frames) to record: the
    given ones, else the pipeline signature's integer defaults (Latte: 512 px, 16 frames)."""
    from ..executor.inputs import call_params, frames_param, generation_kwargs, image_size_px, inference_steps_for

    kwargs.update(generation_kwargs(pipe, inputs))
    kwargs["num_inference_steps"] = inference_steps_for(pipe.scheduler, num_steps, strength=inputs.strength)
    params = call_params(pipe)
    if inputs.resolution_px is not None:
        resolution = inputs.resolution_px
    elif inputs.image is not None and not ("height" in params and "width" in params):
        resolution = image_size_px(inputs.image)          # an image-to-image output takes its input's size
    elif resolution is None and "height" in params and "width" in params:
        h, w = params["height"].default, params["width"].default
        if type(h) is int and type(w) is int:
            resolution = (h, w)
    fp = frames_param(pipe)
    frames = inputs.num_frames
    if frames is None and fp is not None and type(params[fp].default) is int:
        frames = params[fp].default
    return (None if resolution is None else tuple(resolution)), frames
