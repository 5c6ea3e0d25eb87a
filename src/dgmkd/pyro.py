"""Distill models written in Pyro (optional extra: ``pip install dgmkd[pyro]``).

:func:`model` turns a Pyro model into a dgmkd model: each ``pyro.sample`` site becomes a dgmkd
site — a *target* if it is observed (``obs=...``) or named in ``targets``, a *latent* otherwise —
so :func:`dgmkd.couple`, the losses and :func:`dgmkd.distill` apply unchanged. The bridge is one
Pyro messenger that hands each sample message to dgmkd's handler stack; Pyro and dgmkd messages
share their field names (``name``, ``fn``, ``value``, ``is_observed``, ``infer``), so nothing is
translated.

Pitfalls:

* **Handler order.** The bridge is entered around the whole model, so Pyro handlers entered
  *inside* the model (``pyro.plate``) process a site first — plates broadcast ``fn`` to the
  plate's batch shape before dgmkd sees it, as they should. Pyro handlers wrapped *around* the
  bridged model (``poutine.trace(dgmkd.pyro.model(m))``) see the value dgmkd chose. ``poutine.scale``
  and ``mask`` are ignored by the distillation losses.
* **Observed values are not used.** Targets are sampled by the teacher and teacher-forced into
  the student (the unified method is target-free); pass ``obs=None`` or leave it — it is ignored.
* **Site names** must match between teacher and student, as for any dgmkd model; Pyro's names
  inside plates or loops need the index in them (``f"x_{t}"``).
* **The global parameter store.** ``pyro.param("w")`` in both models would be *one* parameter
  shared by teacher and student. Keep parameters on modules (``PyroModule`` / ``nn.Module``) and
  give the student its own module.
* **Distribution types**: Pyro's distributions subclass torch's, so the reparameterizers and KL
  rules of their torch bases apply; Pyro-only types (``Delta``, ``ZeroInflated...``) need
  :func:`dgmkd.reparam.register` to be used as latents.

Example:
    >>> import torch, pyro, pyro.distributions as dist, dgmkd, dgmkd.pyro
    >>> def pm(scale):
    ...     def m(n):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(n), scale))
    ...         return pyro.sample("y", dist.Normal(z, 1.0), obs=None)
    ...     return m
    >>> t, s = dgmkd.pyro.model(pm(1.0), targets=["y"]), dgmkd.pyro.model(pm(2.0), targets=["y"])
    >>> c = dgmkd.couple(t, s, 4)
    >>> list(c.latents), list(c.targets)
    (['z'], ['y'])
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable

try:
    from pyro.poutine.messenger import Messenger as _PyroMessenger
    from pyro.poutine.subsample_messenger import _Subsample
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("dgmkd.pyro needs pyro-ppl: pip install 'dgmkd[pyro]'") from e

from torch import nn

from .sites import _site

__all__ = ["model", "ToDgmkd"]


class ToDgmkd(_PyroMessenger):
    """Route every ``pyro.sample`` site to dgmkd's handler stack."""

    def __init__(self, targets: Iterable[str] = ()):
        super().__init__()
        self.targets = frozenset(targets)

    def _pyro_sample(self, msg):
        if msg.get("done") or isinstance(msg["fn"], _Subsample):  # a plate's index draw, not a variable
            return
        name = msg["name"]
        kind = "target" if (msg.get("is_observed") or name in self.targets) else "latent"
        msg["value"] = _site(kind, name, msg["fn"])
        msg["is_observed"] = False
        msg["done"] = True  # Pyro keeps this value; outer handlers (trace) still record it


class _BridgedModule(nn.Module):
    """A Pyro model held by an ``nn.Module``: keeps its parameters visible to optimizers, DDP and
    :func:`dgmkd.distill`."""

    def __init__(self, inner: nn.Module, targets: tuple[str, ...]):
        super().__init__()
        self.inner = inner
        self.targets = targets

    def forward(self, *args, **kwargs):
        with ToDgmkd(self.targets):
            return self.inner(*args, **kwargs)


def model(fn: Callable, targets: Iterable[str] = ()) -> Callable:
    """A dgmkd model that runs the Pyro model ``fn`` with its sample sites as dgmkd sites.

    For an ``nn.Module`` (e.g. a ``PyroModule``) the result is an ``nn.Module`` sharing its
    parameters, so it can be passed to :func:`dgmkd.distill` as the student.
    """
    targets = tuple(targets)
    if isinstance(fn, nn.Module):
        return _BridgedModule(fn, targets)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with ToDgmkd(targets):
            return fn(*args, **kwargs)

    return run
