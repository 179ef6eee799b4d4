"""A pipeline's decoded output as media: images or videos, as arrays, files and metric inputs.

One home for what ``exec`` and ``evaluate`` do with what a pipeline returns:

- :func:`output_of`: the media of a pipeline result (``.frames`` for video pipelines, ``.images``
  otherwise, or the first element of a tuple result);
- :func:`to_numpy`: that media as float32 in [0, 1], channels last: images ``(B, H, W, C)``, videos
  ``(B, F, H, W, C)`` (from numpy arrays, PIL images or lists of frames, torch tensors ``(B, C, H, W)``
  or ``(B, F, C, H, W)``);
- :func:`frame_count`: ``None`` for images, ``F`` for videos;
- :func:`as_nchw`: every image / every frame of every video as ``(N, C, H, W)`` float64, for PSNR and
  SSIM over all frames;
- :func:`write_media`: PNG per image; per video a folder of PNG frames plus an animated GIF (Pillow,
  which diffusers already depends on: no extra dependency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

GIF_FRAME_MS = 125    # 8 frames per second


def output_of(result: Any) -> Any:
    """The decoded media of a pipeline call's result (``frames`` for video pipelines)."""
    for name in ("frames", "images"):
        if hasattr(result, name):
            return getattr(result, name)
    return result[0]


def _pil_stack(items) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im, dtype=np.float32) / 255.0
                     for im in items])


def to_numpy(media: Any) -> np.ndarray:
    """Images ``(B, H, W, C)`` or videos ``(B, F, H, W, C)``, float32 in [0, 1] (see module docstring)."""
    if isinstance(media, np.ndarray):
        arr = media
    elif isinstance(media, (list, tuple)) and media and hasattr(media[0], "size") and hasattr(media[0], "mode"):
        arr = _pil_stack(media)
    elif isinstance(media, (list, tuple)) and media and isinstance(media[0], (list, tuple)):
        arr = np.stack([_pil_stack(frames) if hasattr(frames[0], "mode") else np.stack(frames) for frames in media])
    else:
        import torch

        if not isinstance(media, torch.Tensor):
            raise ValueError(f"the pipeline returned media of type {type(media).__name__}; parastep cannot read it")
        t = media.detach().float().cpu()
        if t.dim() == 4:
            t = t.permute(0, 2, 3, 1)
        elif t.dim() == 5:
            t = t.permute(0, 1, 3, 4, 2)
        else:
            raise ValueError(f"the pipeline returned a tensor of shape {tuple(t.shape)}; parastep reads (B, C, H, W) "
                             "images or (B, F, C, H, W) videos")
        arr = t.numpy()
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3:          # (B, H, W) grey images
        arr = arr[..., None]
    if arr.ndim not in (4, 5):
        raise ValueError(f"the pipeline returned media of shape {arr.shape}; parastep reads images (B, H, W, C) or "
                         "videos (B, F, H, W, C)")
    return arr


def frame_count(arr: np.ndarray) -> Optional[int]:
    """Frames per sample of :func:`to_numpy`'s array: ``None`` for images."""
    return int(arr.shape[1]) if arr.ndim == 5 else None


def as_nchw(arr: np.ndarray):
    """Every image (or every frame of every video) as a float64 torch tensor ``(N, C, H, W)`` in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr)).double().clamp(0, 1)
    if t.dim() == 5:
        t = t.reshape(-1, *t.shape[2:])
    return t.permute(0, 3, 1, 2)


def _uint8(frame: np.ndarray) -> np.ndarray:
    out = (np.clip(frame, 0, 1) * 255).round().astype("uint8")
    return out[..., 0] if out.shape[-1] == 1 else out


def write_media(folder: Path, arr: np.ndarray) -> list[str]:
    """Write :func:`to_numpy`'s array into ``folder``; returns the written names, relative to it:
    ``image_000.png``..., or per video ``video_000.gif`` and ``video_000/frame_000.png``..."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    if arr.ndim == 4:
        for k, im in enumerate(arr):
            name = f"image_{k:03d}.png"
            Image.fromarray(_uint8(im)).save(folder / name)
            names.append(name)
        return names
    for k, video in enumerate(arr):
        frames = [Image.fromarray(_uint8(f)) for f in video]
        sub = folder / f"video_{k:03d}"
        sub.mkdir(exist_ok=True)
        for n, frame in enumerate(frames):
            frame.save(sub / f"frame_{n:03d}.png")
            names.append(f"{sub.name}/frame_{n:03d}.png")
        gif = f"video_{k:03d}.gif"
        frames[0].save(folder / gif, save_all=True, append_images=frames[1:], duration=GIF_FRAME_MS, loop=0)
        names.append(gif)
    return names
