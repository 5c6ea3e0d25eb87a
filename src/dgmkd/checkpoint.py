"""Atomic, safely loadable checkpoints.

A checkpoint is a ``torch.save`` file of plain containers and tensors (state dicts, the RNG state,
the step, the metric history), written to a temporary file in the same directory and moved into
place with ``os.replace``, so a kill at any moment leaves either the old or the new file, never a
torn one. It is loaded with ``torch.load(weights_only=True)``: no arbitrary object is unpickled.

Example:
    >>> import os, tempfile, torch
    >>> from dgmkd import checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.pt")
    >>> checkpoint.save(path, {"step": 3, "w": torch.ones(2)})
    >>> checkpoint.load(path)["step"]
    3
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save", "load", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run it should resume."""


def save(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # corrupt file or one holding objects beyond tensors and containers
        raise CheckpointError(f"cannot load checkpoint {str(path)!r} safely: {e}") from e
