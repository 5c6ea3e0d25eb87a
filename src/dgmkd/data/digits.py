"""scikit-learn's bundled 8x8 handwritten digits: the embedded, offline default image data set.

1797 grey-level images of 8x8 pixels with values 0..16 (UCI "Optical Recognition of Handwritten
Digits", test part, as shipped inside scikit-learn — no download). Scaled to ``[0, 1]`` by
dividing by 16. Optionally binarized (``x > 0.5``) for Bernoulli models.

Example:
    >>> from dgmkd.data import digits_split
    >>> x, y = digits_split("train")
    >>> tuple(x.shape), float(x.min()), float(x.max())
    ((1438, 1, 8, 8), 0.0, 1.0)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_digits", "digits_split"]

_SPLITS = ("train", "test", "all")


def load_digits(binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images ``(1797, 1, 8, 8)`` float32 in [0, 1] and their labels ``(1797,)`` int64."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if binarize:
        x = (x > 0.5).float()
    return x, torch.from_numpy(d.target.astype(np.int64))


def digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0,
                 binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random train/test split of the digits (default 1438 / 359 images).

    The permutation depends only on ``seed`` (numpy's PCG64), so every model, metric and seed of an
    experiment sees the same held-out images.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = load_digits(binarize)
    if split == "all":
        return x, y
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_test = int(round(test_fraction * len(x)))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return x[idx], y[idx]
