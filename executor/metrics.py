"""Image quality against the sequential reference: PSNR and SSIM on decoded images in [0, 1].

SSIM is the standard one (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
K2 = 0.03, data range 1, computed per channel on the valid region (no padding) and averaged.
Images smaller than 11 px use the largest odd window that fits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _nchw(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    return x


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` vs ``b`` (values in [0, 1]); ``inf`` when identical."""
    mse = torch.mean((_nchw(a) - _nchw(b)) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window_px: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of ``a`` vs ``b`` (N, C, H, W) or (C, H, W), values in [0, 1]."""
    x, y = _nchw(a), _nchw(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    n, c, h, w = x.shape
    size = min(window_px, h, w)
    size -= (size + 1) % 2  # odd
    win = _gaussian_window(size, sigma).expand(c, 1, size, size)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x ** 2
    syy = filt(y * y) - mu_y ** 2
    sxy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)
    return float((num / den).mean().item())


def psnr_db_per_sample(images, reference, *, cap_db: float = 100.0) -> list[float]:
    """PSNR (data range 1) of each image vs the reference of the same index, capped at ``cap_db``.

    ``images`` and ``reference`` are tensors ``(B, ...)`` of one layout (any: NHWC, NCHW, video
    frames); each sample is compared as a flat vector in float64. Identical samples (and any whose
    MSE is at or below ``10 ** (-cap_db / 10)``) get exactly ``cap_db``, so the list is always finite.
    """
    a = images.reshape(images.shape[0], -1).double()
    b = reference.reshape(reference.shape[0], -1).double()
    mse = (a - b).pow(2).mean(dim=1)
    return [cap_db if m <= 10 ** (-cap_db / 10) else min(cap_db, -10.0 * math.log10(m)) for m in mse.tolist()]


_CHANNEL_COUNTS = (1, 2, 3, 4)


def sample_as_nchw(sample: torch.Tensor) -> torch.Tensor:
    """One decoded sample as (N, C, H, W) for :func:`ssim`: an image (H, W, C) or (C, H, W) gives
    N = 1, video frames (F, H, W, C) or (F, C, H, W) give N = F. Channels-last is recognised by a
    last dimension of at most 4 channels where the third-from-last is not."""
    x = torch.as_tensor(sample)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() not in (3, 4):
        raise ValueError(f"expected an image (H, W, C) / (C, H, W) or frames (F, ...), got shape {tuple(x.shape)}")
    if x.shape[-1] in _CHANNEL_COUNTS and x.shape[-3] not in _CHANNEL_COUNTS:
        x = x.movedim(-1, -3)
    return x if x.dim() == 4 else x.unsqueeze(0)


def ssim_per_sample(images, reference) -> list[float]:
    """:func:`ssim` of each sample vs the reference of the same index (layouts as in :func:`sample_as_nchw`)."""
    if tuple(images.shape) != tuple(reference.shape):
        raise ValueError(f"shapes differ: {tuple(images.shape)} vs {tuple(reference.shape)}")
    return [ssim(sample_as_nchw(a), sample_as_nchw(b)) for a, b in zip(images, reference)]
