"""MNIST-1D sequences (Greydanus & Kobak, 2020), built offline by the ``mnist1d`` package.

The embedded default data for the VRNN experiment (:mod:`dgmkd.experiments.vrnn_compress`): the
paper's VRNN data set, IAM-OnDB (Chen et al. 2023, §4.3), needs a registration, so the library
uses MNIST-1D — 10 classes of 1-d signals of length 40, generated procedurally from 10 templates by
random padding, translation, shear, scaling and correlated noise; users with the real IAM files
read them with :mod:`dgmkd.data.iam` (``--set dataset=iam``). ``make_dataset`` is deterministic for a given seed and never
downloads (only its optional ``get_dataset`` reads a URL; we do not call it).

Example:
    >>> from dgmkd.data.mnist1d import load_mnist1d
    >>> d = load_mnist1d(num_samples=200)
    >>> d["x"].shape, d["x_test"].shape, d["y"].dtype
    (torch.Size([160, 40, 1]), torch.Size([40, 40, 1]), torch.int64)
"""

from __future__ import annotations

import functools

import torch

__all__ = ["load_mnist1d"]


@functools.lru_cache(maxsize=4)
def _build(num_samples: int, seed: int):
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("MNIST-1D needs the `mnist1d` package (pip install mnist1d)") from e
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    return make_dataset(args)


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, torch.Tensor]:
    """MNIST-1D as tensors: ``x``/``x_test`` ``(N, 40, 1)`` float32 (standardized by the package:
    zero mean, unit std over the whole set) and ``y``/``y_test`` int64 labels; 80/20 train/test
    split as in the package. ``num_samples`` must be a multiple of 10 (samples per class)."""
    if num_samples < 10 or num_samples % 10:
        raise ValueError(f"num_samples must be a positive multiple of 10 (one tenth per class), got {num_samples}")
    d = _build(int(num_samples), int(seed))
    return {"x": torch.tensor(d["x"], dtype=torch.float32).unsqueeze(-1),
            "x_test": torch.tensor(d["x_test"], dtype=torch.float32).unsqueeze(-1),
            "y": torch.tensor(d["y"], dtype=torch.long), "y_test": torch.tensor(d["y_test"], dtype=torch.long)}
