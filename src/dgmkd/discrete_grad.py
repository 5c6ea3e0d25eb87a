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
step further: ``k`` rounds of three passes, in each of which every example probes one of the ``S``
discrete sites, drawn per example (weight ``S / k``) — ``3 k`` passes instead of ``3 S``, at more
variance. (Drawing the site per example rather than per step keeps that variance shrinking with the
batch: a site drawn once per step for the whole batch adds noise of the size of the gradient itself.)
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
    """Re-run the teacher on its own record with some sites' noise replaced (``noise``: name ->
    tensor). Targets keep their recorded value in the examples where the teacher's values at those
    sites did not change (its whole run is then the same) and are drawn afresh from the teacher
    elsewhere (so each is a sample of the teacher's conditional at the new noise)."""

    def __init__(self, sites: dict, noise: dict[str, torch.Tensor]):
        self.sites, self.noise = sites, noise
        self.changed = None

    def process_message(self, msg):
        rec = self.sites.get(msg["name"])
        if rec is None or rec["kind"] != msg["kind"]:
            raise SiteMismatchError(f"site {msg['name']!r}: the teacher's re-run does not match its first run")
        if msg["kind"] == "latent":
            eps = self.noise.get(msg["name"], rec["noise"])
            msg["noise"] = eps
            msg["value"] = reparam.transform(msg["fn"], eps)
            if msg["name"] in self.noise:
                diff = msg["value"] != rec["value"]
                diff = diff.reshape(diff.shape[0], -1).any(1)
                self.changed = diff if self.changed is None else self.changed | diff
        elif msg["kind"] == "target":
            v = rec["value"]
            if self.changed is not None and bool(self.changed.any()):
                fresh = msg["fn"].sample()
                ch = self.changed.reshape(self.changed.shape + (1,) * (v.dim() - 1))
                v = torch.where(ch, fresh.to(v.dtype), v)
            msg["value"] = v


class _Force(Messenger):
    """Set chosen entries of some latent sites (``force``: name -> (mask, value)); placed outside
    :class:`~dgmkd.handlers.replay`, so it sees the value the replay computed and overrides it."""

    def __init__(self, force: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.force = force

    def process_message(self, msg):
        f = self.force.get(msg["name"])
        if f is not None:
            msg["value"] = torch.where(f[0], f[1].to(msg["value"].dtype), msg["value"])


@dataclass
class _Probe:
    position: torch.Tensor  # (B,), carries the gradient of each example's chosen jump position
    weight: torch.Tensor    # (B,)
    lower: object           # Coupling with each example's chosen variable at k
    upper: object           # ... at k + 1


class Probes:
    """The re-runs of one coupling for ``discrete_grad``, made on first use and shared by every
    loss computed from that coupling; :meth:`term` turns a loss into its boundary term.

    A *round* is three passes (teacher at the jumps, student below and above them) in which each
    example has at most one chosen variable, in one chosen site. ``True``: one round per discrete
    site, every example probing that site. ``k``: ``k`` rounds, each example probing a site drawn
    uniformly (weight ``S``), so different examples probe different sites in one pass."""

    def __init__(self, coupling, teacher: Callable, student: Callable, args: tuple, kwargs: dict,
                 sites: list[str], sites_per_step: int | None = None):
        self.coupling, self.teacher, self.student = coupling, teacher, student
        self.args, self.kwargs, self.sites = args, kwargs, sites
        self.sites_per_step = sites_per_step
        self._probes: list[_Probe] | None = None
        self.passes = 0  # extra forward passes made (teacher + student)

    def _rounds(self, B: int, device) -> list[dict[str, torch.Tensor | None]]:
        """Per round, site -> examples probing it (``None``: all), and the weight of a site choice."""
        S, k = len(self.sites), self.sites_per_step
        if k is None:
            return [{name: None} for name in self.sites]
        out = []
        for _ in range(k):
            pick = torch.randint(S, (B,), device=device)
            out.append({name: pick == i for i, name in enumerate(self.sites)})
        return out

    def _make(self) -> list[_Probe]:
        from .coupling import _pair, validation

        c = self.coupling
        first = c.latents[self.sites[0]].noise
        if first.dim() == 0:
            raise SiteMismatchError(f"latent site {self.sites[0]!r}: discrete_grad needs a batch dimension (dim 0)")
        B = first.shape[0]
        scale = 1.0 if self.sites_per_step is None else len(self.sites) / self.sites_per_step
        out = []
        for rnd in self._rounds(B, first.device):
            position = weight = None
            noise, lo, hi = {}, {}, {}
            for name, examples in rnd.items():
                pair = c.latents[name]
                base = _base(pair.student)
                jump = reparam.lookup(base).boundary(base)
                if not jump.position.requires_grad:
                    continue  # nothing trainable acts through this site
                eps = pair.noise
                if eps.dim() == 0 or eps.shape[0] != B:
                    raise SiteMismatchError(f"latent site {name!r}: discrete_grad needs the batch ({B}) as "
                                            f"dimension 0 of every discrete site, got noise of shape {tuple(eps.shape)}")
                U = eps[0].numel()
                pick = torch.randint(U, (B,), device=eps.device)
                mask = torch.nn.functional.one_hot(pick, U).reshape(eps.shape).bool()
                if examples is not None:
                    mask &= examples.reshape((B,) + (1,) * (eps.dim() - 1))
                sel = lambda x: torch.where(mask, x, torch.zeros_like(x)).reshape(B, -1).sum(1)  # noqa: E731
                pos, w = sel(jump.position), sel(jump.weight.detach()) * (U * scale)
                position = pos if position is None else position + pos
                weight = w if weight is None else weight + w
                noise[name] = torch.where(mask, jump.noise.to(eps.dtype), eps)
                v = c.student_trace[name]["value"]
                mv = mask.reshape(mask.shape + (1,) * (v.dim() - mask.dim()))
                lo[name], hi[name] = (mv, jump.lower), (mv, jump.upper)
            if not noise:
                continue
            with torch.no_grad(), validation(False):
                with trace() as tt, _TeacherAtJump(c.teacher_trace, noise):
                    t_out = self.teacher(*self.args, **self.kwargs)
                runs = []
                for force in (lo, hi):
                    with trace() as st, _Force(force), replay(tt.sites, "shared_noise"):
                        s_out = self.student(*self.args, **self.kwargs)
                    runs.append(_pair("shared_noise", tt.sites, st.sites, t_out, s_out))
            self.passes += 3
            out.append(_Probe(position, weight, *runs))
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
                    f"discrete_grad needs per-example losses over the batch of {B}, got shape "
                    f"{tuple(diff.shape)}; dimension 0 of every site must be the batch"
                )
            total = total + (p.weight * diff * (p.position - p.position.detach())).sum() / B
        return total
