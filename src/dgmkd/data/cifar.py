"""Reader for CIFAR-10 *binary* batches (``cifar-10-batches-bin``), parsed byte-wise.

Each record is 3073 bytes: one label byte (0..9), then 1024 red, 1024 green and 1024 blue bytes of
a 32x32 image in row-major order (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version").
The Python version of the data set is a pickle; it is never unpickled here, because unpickling
runs arbitrary code from the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["load_cifar10", "read_cifar_bin", "RECORD_BYTES"]

RECORD_BYTES = 1 + 3 * 32 * 32
_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]
_TEST = ["test_batch.bin"]


def read_cifar_bin(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 3, 32, 32)`` in [0, 1] and labels ``(N,)`` from one binary batch file."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"CIFAR-10 batch {str(path)!r} not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataFormatError(
            f"{str(path)!r} has {raw.size} bytes, not a positive multiple of the CIFAR-10 record size "
            f"{RECORD_BYTES} (1 label byte + 3072 pixel bytes); is it the binary version, not the pickle?")
    rec = raw.reshape(-1, RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise DataFormatError(f"{str(path)!r}: label byte {labels[bad[0]]} of record {bad[0]} (byte offset "
                              f"{bad[0] * RECORD_BYTES}) is > 9 ({len(bad)} such records); not a CIFAR-10 binary batch")
    x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy()).float() / 255.0
    return x, torch.from_numpy(labels)


def load_cifar10(root: str | Path, split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` (``train``: the five data batches, ``test``) from ``root`` (the
    ``cifar-10-batches-bin`` folder or its parent)."""
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    files = _TRAIN if split == "train" else _TEST
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataFormatError(f"CIFAR-10 binary batches {missing} not found in {str(root)!r}")
    xs, ys, n = [], [], 0
    for f in files:
        x, y = read_cifar_bin(root / f)
        xs.append(x)
        ys.append(y)
        n += len(x)
        if limit is not None and n >= limit:
            break
    x, y = torch.cat(xs), torch.cat(ys)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y
