"""8x8 natural-image patches cut from scikit-learn's bundled sample photographs: an offline
analogue of the BSDS300 flow benchmark (63-d).

Protocol of Papamakarios et al. (2017, MAF), applied to the two photographs that scikit-learn
ships (``china.jpg``, ``flower.jpg``, 427x640, no download): convert to grey levels 0..255,
cut random 8x8 patches, dequantize (``(v + u) / 256``, ``u ~ U[0, 1)``), subtract each patch's
mean and drop the bottom-right pixel (it is determined by the others once the mean is removed),
leaving 63 dimensions. Train / validation / test patches come from disjoint image regions: the
left 60 % of each photograph for training, the next 15 % for validation, the right 25 % for test.
:func:`natural_patches` cuts image-shaped patches in [0, 1] instead (prior data for AVKD).

Example:
    >>> from dgmkd.data.patches import load_patches
    >>> tr, va, te = load_patches(n_train=100, n_val=10, n_test=20)
    >>> tuple(tr.shape), tuple(te.shape)
    ((100, 63), (20, 63))
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_patches", "grey_images", "natural_patches"]


def grey_images() -> list[np.ndarray]:
    """The bundled sample photographs as grey levels (float64, 0..255), ITU-R 601 luma."""
    from sklearn.datasets import load_sample_images

    return [img.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) for img in load_sample_images().images]


def _cut(imgs, n, x0, x1, rng, size):
    out = np.empty((n, size * size))
    for k in range(n):
        g = imgs[k % len(imgs)]
        h, w = g.shape
        a, b = int(x0 * w), int(x1 * w) - size
        i, j = rng.integers(0, h - size + 1), rng.integers(a, b + 1)
        out[k] = np.floor(g[i:i + size, j:j + size]).ravel()
    return out


def load_patches(n_train: int = 20000, n_val: int = 2000, n_test: int = 5000, size: int = 8,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, val, test)`` float32 tensors of shape ``(n, size*size - 1)``."""
    rng = np.random.default_rng(seed)
    imgs = grey_images()
    splits = []
    for n, (x0, x1) in zip((n_train, n_val, n_test), ((0.0, 0.6), (0.6, 0.75), (0.75, 1.0))):
        p = _cut(imgs, n, x0, x1, rng, size)
        p = (p + rng.random(p.shape)) / 256.0
        p = p - p.mean(1, keepdims=True)
        splits.append(torch.from_numpy(p[:, :-1].astype(np.float32)))
    return tuple(splits)


def natural_patches(n: int, downsample: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` grey patches ``(n, 1, size, size)`` in [0, 1] from the two sample photographs,
    average-pooled by ``downsample`` first (so a patch spans some structure, as a digit does), each
    patch min-max scaled to [0, 1]; near-flat patches (range < 2 % or sd < 1 % of 255) are skipped."""
    rng = np.random.default_rng(seed)
    imgs = []
    for g in grey_images():
        h, w = (g.shape[0] // downsample) * downsample, (g.shape[1] // downsample) * downsample
        imgs.append(g[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample).mean((1, 3)))
    out, k = [], 0
    while len(out) < n:
        g = imgs[k % len(imgs)]
        k += 1
        i, j = rng.integers(0, g.shape[0] - size + 1), rng.integers(0, g.shape[1] - size + 1)
        p = g[i:i + size, j:j + size]
        lo, hi = p.min(), p.max()
        if hi - lo < 0.02 * 255 or p.std() < 0.01 * 255:
            continue
        out.append((p - lo) / (hi - lo))
    return torch.from_numpy(np.stack(out).astype(np.float32)).unsqueeze(1)
