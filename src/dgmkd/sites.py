"""Named random-variable sites and the effect-handler stack that interprets them.

A model is ordinary PyTorch code that names its random variables with :func:`latent`,
:func:`target` and :func:`deterministic`. Outside any handler these calls simply sample (or
return the value), so a model stays a normal sampler. Inside handlers (see
:mod:`dgmkd.handlers`) each call becomes a *message* that the handlers may inspect or change —
the minipyro / Pyro ``poutine`` pattern.

Message fields (the names follow Pyro's so that an adapter stays thin):

``type``
    ``"sample"`` for latent and target sites, ``"deterministic"`` for deterministic sites.
``kind``
    ``"latent"``, ``"target"`` or ``"deterministic"`` — the role of the site in the
    semi-auxiliary form of Chen et al. (2023), §3.1: latents get an auxiliary noise, targets
    stay as they are.
``name``
    the site's name, unique within one run of a model.
``fn``
    the site's distribution (for a deterministic site: the value the model computed, i.e. the
    location of a point mass).
``value``
    the value returned to the model. Handlers may set it; if none does, the site samples.
``noise``
    the auxiliary noise ``eps`` the value was computed from (set by noise handlers).
``is_observed``, ``infer``, ``done``, ``stop``
    as in Pyro.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Normal
    >>> z = dgmkd.latent("z", Normal(torch.zeros(3), 1.0))
    >>> z.shape
    torch.Size([3])
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["latent", "target", "deterministic", "Messenger", "apply_stack"]

_STACK: list["Messenger"] = []


class Messenger:
    """Base class of handlers. Use as a context manager; subclasses override
    :meth:`process_message` (called innermost handler first, before the value exists; a handler
    that sets ``msg["stop"]`` hides the site from the handlers outside it) and
    :meth:`postprocess_message` (called after the value exists, outermost of the handlers that
    processed the message first)."""

    def __enter__(self):
        _STACK.append(self)
        return self

    def __exit__(self, *exc):
        if not _STACK or _STACK[-1] is not self:
            raise RuntimeError("dgmkd handlers exited out of order; use them as nested `with` blocks")
        _STACK.pop()
        return False

    def process_message(self, msg: dict) -> None:  # pragma: no cover - default no-op
        pass

    def postprocess_message(self, msg: dict) -> None:  # pragma: no cover - default no-op
        pass


def _default_value(msg: dict) -> Any:
    if msg["type"] == "deterministic":
        return msg["fn"]
    fn = msg["fn"]
    return fn.rsample() if fn.has_rsample else fn.sample()


def apply_stack(msg: dict) -> Any:
    """Send ``msg`` through the active handlers (innermost first) and return its value."""
    stack = _STACK
    n = len(stack)
    i = n
    for i in range(n - 1, -1, -1):
        stack[i].process_message(msg)
        if msg["stop"]:
            break
    if msg["value"] is None:
        msg["value"] = _default_value(msg)
    for j in range(i, n):
        stack[j].postprocess_message(msg)
    return msg["value"]


def _site(kind: str, name: str, fn: Any) -> Any:
    if not _STACK:  # fast path: no handler, behave like a plain sampler
        if kind == "deterministic":
            return fn
        return fn.rsample() if fn.has_rsample else fn.sample()
    if not isinstance(name, str):
        raise TypeError(f"site names must be strings, got {type(name).__name__}")
    msg = {
        "type": "deterministic" if kind == "deterministic" else "sample",
        "kind": kind,
        "name": name,
        "fn": fn,
        "value": None,
        "noise": None,
        "is_observed": False,
        "infer": {},
        "done": False,
        "stop": False,
    }
    return apply_stack(msg)


def latent(name: str, dist: torch.distributions.Distribution) -> torch.Tensor:
    """A latent variable ``z_i ~ dist``.

    In the unified method (Chen et al. 2023, §3.1) a latent is rewritten as
    ``z_i = g(Pa(z_i), eps_i)`` with a parameter-free noise ``eps_i`` shared between teacher and
    student; see :mod:`dgmkd.reparam` for ``g``. Outside handlers this returns
    ``dist.rsample()`` when the distribution supports it and ``dist.sample()`` otherwise.
    """
    return _site("latent", name, dist)


def target(name: str, dist: torch.distributions.Distribution) -> torch.Tensor:
    """A target (output) variable ``y_j ~ dist``: the variables a student must imitate (Eq. 4)."""
    return _site("target", name, dist)


def deterministic(name: str, value: torch.Tensor) -> torch.Tensor:
    """A deterministic site: a feature, a flow state, a generator output.

    It is a latent with a degenerate (point-mass) distribution (Chen et al. 2023, §3.5), so a
    distance between teacher and student values is its latent distillation loss (FitNets' feature
    KD, Eq. 8). Outside handlers returns ``value`` unchanged.
    """
    return _site("deterministic", name, value)
