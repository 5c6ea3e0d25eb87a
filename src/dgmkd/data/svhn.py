"""Reader for SVHN cropped digits (Netzer et al. 2011) in the format of ``train_32x32.mat``.

The files are MATLAB v5 (read with :func:`scipy.io.loadmat`): ``X`` is ``uint8`` of shape
``(32, 32, 3, N)`` and ``y`` is ``(N, 1)`` with labels 1..10, where 10 stands for the digit 0.
Returned as ``(N, 3, 32, 32)`` float32 in [0, 1] and labels 0..9.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["load_svhn", "read_svhn_mat"]

_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


MAX_BYTES = 1 << 31
"""Default bound on the images a ``.mat`` file may declare (2 GiB; ``extra_32x32.mat`` holds 1.6 GB)."""


def read_svhn_mat(path: str | Path, max_bytes: int = MAX_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, H, W)`` in [0, 1] and labels ``(N,)`` 0..9 from one SVHN ``.mat`` file.

    The variables' declared shapes are read first (:func:`scipy.io.whosmat`, which does not load the
    data); a file declaring more than ``max_bytes`` of images is refused before anything is loaded."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"SVHN file {str(path)!r} not found")
    try:
        declared = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(str(path))}
        big = {k: v for k, v in declared.items() if math.prod(v[0]) > max_bytes}
        if big:
            raise DataFormatError(f"{str(path)!r} declares variables of shape "
                                  f"{', '.join(f'{k} {v[0]}' for k, v in big.items())}, more than the {max_bytes} "
                                  "elements allowed (max_bytes=)")
        m = scipy.io.loadmat(str(path))
    except DataFormatError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # scipy's MatReadError, ValueError, struct/zlib errors ... of a damaged file
        raise DataFormatError(f"{str(path)!r} is not a MATLAB v5 .mat file as SVHN ships them "
                              f"({type(e).__name__}: {e})") from e
    if "X" not in m or "y" not in m:
        raise DataFormatError(f"{str(path)!r} lacks the SVHN variables 'X' and 'y'; it holds "
                              f"{sorted(k for k in m if not k.startswith('__'))}")
    X, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if X.ndim != 4 or X.shape[2] != 3:
        raise DataFormatError(f"{str(path)!r}: SVHN 'X' must have shape (H, W, 3, N), got {X.shape}")
    if X.shape[3] != len(y):
        raise DataFormatError(f"{str(path)!r}: {X.shape[3]} images but {len(y)} labels")
    if X.dtype != np.uint8:
        raise DataFormatError(f"{str(path)!r}: SVHN 'X' must be uint8, got {X.dtype}")
    if len(y) == 0:
        raise DataFormatError(f"{str(path)!r} holds no images (X has shape {X.shape})")
    bad = np.flatnonzero(~np.isin(y, np.arange(1, 11)))
    if len(bad):
        raise DataFormatError(f"{str(path)!r}: SVHN labels must be the integers 1..10; label {y[bad[0]].item()!r} of "
                              f"image {bad[0]} is not ({len(bad)} such labels)")
    x = torch.from_numpy(np.ascontiguousarray(X.transpose(3, 2, 0, 1))).float() / 255.0
    labels = torch.from_numpy((y % 10).astype(np.int64))
    return x, labels


def load_svhn(root: str | Path, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN ``split`` (``train``, ``test``, ``extra``) from the folder ``root``; ``limit`` keeps the
    first images only."""
    if split not in _FILES:
        raise ValueError(f"SVHN split must be one of {sorted(_FILES)}, got {split!r}")
    x, y = read_svhn_mat(Path(root) / _FILES[split])
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
