"""Atomic, safely loadable checkpoints.

A checkpoint is a ``torch.save`` file of plain containers and tensors (state dicts, the RNG state,
the step, the metric history), written to a temporary file in the same directory and moved into
place with ``os.replace``, so a kill at any moment leaves either the old or the new file, never a
torn one (a temporary file a kill left behind is removed by the next save). It carries a SHA-256
checksum of its contents, checked on load, so flipped bytes are an error rather than a silently
wrong resume. It is loaded with ``torch.load(weights_only=True)``: no arbitrary object is unpickled.

Example:
    >>> import os, tempfile, torch
    >>> from dgmkd import checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.pt")
    >>> checkpoint.save(path, {"step": 3, "w": torch.ones(2)})
    >>> checkpoint.load(path)["step"]
    3
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ["save", "load", "CheckpointError", "checksum", "check_writable", "atomic_path"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run it should resume."""


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def checksum(obj: Any) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; containers in order)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after hours of training, when ``path``'s directory cannot be created or written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}") from None


@contextmanager
def atomic_path(path: str | os.PathLike, readable: bool = False, prefix: str = ""):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one ``os.replace``
    (a kill at any moment leaves the old file or the new one, never a torn one), on an error it is
    removed. ``readable``: give the file the permissions a plain ``open`` would (the umask's), not
    ``mkstemp``'s owner-only 0600 — for results and weights meant to be shared.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(p) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("done")
    >>> p.read_text(), sorted(q.name for q in p.parent.iterdir())
    ('done', ['x.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        if readable:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write ``obj`` (and its checksum) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in glob.glob(glob.escape(str(path)) + ".*.tmp"):  # left by a kill during an earlier save
        try:
            os.unlink(stale)
        except OSError:
            pass
    obj = {**{k: v for k, v in obj.items() if k != "checksum"}}
    obj["checksum"] = checksum(obj)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` without unpickling arbitrary objects."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt file or one holding objects beyond tensors and containers
        raise CheckpointError(f"cannot load checkpoint {str(path)!r} safely: {e}") from e
    if isinstance(obj, dict) and "checksum" in obj:
        want = obj.pop("checksum")
        if checksum(obj) != want:
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its contents do not match its checksum")
    return obj
