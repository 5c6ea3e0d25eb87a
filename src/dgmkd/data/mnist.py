"""Reader for MNIST in the IDX format (``train-images-idx3-ubyte`` ...), plain or gzipped.

IDX (http://yann.lecun.com/exdb/mnist/, bottom of the page): two zero bytes, a type byte
(``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
``0x0E`` float64), a byte with the number of dimensions, then each dimension as a big-endian
int32, then the data in row-major order, big-endian. Fashion-MNIST and KMNIST use the same files.
Nothing downloads: point ``root`` at the folder holding the files.

Example:
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> write_idx(os.path.join(d, "a-idx1-ubyte"), np.array([3, 1, 4], dtype=np.uint8))
    >>> read_idx(os.path.join(d, "a-idx1-ubyte")).tolist()
    [3, 1, 4]
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["read_idx", "write_idx", "load_mnist"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder(">").str: k for k, v in _TYPES.items()}
_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _open(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{str(path)!r} is a damaged gzip file: {e}") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (gzipped or not), with its dtype and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"IDX file {str(path)!r} not found")
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(f"{str(path)!r} is not an IDX file (the magic number must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise DataFormatError(f"{str(path)!r}: unknown IDX type byte 0x{code:02X}")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataFormatError(f"{str(path)!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}i", raw[4:head])
    dt = np.dtype(_TYPES[code])
    need = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(raw) - head != need:
        raise DataFormatError(f"{str(path)!r}: header says shape {tuple(shape)} ({need} data bytes) but the file "
                              f"holds {len(raw) - head}")
    return np.frombuffer(raw, dtype=dt, offset=head).reshape(shape).astype(dt.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (for fixtures and for users converting their own data)."""
    a = np.asarray(array)
    code = _CODES.get(np.dtype(a.dtype.kind + str(a.dtype.itemsize)).newbyteorder(">").str)
    if code is None:
        raise ValueError(f"IDX cannot store dtype {a.dtype}")
    head = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}i", *a.shape)
    Path(path).write_bytes(head + a.astype(np.dtype(_TYPES[code])).tobytes())


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem.replace("-idx", ".idx"), stem + ".gz", stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataFormatError(f"MNIST file {stem!r} (or .gz, or with '.idx') not found in {str(root)!r}")


def load_mnist(root: str | Path, split: str = "train", limit: int | None = None,
               pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` (``train`` or ``test``) from ``root``: images ``(N, 1, 28, 28)`` float32 in
    [0, 1] and labels ``(N,)`` int64 (any ``H x W`` stored in the file is kept). ``pad_to``: pad
    the images with zeros (background) to ``pad_to x pad_to``, centred (28 -> 32 for models that
    halve the side down to 4)."""
    if split not in _NAMES:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if (root / "MNIST" / "raw").is_dir():  # the layout torchvision leaves behind
        root = root / "MNIST" / "raw"
    xi, yi = (_find(root, s) for s in _NAMES[split])
    x, y = read_idx(xi), read_idx(yi)
    if x.ndim != 3 or y.ndim != 1:
        raise DataFormatError(f"expected images (N, H, W) and labels (N,), got {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise DataFormatError(f"{len(x)} images but {len(y)} labels in {str(root)!r}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    if pad_to is not None:
        h, w = xt.shape[-2:]
        if pad_to < max(h, w):
            raise ValueError(f"pad_to={pad_to} is smaller than the {h}x{w} images")
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        xt = torch.nn.functional.pad(xt, (left, pad_to - w - left, top, pad_to - h - top))
    return xt, torch.from_numpy(y.astype(np.int64))
