"""Reparameterizers: a latent ``z ~ p(z | Pa(z))`` as ``z = g(params, eps)`` with ``eps`` from a
fixed, parameter-free law (the *semi-auxiliary form*, Chen et al. 2023, §3.1).

Each registered distribution type has

* ``noise_fn(dist) -> eps``: a fresh draw of the auxiliary noise. Its shape and dtype depend only
  on the distribution's type and its ``batch_shape`` / ``event_shape``, never on its parameters,
  so a teacher and a student with the same site shapes can share it;
* ``transform_fn(dist, eps) -> z``: the deterministic map ``g``. For continuous families it is
  differentiable in the parameters (the usual reparameterization trick); for discrete families it
  is the inverse CDF, piecewise constant in the parameters (which is why the latent loss, Eq. 6,
  exists);
* ``law``: a name for the law of ``eps`` (``"standard_normal"``, ``"standard_uniform"``, ...).
  Teacher and student must use the same law at a site;
* ``boundary`` (discrete families only, optional): ``boundary(dist) -> Jump``, one randomly chosen
  jump of the quantile function per variable. ``dgmkd.couple(..., discrete_grad=True)`` needs it
  to differentiate through the discrete latent (see :mod:`dgmkd.discrete_grad`): the expectation
  over ``u`` of a loss of ``z = F^{-1}(u)`` is smooth in the parameters although each sample is
  piecewise constant, and its derivative is a sum of terms at the jumps ``u = F(k)``.

Built in: ``Normal`` (shared standard normal), ``MultivariateNormal``, ``LowRankMultivariateNormal``,
``Independent`` and ``TransformedDistribution`` (through their base distribution; this covers
``LogNormal``, ``Gumbel``, ``RelaxedBernoulli`` ...), ``Bernoulli`` (categories {0, 1} in that
order: ``z = 1[u >= 1 - p]``), ``Categorical`` and ``OneHotCategorical`` (categories in index
order), ``Binomial``, ``Poisson``, ``Geometric`` — all by the inverse CDF of one shared standard
uniform per variable — and, as a fallback, any distribution that implements ``icdf``.

``Gamma`` (so ``Chi2``), ``Beta`` and ``StudentT`` are the inverse CDF of one shared standard
uniform per variable too (scipy's ``gammaincinv``, ``betaincinv``, ``stdtrit``), with implicit
reparameterization gradients for every parameter, the shapes included (Figurnov et al. 2018:
``dz/dtheta = -(dF(z; theta)/dtheta) / p(z; theta)``); ``Dirichlet(alpha)`` is ``G / sum(G)`` with
``G_k`` the Gamma(alpha_k, 1) quantile of coordinate k's shared uniform. The quantile coupling is
monotone: a teacher and a student at one site move together, and equal parameters give equal
values.

Built-in jumps (:func:`bernoulli_jump`, :func:`categorical_jump`, :func:`one_hot_jump`,
:func:`binomial_jump`, :func:`poisson_jump`, :func:`geometric_jump`) draw the jump between ``k``
and ``k + 1`` with probability ``q(k)`` proportional to ``P(k) + P(k + 1)`` (the mass next to
it) and weight it by ``1 / q(k)``; a Bernoulli has a single jump, at ``u = 1 - p``.

Example — registering a user type:
    >>> import torch
    >>> from torch.distributions import Normal
    >>> from dgmkd import reparam
    >>> class Shifted(Normal):
    ...     pass
    >>> reparam.register(Shifted, lambda d: torch.randn(d.batch_shape),
    ...                  lambda d, eps: d.loc + d.scale * eps, law="standard_normal")
    >>> d = Shifted(torch.zeros(4), 1.0)
    >>> reparam.transform(d, torch.zeros(4)).tolist()
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Dirichlet,
    Distribution,
    Gamma,
    Geometric,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    StudentT,
    TransformedDistribution,
)

__all__ = ["register", "lookup", "noise", "transform", "noise_law", "Reparameterizer", "UnsupportedDistributionError",
           "Jump", "is_discrete", "bernoulli_jump", "categorical_jump", "one_hot_jump", "binomial_jump",
           "poisson_jump", "geometric_jump"]


class UnsupportedDistributionError(TypeError):
    """Raised for a latent whose distribution type has no reparameterizer."""


class Jump(NamedTuple):
    """One jump of a discrete variable's map ``z = g(params, eps)`` per variable (shapes: the noise's,
    except ``lower`` / ``upper``, which have the value's shape).

    ``noise``: the noise value at the jump (for a uniform ``u``: ``F(k)``), detached;
    ``position``: ``P(eps < noise)`` as a differentiable function of the distribution's parameters
    (for a uniform, ``F(k)`` itself; only its gradient is used); ``lower`` / ``upper``: the values
    of the variable just below and at the jump (``k`` and ``k + 1``); ``weight``: ``1 / q`` with
    ``q`` the probability with which this jump was drawn among the variable's jumps, ``0`` where
    the draw fell on no jump. Then ``sum over jumps of (f(k) - f(k+1)) dF(k)/dtheta`` is estimated
    without bias by ``weight * (f(lower) - f(upper)) * dposition/dtheta``.
    """

    noise: torch.Tensor
    position: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    weight: torch.Tensor


@dataclass(frozen=True)
class Reparameterizer:
    noise_fn: Callable[[Distribution], torch.Tensor]
    transform_fn: Callable[[Distribution, torch.Tensor], torch.Tensor]
    law: str
    boundary: Callable[[Distribution], Jump] | None = None


_REGISTRY: dict[type, Reparameterizer] = {}
_RESOLVED: dict[type, Reparameterizer | None] = {}


def register(dist_type: type, noise_fn: Callable, transform_fn: Callable, law: str | None = None,
             boundary: Callable[[Distribution], Jump] | None = None) -> None:
    """Register the semi-auxiliary form of ``dist_type`` (and of its subclasses that have no
    registration of their own).

    ``noise_fn(dist)`` must return a tensor whose shape depends only on the distribution's type and
    shapes; ``transform_fn(dist, eps)`` must map it to a sample of ``dist``. ``law`` names the law
    of the noise (defaults to ``dist_type.__name__``); teacher and student must agree on it.
    ``boundary(dist) -> Jump`` (discrete types): one random jump of the quantile function per
    variable, which ``discrete_grad=True`` needs; a type with the uniform inverse-CDF form of a
    built-in family can reuse its function, e.g. ``boundary=dgmkd.reparam.binomial_jump``.
    """
    if not isinstance(dist_type, type):
        raise TypeError(f"register() needs a distribution class, got {dist_type!r}")
    if not callable(noise_fn) or not callable(transform_fn):
        raise TypeError("register() needs callables noise_fn(dist) and transform_fn(dist, eps)")
    if boundary is not None and not callable(boundary):
        raise TypeError("register(): boundary must be a callable boundary(dist) -> Jump")
    _REGISTRY[dist_type] = Reparameterizer(noise_fn, transform_fn, law or dist_type.__name__, boundary)
    _RESOLVED.clear()


def _has_icdf(dist_type: type) -> bool:
    return getattr(dist_type, "icdf", Distribution.icdf) is not Distribution.icdf


def lookup(dist: Distribution) -> Reparameterizer:
    """The reparameterizer for ``dist`` (by class, then its bases, then the ``icdf`` fallback)."""
    t = type(dist)
    try:
        r = _RESOLVED[t]
    except KeyError:
        r = None
        for base in t.__mro__:
            if base in _REGISTRY:
                r = _REGISTRY[base]
                break
        if r is None and _has_icdf(t):
            r = _ICDF
        _RESOLVED[t] = r
    if r is None:
        raise UnsupportedDistributionError(
            f"no reparameterizer for distribution type {t.__name__}: dgmkd cannot write this latent "
            "as z = g(params, eps). Register one with dgmkd.reparam.register("
            f"{t.__name__}, noise_fn, transform_fn), where noise_fn(dist) draws a parameter-free "
            "noise eps and transform_fn(dist, eps) maps it to a sample, or implement icdf()."
        )
    return r


def noise(dist: Distribution) -> torch.Tensor:
    """A fresh draw of the auxiliary noise for ``dist``."""
    return lookup(dist).noise_fn(dist)


def transform(dist: Distribution, eps: torch.Tensor) -> torch.Tensor:
    """``g(params, eps)``: the sample of ``dist`` determined by the noise ``eps``."""
    return lookup(dist).transform_fn(dist, eps)


def noise_law(dist: Distribution) -> str:
    """The name of the law of ``dist``'s auxiliary noise (wrappers resolve to their base)."""
    r = lookup(dist)
    while r.law == "<base>":
        dist = dist.base_dist
        r = lookup(dist)
    return r.law


def is_discrete(dist: Distribution) -> bool:
    """Whether ``dist``'s support is discrete (``False`` when the type does not declare a support)."""
    try:
        return bool(dist.support.is_discrete)
    except NotImplementedError:
        return False


# ----------------------------------------------------------------------------- helpers
def _shape(dist: Distribution) -> torch.Size:
    return dist.batch_shape + dist.event_shape


def _device_dtype(dist: Distribution):
    for attr in ("loc", "probs", "logits", "rate", "total_count", "low", "scale"):
        v = dist.__dict__.get(attr)
        if isinstance(v, torch.Tensor):
            dtype = v.dtype if v.is_floating_point() else torch.get_default_dtype()
            return v.device, dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _normal_noise_full(dist: Distribution) -> torch.Tensor:
    device, dtype = _device_dtype(dist)
    return torch.randn(_shape(dist), device=device, dtype=dtype)


def _uniform_noise_batch(dist: Distribution) -> torch.Tensor:
    """One standard uniform per variable (per batch element; a categorical is one variable)."""
    device, dtype = _device_dtype(dist)
    return torch.rand(dist.batch_shape, device=device, dtype=dtype)


def _uniform_noise_full(dist: Distribution) -> torch.Tensor:
    device, dtype = _device_dtype(dist)
    return torch.rand(_shape(dist), device=device, dtype=dtype)


# ----------------------------------------------------------------------------- continuous
def _normal(d: Normal, eps):
    return d.loc + d.scale * eps


def _mvn_noise(d: Distribution):
    device, dtype = _device_dtype(d)
    return torch.randn(_shape(d), device=device, dtype=dtype)


def _mvn(d: MultivariateNormal, eps):
    return d.loc + (d._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


def _lowrank_noise(d: LowRankMultivariateNormal):
    device, dtype = _device_dtype(d)
    rank = d.cov_factor.shape[-1]
    return torch.randn(d.batch_shape + torch.Size([d.event_shape[0] + rank]), device=device, dtype=dtype)


def _lowrank(d: LowRankMultivariateNormal, eps):
    n = d.event_shape[0]
    eps_d, eps_w = eps[..., :n], eps[..., n:]
    return d.loc + (d._unbroadcasted_cov_factor @ eps_w.unsqueeze(-1)).squeeze(-1) + d._unbroadcasted_cov_diag.sqrt() * eps_d


def _independent_noise(d: Independent):
    return noise(d.base_dist)


def _independent(d: Independent, eps):
    return transform(d.base_dist, eps)


def _transformed_noise(d: TransformedDistribution):
    return noise(d.base_dist)


def _transformed(d: TransformedDistribution, eps):
    x = transform(d.base_dist, eps)
    for t in d.transforms:
        x = t(x)
    return x


# ----------------------------------------------------------------------------- discrete
def _bernoulli(d: Bernoulli, u):
    # categories {0, 1} in that order: F(0) = 1 - p, so z = 1[u >= 1 - p]
    return (u >= 1 - d.probs).to(d.probs.dtype)


def _categorical_index(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    cdf = probs.cumsum(-1)
    idx = (cdf <= u.unsqueeze(-1)).sum(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def _categorical(d: Categorical, u):
    return _categorical_index(d.probs, u)


def _one_hot(d: OneHotCategorical, u):
    probs = d.probs
    idx = _categorical_index(probs, u)
    return torch.nn.functional.one_hot(idx, probs.shape[-1]).to(probs.dtype)


def _ppf(dist_ppf: Callable, u: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    """Smallest k with F(k) >= u by scipy's exact discrete quantile functions (on the CPU).

    ``u`` is clamped away from 0 (``torch.rand`` can return 0, where scipy answers ``-1``); the
    quantile coupling is unchanged except on a set of probability zero.
    """
    uu = u.detach().to(torch.float64).clamp(min=torch.finfo(torch.float64).tiny).cpu().numpy()
    args = [q.detach().to(torch.float64).cpu().numpy() for q in params]
    return torch.from_numpy(dist_ppf(uu, *args)).to(u.device)


def _binomial(d: Binomial, u):
    from scipy.stats import binom

    n = d.total_count.expand_as(d.probs)
    return _ppf(binom.ppf, u, n, d.probs).to(d.probs.dtype)


def _poisson(d: Poisson, u):
    from scipy.stats import poisson

    return _ppf(poisson.ppf, u, d.rate).to(d.rate.dtype)


def _geometric(d: Geometric, u):
    # number of failures before the first success: F(k) = 1 - (1-p)^(k+1)
    p = d.probs
    k = torch.floor(torch.log1p(-u) / torch.log1p(-p).clamp(max=-torch.finfo(p.dtype).tiny))
    return torch.where(p >= 1, torch.zeros_like(k), k.clamp(min=0))


# ----------------------------------------------------------------------------- jumps (discrete_grad)
def bernoulli_jump(d: Bernoulli) -> Jump:
    """The single jump of ``z = 1[u >= 1 - p]``: at ``u = 1 - p``, from 0 to 1."""
    pos = 1 - d.probs
    one = torch.ones_like(pos)
    return Jump(pos.detach(), pos, torch.zeros_like(pos), one, one.detach())


def _category_jump(probs: torch.Tensor):
    """``(k, F(k), 1/q(k))``: jump ``k -> k + 1`` drawn with ``q(k)`` proportional to ``P(k) + P(k+1)``."""
    K = probs.shape[-1]
    cdf = probs.cumsum(-1)
    if K < 2:
        zero = torch.zeros(probs.shape[:-1], dtype=torch.long, device=probs.device)
        return zero, cdf[..., 0], torch.zeros_like(cdf[..., 0]).detach()
    p = probs.detach()
    q = p[..., :-1] + p[..., 1:]
    q = q / q.sum(-1, keepdim=True)
    v = torch.rand(q.shape[:-1], dtype=q.dtype, device=q.device)
    k = (q.cumsum(-1) <= v.unsqueeze(-1)).sum(-1).clamp_(max=K - 2)
    qk = q.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    w = torch.where(qk > 0, 1 / qk.clamp(min=torch.finfo(qk.dtype).tiny), torch.zeros_like(qk))
    return k, cdf.gather(-1, k.unsqueeze(-1)).squeeze(-1), w


def categorical_jump(d: Categorical) -> Jump:
    """One of the ``K - 1`` jumps of the index quantile ``z = #{k: F(k) <= u}`` (``k -> k + 1`` at ``u = F(k)``)."""
    k, pos, w = _category_jump(d.probs)
    return Jump(pos.detach().clamp(0, 1), pos, k, k + 1, w)


def one_hot_jump(d: OneHotCategorical) -> Jump:
    """:func:`categorical_jump` with one-hot values."""
    k, pos, w = _category_jump(d.probs)
    K = d.probs.shape[-1]
    oh = lambda i: torch.nn.functional.one_hot(i.clamp(max=K - 1), K).to(d.probs.dtype)  # noqa: E731
    return Jump(pos.detach().clamp(0, 1), pos, oh(k), oh(k + 1), w)


def _integer_jump(m: torch.Tensor, pmf: Callable, upper: torch.Tensor | None):
    """Jump ``k -> k + 1`` with ``k = m`` or ``m - 1`` (a fair coin), ``m`` a sample of the variable:
    drawn with probability ``q(k) = (P(k) + P(k+1)) / 2``; weight ``1/q(k)``, 0 if ``k`` is no jump."""
    k = m - (torch.rand_like(m) < 0.5).to(m.dtype)
    valid = k >= 0
    if upper is not None:
        valid &= k <= upper - 1
    k = torch.where(valid, k, torch.zeros_like(k))
    q = 0.5 * (pmf(k) + pmf(k + 1))
    w = torch.where(valid & (q > 0), 1 / q.clamp(min=torch.finfo(q.dtype).tiny), torch.zeros_like(q))
    return k, w


def _binom_logpmf(k, n, p):
    return (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma((n - k).clamp(min=0) + 1)
            + torch.xlogy(k, p) + torch.xlogy(n - k, 1 - p))


def _with_gradient(value: torch.Tensor, slope: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``value`` (a number) carrying the gradient ``slope * dparam`` (for CDFs torch cannot differentiate)."""
    return value.detach() + slope.detach() * (param - param.detach())


def binomial_jump(d: Binomial) -> Jump:
    """A jump of the Binomial quantile: ``F(k) = P(X <= k)``, ``dF(k)/dp = -n P_{n-1, p}(k)``."""
    from scipy.stats import binom

    p = d.probs
    n = d.total_count.expand_as(p).to(p.dtype)
    pd = p.detach()
    m = _binomial(d, torch.rand_like(pd))
    k, w = _integer_jump(m, lambda j: _binom_logpmf(j, n, pd).exp(), n)
    F = torch.from_numpy(binom.cdf(k.cpu().double().numpy(), n.cpu().double().numpy(), pd.cpu().double().numpy()))
    F = F.to(p.dtype).to(p.device)
    slope = -n * _binom_logpmf(k, (n - 1).clamp(min=0), pd).exp()
    pos = _with_gradient(F, slope, p)
    return Jump(F.clamp(0, 1), pos, k, k + 1, w)


def poisson_jump(d: Poisson) -> Jump:
    """A jump of the Poisson quantile: ``F(k) = Q(k + 1, rate)``, ``dF(k)/drate = -P(k)``."""
    r = d.rate
    rd = r.detach()
    pmf = lambda j: (torch.xlogy(j, rd) - rd - torch.lgamma(j + 1)).exp()  # noqa: E731
    k, w = _integer_jump(_poisson(d, torch.rand_like(rd)), pmf, None)
    F = torch.special.gammaincc(k + 1, rd)
    return Jump(F.clamp(0, 1), _with_gradient(F, -pmf(k), r), k, k + 1, w)


def geometric_jump(d: Geometric) -> Jump:
    """A jump of the Geometric quantile (failures before the first success): ``F(k) = 1 - (1-p)^(k+1)``."""
    p = d.probs
    pd = p.detach()
    pmf = lambda j: pd * (1 - pd) ** j  # noqa: E731
    k, w = _integer_jump(_geometric(d, torch.rand_like(pd)), pmf, None)
    pos = 1 - (1 - p) ** (k + 1)
    return Jump(pos.detach().clamp(0, 1), pos, k, k + 1, w)


def _icdf(d: Distribution, u):
    return d.icdf(u)


# ----------------------------------------------------------------------------- implicit quantiles
class _QuantileFamily:
    """A one-dimensional family for :class:`_ImplicitQuantile`: its quantile, its density and
    its CDF and survival function (all scipy, float64, on arrays of one shape)."""

    def __init__(self, quantile, pdf, cdf, sf):
        self.quantile, self.pdf, self.cdf, self.sf = quantile, pdf, cdf, sf


_FD_STEP = 1e-5  # relative step of the central difference of the CDF in its shape parameters


class _ImplicitQuantile(torch.autograd.Function):
    """``x = F^{-1}(u; theta)`` (scipy, in float64) with implicit reparameterization gradients
    (Figurnov et al. 2018, Eq. 6): ``dx/dtheta = -(dF(x; theta)/dtheta) / p(x; theta)``.

    ``dF/dtheta`` (the derivative of a regularized incomplete gamma / beta function, or of the
    Student-t CDF, in its shape argument) has no closed form, and torch implements none
    (``igamma: input`` is not differentiable); it is a central difference of scipy's CDF in
    float64 with relative step 1e-5 (relative error ~1e-7 on the tests' grid, far below float32's
    resolution). Below the median the CDF is differenced, above it the survival function (``1 - F``
    would cancel in the tail). torch's own ``_standard_gamma_grad`` is an approximation accurate to
    ~1e-3 relative only, which is why it is not used. ``u`` gets no gradient: it is the noise.
    """

    @staticmethod
    def forward(ctx, family, u, *params):
        uu = u.detach().to(torch.float64).cpu().numpy()
        pp = [p.detach().to(torch.float64).cpu().numpy() for p in params]
        x = family.quantile(*pp, uu)
        ctx.family, ctx.saved = family, (uu, pp, x)
        return torch.from_numpy(x).to(device=u.device, dtype=u.dtype)

    @staticmethod
    def backward(ctx, grad):
        import numpy as np

        fam, (uu, pp, x) = ctx.family, ctx.saved
        dens = fam.pdf(x, *pp)
        upper = uu > 0.5
        out = []
        for i, (p, need) in enumerate(zip(pp, ctx.needs_input_grad[2:])):
            if not need:
                out.append(None)
                continue
            h = _FD_STEP * np.maximum(np.abs(p), 1e-3)
            hi = [q + h if j == i else q for j, q in enumerate(pp)]
            lo = [q - h if j == i else q for j, q in enumerate(pp)]
            dF = np.where(upper, -(fam.sf(x, *hi) - fam.sf(x, *lo)), fam.cdf(x, *hi) - fam.cdf(x, *lo)) / (2 * h)
            with np.errstate(divide="ignore", invalid="ignore"):
                dx = np.where(dens > 0, -dF / dens, 0.0)
            dx = np.where(np.isfinite(dx), dx, 0.0)  # x clamped at the edge of the support
            out.append(grad * torch.from_numpy(dx).to(device=grad.device, dtype=grad.dtype))
        return (None, None, *out)


def _families():
    import numpy as np
    from scipy import special as sp

    # densities from scipy.special (scipy.stats costs a second to import)
    gamma = _QuantileFamily(
        quantile=lambda a, u: sp.gammaincinv(a, u),
        pdf=lambda x, a: np.exp(sp.xlogy(a - 1, x) - x - sp.gammaln(a)),
        cdf=lambda x, a: sp.gammainc(a, x),
        sf=lambda x, a: sp.gammaincc(a, x),
    )
    beta = _QuantileFamily(
        quantile=lambda a, b, u: sp.betaincinv(a, b, u),
        pdf=lambda x, a, b: np.exp(sp.xlogy(a - 1, x) + sp.xlog1py(b - 1, -x) - sp.betaln(a, b)),
        cdf=lambda x, a, b: sp.betainc(a, b, x),
        sf=lambda x, a, b: sp.betainc(b, a, 1 - x),
    )
    student_t = _QuantileFamily(
        quantile=lambda df, u: sp.stdtrit(df, u),
        pdf=lambda x, df: np.exp(sp.gammaln((df + 1) / 2) - sp.gammaln(df / 2) - 0.5 * np.log(df * np.pi)
                                  - (df + 1) / 2 * np.log1p(x * x / df)),
        cdf=lambda x, df: sp.stdtr(df, x),
        sf=lambda x, df: sp.stdtr(df, -x),
    )
    return {"gamma": gamma, "beta": beta, "student_t": student_t}


_FAMILIES: dict = {}


def _quantile(name: str, u: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    """``F^{-1}(u; params)`` of a named family, differentiable in ``params`` (not in ``u``)."""
    if not _FAMILIES:
        _FAMILIES.update(_families())
    params = torch.broadcast_tensors(*params, u)[:-1]
    # torch.rand draws on a grid of step eps/2 in [0, 1) and can return exactly 0: a draw of 0 is
    # moved to half a grid step (a set of probability zero), keeping far-tail quantiles and their
    # gradients (a Cauchy's ~ 1/u^2) inside the dtype's range
    eps = torch.finfo(u.dtype).eps
    u = u.clamp(min=eps / 4, max=1 - eps / 2)
    return _ImplicitQuantile.apply(_FAMILIES[name], u, *params)


def _float_uniform(d: Distribution, shape: torch.Size, ref: torch.Tensor) -> torch.Tensor:
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    return torch.rand(shape, device=ref.device, dtype=dtype)


def _gamma_noise(d: Gamma):
    return _float_uniform(d, _shape(d), d.concentration)


def _gamma(d: Gamma, u):
    # the standard gamma's quantile, then the rate (differentiable as usual); clamped as torch's
    # Gamma.rsample clamps, so log z stays finite for small shapes
    x = _quantile("gamma", u, d.concentration.to(u.dtype))
    return (x / d.rate).clamp(min=torch.finfo(u.dtype).tiny)


def _beta_noise(d: Beta):
    return _float_uniform(d, _shape(d), d.concentration1)


def _beta(d: Beta, u):
    x = _quantile("beta", u, d.concentration1.to(u.dtype), d.concentration0.to(u.dtype))
    eps = torch.finfo(u.dtype).eps
    return x.clamp(min=torch.finfo(u.dtype).tiny, max=1 - eps / 2)


def _dirichlet_noise(d: Dirichlet):
    return _float_uniform(d, _shape(d), d.concentration)


def _dirichlet(d: Dirichlet, u):
    # Dirichlet(alpha) = G / sum(G), G_k ~ Gamma(alpha_k, 1) independent; coordinate k's standard
    # uniform u_k is shared, so the two models' Gamma components are quantile-coupled one by one
    g = _quantile("gamma", u, d.concentration.to(u.dtype)).clamp(min=torch.finfo(u.dtype).tiny)
    return g / g.sum(-1, keepdim=True)


def _student_t_noise(d: StudentT):
    return _float_uniform(d, _shape(d), d.loc)


def _student_t(d: StudentT, u):
    return d.loc + d.scale * _quantile("student_t", u, d.df.to(u.dtype))


_ICDF = Reparameterizer(_uniform_noise_full, _icdf, "standard_uniform")

register(Normal, _normal_noise_full, _normal, law="standard_normal")
register(MultivariateNormal, _mvn_noise, _mvn, law="standard_normal")
register(LowRankMultivariateNormal, _lowrank_noise, _lowrank, law="standard_normal")
register(Bernoulli, _uniform_noise_batch, _bernoulli, law="standard_uniform", boundary=bernoulli_jump)
register(Categorical, _uniform_noise_batch, _categorical, law="standard_uniform", boundary=categorical_jump)
register(OneHotCategorical, _uniform_noise_batch, _one_hot, law="standard_uniform", boundary=one_hot_jump)
register(Binomial, _uniform_noise_batch, _binomial, law="standard_uniform", boundary=binomial_jump)
register(Poisson, _uniform_noise_batch, _poisson, law="standard_uniform", boundary=poisson_jump)
register(Geometric, _uniform_noise_batch, _geometric, law="standard_uniform", boundary=geometric_jump)
register(Gamma, _gamma_noise, _gamma, law="standard_uniform")  # and Chi2, a Gamma subclass
register(Beta, _beta_noise, _beta, law="standard_uniform")
register(Dirichlet, _dirichlet_noise, _dirichlet, law="standard_uniform")
register(StudentT, _student_t_noise, _student_t, law="standard_uniform")


# wrappers: the noise (and its law) is the base distribution's
register(Independent, _independent_noise, _independent, law="<base>")
register(TransformedDistribution, _transformed_noise, _transformed, law="<base>")
