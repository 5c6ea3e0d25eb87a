"""Tiny fixture files in the formats of the data readers, shared by the tests (written to tmp_path)."""

from __future__ import annotations

import numpy as np

NAMES = ["5_o_Clock_Shadow", "Male", "Smiling"]


def write_celeba(root, n=3, partition=(0, 0, 2), rows=None, names=NAMES, attrs=None, shape=(218, 178)):
    """A CelebA folder under ``root``: ``n`` PNG faces of ``shape`` (H, W) in ``img_align_celeba/``
    (image i: constant red ``40 i``, left half green), ``list_attr_celeba.txt`` with the columns
    ``names`` and ``list_eval_partition.txt`` (``partition``: one 0/1/2 per image; ``None``: no file).

    Attributes: ``rows`` (raw lines, for malformed files), else ``attrs`` (``n`` lists of +1/-1),
    else image i's column j is 1 when ``i + j`` is odd. Returns the file names."""
    from PIL import Image

    img = root / "img_align_celeba"
    img.mkdir(parents=True)
    files = [f"{i + 1:06d}.png" for i in range(n)]
    h, w = shape
    for i, f in enumerate(files):
        a = np.zeros((h, w, 3), np.uint8)
        a[..., 0] = (40 * i) % 256  # constant red per image
        a[:, : w // 2, 1] = 255  # left half green
        Image.fromarray(a).save(img / f)
    if attrs is None:
        attrs = [[1 if (i + j) % 2 else -1 for j in range(len(names))] for i in range(n)]
    lines = rows or [f"{f} " + " ".join(str(v) for v in a) for f, a in zip(files, attrs)]
    (root / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(names) + "\n" + "\n".join(lines) + "\n")
    if partition is not None:
        (root / "list_eval_partition.txt").write_text("\n".join(f"{f} {p}" for f, p in zip(files, partition)) + "\n")
    return files
