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
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["read_idx", "write_idx", "load_mnist"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder(">").str: k for k, v in _TYPES.items()}
_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


MAX_BYTES = 1 << 30
"""Default bound on the data an IDX file may claim (1 GiB; MNIST's training images are 47 MB).
Pass ``max_bytes`` to :func:`read_idx` for bigger files."""

_CHUNK = 1 << 20


def _stream(path: Path):
    """A binary stream of the file's contents, decompressed on the fly when it is gzipped (by its
    magic bytes, whatever the file is called), so that only what is read is ever held."""
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f, mode="rb"), True
    f.seek(0)
    return f, False


def _read(stream, n: int, path: Path, what: str, gz: bool) -> bytes:
    """Exactly ``n`` bytes (fewer at the end of the file), read in chunks of at most 1 MiB so that
    memory grows with the bytes that really arrive, never with a size the header only claims."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = stream.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{str(path)!r} is a damaged gzip file (after {len(buf)} bytes of the {what}): "
                              f"{e}") from None
    return bytes(buf)


def read_idx(path: str | Path, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The array stored in one IDX file (gzipped or not), with its dtype and shape.

    The header is read first; a file whose header claims more than ``max_bytes`` of data, or more
    (or fewer) bytes than the file holds, is refused before the data are read, and a gzipped file is
    decompressed in bounded chunks, so a small hostile file cannot make a large allocation."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"IDX file {str(path)!r} not found")
    stream, gz = _stream(path)
    with stream:
        magic = _read(stream, 4, path, "header", gz)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise DataFormatError(f"{str(path)!r} is not an IDX file (the magic number must start with two zero "
                                  f"bytes; got {magic.hex() or 'an empty file'})")
        code, ndim = magic[2], magic[3]
        if code not in _TYPES:
            raise DataFormatError(f"{str(path)!r}: unknown IDX type byte 0x{code:02X} at byte offset 2")
        dims = _read(stream, 4 * ndim, path, "header", gz)
        if len(dims) < 4 * ndim:
            raise DataFormatError(f"{str(path)!r} is truncated inside its header ({ndim} dimensions need bytes "
                                  f"4..{4 + 4 * ndim}, the file ends at byte {4 + len(dims)})")
        shape = struct.unpack(f">{ndim}i", dims)
        for i, n in enumerate(shape):
            if n < 0:
                raise DataFormatError(f"{str(path)!r}: dimension {i} (byte offset {4 + 4 * i}) is {n}, negative")
        dt = np.dtype(_TYPES[code])
        need = math.prod(shape) * dt.itemsize  # Python ints: no overflow
        if need > max_bytes:
            raise DataFormatError(f"{str(path)!r}: header claims shape {tuple(shape)} ({need} data bytes), more "
                                  f"than the {max_bytes} bytes allowed (max_bytes=)")
        head = 4 + 4 * ndim
        if not gz:
            held = path.stat().st_size - head
            if held != need:
                raise DataFormatError(f"{str(path)!r}: header says shape {tuple(shape)} ({need} data bytes) but "
                                      f"the file holds {held}")
        data = _read(stream, need + 1, path, "data", gz)  # one byte more: detects trailing data
    if len(data) != need:
        held = f"{len(data)}" if len(data) <= need else f"more than {need}"
        raise DataFormatError(f"{str(path)!r}: header says shape {tuple(shape)} ({need} data bytes) but the file "
                              f"holds {held}")
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="))


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
               pad_to: int | None = None, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` (``train`` or ``test``) from ``root``: images ``(N, 1, 28, 28)`` float32 in
    [0, 1] and labels ``(N,)`` int64 (any ``H x W`` stored in the file is kept). ``pad_to``: pad
    the images with zeros (background) to ``pad_to x pad_to``, centred (28 -> 32 for models that
    halve the side down to 4). Labels must lie in ``0 .. num_classes - 1`` (10 for MNIST,
    Fashion-MNIST and KMNIST) and pixels in ``0 .. 255``; anything else is a :class:`DataFormatError`
    naming the file and the first offending record."""
    if split not in _NAMES:
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if (root / "MNIST" / "raw").is_dir():  # the layout torchvision leaves behind
        root = root / "MNIST" / "raw"
    xi, yi = (_find(root, s) for s in _NAMES[split])
    x, y = read_idx(xi), read_idx(yi)
    if x.ndim != 3 or y.ndim != 1:
        raise DataFormatError(f"expected images (N, H, W) in {str(xi)!r} and labels (N,) in {str(yi)!r}, got "
                              f"{x.shape} and {y.shape}")
    if min(x.shape[1:]) < 1:
        raise DataFormatError(f"{str(xi)!r}: images of {x.shape[1]}x{x.shape[2]} pixels hold nothing")
    if len(x) != len(y):
        raise DataFormatError(f"{len(x)} images but {len(y)} labels in {str(root)!r}")
    if len(y) == 0:
        raise DataFormatError(f"{str(yi)!r} holds no labels (and {str(xi)!r} no images): the {split} split is empty")
    if y.dtype.kind not in "iu":
        raise DataFormatError(f"{str(yi)!r}: labels must be integers, the file stores {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise DataFormatError(f"{str(yi)!r}: label {int(y[bad[0]])} of record {bad[0]} is outside 0..{num_classes - 1} "
                              f"({len(bad)} such labels; num_classes={num_classes})")
    if x.dtype != np.uint8:
        ok = np.isfinite(x) & (x >= 0) & (x <= 255)
        if not ok.all():
            i = np.unravel_index(np.flatnonzero(~ok)[0], x.shape)
            raise DataFormatError(f"{str(xi)!r}: pixel {tuple(int(j) for j in i[1:])} of image {int(i[0])} is "
                                  f"{float(x[i])}; pixels must be finite and in 0..255")
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
