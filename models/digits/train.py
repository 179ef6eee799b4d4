"""Train the bundled ``digits`` model: ``python -m parastep.models.digits.train [--steps N] [--minutes M] [--out DIR]``.

A class-conditional pixel-space DDPM (epsilon prediction) on scikit-learn's bundled 8x8 digits,
upsampled bilinearly to 16x16 and scaled to [-1, 1]. Classifier-free guidance is trained by
replacing the label with the null class 10 for ``label_dropout`` of the samples. AdamW with a
short warm-up and cosine decay; the saved weights are an exponential moving average.

Reproducible: the run is fully determined by ``--seed`` and ``--steps`` (torch CPU kernels with a
fixed thread count are deterministic). ``--minutes`` is only a safety cap: if it stops the run
early the log says so and the result depends on machine speed.

The result is written with ``save_pretrained`` (``unet/``, ``scheduler/``, ``model_index.json``),
by default into this package's folder so ``DigitsPipeline.from_pretrained`` finds it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_PX = 16
NULL_CLASS = 10
NUM_CLASS_EMBEDS = 11
TRAIN_TIMESTEPS = 1000
BETA_SCHEDULE = "squaredcos_cap_v2"


def unet_config() -> dict:
    """The UNet2DModel configuration of the bundled model (about 1.06 M parameters)."""
    return dict(
        sample_size=IMAGE_PX,
        in_channels=1,
        out_channels=1,
        num_class_embeds=NUM_CLASS_EMBEDS,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def load_training_images(*, image_px: int = IMAGE_PX) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 sklearn digits as (N, 1, px, px) float32 in [-1, 1] and their int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [0, 1]
    if image_px != 8:
        images = F.interpolate(images, size=(image_px, image_px), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0) * 2.0 - 1.0
    return images, torch.from_numpy(digits.target.astype(np.int64))


def _lr_at(step: int, *, total_steps: int, peak_lr: float, warmup_steps: int) -> float:
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(
    *,
    out_dir: Path,
    steps: int = 3000,
    minutes: float = 25.0,
    batch_size: int = 128,
    peak_lr: float = 2e-3,
    label_dropout: float = 0.15,
    ema_decay: float = 0.999,
    seed: int = 0,
    threads: int = 1,
    log_every: int = 100,
) -> dict:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = load_training_images()
    n = images.shape[0]

    unet = UNet2DModel(**unet_config())
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_sched = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE)
    alphas_cumprod = noise_sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=peak_lr, weight_decay=1e-4)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"[train] {n} images {IMAGE_PX}px, unet {n_params} params, {steps} steps of {batch_size}, seed {seed}", flush=True)

    t_start = time.monotonic()
    done = 0
    running = 0.0
    for step in range(steps):
        if time.monotonic() - t_start > minutes * 60.0:
            print(f"[train] WARNING: --minutes {minutes} cap reached after {step} of {steps} steps; "
                  "this run is NOT reproducible on another machine", flush=True)
            break
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x0 = images[idx]
        y = labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < label_dropout] = NULL_CLASS
        t = torch.randint(0, TRAIN_TIMESTEPS, (batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total_steps=steps, peak_lr=peak_lr, warmup_steps=200)
        pred = unet(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1.0 - decay)
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        if done % log_every == 0 or done == steps:
            el = time.monotonic() - t_start
            print(f"[train] step {done}/{steps} loss {running:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{el:.0f}s ({el / done * 1000:.0f} ms/step)", flush=True)

    for b_e, b in zip(ema.buffers(), unet.buffers()):
        b_e.copy_(b)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(out_dir / "unet", safe_serialization=True)
    info = {"steps_done": done, "steps": steps, "batch_size": batch_size, "peak_lr": peak_lr,
            "label_dropout": label_dropout, "ema_decay": ema_decay, "seed": seed, "threads": threads,
            "final_loss_ema": running, "wall_s": round(time.monotonic() - t_start, 1),
            "torch": torch.__version__}
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    assemble(out_dir=out_dir)
    print(f"[train] saved to {out_dir} ({info['wall_s']} s)", flush=True)
    print(f"[train] quality at 50 DDIM steps: {json.dumps(evaluate(folder=out_dir))}", flush=True)
    return info


def assemble(*, out_dir: Path) -> None:
    """Write ``model_index.json`` and ``scheduler/`` next to a trained ``unet/`` folder."""
    from diffusers import DDIMScheduler, UNet2DModel

    from parastep.models.digits.pipeline import DigitsPipeline

    unet = UNet2DModel.from_pretrained(Path(out_dir) / "unet", local_files_only=True)
    scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule=BETA_SCHEDULE,
                              clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True)
    DigitsPipeline(unet=unet, scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)


def evaluate(*, folder: Path, num_samples: int = 64, steps: int = 50, guidance_scale: float | None = None,
             seed: int = 0) -> dict:
    """Quality of a saved model: ``num_samples`` samples (class k % 10), judged by the classifier."""
    from parastep.models.digits.classifier import classify, real_digit_scores
    from parastep.models.digits.pipeline import DEFAULT_GUIDANCE_SCALE, DigitsPipeline

    pipe = DigitsPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    g = DEFAULT_GUIDANCE_SCALE if guidance_scale is None else guidance_scale
    wanted = [k % 10 for k in range(num_samples)]
    gens = [torch.Generator().manual_seed(seed * 100_003 + k) for k in range(num_samples)]
    with torch.no_grad():
        images = pipe(wanted, num_inference_steps=steps, guidance_scale=g, generator=gens, output_type="pt").images
    labels, top_p = classify(images)
    return {"samples": num_samples, "steps": steps, "guidance_scale": g,
            "agreement": float((labels == np.array(wanted)).mean()), "mean_top_probability": float(top_p.mean()),
            "real_digits": real_digit_scores()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parastep.models.digits.train", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (determines the result)")
    parser.add_argument("--minutes", type=float, default=25.0, help="safety cap on wall time")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--assemble-only", action="store_true", help="only rewrite model_index.json and scheduler/")
    parser.add_argument("--evaluate-only", action="store_true", help="only report the classifier's verdict on --out")
    parser.add_argument("--guidance-scale", type=float, default=None, help="for --evaluate-only")
    args = parser.parse_args(argv)
    if args.evaluate_only:
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(folder=args.out, guidance_scale=args.guidance_scale), indent=2))
        return 0
    if args.assemble_only:
        assemble(out_dir=args.out)
        return 0
    train(out_dir=args.out, steps=args.steps, minutes=args.minutes, seed=args.seed, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
