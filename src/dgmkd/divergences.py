"""Divergences ``d(p_T, p_S)`` between a teacher's and a student's site (Chen et al. 2023, Eq. 4–6).

Every divergence returns a tensor over the site's batch (and, for non-``Independent``
distributions, element) dimensions; :func:`reduce` turns it into a scalar by **summing every
dimension but the first and averaging over the first** (dimension 0 is the batch). Summing the
non-batch dimensions makes the result the same whether or not a model wraps its distribution in
``Independent``.

Names:

``"kl"``
    ``KL(p_T || p_S)``: analytic where torch registers it, otherwise a one-sample Monte Carlo
    estimate ``log p_T(v) - log p_S(v)`` at the teacher's value ``v`` (a sample of ``p_T``).
``"reverse_kl"``
    ``KL(p_S || p_T)``: analytic, otherwise Monte Carlo with a reparameterized student sample.
``"w2"``
    squared 2-Wasserstein distance for ``Normal``, ``Independent(Normal)``, ``MultivariateNormal``
    and point masses (deterministic sites, where it is the squared Euclidean distance).
``"l2"``, ``"l1"``
    squared Euclidean / absolute distance between values (deterministic sites) or between means.

A callable ``d(teacher, student)`` (distributions or tensors) returning such a tensor is used as is.

Example:
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from dgmkd import divergences
    >>> p, q = Normal(torch.zeros(4, 3), 1.0), Normal(torch.ones(4, 3), 1.0)
    >>> float(divergences.reduce(divergences.get("kl")(p, q)))   # 3 dims x 0.5 nats
    1.5
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch.distributions import Binomial, Independent, MultivariateNormal, Normal, kl_divergence

__all__ = ["get", "reduce", "per_example", "kl", "reverse_kl", "w2", "l2", "l1", "NAMES"]


_PER_EXAMPLE = False


def reduce(d: torch.Tensor) -> torch.Tensor:
    """Sum every dimension but the first, mean over the first (the batch); inside
    :func:`per_example`, the per-example sums (a vector over the batch) instead of their mean."""
    if d.dim() == 0:
        return d
    if _PER_EXAMPLE:
        return d.reshape(d.shape[0], -1).sum(1)
    return d.sum() / d.shape[0]  # = d.flatten(1).sum(1).mean(), in two operations instead of three


@contextmanager
def per_example():
    """Within the block :func:`reduce` keeps the batch dimension, so a loss built from it is the
    vector of per-example losses whose mean is the usual loss (:mod:`dgmkd.discrete_grad` needs
    each example's loss to weight it by that example's jump)."""
    global _PER_EXAMPLE
    old, _PER_EXAMPLE = _PER_EXAMPLE, True
    try:
        yield
    finally:
        _PER_EXAMPLE = old


def _is_point(x) -> bool:
    return isinstance(x, torch.Tensor)


def _point_error(name):
    return TypeError(
        f"divergence {name!r} is not defined for deterministic sites (point masses): KL between point "
        "masses is infinite or zero. Use a distance ('l2', 'l1', 'w2') for them."
    )


def _kl_binomial(p: Binomial, q: Binomial) -> torch.Tensor:
    """``KL(Bin(n, a) || Bin(n, b))`` written with ``xlogy``, finite at ``a`` in {0, 1}: torch's
    closed form (2.x) goes through ``logits`` and returns -inf or NaN there, which a teacher with
    a saturated probability (e.g. ``Binomial(1000, z/1000)`` at ``z = 1000``) reaches."""
    a, b = p.probs, q.probs
    kl = p.total_count * (torch.xlogy(a, a) - torch.xlogy(a, b) + torch.xlogy(1 - a, 1 - a) - torch.xlogy(1 - a, 1 - b))
    return torch.where(p.total_count > q.total_count, torch.full_like(kl, float("inf")), kl)


def _closed_kl(p, q) -> torch.Tensor:
    """torch's closed-form KL, with :func:`_kl_binomial` for Binomial pairs."""
    if type(p) is Binomial and type(q) is Binomial and not (p.total_count < q.total_count).any():
        return _kl_binomial(p, q)
    return kl_divergence(p, q)


def _kl_or_mc(name: str, p, q, draw) -> torch.Tensor:
    """``KL(p || q)`` in closed form, else the Monte Carlo term ``log p(v) - log q(v)`` at
    ``v = draw()`` (a sample of ``p``)."""
    if _is_point(p) or _is_point(q):
        raise _point_error(name)
    try:
        return _closed_kl(p, q)
    except NotImplementedError:
        v = draw()
        return p.log_prob(v) - q.log_prob(v)


def kl(p, q, value: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(p || q)``; Monte Carlo at ``value`` (a sample of ``p``) where no closed form exists."""
    return _kl_or_mc("kl", p, q, lambda: (p.sample() if value is None else value).detach())


def reverse_kl(p, q, value: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(q || p)`` with ``p`` the teacher: mode-seeking; Monte Carlo through ``q.rsample()``."""
    def draw():
        if not q.has_rsample:
            raise TypeError(f"reverse_kl between {type(q).__name__} and {type(p).__name__} has no closed form and "
                            f"{type(q).__name__} cannot be reparameterized for a Monte Carlo estimate")
        return q.rsample()

    return _kl_or_mc("reverse_kl", q, p, draw)


def _w2_normal(p: Normal, q: Normal) -> torch.Tensor:
    return (p.loc - q.loc) ** 2 + (p.scale - q.scale) ** 2


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(a)
    return (evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def w2_gaussian(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``:
    ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``. Covariances may be singular (PSD);
    batch dimensions broadcast. With Gaussians fitted to features it is the Fréchet distance."""
    r2 = _sqrtm_psd(cov2)
    cross = _sqrtm_psd(r2 @ cov1 @ r2)
    tr = (cov1 + cov2 - 2 * cross).diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mu1 - mu2) ** 2).sum(-1) + tr


def w2(p, q, value: torch.Tensor | None = None) -> torch.Tensor:
    """Squared 2-Wasserstein distance (closed forms for Gaussians and point masses)."""
    from .delta import Delta

    if isinstance(p, Delta):
        p = p.v
    if isinstance(q, Delta):
        q = q.v
    if _is_point(p) and _is_point(q):
        return (p - q) ** 2
    if isinstance(p, Normal) and isinstance(q, Normal):
        return _w2_normal(p, q)
    if isinstance(p, Independent) and isinstance(q, Independent) and isinstance(p.base_dist, Normal) \
            and isinstance(q.base_dist, Normal):
        d = _w2_normal(p.base_dist, q.base_dist)
        n = p.reinterpreted_batch_ndims
        return d.flatten(-n).sum(-1) if n else d
    if isinstance(p, MultivariateNormal) and isinstance(q, MultivariateNormal):
        return w2_gaussian(p.loc, p.covariance_matrix, q.loc, q.covariance_matrix)
    raise TypeError(
        f"'w2' has a closed form here for Normal, Independent(Normal), MultivariateNormal and "
        f"deterministic sites; got {_tname(p)} and {_tname(q)}. Pass a callable for other families."
    )


def _tname(x):
    return "a deterministic value" if _is_point(x) else type(x).__name__


def _as_point(x):
    return x if _is_point(x) else x.mean


def l2(p, q, value: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distance between values (or means)."""
    return (_as_point(p) - _as_point(q)) ** 2


def l1(p, q, value: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute distance between values (or means)."""
    return (_as_point(p) - _as_point(q)).abs()


NAMES: dict[str, Callable] = {"kl": kl, "reverse_kl": reverse_kl, "w2": w2, "l2": l2, "l1": l1}
DISTANCES = frozenset({"w2", "l2", "l1"})


def get(divergence: str | Callable) -> Callable:
    """Resolve a divergence name or callable to a function ``d(teacher, student, value=None)``."""
    if callable(divergence):
        return divergence
    try:
        return NAMES[divergence]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown divergence {divergence!r}; choose one of {', '.join(NAMES)} or pass a callable "
            "d(teacher, student)"
        ) from None


def applies_to_points(divergence: str | Callable) -> bool:
    """Whether ``divergence`` is defined between point masses (deterministic sites)."""
    return callable(divergence) or divergence in DISTANCES


_TEMPERED = ("Categorical", "OneHotCategorical", "Bernoulli", "RelaxedOneHotCategorical")


def temper(dist, temperature: float):
    """``dist`` with its logits divided by ``temperature`` (Hinton et al. 2015's softened
    outputs). Defined for Categorical, OneHotCategorical and Bernoulli."""
    from torch.distributions import Bernoulli, Categorical, OneHotCategorical

    for cls in (Categorical, OneHotCategorical, Bernoulli):
        if isinstance(dist, cls):
            return cls(logits=dist.logits / temperature, validate_args=False)
    raise TypeError(f"a temperature applies to Categorical, OneHotCategorical and Bernoulli sites, "
                    f"not {_tname(dist)}")


def _same_event_structure(p, q):
    """Unwrap ``Independent`` on both sides when only one side (or a different number of dims) is
    wrapped: the site's divergence is summed over every non-batch dimension anyway, and mixing an
    event-summed log density ``(N,)`` with an elementwise one ``(N, D)`` would broadcast into a
    wrong loss when ``N == D``."""
    def depth(d):
        return d.reinterpreted_batch_ndims if isinstance(d, Independent) else 0

    if _is_point(p) or _is_point(q) or depth(p) == depth(q):
        return p, q

    def strip(d):
        while isinstance(d, Independent):
            d = d.base_dist
        return d

    return strip(p), strip(q)


def site(divergence: str | Callable, teacher, student, value=None, temperature: float = 1.0) -> torch.Tensor:
    """The divergence at one site, reduced to a scalar (see :func:`reduce`).

    With ``temperature`` T != 1 both distributions are softened (:func:`temper`) and the
    divergence is multiplied by T**2, which keeps gradient magnitudes comparable across T
    (Hinton et al. 2015, §2).
    """
    if temperature != 1.0:
        return temperature ** 2 * site(divergence, temper(teacher, temperature), temper(student, temperature))
    teacher, student = _same_event_structure(teacher, student)
    if isinstance(divergence, str):
        return reduce(get(divergence)(teacher, student, value))
    if not callable(divergence):
        get(divergence)  # raises the error naming the bad value
    return reduce(torch.as_tensor(divergence(teacher, student)))
