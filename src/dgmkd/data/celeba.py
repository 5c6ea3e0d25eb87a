"""Reader for CelebA (Liu et al. 2015): the aligned image folder and ``list_attr_celeba.txt``.

Layout under ``root``: ``img_align_celeba/`` (``000001.jpg`` ...), ``list_attr_celeba.txt`` (line 1:
the number of images; line 2: the 40 attribute names; then ``<file> <+1/-1 x 40>`` per image) and,
optionally, ``list_eval_partition.txt`` (``<file> <0|1|2>`` for train / valid / test). Images are
center-cropped to ``crop`` x ``crop`` (148, the usual choice for 178x218 aligned faces) and resized
to ``size`` (64), returned as ``(N, 3, size, size)`` float32 in [0, 1]; attributes as ``(N, 40)``
in {0, 1}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataFormatError

__all__ = ["load_celeba", "read_attributes", "read_partition", "feature_labels"]

_SPLIT = {"train": 0, "valid": 1, "test": 2}


MAX_PIXELS = 4096 * 4096
"""Default bound on one image's width x height, read from its header before it is decoded (the
aligned CelebA faces are 178 x 218)."""


def _lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of a text file; bytes that are not UTF-8 are a
    :class:`DataFormatError` naming the line and byte offset."""
    if not path.is_file():
        raise DataFormatError(f"CelebA {what} {str(path)!r} not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(f"{str(path)!r} line {line} (byte offset {e.start}): not text ({e.reason}); is this "
                              f"the CelebA {what}?") from None
    return [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]


def read_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(attribute names, file names, attributes (N, A) int8 in {-1, +1})`` of ``list_attr_celeba.txt``."""
    path = Path(path)
    lines = _lines(path, "attribute file")
    if len(lines) < 2:
        raise DataFormatError(f"{str(path)!r}: expected a count line and an attribute-name line")
    try:
        n = int(lines[0][1].split()[0])
    except ValueError:
        raise DataFormatError(f"{str(path)!r} line {lines[0][0]}: must be the number of images, got "
                              f"{lines[0][1][:80]!r}") from None
    names = lines[1][1].split()
    rows = lines[2:]
    if len(rows) != n:
        raise DataFormatError(f"{str(path)!r}: header says {n} images but {len(rows)} rows follow")
    if not names:
        raise DataFormatError(f"{str(path)!r} line {lines[1][0]}: no attribute names")
    files, attrs = [], np.empty((n, len(names)), dtype=np.int8)
    for i, (no, ln) in enumerate(rows):
        parts = ln.split()
        if len(parts) != len(names) + 1:
            raise DataFormatError(f"{str(path)!r} line {no}: expected a file name and {len(names)} "
                                  f"attributes, got {len(parts)} fields")
        try:
            vals = [int(v) for v in parts[1:]]
        except ValueError:
            raise DataFormatError(f"{str(path)!r} line {no}: attributes must be -1 or 1") from None
        if any(v not in (-1, 1) for v in vals):
            raise DataFormatError(f"{str(path)!r} line {no}: attributes must be -1 or 1, got {sorted(set(vals))}")
        files.append(parts[0])
        attrs[i] = vals
    return names, files, attrs


def read_partition(path: str | Path) -> dict[str, int]:
    """``file name -> partition`` (0 train, 1 valid, 2 test) of ``list_eval_partition.txt``."""
    path = Path(path)
    out = {}
    for no, ln in _lines(path, "partition file"):
        parts = ln.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataFormatError(f"{str(path)!r} line {no}: expected '<file> <0|1|2>', got {ln[:80]!r}")
        out[parts[0]] = int(parts[1])
    return out


def _load_image(path: Path, crop: int, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image, centre-cropped and resized. Its dimensions are read from the header and checked
    against ``max_pixels`` before any pixel is decoded, so a small file claiming a huge image
    cannot make a huge allocation."""
    import zlib

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
            if w < 1 or h < 1 or w * h > max_pixels:
                raise DataFormatError(f"CelebA image {str(path)!r} claims {w}x{h} pixels; allowed are 1 to "
                                      f"{max_pixels} (max_pixels=)")
            im = im.convert("RGB")
            c = min(crop, w, h)
            left, top = (w - c) // 2, (h - c) // 2
            im = im.crop((left, top, left + c, top + c)).resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, zlib.error,
            Image.DecompressionBombError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"cannot read CelebA image {str(path)!r}: {type(e).__name__}: {e}") from e


def load_celeba(root: str | Path, split: str = "train", size: int = 64, crop: int = 148,
                limit: int | None = None, image_dir: str = "img_align_celeba",
                max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CelebA images ``(N, 3, size, size)``, attributes ``(N, 40)`` in {0, 1} and attribute names.

    ``split``: ``train`` / ``valid`` / ``test`` (needs ``list_eval_partition.txt``) or ``all``.
    A split with no image is a :class:`DataFormatError`; so is an image larger than ``max_pixels``.
    """
    root = Path(root)
    names, files, attrs = read_attributes(root / "list_attr_celeba.txt")
    if split != "all":
        if split not in _SPLIT:
            raise ValueError(f"CelebA split must be one of {sorted(_SPLIT)} or 'all', got {split!r}")
        part_file = root / "list_eval_partition.txt"
        if not part_file.is_file():
            raise DataFormatError(f"split {split!r} needs {str(part_file)!r}; pass split='all' without it")
        part = read_partition(part_file)
        keep = [i for i, f in enumerate(files) if part.get(f) == _SPLIT[split]]
        files, attrs = [files[i] for i in keep], attrs[keep]
    if not files:
        raise DataFormatError(f"CelebA split {split!r} of {str(root)!r} holds no image (the attribute file lists "
                              f"{len(attrs) if split == 'all' else 'none of its'} files)")
    if limit is not None:
        files, attrs = files[:limit], attrs[:limit]
    img_dir = root / image_dir
    if not img_dir.is_dir():
        raise DataFormatError(f"CelebA image folder {str(img_dir)!r} not found")
    imgs = np.stack([_load_image(img_dir / f, crop, size, max_pixels) for f in files])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    return x, torch.from_numpy((attrs > 0).astype(np.int64)), names


def feature_labels(attributes: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Class labels ``(N,)`` for the feature classifier of the image metrics on CelebA: the
    ``Male`` column of :func:`load_celeba`'s attributes (the first column if there is none)."""
    return attributes[:, names.index("Male")] if "Male" in names else attributes[:, 0]
