"""A scikit-learn digit classifier for judging samples of the ``digits`` model.

Multinomial logistic regression (C=10) on 8x8 features: an image of any size is resized to
16x16 (bilinear, as in training) and 2x2 average-pooled to 8x8, so real digits are seen through
exactly the same upsample/downsample path the generated ones are. Fitting takes well under a
second; the fitted model is cached per process (``functools.lru_cache``).

``classify(images) -> (labels, top_probabilities)`` accepts what ``DigitsPipeline`` returns:
a torch tensor (B, 1, H, W) or numpy array (B, H, W, 1) / (B, H, W) in [0, 1], or a list of PIL
images.
"""

from __future__ import annotations

import functools

import numpy as np

TRAIN_PX = 16


def _to_batch(images) -> np.ndarray:
    """Any supported image batch -> float32 (B, H, W) in [0, 1]."""
    if isinstance(images, (list, tuple)):
        arrs = []
        for im in images:
            a = np.asarray(im, dtype=np.float32)
            if a.ndim == 3:
                a = a[..., 0]
            arrs.append(a / 255.0 if a.max() > 1.0 else a)
        return np.stack(arrs)
    if hasattr(images, "detach"):
        images = images.detach().cpu().float().numpy()
        if images.ndim == 4:
            images = images[:, 0]
        return images.astype(np.float32)
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[..., 0] if arr.shape[-1] == 1 else arr[:, 0]
    return arr


def features(images) -> np.ndarray:
    """(B, 64) features in [0, 1]: resize to 16x16 bilinear, then 2x2 average pool."""
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(_to_batch(images)).unsqueeze(1).clamp(0.0, 1.0)
    if batch.shape[-1] != TRAIN_PX or batch.shape[-2] != TRAIN_PX:
        batch = F.interpolate(batch, size=(TRAIN_PX, TRAIN_PX), mode="bilinear", align_corners=False)
    pooled = F.avg_pool2d(batch, 2)
    return pooled.reshape(pooled.shape[0], -1).numpy().astype(np.float64)


def real_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All sklearn digits as 16x16 images in [0, 1] (the training data's path) and their labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x16 = F.interpolate(x, size=(TRAIN_PX, TRAIN_PX), mode="bilinear", align_corners=False).clamp(0, 1)
    return x16[:, 0].numpy(), digits.target.astype(np.int64)


def _fit(images: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=3000).fit(features(images), labels)


@functools.lru_cache(maxsize=1)
def _fitted_classifier():
    images, labels = real_digit_images()
    return _fit(images, labels)


def classify(images) -> tuple[np.ndarray, np.ndarray]:
    """Predicted digit and its probability for every image of the batch."""
    proba = _fitted_classifier().predict_proba(features(images))
    return proba.argmax(axis=1).astype(np.int64), proba.max(axis=1)


def real_digit_scores(*, seed: int = 0) -> dict[str, float]:
    """What real digits score: fit on a stratified half, score the other half."""
    from sklearn.model_selection import train_test_split

    images, labels = real_digit_images()
    tr_x, te_x, tr_y, te_y = train_test_split(images, labels, test_size=0.5, random_state=seed, stratify=labels)
    proba = _fit(tr_x, tr_y).predict_proba(features(te_x))
    return {"accuracy": float((proba.argmax(1) == te_y).mean()), "mean_top_probability": float(proba.max(1).mean()),
            "n": int(len(te_y))}
