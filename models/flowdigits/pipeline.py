"""``FlowDigitsPipeline``: the bundled class-conditional flow-matching transformer (docs/design.md §5).

The second bundled model, of the family SD3 and Flux belong to: a rectified-flow model whose
denoiser is a transformer. A plain diffusers ``DiffusionPipeline`` with two components,
``transformer`` (``DiTTransformer2DModel``: one channel, 16x16 px, patch size 2, adaLN-zero,
``num_embeds_ada_norm=10``: classes 0-9 are the digits, the label embedding's extra row 10 is the
null class used for classifier-free guidance, as in DiT) and ``scheduler``
(``FlowMatchEulerDiscreteScheduler`` as shipped, ``shift=1.0``; DPM-Solver++ with
``use_flow_sigmas`` also works).

The flow-matching convention is the scheduler's: ``x_sigma = (1 - sigma) * x0 + sigma * noise``,
the transformer predicts the velocity ``noise - x0`` at ``timestep = sigma * 1000`` (exactly the
values of ``scheduler.timesteps``), and ``scheduler.step(v, t, x)`` moves ``x`` by
``(sigma_next - sigma) * v``. Like SD3's pipeline the step's ``t`` is broadcast to the batch for
the transformer and passed unchanged to ``scheduler.step``.

Its ``__call__`` takes the same arguments as ``DigitsPipeline`` and calls the denoiser exactly
once per step: with guidance the batch is ``[null; cond]`` concatenated, then
``guided = uncond + guidance_scale * (cond - uncond)`` is passed to ``scheduler.step``.

Load the shipped weights offline with::

    FlowDigitsPipeline.from_pretrained(Path(parastep.models.flowdigits.__file__).parent, local_files_only=True)
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..digits.pipeline import NUM_DIGITS, DigitPipelineMixin, PromptLike, parse_digit_prompt

NULL_CLASS = 10
DEFAULT_STEPS = 28
# classifier agreement (models/digits/classifier.py) at 28 Euler steps, shift 1.0, the shipped weights:
#   64 samples (train.py --evaluate-only, seeds 0..63): g=1.0 100%, 1.5 100%, 2.0 100%, 3.0 100%, 4.0 100%;
#   320 samples (seeds 1000..1319): g=1.0 96.3%, 1.25 98.1%, 1.5 99.4%, 2.0 100%, 3.0 100%, while the per-class
#   pixel spread (diversity; real digits 0.129) falls 0.116, 0.106, 0.098, 0.089, 0.078. 1.5: >= 99% agreement, more variety.
#   (shift 0.5 / 2.0 / 3.0 at g=1.5 give the same 99.4%: shift 1.0 kept.)
DEFAULT_GUIDANCE_SCALE = 1.5

__all__ = ["FlowDigitsPipeline", "NULL_CLASS", "NUM_DIGITS", "DEFAULT_STEPS", "DEFAULT_GUIDANCE_SCALE", "parse_digit_prompt"]


class FlowDigitsPipeline(DigitPipelineMixin, DiffusionPipeline):
    """Class-conditional 16x16 digit generator: rectified flow, a DiT denoiser, classifier-free guidance."""

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: DiTTransformer2DModel, scheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @property
    def null_class(self) -> int:
        """The label of the null (unconditional) class: the label embedding's extra row."""
        n = self.transformer.config.num_embeds_ada_norm
        return NULL_CLASS if n is None else int(n)

    @torch.no_grad()
    def __call__(
        self,
        prompt: PromptLike = None,
        *,
        class_labels: Union[Sequence[int], torch.Tensor, None] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = DEFAULT_STEPS,
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
        dtype = self.transformer.dtype
        labels = self._class_labels(prompt, class_labels, num_images_per_prompt).to(device)
        batch_size = labels.shape[0]
        if self.do_classifier_free_guidance:
            model_labels = torch.cat([torch.full_like(labels, self.null_class), labels])
        else:
            model_labels = labels

        px = self.transformer.config.sample_size
        shape = (batch_size, self.transformer.config.in_channels, px, px)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=dtype)

        # sigma = 1 is pure noise: the latents start as drawn (init_noise_sigma is 1 for flow matching)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                timestep = t.expand(model_input.shape[0])          # sigma * 1000, as the scheduler gives it
                velocity = self.transformer(hidden_states=model_input, timestep=timestep,
                                            class_labels=model_labels).sample
                if self.do_classifier_free_guidance:
                    v_uncond, v_cond = velocity.chunk(2)
                    velocity = v_uncond + self.guidance_scale * (v_cond - v_uncond)
                latents = self.scheduler.step(velocity, t, latents, **extra_step_kwargs, return_dict=False)[0]

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
