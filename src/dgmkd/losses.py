"""Distillation losses: small functions of a :class:`~dgmkd.coupling.Coupling`.

All return a scalar: the divergence summed over each site's non-batch dimensions and over sites,
averaged over the batch (see :func:`dgmkd.divergences.reduce`).

* :func:`surrogate` — Eq. (4), Chen et al. 2023: ``E_{eps,x} d(p_T(y|eps,x), p_S(y|eps,x))``.
  With KL and targets teacher-forced, ``KL(p_T(y|eps) || p_S(y|eps))`` factorizes into the sum
  over targets of the KL of each conditional at the teacher's earlier targets, which is what is
  summed here (a one-sample Monte Carlo estimate over the earlier targets, as Eq. 3).
  Prop. 3.1: with KL it upper-bounds the marginal KD loss (Eq. 2).
* :func:`latent` — Eq. (6): ``sum_i E d(p_T(z_i|eps_<i,x), p_S(z_i|eps_<i,x))``, each model's
  conditional of ``z_i`` given its own ancestors computed from the shared noise. Deterministic
  sites are point-mass latents (§3.5): they enter when the divergence is a distance.
* :func:`unified` — Eq. (7): ``surrogate + latent_weight * latent``.
* :func:`local` — local distillation: every conditional (latents, targets, and deterministic
  sites under a distance) at the teacher's sampled parents.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Bernoulli, Normal
    >>> def model(w):
    ...     def run(n):
    ...         z = dgmkd.latent("z", Bernoulli(torch.full((n, 1), w)))
    ...         return dgmkd.target("y", Normal(z, 1.0))
    ...     return run
    >>> c = dgmkd.couple(model(0.3), model(0.3), 16)
    >>> float(dgmkd.losses.unified(c)), float(dgmkd.losses.local(dgmkd.couple(model(0.3), model(0.3), 16, mode="teacher_forced")))
    (0.0, 0.0)
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from . import divergences as D
from .coupling import Coupling, SitePair
from .handlers import SiteMismatchError

__all__ = ["surrogate", "latent", "unified", "local", "hybrid"]

Divergence = str | Callable


def _shape(x) -> torch.Size:
    return x.shape if isinstance(x, torch.Tensor) else x.batch_shape + x.event_shape


def _sum(pairs: Iterable[SitePair], divergence: Divergence, temperature: float = 1.0) -> torch.Tensor:
    total = None
    for p in pairs:
        if _shape(p.teacher) != _shape(p.student):  # broadcasting would silently compare the wrong things
            raise SiteMismatchError(
                f"{p.kind} site {p.name!r}: shape {tuple(_shape(p.teacher))} in the teacher but "
                f"{tuple(_shape(p.student))} in the student; a divergence needs equal shapes"
                + (" (map a narrower feature to the teacher's width with an adapter, as FitNets does)"
                   if p.kind == "deterministic" else "")
            )
        d = D.site(divergence, p.teacher, p.student, p.value, temperature)
        total = d if total is None else total + d
    return total if total is not None else torch.zeros(())


def _select(group: dict[str, SitePair], sites: Iterable[str] | None) -> list[SitePair]:
    if sites is None:
        return list(group.values())
    sites = list(sites)
    unknown = [s for s in sites if s not in group]
    if unknown:
        raise KeyError(f"site(s) {unknown} not found; available: {list(group)}")
    return [group[s] for s in sites]


def _det_divergence(divergence: Divergence, deterministic: Divergence | None | bool):
    if deterministic is False:
        return None
    if deterministic is not None and deterministic is not True:
        return deterministic
    if D.applies_to_points(divergence):
        return divergence
    if deterministic is True:
        raise ValueError(
            f"divergence {divergence!r} is not defined for deterministic sites; pass "
            "deterministic='l2' (or another distance)"
        )
    return None


def surrogate(c: Coupling, divergence: Divergence = "kl", sites: Iterable[str] | None = None,
              temperature: float = 1.0) -> torch.Tensor:
    """Surrogate distillation loss over the target sites (Eq. 4).

    ``temperature`` softens categorical / Bernoulli targets as in Hinton et al. (2015) and scales
    the divergence by T**2; with no latents and KL this is exactly their KD loss.
    """
    _need_mode(c, "shared_noise", "surrogate")
    sites = None if sites is None else list(sites)
    loss = _sum(_select(c.targets, sites), divergence, temperature)
    if c.probes is not None:  # discrete_grad=True: the gradient through discrete latents
        loss = loss + c.probes.term(lambda cc: _sum(_select(cc.targets, sites), divergence, temperature))
    return loss


def latent(c: Coupling, divergence: Divergence = "kl", sites: Iterable[str] | None = None,
           deterministic: Divergence | bool | None = None) -> torch.Tensor:
    """Latent distillation loss (Eq. 6), summed over latent sites.

    Deterministic sites (point-mass latents) are included with ``deterministic`` if that is a
    divergence, with ``divergence`` itself if it is a distance (``"l2"``, ``"l1"``, ``"w2"``) or a
    callable, and left out for KL-type divergences (KL between point masses is not finite);
    ``deterministic=False`` always leaves them out. ``sites`` restricts the sum to named sites.
    """
    _need_mode(c, "shared_noise", "latent")
    sites = None if sites is None else list(sites)
    loss = _latent(c, divergence, sites, deterministic)
    if c.probes is not None:  # discrete_grad=True: the gradient through discrete latents
        loss = loss + c.probes.term(lambda cc: _latent(cc, divergence, sites, deterministic))
    return loss


def _latent(c: Coupling, divergence, sites, deterministic) -> torch.Tensor:
    lat = c.latents if sites is None else {k: v for k, v in c.latents.items() if k in set(sites)}
    total = _sum(lat.values(), divergence)
    ddiv = _det_divergence(divergence, deterministic)
    if ddiv is not None and c.deterministics:
        dets = c.deterministics if sites is None else {k: v for k, v in c.deterministics.items() if k in set(sites)}
        total = total + _sum(dets.values(), ddiv)
    if sites is not None:
        unknown = set(sites) - set(c.latents) - set(c.deterministics)
        if unknown:
            raise KeyError(f"site(s) {sorted(unknown)} are not latent or deterministic sites; "
                           f"latents: {list(c.latents)}, deterministic: {list(c.deterministics)}")
    return total


def unified(c: Coupling, latent_weight: float = 0.1, divergence: Divergence = "kl",
            latent_divergence: Divergence | None = None,
            deterministic: Divergence | bool | None = None) -> torch.Tensor:
    """The unified, target-free loss of Eq. (7): ``L_sd + latent_weight * sum_i L_z,i``."""
    loss = surrogate(c, divergence)
    if latent_weight:
        loss = loss + latent_weight * latent(c, latent_divergence or divergence, deterministic=deterministic)
    return loss


def local(c: Coupling, divergence: Divergence = "kl", deterministic: Divergence | bool | None = None) -> torch.Tensor:
    """Local distillation: every site's conditional at the teacher's sampled parents."""
    _need_mode(c, "teacher_forced", "local")
    total = _sum(list(c.latents.values()) + list(c.targets.values()), divergence)
    ddiv = _det_divergence(divergence, deterministic)
    if ddiv is not None and c.deterministics:
        total = total + _sum(c.deterministics.values(), ddiv)
    return total


def hybrid(shared: Coupling, forced: Coupling, local_weight: float | str = "balanced", latent_weight: float = 0.1,
           divergence: Divergence = "kl", latent_divergence: Divergence | None = None,
           deterministic: Divergence | bool | None = None, power: float = 1.0) -> torch.Tensor:
    """The library's default objective: local distillation and the unified loss together.

    Two couplings of the same models on independent draws: ``shared`` in shared-noise mode (the
    unified loss of Eq. 7, Chen et al. 2023) and ``forced`` in teacher-forced mode (local
    distillation). Both terms vanish at a student equal to the teacher, and each bounds the target
    marginal's KL from above (Eq. 4 by the joint convexity of KL; the local loss is the KL between
    the two joints). They fail in different regimes: the surrogate follows the teacher's *path*
    under shared noise, a far looser bound on a deep chain that amplifies small differences (its
    gradient then pulls a student that could copy every conditional away from doing so), while
    local distillation cannot see the error a narrow student accumulates along its own path.

    ``local_weight`` a number: ``local_weight * local + unified``. ``"balanced"`` (the default):
    each term is divided by its own current value (detached), so the gradient is that of
    ``log(local) + log(unified)``: each bound counts by its *relative* improvement, and whichever is
    already small (the local loss of a student that can copy the teacher's conditionals) is not
    traded away for a large, loose one. The value returned is still ``local + unified``, so
    histories stay in nats; only the gradient is balanced. ``power`` p generalizes the scaling to
    ``term / value**p``: p = 1 is the log-sum above; a larger p leans harder on whichever bound is
    already tighter (p -> inf minimizes the smaller of the two). ``docs/regimes.md`` measures them.

    Example:
        >>> import torch, dgmkd
        >>> from torch.distributions import Normal
        >>> def model(n, m=0.0):
        ...     z = dgmkd.latent("z", Normal(torch.full((n, 1), m), 1.0))
        ...     return dgmkd.target("y", Normal(z, 0.5))
        >>> t, s = dgmkd.couple(model, model, 8), dgmkd.couple(model, model, 8, mode="teacher_forced")
        >>> float(hybrid(t, s, local_weight=1.0))  # the same model: both terms are zero
        0.0
    """
    _need_mode(forced, "teacher_forced", "hybrid (its second coupling)")
    loc = local(forced, divergence, deterministic)
    uni = unified(shared, latent_weight, divergence, latent_divergence, deterministic)
    if local_weight == "balanced":
        value = (loc + uni).detach()
        scaled = loc / loc.detach().abs().clamp_min(1e-8) ** power + uni / uni.detach().abs().clamp_min(1e-8) ** power
        return value + scaled - scaled.detach()
    if isinstance(local_weight, str) or not 0 <= local_weight < float("inf"):
        raise ValueError(f"local_weight={local_weight!r}: a finite number >= 0 or 'balanced'")
    return local_weight * loc + uni


def _need_mode(c: Coupling, mode: str, loss: str):
    if c.mode != mode:
        raise ValueError(
            f"losses.{loss}() needs a coupling made with mode={mode!r}, got mode={c.mode!r}"
            + (" (local distillation evaluates conditionals at the teacher's parents)" if loss == "local"
               else " (the unified losses share the noise, not the latent values)")
        )
