"""Distill models written in Pyro (optional extra: ``pip install dgmkd[pyro]``).

:func:`model` turns a Pyro model into a dgmkd model: each ``pyro.sample`` site becomes a dgmkd
site — a *target* if it is observed (``obs=...``, ``poutine.condition``) or named in ``targets``,
a *latent* otherwise — so :func:`dgmkd.couple`, the losses and :func:`dgmkd.distill` apply
unchanged. The bridge is one Pyro messenger that hands each sample message to dgmkd's handler
stack; Pyro and dgmkd messages share their field names (``name``, ``fn``, ``value``,
``is_observed``, ``infer``), so nothing is translated.

What to pass:

* an ``nn.Module`` (e.g. a ``PyroModule``) whose ``forward`` is the model, or a **bound method**
  of one (``vae.model``, as in Pyro's VAE example): the result is an ``nn.Module`` holding that
  module, so its parameters reach the optimizer and :func:`dgmkd.distill` accepts it as the
  student;
* a plain function: the result is a function — fine as a teacher, but a student must be a
  module (its parameters have to be found), so pass the module or a bound method instead.

Values the model is given are kept. An observed site (``obs=x``) or one set by
``poutine.condition`` (around the model or inside it) keeps that value, inside :func:`dgmkd.couple`
and outside it: it is a target whose value is the given one (the teacher's given value is the one
forced into the student). A conditioned latent is therefore *clamped*: later sites of both models
see the conditioned value, and its own conditional is distilled like a target's. For data-free
distillation leave ``obs=None``: the teacher then samples the site. (The unified method, Chen et
al. 2023 Eq. 4, needs only the teacher's distributions at a target, so for a last site such as a
VAE's pixels the loss is the same whether the value is data or a teacher sample.)

Pitfalls:

* **Handler order.** The bridge is entered around the whole model, so Pyro handlers entered
  *inside* the model (``pyro.plate``) process a site first — plates broadcast ``fn`` to the
  plate's batch shape before dgmkd sees it, as they should. Pyro handlers wrapped *around* the
  bridged model (``poutine.trace(dgmkd.pyro.model(m))``) see the value dgmkd chose; of those,
  ``poutine.condition`` is honoured (its value is read before dgmkd chooses one) and
  ``poutine.replay`` is an error (wrap it inside: ``dgmkd.pyro.model(poutine.replay(m, tr))``).
  ``poutine.scale`` and ``mask`` are ignored by the distillation losses.
* **Site names** must match between teacher and student, as for any dgmkd model; Pyro's names
  inside plates or loops need the index in them (``f"x_{t}"``).
* **The global parameter store.** ``pyro.param("w")`` in both models is *one* parameter shared
  by teacher and student, and ``pyro.module("decoder", m)`` in both puts two modules under one
  name (with ``update_module_params=True`` the student would silently load the teacher's
  weights). The bridge warns (:class:`SharedParamStoreWarning`, naming the name) when a model
  registers a name that another bridged model, or another tensor, already holds. Keep
  parameters on modules and give the student's ``pyro.module`` calls their own names.
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
    >>> from pyro import poutine   # a conditioned latent keeps its value, here and in couple()
    >>> clamped = dgmkd.pyro.model(poutine.condition(pm(1.0), {"z": torch.zeros(4)}))
    >>> dgmkd.couple(clamped, clamped, 4).targets["z"].value.tolist()
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from typing import Callable, Iterable

try:
    import pyro
    from pyro.poutine.condition_messenger import ConditionMessenger as _Condition
    from pyro.poutine.messenger import Messenger as _PyroMessenger
    from pyro.poutine.replay_messenger import ReplayMessenger as _Replay
    from pyro.poutine.runtime import _PYRO_STACK
    from pyro.poutine.subsample_messenger import _Subsample
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("dgmkd.pyro needs pyro-ppl: pip install 'dgmkd[pyro]'") from e

import torch
from torch import nn

from .sites import _STACK, _site, apply_stack

__all__ = ["model", "ToDgmkd", "SharedParamStoreWarning"]


class SharedParamStoreWarning(UserWarning):
    """Two models (or two tensors) registered the same name in Pyro's global parameter store."""


# param-store name -> the bridge that registered it (weak: a dropped model frees its names)
_OWNERS: "weakref.WeakValueDictionary[str, ToDgmkd]" = weakref.WeakValueDictionary()


class ToDgmkd(_PyroMessenger):
    """Route every ``pyro.sample`` site to dgmkd's handler stack (see the module docstring for
    which sites become targets and which values are kept), and watch ``pyro.param`` names."""

    def __init__(self, targets: Iterable[str] = (), label: str = "model"):
        super().__init__()
        self.targets = frozenset(targets)
        self.label = label
        self._warned: set[str] = set()
        self._pending: list[tuple[str, str | None]] = []

    # ------------------------------------------------------------------ sample sites
    def _outer_value(self, name):
        """The value an outer ``poutine.condition`` will give ``name`` (Pyro processes inner
        handlers first, so without this the outer handler would overwrite dgmkd's value)."""
        try:
            me = _PYRO_STACK.index(self)
        except ValueError:  # pragma: no cover - always on the stack while processing
            return None
        for frame in reversed(_PYRO_STACK[:me]):
            if isinstance(frame, _Replay):
                raise ValueError(
                    f"site {name!r}: poutine.replay wraps the dgmkd.pyro model from outside, where dgmkd "
                    "has already chosen the value; put it inside: dgmkd.pyro.model(poutine.replay(m, trace=...))"
                )
            if isinstance(frame, _Condition) and not hasattr(frame.data, "nodes") and name in frame.data:
                v = frame.data[name]
                if v is not None:
                    return v
        return None

    def _pyro_sample(self, msg):
        if msg.get("done") or isinstance(msg["fn"], _Subsample):  # a plate's index draw, not a variable
            return
        name = msg["name"]
        given = msg["value"] if msg["value"] is not None else self._outer_value(name)
        if given is not None:
            # obs= or poutine.condition: the value is kept; the site is a target (teacher-forced)
            msg["value"] = _given(name, msg["fn"], given)
        else:
            kind = "target" if name in self.targets else "latent"
            msg["value"] = _site(kind, name, msg["fn"])
        msg["is_observed"] = False
        msg["done"] = True  # Pyro keeps this value; outer handlers (trace) still record it

    # ------------------------------------------------------------------ param store
    def _pyro_param(self, msg):
        name = msg["args"][0] if msg["args"] else msg["name"]
        store = pyro.get_param_store()
        if name not in store:
            _OWNERS[name] = self
            return
        owner = _OWNERS.get(name)
        init = msg["args"][1] if len(msg["args"]) > 1 else None
        other_tensor = (isinstance(init, nn.Parameter)  # pyro.module: the module offers its own tensor
                        and store._params.get(name) is not None and store._params[name] is not init)
        if (owner is not None and owner is not self) or other_tensor:
            if name not in self._warned:
                self._warned.add(name)
                self._pending.append((name, owner.label if owner is not None and owner is not self else None))
        elif owner is None:
            _OWNERS[name] = self

    def __enter__(self):
        self._pending = []
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if self._pending and exc[0] is None:
            names = ", ".join(repr(n) for n, _ in self._pending[:6]) + (" ..." if len(self._pending) > 6 else "")
            other = next((o for _, o in self._pending if o is not None), None)
            who = f"another dgmkd.pyro model ({other})" if other else "another tensor"
            self._pending = []
            warnings.warn(
                f"Pyro parameter-store name(s) {names} registered by {self.label} are already held by {who}. "
                "The store is global: pyro.param would share one tensor between the models, and "
                "pyro.module(..., update_module_params=True) would load the other model's weights. "
                "Give the student's pyro.module / pyro.param calls their own names, or keep its parameters "
                "on its nn.Module only.", SharedParamStoreWarning, stacklevel=2)
        return out


def _given(name: str, fn, value):
    """A target site whose value is fixed (observed or conditioned): dgmkd's handlers record it
    (and replay may substitute the teacher's value); outside them the value is returned."""
    value = torch.as_tensor(value)
    if not _STACK:
        return value
    msg = {"type": "sample", "kind": "target", "name": name, "fn": fn, "value": value, "noise": None,
           "is_observed": True, "infer": {}, "done": False, "stop": False}
    return apply_stack(msg)


class _BridgedModule(nn.Module):
    """A Pyro model held by an ``nn.Module``: keeps its parameters visible to optimizers, DDP and
    :func:`dgmkd.distill`. ``method`` names the bound method to run (``None``: ``forward``)."""

    def __init__(self, inner: nn.Module, targets: tuple[str, ...], method: str | None = None):
        super().__init__()
        self.inner = inner
        self.targets = targets
        self.method = method
        self.bridge = ToDgmkd(targets, label=f"{type(inner).__name__}.{method or 'forward'}")

    def forward(self, *args, **kwargs):
        fn = self.inner if self.method is None else getattr(self.inner, self.method)
        with self.bridge:
            return fn(*args, **kwargs)


def model(fn: Callable, targets: Iterable[str] = ()) -> Callable:
    """A dgmkd model that runs the Pyro model ``fn`` with its sample sites as dgmkd sites.

    For an ``nn.Module`` (e.g. a ``PyroModule``) or a bound method of one (``vae.model``) the
    result is an ``nn.Module`` sharing its parameters, so it can be passed to
    :func:`dgmkd.distill` as the student; for a plain function it is a function.
    """
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of site names, got the string {targets!r}")
    targets = tuple(targets)
    if isinstance(fn, nn.Module):
        return _BridgedModule(fn, targets)
    if inspect.ismethod(fn) and isinstance(fn.__self__, nn.Module):
        return _BridgedModule(fn.__self__, targets, fn.__name__)
    if not callable(fn):
        raise TypeError(f"dgmkd.pyro.model needs a Pyro model (a callable), got {type(fn).__name__}")
    bridge = ToDgmkd(targets, label=getattr(fn, "__name__", "model"))

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with bridge:
            return fn(*args, **kwargs)

    return run
