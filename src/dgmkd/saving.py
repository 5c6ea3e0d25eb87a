"""Saving and loading trained models: safetensors weights plus how the library built the model.

:func:`save` writes a module's ``state_dict`` as a ``.safetensors`` file (no pickle: loading it
runs no code) and, when the module was built by the library (a class or factory marked
:func:`buildable`, such as :class:`dgmkd.models.LadderVAE` or :func:`dgmkd.models.flows.maf`),
a small JSON record of that call — the class or factory's import path and its arguments — in the
file's header. :func:`load` then either fills a module you pass (``load(module, path)``, any
``nn.Module``) or, given only a path, rebuilds the library model from the record and fills it
(``load(path)``). Loading weights of another shape is an error naming the tensor and both shapes.

Every experiment's run directory keeps its trained models as ``models/<role>.safetensors``
(``teacher``, ``student-<method>-s<seed>``, ...), so a trained student comes back with one call::

    student = dgmkd.load("runs/hvae-compress-.../models/student-unified-r0.25-s0.safetensors")

Example:
    >>> import os, tempfile, torch, dgmkd
    >>> from dgmkd.models import MLPDGM
    >>> m = MLPDGM(latent_dims=(2, 2), hidden=8, out_dim=2)
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> _ = dgmkd.save(m, path)
    >>> m2 = dgmkd.load(path)                      # rebuilt from the record, weights filled
    >>> type(m2).__name__, all(torch.equal(a, b) for a, b in zip(m.state_dict().values(),
    ...                                                          m2.state_dict().values()))
    ('MLPDGM', True)
    >>> _ = dgmkd.load(MLPDGM(latent_dims=(2, 2), hidden=8, out_dim=2), path)   # or into your module
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import atomic_path

__all__ = ["save", "load", "buildable", "build_record", "LoadError"]

_KEY = "dgmkd.build"  # the header metadata entry holding the JSON build record
_ATTR = "_dgmkd_build"


class LoadError(ValueError):
    """Weights that do not fit the module, or a file that cannot be rebuilt from."""


def _encode(v: Any) -> Any:
    """A JSON value for a constructor argument (tuples kept as tuples); ``TypeError`` otherwise."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"__dict__": {k: _encode(x) for k, x in v.items()}}
    raise TypeError(type(v).__name__)


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if isinstance(v, dict):
        if "__tuple__" in v:
            return tuple(_decode(x) for x in v["__tuple__"])
        return {k: _decode(x) for k, x in v["__dict__"].items()}
    return v


def _record(fn: Callable, sig: inspect.Signature, args: tuple, kwargs: dict, skip_first: bool) -> dict:
    bound = sig.bind(*((None,) + args if skip_first else args), **kwargs)
    params = dict(bound.arguments)
    if skip_first:
        params.pop(next(iter(sig.parameters)))
    rec: dict[str, Any] = {"builder": f"{fn.__module__}.{fn.__qualname__}"}
    try:
        rec["kwargs"] = {k: _encode(v) for k, v in params.items()}
    except TypeError as e:
        rec["kwargs"] = None
        rec["why"] = f"an argument is not a JSON value ({e})"
    return rec


def buildable(obj):
    """Mark a module class or a factory function so that what it builds remembers how.

    A class: every instance whose concrete type is exactly that class records its constructor
    arguments (a subclass records only if it is marked too). A function returning a module: the
    module records the call (overriding its class's record). Records with arguments that are not
    JSON values (a module, a callable, a tensor) are kept as "not rebuildable": :func:`load`
    then asks for a module to fill.
    """
    if inspect.isclass(obj):
        init = obj.__init__
        sig = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if type(self) is obj:
                self.__dict__[_ATTR] = _record(obj, sig, args, kwargs, skip_first=True)

        obj.__init__ = __init__
        return obj
    sig = inspect.signature(obj)

    @functools.wraps(obj)
    def factory(*args, **kwargs):
        module = obj(*args, **kwargs)
        if isinstance(module, nn.Module):
            module.__dict__[_ATTR] = _record(obj, sig, args, kwargs, skip_first=False)
        return module

    return factory


def build_record(module: nn.Module) -> dict | None:
    """How the library built ``module`` (``{"builder": import path, "kwargs": {...}}``) or ``None``."""
    return module.__dict__.get(_ATTR)


def save(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``module``'s weights (its ``state_dict``) to ``path`` as safetensors, atomically, with
    the module's build record (see :func:`buildable`) in the header. Returns the path."""
    from safetensors.torch import save_file

    if not isinstance(module, nn.Module):
        raise TypeError(f"save: expected an nn.Module, got {type(module).__name__}")
    path = Path(path)
    # own contiguous CPU copies: safetensors refuses tensors that share storage (tied weights)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    meta = {"format": "pt", "dgmkd.class": f"{type(module).__module__}.{type(module).__qualname__}"}
    rec = build_record(module)
    if rec is not None:
        meta[_KEY] = json.dumps(rec, sort_keys=True)
    with atomic_path(path, readable=True, prefix=".") as tmp:  # weights are for everyone to read
        save_file(tensors, tmp, metadata=meta)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"no saved model at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or a torn file
        raise LoadError(f"{path} is not a readable safetensors file: {e}") from e
    return tensors, meta


def _rebuild(path: Path, meta: dict[str, str]) -> nn.Module:
    if _KEY not in meta:
        raise LoadError(f"{path} holds weights of a {meta.get('dgmkd.class', 'module')} that the library did not "
                        "build, so it cannot rebuild it: create the module yourself and call "
                        "dgmkd.load(module, path)")
    rec = json.loads(meta[_KEY])
    if rec.get("kwargs") is None:
        raise LoadError(f"{path}: {rec['builder']} was called with arguments that cannot be recorded "
                        f"({rec.get('why', '?')}); build the module yourself and call dgmkd.load(module, path)")
    mod_name, _, qual = rec["builder"].rpartition(".")
    try:
        builder = getattr(importlib.import_module(mod_name), qual)
    except (ImportError, AttributeError) as e:
        raise LoadError(f"{path}: cannot find {rec['builder']} to rebuild the model: {e}") from e
    return builder(**{k: _decode(v) for k, v in rec["kwargs"].items()})


def load(module_or_path: nn.Module | str | os.PathLike, path: str | os.PathLike | None = None, *,
         strict: bool = True, device=None) -> nn.Module:
    """``load(module, path)`` fills ``module`` with the weights saved at ``path`` and returns it;
    ``load(path)`` rebuilds the library model the file records and fills it.

    A tensor of another shape than the module's is a :class:`LoadError` naming it and both
    shapes; with ``strict`` (default) so is a missing or an unexpected tensor. The module is
    returned in eval mode (a trained model is usually used for sampling or evaluation), on
    ``device`` when given.
    """
    if path is None:
        if isinstance(module_or_path, nn.Module):
            raise TypeError("load: give the path of the saved weights: dgmkd.load(module, path)")
        path, module = Path(module_or_path), None
    else:
        if not isinstance(module_or_path, nn.Module):
            raise TypeError(f"load(module, path): expected an nn.Module first, got {type(module_or_path).__name__}")
        module, path = module_or_path, Path(path)
    tensors, meta = _read(path)
    if module is None:
        module = _rebuild(path, meta)
    own = module.state_dict()
    bad = [f"{k!r}: saved {tuple(v.shape)}, module {tuple(own[k].shape)}"
           for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise LoadError(f"{path} does not fit the {type(module).__name__}: tensor " + "; tensor ".join(bad))
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if strict and (missing or unexpected):
        raise LoadError(f"{path} does not fit the {type(module).__name__}: "
                        + "; ".join(s for s in (f"missing tensors {missing}" if missing else "",
                                                f"unexpected tensors {unexpected}" if unexpected else "") if s))
    module.load_state_dict(tensors, strict=strict)
    if device is not None:
        module.to(device)
    return module.eval()
