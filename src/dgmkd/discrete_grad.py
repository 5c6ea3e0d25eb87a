"""Unbiased gradients through discrete latents under the quantile coupling (``discrete_grad=True``).

Under shared noise a discrete latent is ``z = F^{-1}(u)`` with one standard uniform ``u`` per
variable (:mod:`dgmkd.reparam`). Each sample is piecewise constant in the student's parameters, so
autograd gives the surrogate (Chen et al. 2023, Eq. 4) and latent (Eq. 6) losses no gradient for
parameters that act only through such a latent (§3.3 of the paper says so). The *expectation* over
``u`` is smooth, though, and its derivative is a sum of boundary terms at the quantile's jumps: for a
variable of the student with jumps ``k -> k + 1`` at ``u = F_S(k)``,

    d/dtheta E_u f(u) = sum_k E_{u_-} [ f(z_S = k, u = F_S(k)) - f(z_S = k + 1, u = F_S(k)) ] dF_S(k)/dtheta

(a one-dimensional Leibniz rule per variable; the local-expectation gradients of Titsias &
Lázaro-Gredilla 2015 and measure-valued derivatives are the same idea). For a Bernoulli unit,
``z = 1[u >= 1 - p]`` and this is ``f(1, u = 1 - p) - f(0, u = 1 - p)`` times ``dp/dtheta``. The
second argument matters: the loss depends on ``u`` through the *teacher's* value of the unit too,
so both models are re-run with that unit's uniform set to the jump — the teacher computes its own
value there, the student takes ``k`` and then ``k + 1`` — and every other noise is kept.
(Flipping only the student's unit at the sampled ``u`` would pair it with the wrong teacher value
and is biased.)

Cost and variance (the sampled variant, the one implemented): per discrete latent *site* and step,
one variable per example is chosen uniformly (weight = number of variables) and one jump per
variable (:class:`dgmkd.reparam.Jump`: drawn with probability proportional to the mass next to it,
importance-weighted; a Bernoulli has one), so a site costs three extra forward passes without
gradients: the teacher at the jump, the student below it and above it. Summing over every variable
(and every jump) would cost three passes per variable and be exact over the choice; the sampled
variant trades that for variance that shrinks with the batch. ``discrete_grad=k`` (an int) goes one
step further: only ``k`` of the ``S`` discrete sites, drawn per step without replacement, are
probed, their terms weighted by ``S / k`` — ``3 k`` passes instead of ``3 S``, at more variance.
The term's value is zero — only its gradient is the estimator — so loss histories are unchanged.

Nothing happens for models without discrete latents, for sites whose student distribution does not
depend on trainable parameters, or under ``mode="teacher_forced"`` (there the student's latents
are the teacher's values, so nothing acts through the student's discrete sampling). Assumes the
models are deterministic given their site noise (no dropout in training mode) and that dimension 0
of every site is the batch, as :func:`dgmkd.divergences.reduce` does.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Bernoulli, Normal
    >>> class M(torch.nn.Module):
    ...     def __init__(self, a):
    ...         super().__init__()
    ...         self.a = torch.nn.Parameter(torch.tensor(a))
    ...     def forward(self, n):
    ...         z = dgmkd.latent("z", Bernoulli(logits=self.a.expand(n)))
    ...         return dgmkd.target("y", Normal(3.0 * z, 1.0))
    >>> _ = torch.manual_seed(0)
    >>> t, s = M(1.0), M(-1.0)
    >>> dgmkd.losses.surrogate(dgmkd.couple(t, s, 4000)).requires_grad   # plain: no gradient reaches a
    False
    >>> dgmkd.losses.surrogate(dgmkd.couple(t, s, 4000, discrete_grad=True)).backward()
    >>> bool(s.a.grad < 0)                   # raising p_S(z = 1) toward the teacher's lowers the loss
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.distributions import Independent

from . import divergences as D
from . import reparam
from .handlers import SiteMismatchError, replay, trace
from .sites import Messenger

__all__ = ["Probes", "discrete_sites", "sites_per_step", "MissingJumpError"]


def sites_per_step(discrete_grad) -> int | None:
    """``None`` (every discrete site) for ``True``, ``k`` for a positive int ``k``; else a ``ValueError``."""
    if discrete_grad is True:
        return None
    if isinstance(discrete_grad, bool) or not isinstance(discrete_grad, int) or discrete_grad < 1:
        raise ValueError(f"discrete_grad={discrete_grad!r}: pass True (every discrete latent site), False, or a "
                         "positive int k (k discrete sites drawn per step, reweighted)")
    return discrete_grad


class MissingJumpError(TypeError):
    """A discrete latent whose distribution type has no registered quantile jumps."""


def _base(d):
    while isinstance(d, Independent):
        d = d.base_dist
    return d


def discrete_sites(c) -> list[str]:
    """Names of the latent sites whose student distribution is discrete, checking that each has
    what the estimator needs (a ``boundary`` in its :func:`dgmkd.reparam.register` entry)."""
    names = []
    for name, pair in c.latents.items():
        d = pair.student
        if not reparam.is_discrete(d):
            continue
        base = _base(d)
        if reparam.lookup(base).boundary is None:
            t = type(base).__name__
            raise MissingJumpError(
                f"latent site {name!r}: discrete_grad=True needs the jumps of the quantile function of the "
                f"student's {t}, a discrete distribution registered without them. Register them with "
                f"dgmkd.reparam.register({t}, noise_fn, transform_fn, law=..., boundary=fn), where fn(dist) "
                "returns a dgmkd.reparam.Jump (for the inverse CDF of one standard uniform per variable, the "
                "built-in dgmkd.reparam.bernoulli_jump / categorical_jump / binomial_jump / poisson_jump / "
                "geometric_jump fit their families), or call couple() without discrete_grad."
            )
        names.append(name)
    return names


class _TeacherAtJump(Messenger):
    """Re-run the teacher on its own record with one site's noise replaced. Targets keep their
    recorded value in the examples where the teacher's value at that site did not change (its
    whole run is then the same) and are drawn afresh from the teacher elsewhere (so each is a
    sample of the teacher's conditional at the new noise)."""

    def __init__(self, sites: dict, name: str, noise: torch.Tensor):
        self.sites, self.name, self.noise = sites, name, noise
        self.changed = None

    def process_message(self, msg):
        rec = self.sites.get(msg["name"])
        if rec is None or rec["kind"] != msg["kind"]:
            raise SiteMismatchError(f"site {msg['name']!r}: the teacher's re-run does not match its first run")
        if msg["kind"] == "latent":
            eps = self.noise if msg["name"] == self.name else rec["noise"]
            msg["noise"] = eps
            msg["value"] = reparam.transform(msg["fn"], eps)
            if msg["name"] == self.name:
                diff = msg["value"] != rec["value"]
                self.changed = diff.reshape(diff.shape[0], -1).any(1) if diff.dim() else diff.reshape(1)
        elif msg["kind"] == "target":
            v = rec["value"]
            if self.changed is not None and bool(self.changed.any()):
                fresh = msg["fn"].sample()
                ch = self.changed.reshape(self.changed.shape + (1,) * (v.dim() - 1))
                v = torch.where(ch, fresh.to(v.dtype), v)
            msg["value"] = v


class _Force(Messenger):
    """Give one latent site a fixed value (outside :class:`~dgmkd.handlers.replay`, so after it)."""

    def __init__(self, name: str, value: torch.Tensor):
        self.name, self.value = name, value

    def process_message(self, msg):
        if msg["name"] == self.name:
            msg["value"] = self.value


@dataclass
class _Probe:
    name: str
    position: torch.Tensor  # (B,), carries the gradient of the chosen jump's position
    weight: torch.Tensor    # (B,)
    lower: object           # Coupling with the student's chosen variable at k
    upper: object           # ... at k + 1


class Probes:
    """The re-runs of one coupling for ``discrete_grad=True``, made on first use and shared by
    every loss computed from that coupling; :meth:`term` turns a loss into its boundary term."""

    def __init__(self, coupling, teacher: Callable, student: Callable, args: tuple, kwargs: dict,
                 sites: list[str], sites_per_step: int | None = None):
        self.coupling, self.teacher, self.student = coupling, teacher, student
        self.args, self.kwargs, self.sites = args, kwargs, sites
        self.sites_per_step = sites_per_step
        self._probes: list[_Probe] | None = None
        self.passes = 0  # extra forward passes made (teacher + student)

    def _make(self) -> list[_Probe]:
        from .coupling import _pair, validation

        c = self.coupling
        out = []
        sites, scale = self.sites, 1.0
        k = self.sites_per_step
        if k is not None and k < len(sites):
            chosen = set(torch.randperm(len(sites))[:k].tolist())
            sites, scale = [n for i, n in enumerate(sites) if i in chosen], len(self.sites) / k
        for name in sites:
            pair = c.latents[name]
            jump = reparam.lookup(_base(pair.student)).boundary(_base(pair.student))
            if not jump.position.requires_grad:
                continue  # nothing trainable acts through this site
            eps = pair.noise
            if eps.dim() == 0:
                raise SiteMismatchError(f"latent site {name!r}: discrete_grad=True needs a batch dimension (dim 0)")
            B = eps.shape[0]
            U = eps[0].numel()
            pick = torch.randint(U, (B,), device=eps.device)
            mask = torch.nn.functional.one_hot(pick, U).reshape(eps.shape).bool()
            sel = lambda x: torch.where(mask, x, torch.zeros_like(x)).reshape(B, -1).sum(1)  # noqa: E731
            position, weight = sel(jump.position), sel(jump.weight.detach()) * (U * scale)
            noise = torch.where(mask, jump.noise.to(eps.dtype), eps)
            s_val = c.student_trace[name]["value"].detach()
            mv = mask.reshape(mask.shape + (1,) * (s_val.dim() - mask.dim()))
            with torch.no_grad(), validation(False):
                with trace() as tt, _TeacherAtJump(c.teacher_trace, name, noise):
                    t_out = self.teacher(*self.args, **self.kwargs)
                runs = []
                for v in (jump.lower, jump.upper):
                    forced = torch.where(mv, v.to(s_val.dtype), s_val)
                    with trace() as st, _Force(name, forced), replay(tt.sites, "shared_noise"):
                        s_out = self.student(*self.args, **self.kwargs)
                    runs.append(_pair("shared_noise", tt.sites, st.sites, t_out, s_out))
            self.passes += 3
            out.append(_Probe(name, position, weight, *runs))
        return out

    def term(self, loss: Callable) -> torch.Tensor:
        """A scalar whose value is 0 and whose gradient is the boundary-term estimate of
        ``d/dtheta E_u loss`` (the part autograd misses). ``loss(coupling)`` must build the loss
        from :mod:`dgmkd.divergences` (it is evaluated per example)."""
        if self._probes is None:
            self._probes = self._make()
        total = torch.zeros(())
        for p in self._probes:
            with torch.no_grad(), D.per_example():
                diff = loss(p.lower) - loss(p.upper)
            B = p.position.shape[0]
            if diff.dim() and diff.shape != (B,):
                raise SiteMismatchError(
                    f"latent site {p.name!r}: discrete_grad=True needs per-example losses over the batch of "
                    f"{B}, got shape {tuple(diff.shape)}; dimension 0 of every site must be the batch"
                )
            total = total + (p.weight * diff * (p.position - p.position.detach())).sum() / B
        return total
