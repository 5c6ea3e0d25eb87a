"""Scalar chains of the error-accumulation toy (Chen et al. 2023, end of §3.2 / Fig. 2 and §4.1 / Fig. 5).

A chain has ``L`` latent layers ``z_1 .. z_L`` and a target ``y = z_{L+1}``; every variable is a
scalar, so every marginal can be computed exactly on a grid (see :mod:`dgmkd.metrics.grid_kl`).
All models expose the same small interface besides sampling (``model(n)``):

* ``layers`` — ``L``, the number of latent layers (the x-axis of Fig. 2 / Fig. 5);
* ``conditional(i, z)`` — the distribution of variable ``i + 2`` given ``z = z_{i+1}`` (``i`` in
  ``0 .. L-1``; ``i = L-1`` is the target's conditional). Evaluating it on a grid of parent values
  is what the exact marginal propagation needs.

Teachers (no parameters):

* :class:`GaussianTeacherChain` — §3.2: ``z_1 ~ U[-1, 1]``, ``z_{i+1} ~ N(mu(z_i), 0.01)`` with
  ``mu(z) = sign(z)|z|^1.1``. We read the paper's ``N(mu, 0.01 I)`` as a **covariance** (variance
  0.01, standard deviation 0.1): ``0.01 I`` is written as a covariance matrix. ``noise_var``
  changes it.
* :class:`BinomialTeacherChain` — §4.1: ``z_{i+1} ~ Binomial(1000, z_i / 1000)``. The paper's
  ``p(z_1) = U[0, 1]`` only makes the chain non-degenerate if it is the law of the *success
  probability* ``z_1 / 1000``: a continuous ``z_1`` in ``[0, 1]`` would give ``z_2 ~ Bin(1000,
  <= 0.001)``, almost always 0 or 1, after which the chain is a near-critical branching process
  that dies out. We therefore take ``z_1`` uniform on the integers ``0 .. 1000`` (the discrete
  uniform whose ``z_1/1000`` is the grid version of ``U[0, 1]``). The chain is then the
  Wright–Fisher model: a martingale whose spread grows with depth.

Students ("neural networks with proper residual structure", §3.2):

* :class:`GaussianStudentChain` — ``z_{i+1} ~ N(z_i + r_i(z_i), s_i^2)``; ``hidden = 0`` makes
  ``r_i`` affine (a *linear residual*, which cannot represent ``|z|^1.1``), ``hidden > 0`` a
  one-hidden-layer tanh MLP of that width. ``s_i`` is a learned constant per layer.
* :class:`BinomialStudentChain` — ``z_{i+1} ~ Binomial(1000, sigmoid(logit(z_i/1000) + r_i(z_i/1000)))``:
  the same residual idea in logit space, so the identity (the teacher) is representable.

Example:
    >>> from dgmkd.models import GaussianTeacherChain, GaussianStudentChain
    >>> GaussianTeacherChain(layers=3)(5).shape
    torch.Size([5, 1])
    >>> s = GaussianStudentChain(layers=3, hidden=0)
    >>> s.conditional(0, s(4)).loc.shape
    torch.Size([4, 1])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Binomial, Categorical, Normal, Uniform

from .. import reparam
from ..sites import latent, target
from ..saving import buildable

__all__ = ["QuantileBinomial", "GaussianTeacherChain", "BinomialTeacherChain", "GaussianStudentChain", "BinomialStudentChain",
           "power_map"]


class QuantileBinomial(Binomial):
    """``Binomial`` whose semi-auxiliary form ``z = F^{-1}(u)`` (Chen et al. 2023, §3.1: a discrete
    latent by inverse CDF of a shared standard uniform) is computed by ``scipy.stats.binom.ppf``.

    The core's generic Binomial reparameterizer sums the pmf over the whole support ``0..N`` per
    variable (``N = 1000`` here: ~20x slower for a 20-layer chain). The inverse CDF is piecewise
    constant in the parameters, so there is no gradient to lose by leaving torch. Registered
    through the public :func:`dgmkd.reparam.register` with the same ``"standard_uniform"`` law as
    the core's Binomial, so a teacher and a student using this class share noise the same way.
    """


def _qbinom_noise(d):
    return torch.rand(d.batch_shape, dtype=d.probs.dtype, device=d.probs.device)


def _qbinom_transform(d, u):
    import scipy.stats

    n = d.total_count.detach().cpu().double().numpy()
    p = d.probs.detach().cpu().double().numpy()
    k = scipy.stats.binom.ppf(u.detach().cpu().double().numpy(), n, p)
    k = torch.as_tensor(k, dtype=d.probs.dtype, device=d.probs.device)
    return torch.minimum(k.nan_to_num(0.0).clamp_(min=0.0), d.total_count.to(k.dtype))


reparam.register(QuantileBinomial, _qbinom_noise, _qbinom_transform, law="standard_uniform",
                 boundary=reparam.binomial_jump)  # its jumps are the Binomial's (for discrete_grad)


def _check_layers(layers: int) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"a toy chain needs layers >= 1 latent layers (an int), got {layers!r}")
    return layers


def _site_name(i: int, layers: int) -> str:
    """Name of variable ``i + 2`` (``i = layers - 1`` is the target)."""
    return "y" if i == layers - 1 else f"z{i + 2}"


def power_map(z: torch.Tensor, power: float = 1.1) -> torch.Tensor:
    """``mu(z) = sign(z) |z|^power`` (Chen et al. 2023, §3.2). It pushes ``|z| > 1`` outward and
    ``|z| < 1`` inward, so the teacher's marginal grows tails with depth."""
    return torch.sign(z) * z.abs().pow(power)


class _Chain(nn.Module):
    layers: int

    def prior(self, n: int):
        raise NotImplementedError

    def conditional(self, i: int, z: torch.Tensor):
        raise NotImplementedError

    def forward(self, n: int) -> torch.Tensor:
        z = latent("z1", self.prior(n))
        for i in range(self.layers):
            d = self.conditional(i, z)
            z = target("y", d) if i == self.layers - 1 else latent(_site_name(i, self.layers), d)
        return z


@buildable
class GaussianTeacherChain(_Chain):
    """The continuous teacher of Fig. 2: ``z_1 ~ U[-1,1]``, ``z_{i+1} ~ N(sign(z)|z|^power, noise_var)``."""

    def __init__(self, layers: int, noise_var: float = 0.01, power: float = 1.1):
        super().__init__()
        self.layers = _check_layers(layers)
        if not noise_var > 0:
            raise ValueError(f"noise_var must be positive, got {noise_var}")
        self.noise_std = math.sqrt(noise_var)
        self.power = float(power)
        self.register_buffer("_lo", torch.tensor(-1.0))
        self.register_buffer("_hi", torch.tensor(1.0))

    def prior(self, n):
        return Uniform(self._lo.expand(n, 1), self._hi.expand(n, 1))

    def conditional(self, i, z):
        return Normal(power_map(z, self.power), self.noise_std)


@buildable
class GaussianStudentChain(_Chain):
    """Residual Gaussian student; ``hidden = 0`` is a linear (affine) residual."""

    def __init__(self, layers: int, hidden: int = 32, init_std: float = 0.1):
        super().__init__()
        self.layers = _check_layers(layers)
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0 = linear residual), got {hidden}")
        if not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        self.hidden = hidden
        self.res = nn.ModuleList(
            nn.Linear(1, 1) if hidden == 0 else nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            for _ in range(layers)
        )
        self.log_std = nn.Parameter(torch.full((layers,), math.log(init_std)))
        self.register_buffer("_lo", torch.tensor(-1.0))
        self.register_buffer("_hi", torch.tensor(1.0))

    def prior(self, n):
        return Uniform(self._lo.expand(n, 1), self._hi.expand(n, 1))

    def conditional(self, i, z):
        return Normal(z + self.res[i](z), self.log_std[i].exp())


@buildable
class BinomialTeacherChain(_Chain):
    """The discrete teacher of Fig. 5: ``z_1`` uniform on ``0..total``, ``z_{i+1} ~ Bin(total, z_i/total)``."""

    def __init__(self, layers: int, total: int = 1000):
        super().__init__()
        self.layers = _check_layers(layers)
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be a positive int, got {total!r}")
        self.total = total
        self.register_buffer("_probs", torch.full((total + 1,), 1.0 / (total + 1)))

    def prior(self, n):
        return Categorical(probs=self._probs.expand(n, 1, self.total + 1))

    def forward(self, n):  # Categorical values are integer indices: make them float counts
        z = latent("z1", self.prior(n)).to(self._probs.dtype)
        for i in range(self.layers):
            d = self.conditional(i, z)
            z = target("y", d) if i == self.layers - 1 else latent(_site_name(i, self.layers), d)
        return z

    def conditional(self, i, z):
        # the upper clip keeps torch's analytic Binomial KL finite at the absorbing state z = N
        # (it evaluates log1p(-p), which is -inf at p = 1); the pmf it changes is Bin(N, 1 - 1e-6),
        # a point mass at N up to 1e-3.
        return QuantileBinomial(self.total, probs=(z / self.total).clamp(0.0, 1.0 - 1e-6))


@buildable
class BinomialStudentChain(BinomialTeacherChain):
    """Binomial student with a residual in logit space: ``p = sigmoid(logit(clip(z/N)) + r_i(z/N))``.

    ``clip`` keeps the logit finite at ``z = 0`` and ``z = N`` (the teacher's absorbing states);
    ``eps`` is its margin. ``hidden = 0`` makes ``r_i`` affine. Because the teacher's
    ``p = z/N`` is the identity of this parameterization (``r_i = 0``), every width can represent
    the teacher exactly. ``residual=False`` drops the ``logit(z/N)`` skip, ``p = sigmoid(r_i(z/N))``:
    then an affine ``r_i`` (``hidden = 0``) cannot represent the teacher and a tanh MLP only
    approximately (``logit(z/N)`` diverges at the ends) — the capacity-limited regime.
    """

    def __init__(self, layers: int, hidden: int = 32, total: int = 1000, eps: float = 1e-4, residual: bool = True):
        super().__init__(layers, total)
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0 = linear residual), got {hidden}")
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.hidden = hidden
        self.eps = eps
        self.residual = residual
        self.res = nn.ModuleList(
            nn.Linear(1, 1) if hidden == 0 else nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            for _ in range(layers)
        )

    def conditional(self, i, z):
        u = z / self.total
        r = self.res[i](2 * u - 1)
        if not self.residual:
            return QuantileBinomial(self.total, logits=r)
        return QuantileBinomial(self.total, logits=torch.logit(u.clamp(self.eps, 1 - self.eps)) + r)
