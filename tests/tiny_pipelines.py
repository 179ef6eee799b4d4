"""Tiny random-weight diffusers pipelines for the tests: sd15, sdxl, sd3, pixart-sigma, flux, and the
compatibility matrix's other classes (``COMPAT_BUILDERS``: img2img, DDPM, DDIM, DiT, PixArt-alpha,
CogVideoX, Latte, and refused ones: CogVideoX with its DPM scheduler, SD with Heun, Kandinsky 2.2 combined).

Every component is built from a config with seeded random weights; nothing is downloaded. The
tokenizers are built locally from a tiny character vocabulary (``CLIPTokenizer`` from a
vocab dict + empty merges, ``T5Tokenizer`` from a unigram vocab list), so prompts tokenize to
per-character tokens: enough to condition a random model, nothing more.

Shapes mirror the real models where it matters to the executor: SD3 and Flux use 16-channel
latents (Flux packs 2x2 latent patches into 64-channel tokens), PixArt predicts a learned
variance (8 output channels), SDXL has two text encoders and text/time added conditions.
The VAE downsamples by 2, so a 32x32 px image is a 16x16 latent. ``tiny_call_kwargs(name)``
gives keyword arguments that make one call small and fast.

Each call of ``make_tiny_pipeline`` builds a fresh pipeline (about 0.1 s, so no cache: callers may
mutate what they get). Building does not touch the global torch RNG (it runs inside
``torch.random.fork_rng``).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import torch

from parastep.executor.registry import REGISTRY, set_scheduler

TinyName = Literal["sd15", "sdxl", "sd3", "pixart-sigma", "flux"]
TINY_NAMES: tuple[str, ...] = ("sd15", "sdxl", "sd3", "pixart-sigma", "flux")

HEIGHT_PX = 32
WIDTH_PX = 32
TEXT_HIDDEN = 32  # hidden size of every tiny text encoder
CLIP_MAX_TOKENS = 77
T5_MAX_TOKENS = 16  # max_sequence_length used in tiny_call_kwargs for T5-conditioned pipelines

_CHARS = string.ascii_lowercase + string.digits


def supported_schedulers(name: str) -> tuple[str, ...]:
    """Scheduler classes tested with the tiny ``name`` pipeline (the registry's list)."""
    return REGISTRY[name].schedulers


def supported_pairs() -> list[tuple[str, str]]:
    """Every (model name, scheduler class) pair the tests exercise."""
    return [(name, sched) for name in TINY_NAMES for sched in supported_schedulers(name)]


def tiny_call_kwargs(name: str, *, num_inference_steps: int = 4) -> dict[str, Any]:
    """Keyword arguments for one small, fast call of the tiny ``name`` pipeline (add prompt/generator)."""
    kwargs: dict[str, Any] = {
        "height": HEIGHT_PX,
        "width": WIDTH_PX,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": REGISTRY[name].default_guidance_scale,
    }
    if name in ("sd3", "pixart-sigma", "flux"):
        kwargs["max_sequence_length"] = T5_MAX_TOKENS
    if name == "pixart-sigma":
        kwargs["use_resolution_binning"] = False  # binning needs a real sample_size (32..256)
        kwargs["clean_caption"] = False  # True needs beautifulsoup4/ftfy and only warns without them
    return kwargs


# ----------------------------------------------------------------------------- tokenizers / text encoders


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_TOKENS)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in _CHARS]
    pieces += [("\u2581" + ch, -1.5) for ch in _CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(*, vocab_size: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,  # SDXL/SD3 read hidden_states[-2]
        max_position_embeddings=CLIP_MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=projection_dim or TEXT_HIDDEN,
        hidden_act="gelu",
    )


def _clip_text(seed: int, *, with_projection: bool, vocab_size: int):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(_clip_config(vocab_size=vocab_size)).eval()


def _t5_text(seed: int, *, vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=TEXT_HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _vae(seed: int, *, latent_channels: int, flow: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if flow:  # SD3 / Flux VAEs: no quant convs, a shift factor
        extra = {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1, "scaling_factor": 0.5}
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=HEIGHT_PX,
        **extra,
    ).eval()


# ----------------------------------------------------------------------------- pipelines


def _sd15(seed: int):
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=HEIGHT_PX // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=2,
        norm_num_groups=4,
    ).eval()
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=_vae(seed + 1, latent_channels=4, flow=False),
        text_encoder=_clip_text(seed + 2, with_projection=False, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(seed: int):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _clip_tokenizer()
    time_embed_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=HEIGHT_PX // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # 6 micro-conditioning numbers (sizes, crop) x time_embed_dim + the pooled text embedding of encoder 2
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
        norm_num_groups=4,
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=_vae(seed + 1, latent_channels=4, flow=False),
        text_encoder=_clip_text(seed + 2, with_projection=False, vocab_size=len(tokenizer)),
        text_encoder_2=_clip_text(seed + 3, with_projection=True, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )


def _sd3(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=HEIGHT_PX // 2,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=TEXT_HIDDEN,  # T5 width; the concatenated CLIP states are padded/cropped to it
        caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_HIDDEN,  # both CLIP pooled outputs, concatenated
        pos_embed_max_size=16,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 1, latent_channels=16, flow=True),
        text_encoder=_clip_text(seed + 2, with_projection=True, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text(seed + 3, with_projection=True, vocab_size=len(tokenizer)),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_text(seed + 4, vocab_size=len(t5_tokenizer)),
        tokenizer_3=t5_tokenizer,
    )


def _pixart_sigma(seed: int):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=HEIGHT_PX // 2,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=TEXT_HIDDEN,
        in_channels=4,
        cross_attention_dim=24,  # = heads x head dim
        out_channels=8,  # epsilon + learned variance, as the real model
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=_t5_text(seed + 2, vocab_size=len(tokenizer)),
        vae=_vae(seed + 1, latent_channels=4, flow=False),
        transformer=transformer,
        scheduler=scheduler,
    )


def _flux(seed: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True,  # FLUX.1-dev
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(seed + 1, latent_channels=16, flow=True),
        text_encoder=_clip_text(seed + 2, with_projection=False, vocab_size=len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_text(seed + 3, vocab_size=len(t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )



# ----------------------------------------------------------------------------- the compatibility matrix's extra classes
# (pipelines parastep never names; built tiny the same way, for tests/test_compat.py)

VIDEO_FRAMES = 5          # CogVideoX: 5 frames -> 2 latent frames (temporal compression 4)
LATTE_FRAMES = 2


def _unet2d(seed: int, *, channels: int = 3, size: int = 16):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4).eval()


def _ddpm(seed: int):
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=_unet2d(seed), scheduler=DDPMScheduler(num_train_timesteps=1000))


def _ddim(seed: int):
    from diffusers import DDIMPipeline, DDIMScheduler

    return DDIMPipeline(unet=_unet2d(seed), scheduler=DDIMScheduler(num_train_timesteps=1000))


DIT_LABELS = {0: "tabby cat", 1: "golden retriever", 2: "goldfish, Carassius auratus"}


def _dit(seed: int):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(sample_size=HEIGHT_PX // 2, num_layers=1, patch_size=4, attention_head_dim=8,
                                        num_attention_heads=2, in_channels=4, out_channels=8, norm_num_groups=4,
                                        num_embeds_ada_norm=1000).eval()   # DiT's null class is label 1000
    return DiTPipeline(transformer=transformer, vae=_vae(seed + 1, latent_channels=4, flow=False),
                       scheduler=DDIMScheduler(num_train_timesteps=1000), id2label=dict(DIT_LABELS))


def _sd15_img2img(seed: int):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    base = _sd15(seed)
    scheduler = DDIMScheduler.from_config(base.scheduler.config, clip_sample=False)
    return StableDiffusionImg2ImgPipeline(**{**base.components, "scheduler": scheduler})


def _pixart_alpha(seed: int):
    from diffusers import PixArtAlphaPipeline

    sigma = _pixart_sigma(seed)
    return PixArtAlphaPipeline(**sigma.components)


def _cogvideox(seed: int, *, scheduler: str = "CogVideoXDDIMScheduler"):
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=TEXT_HIDDEN, num_layers=1, sample_width=HEIGHT_PX // 8, sample_height=WIDTH_PX // 8,
        sample_frames=VIDEO_FRAMES, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=T5_MAX_TOKENS).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4).eval()
    sched = getattr(diffusers, scheduler)(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="v_prediction",
                                          rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=1.0)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=_t5_text(seed + 2, vocab_size=len(tokenizer)), vae=vae,
                             transformer=transformer, scheduler=sched)


def _cogvideox_dpm(seed: int):
    return _cogvideox(seed, scheduler="CogVideoXDPMScheduler")


def _latte(seed: int):
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(seed)
    transformer = LatteTransformer3DModel(
        sample_size=HEIGHT_PX // 2, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=TEXT_HIDDEN, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, video_length=LATTE_FRAMES).eval()
    return LattePipeline(tokenizer=tokenizer, text_encoder=_t5_text(seed + 2, vocab_size=len(tokenizer)),
                         vae=_vae(seed + 1, latent_channels=4, flow=False), transformer=transformer,
                         scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"))


def _sd15_heun(seed: int):
    from diffusers import HeunDiscreteScheduler

    pipe = _sd15(seed)
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def _kandinsky22_combined(seed: int):
    """KandinskyV22CombinedPipeline (prior + decoder), tiny: only ever refused, never run."""
    from diffusers import (DDPMScheduler, KandinskyV22CombinedPipeline, PriorTransformer, UnCLIPScheduler,
                           UNet2DConditionModel, VQModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer = _clip_tokenizer()
    torch.manual_seed(seed)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=TEXT_HIDDEN, num_layers=1).eval()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TEXT_HIDDEN, image_size=32, projection_dim=TEXT_HIDDEN, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=1, patch_size=16)).eval()
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"), mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(8, 16), layers_per_block=1, encoder_hid_dim=TEXT_HIDDEN, encoder_hid_dim_type="image_proj",
        cross_attention_dim=16, attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None,
        norm_num_groups=4).eval()
    movq = VQModel(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   vq_embed_dim=4).eval()
    return KandinskyV22CombinedPipeline(
        unet=unet, scheduler=DDPMScheduler(), movq=movq, prior_prior=prior, prior_image_encoder=image_encoder,
        prior_text_encoder=_clip_text(seed + 2, with_projection=True, vocab_size=len(tokenizer)), prior_tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(), prior_image_processor=CLIPImageProcessor())

_BUILDERS = {"sd15": _sd15, "sdxl": _sdxl, "sd3": _sd3, "pixart-sigma": _pixart_sigma, "flux": _flux}
# the compatibility matrix's classes beyond the registry (tests/test_compat.py), name -> builder
COMPAT_BUILDERS = {"sd15-img2img": _sd15_img2img, "ddpm": _ddpm, "ddim": _ddim, "dit": _dit, "pixart-alpha": _pixart_alpha,
                   "cogvideox": _cogvideox, "latte": _latte, "cogvideox-dpm": _cogvideox_dpm, "sd15-heun": _sd15_heun,
                   "kandinsky22-combined": _kandinsky22_combined}


def make_compat_pipeline(name: str, *, seed: int = 0, scheduler: str | None = None):
    """A fresh tiny pipeline of the compatibility matrix: a registry name (``TINY_NAMES``) or a
    ``COMPAT_BUILDERS`` name; the global torch RNG is left untouched. ``scheduler``: a class from
    ``compat_schedulers(name)`` to swap in with ``registry.set_scheduler`` (as ``exec`` does when a
    schedule names another scheduler than the folder's)."""
    if name in _BUILDERS:
        pipe = make_tiny_pipeline(name, seed=seed)
    else:
        with torch.random.fork_rng(devices=[]):
            pipe = COMPAT_BUILDERS[name](seed)
        pipe.set_progress_bar_config(disable=True)
    if scheduler is not None and scheduler != type(pipe.scheduler).__name__:
        set_scheduler(pipe, scheduler)
    return pipe


def compat_schedulers(name: str) -> tuple[str, ...]:
    """Every scheduler class the tiny ``name`` pipeline of the compatibility matrix can run under
    parastep: the one it is built with, then those ``registry.set_scheduler`` can swap in (its
    family's: ``registry.swappable_schedulers``)."""
    from parastep.executor.registry import swappable_schedulers

    pipe = make_compat_pipeline(name)
    own = type(pipe.scheduler).__name__
    return (own, *(s for s in swappable_schedulers(pipe) if s != own))


def make_tiny_pipeline(name: str, *, scheduler: str | None = None, seed: int = 0):
    """A fresh tiny random-weight pipeline for ``name`` (weights a function of ``seed`` only).

    ``scheduler``: a scheduler class name from ``supported_schedulers(name)`` to swap in via
    ``from_config`` (default: the registry's default scheduler for ``name``). The global torch RNG is
    left untouched.
    """
    if name not in _BUILDERS:
        raise ValueError(f"no tiny pipeline for '{name}': choose one of {', '.join(TINY_NAMES)}")
    if scheduler is not None and scheduler not in supported_schedulers(name):
        raise ValueError(f"scheduler '{scheduler}' is not supported for {name}: choose one of {', '.join(supported_schedulers(name))}")
    with torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[name](seed)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None and scheduler != type(pipe.scheduler).__name__:
        set_scheduler(pipe, scheduler)
    return pipe


def save_tiny_pipeline(name: str, folder: str | Path, *, scheduler: str | None = None, seed: int = 0) -> Path:
    """Build the tiny ``name`` pipeline and ``save_pretrained`` it to ``folder`` (for ``--model-path`` tests)."""
    folder = Path(folder)
    make_tiny_pipeline(name, scheduler=scheduler, seed=seed).save_pretrained(str(folder), safe_serialization=True)
    return folder
