"""Effect handlers that give sites their distillation semantics (one small class each).

* :class:`trace` records every site's message, in execution order;
* :class:`draw_noise` writes each latent in semi-auxiliary form: it draws the auxiliary noise
  ``eps`` from the site's base law and sets ``z = g(params, eps)`` (Chen et al. 2023, §3.1);
  with ``defer_targets=True`` a target's sample is drawn only when something first reads it
  (:func:`deferred_sample`);
* :class:`replay` runs a second model against a recorded trace: latents reuse the recorded noise
  (*shared noise*), targets — and in ``"teacher_forced"`` mode every site — take the recorded
  value (*teacher forcing*).

:func:`dgmkd.couple` composes them; most users never touch this module.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Normal
    >>> def model():
    ...     z = dgmkd.latent("z", Normal(torch.zeros(2), 1.0))
    ...     return dgmkd.target("y", Normal(z, 0.1))
    >>> with dgmkd.handlers.trace() as tr, dgmkd.handlers.draw_noise():
    ...     _ = model()
    >>> list(tr.sites)
    ['z', 'y']
    >>> bool(torch.equal(tr.sites["z"]["value"], tr.sites["z"]["noise"]))  # z = 0 + 1 * eps
    True
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal
from torch.utils._pytree import tree_flatten

from . import reparam
from .sites import Messenger

__all__ = ["trace", "draw_noise", "replay", "SiteMismatchError", "deferred_sample", "is_pending"]


def _dist_shape(d):
    return d.batch_shape + d.event_shape


class SiteMismatchError(ValueError):
    """The teacher's and the student's sites do not correspond."""


class trace(Messenger):
    """Record each site's message in ``self.sites`` (an insertion-ordered dict name -> msg)."""

    def __init__(self):
        self.sites: dict[str, dict] = {}

    def __enter__(self):
        self.sites = {}
        return super().__enter__()

    def postprocess_message(self, msg):
        name = msg["name"]
        if name in self.sites:
            raise ValueError(
                f"site name {name!r} is used twice in one run of the model; every site needs a "
                f"unique name (in a loop, add the index: f'{name}_{{t}}')"
            )
        self.sites[name] = msg


class _DeferredSample(torch.Tensor):
    """A target's sample drawn on first use (see :func:`deferred_sample`).

    Reading metadata (shape, dtype, device, ...) does not draw; any other torch operation on it
    (arithmetic, ``log_prob``, ``detach``, printing, indexing) first fills it, in place and once,
    with ``dist.rsample()`` / ``dist.sample()`` under ``no_grad``, then runs on the filled tensor
    and returns plain tensors. Every reader (the model's later sites, the student's replay, a
    Monte Carlo divergence, the caller of the model) sees the same one draw.
    """

    @staticmethod
    def __new__(cls, fn, shape, dtype, device):
        t = torch.Tensor._make_subclass(cls, torch.empty(shape, dtype=dtype, device=device), False)
        t._dgmkd_fn = fn
        return t

    def _fill(self) -> None:
        fn = self.__dict__.pop("_dgmkd_fn", None)
        if fn is None:
            return
        with torch.no_grad():
            v = fn.rsample() if fn.has_rsample else fn.sample()
        with torch._C.DisableTorchFunctionSubclass():
            if v.shape != self.shape or v.dtype != self.dtype:  # a wrong _sample_spec: never silently cast
                raise RuntimeError(f"deferred sample of {type(fn).__name__}: expected {tuple(self.shape)} "
                                   f"{self.dtype}, the distribution drew {tuple(v.shape)} {v.dtype}")
            self.copy_(v)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _METADATA:
            for a in tree_flatten((args, kwargs))[0]:
                if isinstance(a, _DeferredSample):
                    a._fill()
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


_T = torch.Tensor
_METADATA = {_T.shape.__get__, _T.dtype.__get__, _T.device.__get__, _T.ndim.__get__, _T.is_cuda.__get__,
             _T.requires_grad.__get__, _T.layout.__get__, _T.grad_fn.__get__, _T.is_leaf.__get__,
             _T.size, _T.dim, _T.numel, _T.__len__, _T.is_floating_point, _T.is_complex}


def _sample_spec(fn):
    """``(dtype, device)`` of ``fn.sample()`` without drawing, for the families whose sample type is
    known; ``None`` for the others (they are sampled at once)."""
    base = fn.base_dist if type(fn) is Independent else fn
    if type(base) in (Bernoulli, Categorical):
        p = base._param
        return (torch.int64 if type(base) is Categorical else p.dtype), p.device
    if type(base) is Normal:
        return base.loc.dtype, base.loc.device
    return None


def deferred_sample(fn):
    """A sample of ``fn`` that is drawn when something first reads it, or ``None`` when ``fn`` is of
    a family whose sample dtype is not known in advance (Bernoulli, Categorical and Normal, plain
    or in ``Independent``, are deferred), or when it must carry gradients (grad mode on and
    ``fn.has_rsample``).

    Why: in :func:`dgmkd.couple` the teacher's targets are sampled, but the unified loss with a
    closed-form KL never reads them; on a 784-pixel Bernoulli decoder drawing them costs about as
    much as the student's backward pass. A deferred target whose value nothing reads is never
    drawn; one that is read (by a later site, the student's replay, a Monte Carlo divergence, the
    model's caller) is drawn at the first read, from the same distribution, so every reader sees
    the same one sample. Only the position of that draw in the RNG stream moves.

    Example:
        >>> import torch
        >>> from torch.distributions import Bernoulli
        >>> v = deferred_sample(Bernoulli(logits=torch.zeros(2, 3)))
        >>> v.shape, is_pending(v)              # metadata does not draw
        (torch.Size([2, 3]), True)
        >>> s = float(v.sum()); is_pending(v)   # the first read draws, once
        False
        >>> float(v.sum()) == s
        True
    """
    if torch.is_grad_enabled() and fn.has_rsample:
        return None
    spec = _sample_spec(fn)
    if spec is None:
        return None
    return _DeferredSample(fn, fn.batch_shape + fn.event_shape, *spec)


def is_pending(value) -> bool:
    """Whether ``value`` is a deferred sample that nothing has read yet."""
    return isinstance(value, _DeferredSample) and "_dgmkd_fn" in value.__dict__


class draw_noise(Messenger):
    """Compute every latent as ``g(params, eps)`` from a fresh auxiliary noise ``eps``; with
    ``defer_targets`` give targets a :func:`deferred_sample` (drawn only if something reads it)."""

    def __init__(self, defer_targets: bool = False):
        self.defer_targets = defer_targets

    def process_message(self, msg):
        if msg["value"] is not None:
            return
        if msg["kind"] == "latent":
            r = reparam.lookup(msg["fn"])
            eps = r.noise_fn(msg["fn"])
            msg["noise"] = eps
            msg["value"] = r.transform_fn(msg["fn"], eps)
        elif msg["kind"] == "target" and self.defer_targets:
            msg["value"] = deferred_sample(msg["fn"])


_MODES = ("shared_noise", "teacher_forced")


class replay(Messenger):
    """Run a model against a recorded trace ``sites`` (name -> message).

    ``mode="shared_noise"`` (the unified method): latents are computed by the model's own
    ``g(params, eps)`` from the recorded noise, along the model's own path; targets take the
    recorded values (so ``p(y | eps, x)`` factorizes over targets given the recorded earlier
    targets). Deterministic sites keep the model's own values.

    ``mode="teacher_forced"`` (local distillation): every site takes the recorded value, so each
    conditional is evaluated at the recorded parents.

    The correspondence is checked as it goes: a site missing from the record, a different kind,
    a different noise shape or law, or a shape mismatch of a substituted value raise
    :class:`SiteMismatchError` naming the site.

    ``maps`` (site name -> :class:`dgmkd.maps.LatentMap`): at those latents the model's noise is
    the map of the recorded noise (a narrower student); teacher forcing substitutes the map's
    restriction of the recorded value.
    """

    def __init__(self, sites: dict[str, dict], mode: str = "shared_noise", maps: dict | None = None):
        if mode not in _MODES:
            raise ValueError(f"unknown coupling mode {mode!r}; choose one of {', '.join(_MODES)}")
        self.sites = sites
        self.mode = mode
        self.maps = maps or {}
        self.seen: set[str] = set()

    def __enter__(self):
        self.seen = set()
        return super().__enter__()

    def process_message(self, msg):
        name = msg["name"]
        rec = self.sites.get(name)
        if rec is None:
            raise SiteMismatchError(
                f"site {name!r} ({msg['kind']}) exists in the student but not in the teacher; "
                f"teacher sites: {list(self.sites)}"
            )
        if rec["kind"] != msg["kind"]:
            raise SiteMismatchError(
                f"site {name!r} is a {rec['kind']} in the teacher but a {msg['kind']} in the student"
            )
        self.seen.add(name)
        kind = msg["kind"]
        lmap = self.maps.get(name)
        if lmap is not None:
            if kind != "latent":
                raise SiteMismatchError(f"site {name!r} is a {kind}, but latent_maps maps only latent sites")
            return self._mapped(name, msg, rec, lmap)
        if kind != "deterministic" and _dist_shape(msg["fn"]) != _dist_shape(rec["fn"]):
            # checked before any value is shared: broadcasting would silently pair the wrong things
            raise SiteMismatchError(
                f"{kind} site {name!r}: the student's {type(msg['fn']).__name__} has shape "
                f"{tuple(_dist_shape(msg['fn']))} (batch + event) but the teacher's {type(rec['fn']).__name__} has "
                f"{tuple(_dist_shape(rec['fn']))}; teacher and student must declare every site with the same shape"
            )
        if kind == "latent" and self.mode == "shared_noise":
            eps = rec["noise"]
            fn = msg["fn"]
            r = reparam.lookup(fn)
            if eps is None:
                raise SiteMismatchError(f"latent site {name!r} has no recorded noise in the teacher's trace")
            # same non-wrapper type => same law; otherwise compare the laws
            if (type(rec["fn"]) is not type(fn) or r.law == "<base>") and \
                    (law_t := reparam.noise_law(rec["fn"])) != (law_s := reparam.noise_law(fn)):
                raise SiteMismatchError(
                    f"latent site {name!r}: the teacher's {type(rec['fn']).__name__} uses {law_t} noise "
                    f"but the student's {type(fn).__name__} uses {law_s} noise; shared noise needs the same law"
                )
            try:
                value = r.transform_fn(fn, eps)
            except RuntimeError as e:
                raise SiteMismatchError(
                    f"latent site {name!r}: the teacher's noise of shape {tuple(eps.shape)} does not fit the "
                    f"student's {type(fn).__name__} (batch {tuple(fn.batch_shape)}, event "
                    f"{tuple(fn.event_shape)}): {e}"
                ) from e
            if value.shape != rec["value"].shape:
                raise SiteMismatchError(
                    f"latent site {name!r}: shape {tuple(value.shape)} in the student but "
                    f"{tuple(rec['value'].shape)} in the teacher; shared noise needs the same batch "
                    "and event shapes at every site"
                )
            msg["noise"] = eps
            msg["value"] = value
        elif kind == "target" or (self.mode == "teacher_forced" and kind in ("latent", "deterministic")):
            v = rec["value"]
            own = msg["fn"] if kind == "deterministic" else None
            if own is not None and own.shape != v.shape:
                raise SiteMismatchError(
                    f"deterministic site {name!r}: shape {tuple(own.shape)} in the student but "
                    f"{tuple(v.shape)} in the teacher; teacher forcing substitutes the teacher's value"
                )
            msg["noise"] = rec["noise"]
            msg["value"] = v

    def _mapped(self, name, msg, rec, lmap):
        """A latent whose noise (or, teacher-forced, value) is a map of the teacher's."""
        fn = msg["fn"]
        if self.mode == "teacher_forced":
            v = lmap.restrict_value(rec["value"])
            if v is None:
                raise SiteMismatchError(f"latent site {name!r}: the map {lmap!r} gives no teacher value for the "
                                        "student's coordinates, so it cannot be teacher-forced (local distillation); "
                                        "use dgmkd.maps.first(k) there")
            if v.shape != _dist_shape(fn):
                raise SiteMismatchError(f"latent site {name!r}: the map {lmap!r} gives the teacher's value the shape "
                                        f"{tuple(v.shape)}, but the student's {type(fn).__name__} has shape "
                                        f"{tuple(_dist_shape(fn))}")
            msg["noise"], msg["value"] = None, v
            return
        if rec["noise"] is None:
            raise SiteMismatchError(f"latent site {name!r} has no recorded noise in the teacher's trace")
        law_t, law_s = reparam.noise_law(rec["fn"]), reparam.noise_law(fn)
        if law_t != law_s:
            raise SiteMismatchError(
                f"latent site {name!r}: the teacher's {type(rec['fn']).__name__} uses {law_t} noise but the "
                f"student's {type(fn).__name__} uses {law_s} noise; a latent map keeps the law, so both need the same"
            )
        eps = lmap.apply(name, rec["noise"], law_t)
        try:
            value = reparam.transform(fn, eps)
        except RuntimeError as e:
            raise SiteMismatchError(
                f"latent site {name!r}: the map {lmap!r} turns the teacher's noise of shape "
                f"{tuple(rec['noise'].shape)} into shape {tuple(eps.shape)}, which does not fit the student's "
                f"{type(fn).__name__} of shape {tuple(_dist_shape(fn))}: {e}"
            ) from e
        if value.shape != _dist_shape(fn):
            raise SiteMismatchError(
                f"latent site {name!r}: the map {lmap!r} turns the teacher's noise of shape "
                f"{tuple(rec['noise'].shape)} into shape {tuple(eps.shape)}, but the student's "
                f"{type(fn).__name__} has shape {tuple(_dist_shape(fn))} (batch + event)"
            )
        msg["noise"], msg["value"] = eps, value

    def check_complete(self):
        missing = [n for n in self.sites if n not in self.seen]
        if missing:
            raise SiteMismatchError(
                f"site(s) {missing} exist in the teacher but not in the student; both models must "
                "name the same sites"
            )
