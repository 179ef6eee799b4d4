"""``DigitsPipeline``: the bundled class-conditional pixel-space diffusion pipeline (docs/design.md §5).

A plain diffusers ``DiffusionPipeline`` with two components, ``unet`` (``UNet2DModel``, one
channel, 16x16 px, ``num_class_embeds=11``: classes 0-9 are the digits, class 10 is the null
class used for classifier-free guidance) and ``scheduler`` (``DDIMScheduler`` as shipped; any
diffusers scheduler with the usual ``set_timesteps`` / ``scale_model_input`` / ``step`` API works,
e.g. Euler or DPM-Solver++).

Its ``__call__`` follows diffusers' conventions and, like the big pipelines, calls the denoiser
exactly once per step: with guidance the batch is ``[null; cond]`` concatenated, then
``guided = uncond + guidance_scale * (cond - uncond)`` is passed to ``scheduler.step``.

Load the shipped weights offline with::

    DigitsPipeline.from_pretrained(Path(parastep.models.digits.__file__).parent, local_files_only=True)

(``model_index.json`` names the class ``DigitsPipeline``; a bare ``DiffusionPipeline.from_pretrained``
cannot resolve a class that lives outside diffusers unless given ``custom_pipeline=<this file>``
and ``trust_remote_code=True``.)
"""

from __future__ import annotations

import inspect
from typing import Callable, Literal, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

NULL_CLASS = 10
NUM_DIGITS = 10
DEFAULT_GUIDANCE_SCALE = 1.5   # classifier agreement at 50 DDIM steps, 64 samples: g=1.0 98%, 1.25 100%, 1.5 97%, 2.0 83%, 3.0 20%

PromptLike = Union[str, int, Sequence[Union[str, int]], None]


def parse_digit_prompt(prompt: PromptLike) -> list[int]:
    """``"7"`` / ``7`` / ``["1", 2]`` -> class labels; raises ``ValueError`` naming the bad entry."""
    items = [prompt] if isinstance(prompt, (str, int)) else list(prompt)
    labels: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"prompt entry {item!r} is not a digit; use '0'..'9' or an int 0..9")
        if isinstance(item, (int, np.integer)):
            value = int(item)
        elif isinstance(item, str) and item.strip().isdigit() and len(item.strip()) == 1:
            value = int(item.strip())
        else:
            raise ValueError(f"prompt entry {item!r} is not a digit; use '0'..'9' or an int 0..9")
        if not 0 <= value < NUM_DIGITS:
            raise ValueError(f"prompt entry {item!r} is out of range; use a digit 0..9")
        labels.append(value)
    if not labels:
        raise ValueError("prompt is empty; give at least one digit '0'..'9'")
    return labels


class DigitPipelineMixin:
    """What both bundled digit pipelines share: the guidance state diffusers' callbacks read, the
    batch's class labels from ``prompt`` or ``class_labels``, and ``scheduler.step``'s extra
    arguments."""

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def _class_labels(self, prompt: PromptLike, class_labels, num_images_per_prompt: int) -> torch.Tensor:
        """Exactly one of ``prompt`` / ``class_labels``, each label repeated ``num_images_per_prompt`` times."""
        if prompt is not None and class_labels is not None:
            raise ValueError("give either prompt or class_labels, not both")
        if prompt is None and class_labels is None:
            raise ValueError("give prompt (a digit '0'..'9' or a list of them) or class_labels")
        if class_labels is not None:
            labels = class_labels.tolist() if isinstance(class_labels, torch.Tensor) else class_labels
            labels = parse_digit_prompt(labels)
        else:
            labels = parse_digit_prompt(prompt)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt} must be >= 1")
        return torch.tensor(labels, dtype=torch.long).repeat_interleave(num_images_per_prompt)

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """``eta`` and ``generator`` for ``scheduler.step`` where its signature takes them."""
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra


class DigitsPipeline(DigitPipelineMixin, DiffusionPipeline):
    """Class-conditional 16x16 digit generator with classifier-free guidance."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptLike = None,
        *,
        class_labels: Union[Sequence[int], torch.Tensor, None] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        eta: float = 0.0,
        generator: Union[torch.Generator, list[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[..., dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}; use 'pil', 'np', 'pt' or 'latent'")
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback_on_step_end_tensor_inputs entry {name!r}; allowed: {self._callback_tensor_inputs}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be >= 1")
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False

        device = self._execution_device
        dtype = self.unet.dtype
        labels = self._class_labels(prompt, class_labels, num_images_per_prompt).to(device)
        batch_size = labels.shape[0]
        if self.do_classifier_free_guidance:
            model_labels = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
        else:
            model_labels = labels

        px = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, px, px)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = latents * self.scheduler.init_noise_sigma
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(model_input, t, class_labels=model_labels).sample
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + self.guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for name in callback_on_step_end_tensor_inputs:
                        callback_kwargs[name] = locals()[name]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()

        if output_type == "latent":
            images = latents
        else:
            images = (latents / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
