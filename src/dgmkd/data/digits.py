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

__all__ = ["load_digits", "digits_split", "dequantize"]

_SPLITS = ("train", "val", "test", "all")


def check_split(split: str, test_fraction: float, val_fraction: float) -> None:
    """``ValueError`` naming the argument unless the split and its fractions are usable."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 - test_fraction:
        raise ValueError(f"val_fraction must be in [0, {1.0 - test_fraction:g}), got {val_fraction}")
    if split == "val" and val_fraction == 0.0:
        raise ValueError("split='val' needs val_fraction > 0")


def load_digits(binarize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 images ``(1797, 1, 8, 8)`` float32 in [0, 1] and their labels ``(1797,)`` int64."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    if binarize:
        x = (x > 0.5).float()
    return x, torch.from_numpy(d.target.astype(np.int64))


def digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0,
                 binarize: bool = False, val_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random train/(validation/)test split of the digits (default 1438 / 359 images).

    The permutation depends only on ``seed`` (numpy's PCG64), so every model, metric and seed of an
    experiment sees the same held-out images. With ``val_fraction > 0`` a validation split of that
    fraction of all images is cut from the *training* part (the test split is unchanged): choose
    hyperparameters on ``"val"`` and report on ``"test"``, which no choice has seen.
    """
    check_split(split, test_fraction, val_fraction)
    x, y = load_digits(binarize)
    if split == "all":
        return x, y
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_test = int(round(test_fraction * len(x)))
    n_val = int(round(val_fraction * len(x)))
    idx = {"test": perm[:n_test], "val": perm[len(x) - n_val:], "train": perm[n_test:len(x) - n_val]}[split]
    return x[idx], y[idx]


def dequantize(x: torch.Tensor, levels: int = 17, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: images in [0, 1] on ``levels`` grey levels ``k / (levels - 1)``
    become continuous values ``(k + u) / levels`` in [0, 1), ``u ~ U[0, 1)`` (the 8x8 digits have
    17 levels). A density on the result, plus ``D log(levels)``, is a bound on the discrete
    log-likelihood (Theis et al. 2016).

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 0.5, 1.0])
        >>> d = dequantize(x, generator=torch.Generator().manual_seed(0))
        >>> bool(((d * 17).floor() == torch.tensor([0.0, 8.0, 16.0])).all())
        True
    """
    k = torch.round(x * (levels - 1))
    return (k + torch.rand(x.shape, generator=generator, device=x.device)) / levels
