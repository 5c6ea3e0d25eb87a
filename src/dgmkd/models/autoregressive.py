"""Gaussian-conditional autoregressive models (the *teacher* of probability density distillation).

Huang et al., "Probability distillation: a caveat and alternatives" (UAI 2019), §4: a Gaussian
conditional autoregressive model samples by the recursion

    ``x_t = mu_t(x_<t) + sigma_t(x_<t) * z_t``,   ``z ~ N(0, I)``,

which needs ``T`` sequential network passes (Eq. 1: ``p(x) = prod_t p(x_t | x_<t)``), while its
*inverse* ``T: x -> z``, ``z_t = (x_t - mu_t(x_<t)) / sigma_t(x_<t)``, is one parallel pass
(teacher forcing): all ``mu_t, sigma_t`` are read off the observed ``x`` at once. The density
follows by the change of variables: ``log p(x) = log N(T(x); 0, I) - sum_t log sigma_t(x_<t)``.

The conditionals come from a MADE network (Germain et al. 2015): masked linear layers whose masks
make output ``t`` depend only on inputs ``< t``, so the Jacobian ``dz/dx`` is lower triangular
and its log-determinant is ``-sum_t log sigma_t``.

Every model here shares the :class:`InvertibleSampler` interface used by
:mod:`dgmkd.methods.density`:

* ``from_noise(z) -> (x, log|det dx/dz|)`` — the z→x sampling map (sequential for this teacher);
* ``to_noise(x) -> (z, log|det dz/dx|)`` — the x→z encoding map (parallel for this teacher);
* ``log_prob(x)``, ``sample(n)``;
* ``forward(n)`` — the same sampler written with dgmkd sites: one latent ``"z"`` (a standard
  normal, so its shared noise *is* ``z``) and a deterministic output ``"x"`` (or a target).

Example:
    >>> import torch
    >>> from dgmkd.models.autoregressive import GaussianAutoregressive
    >>> _ = torch.manual_seed(0)
    >>> m = GaussianAutoregressive(dim=5, hidden=(16,))
    >>> z = torch.randn(3, 5)
    >>> x, logdet = m.from_noise(z)            # 5 sequential passes
    >>> z2, logdet_inv = m.to_noise(x)         # 1 parallel pass
    >>> bool(torch.allclose(z, z2, atol=1e-5)), bool(torch.allclose(logdet, -logdet_inv))
    (True, True)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.distributions import Independent, Normal

from ..sites import deterministic, latent, target
from ..saving import buildable

__all__ = ["MaskedLinear", "MADE", "InvertibleSampler", "AutoregressiveGaussian", "GaussianAutoregressive",
           "CausalConv1d", "CausalConvAutoregressive", "soft_clamp", "standard_normal_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    """``bound * tanh(x / bound)``: a smooth clamp of log-scales to ``(-bound, bound)`` that keeps
    gradients (a hard clamp would zero them) and keeps ``exp`` finite in early training."""
    return bound * torch.tanh(x / bound)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(mask.shape)} != (out, in) = {(out_features, in_features)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x):
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015) in the natural order.

    Maps ``x`` of shape ``(B, dim)`` to ``(B, n_params, dim)``; output ``[:, k, t]`` depends only
    on ``x[:, :t]`` (strictly earlier coordinates). Input degrees are ``1..dim``; hidden degrees
    cycle through ``1..dim-1``; a hidden unit of degree ``m`` sees inputs ``<= m`` and an output of
    degree ``t`` sees hidden units ``< t``. ``zero_init`` zeroes the output layer so that the
    network starts at the constant 0 (an identity flow layer).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256), n_params: int = 2,
                 activation: type[nn.Module] = nn.ELU, zero_init: bool = False):
        super().__init__()
        if dim < 1:
            raise ValueError(f"MADE needs dim >= 1, got {dim}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"MADE needs at least one positive hidden width, got {hidden}")
        self.dim, self.n_params = dim, n_params
        deg_in = torch.arange(1, dim + 1)
        layers: list[nn.Module] = []
        prev = deg_in
        for h in hidden:
            deg = torch.arange(h) % max(dim - 1, 1) + 1
            layers += [MaskedLinear(len(prev), h, (deg[:, None] >= prev[None, :]).float()), activation()]
            prev = deg
        deg_out = deg_in.repeat(n_params)
        out = MaskedLinear(len(prev), n_params * dim, (deg_out[:, None] > prev[None, :]).float())
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"MADE expects inputs of shape (batch, {self.dim}), got {tuple(x.shape)}")
        return self.net(x).view(x.shape[0], self.n_params, self.dim)


class InvertibleSampler(nn.Module):
    """Shared interface of the invertible samplers (teacher, students) of density distillation.

    Subclasses set ``self.dim`` and implement ``from_noise(z)`` (z→x) and ``to_noise(x)`` (x→z); this class adds
    the density by the change of variables (Huang et al. Eq. 4), plain sampling and the
    site-based ``forward``.
    """

    dim: int

    def from_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def to_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def _check(self, v: torch.Tensor, what: str) -> None:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what} must be a tensor, got {type(v).__name__}")
        if v.dim() != 2 or v.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects {what} of shape (batch, {self.dim}), "
                             f"got {tuple(v.shape)}")

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(z; 0, I) + log|det dz/dx|`` with ``z = to_noise(x)`` (per row)."""
        z, logdet = self.to_noise(x)
        return standard_normal_log_prob(z) + logdet

    def _zeros(self, n: int) -> torch.Tensor:
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"number of samples must be a positive int, got {n!r}")
        ref = next(iter(self.buffers()), None)
        if ref is None:
            ref = next(iter(self.parameters()), torch.zeros(()))
        return torch.zeros(n, self.dim, device=ref.device, dtype=ref.dtype)

    def noise(self, n: int) -> torch.Tensor:
        """``n`` draws of the standard-normal base noise, on this model's device/dtype."""
        return torch.randn_like(self._zeros(n))

    def sample(self, n: int) -> torch.Tensor:
        """``n`` samples ``from_noise(z)``, ``z ~ N(0, I)``."""
        return self.from_noise(self.noise(n))[0]

    def forward(self, n: int, output: str = "deterministic", obs_scale: float = 1.0) -> torch.Tensor:
        """The sampler written with dgmkd sites.

        ``z = latent("z", N(0, I))`` — in semi-auxiliary form its noise is ``z`` itself, so a
        coupled teacher and student share ``z`` (Chen et al. 2023, §3.1) — then the output
        ``x = from_noise(z)`` as a deterministic site ``"x"`` (``output="deterministic"``, a
        point-mass latent) or as a target ``"x" ~ N(from_noise(z), obs_scale^2 I)``
        (``output="target"``). Either way ``losses.latent`` / ``losses.surrogate`` with a distance
        compare ``T^-1(z)`` to ``S(z)``: Huang et al.'s oracle prediction (§4).
        """
        if output not in ("deterministic", "target"):
            raise ValueError(f"output must be 'deterministic' or 'target', got {output!r}")
        zero = self._zeros(n)
        z = latent("z", Independent(Normal(zero, torch.ones_like(zero)), 1))
        x, _ = self.from_noise(z)
        if output == "deterministic":
            return deterministic("x", x)
        return target("x", Independent(Normal(x, obs_scale * torch.ones_like(x)), 1))


class AutoregressiveGaussian(InvertibleSampler):
    """Base of Gaussian-conditional autoregressive models: subclasses implement
    ``conditionals(x) -> (mu, log_sigma)``, each ``(B, dim)``, with entry ``t`` a function of
    ``x[:, :t]`` only (teacher forcing: one pass gives every conditional)."""

    log_scale_bound: float = 8.0

    def conditionals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def to_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``T(x) = (x - mu(x)) / sigma(x)`` in one parallel pass, and ``log|det dz/dx| = -sum log sigma``."""
        self._check(x, "x")
        mu, log_sigma = self.conditionals(x)
        return (x - mu) * torch.exp(-log_sigma), -log_sigma.sum(-1)

    def from_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``T^-1(z)`` by ``dim`` sequential passes; returns ``x`` and ``log|det dx/dz| = sum log sigma``.

        Coordinate ``t`` is final after pass ``t`` because ``mu_t, sigma_t`` read only ``x_<t``.
        Differentiable (out-of-place updates), so gradients reach ``z`` and the parameters.
        """
        self._check(z, "z")
        x = torch.zeros_like(z)
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for t in range(self.dim):
            mu, log_sigma = self.conditionals(x)
            xt = mu[:, t] + torch.exp(log_sigma[:, t]) * z[:, t]
            x = torch.cat([x[:, :t], xt[:, None], x[:, t + 1:]], dim=1)
            logdet = logdet + log_sigma[:, t]
        return x, logdet


@buildable
class GaussianAutoregressive(AutoregressiveGaussian):
    """``x_t = mu_t(x_<t) + sigma_t(x_<t) z_t`` with MADE conditionals (Huang et al. §4).

    ``to_noise`` (``T: x -> z``) is one parallel pass; ``from_noise`` (``T^-1``, sampling) is
    ``dim`` sequential passes — the cost that distillation into a parallel student removes.
    ``log_scale_bound`` soft-clamps ``log sigma_t``.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256), log_scale_bound: float = 8.0,
                 activation: type[nn.Module] = nn.ELU):
        super().__init__()
        self.dim = int(dim)
        self.made = MADE(self.dim, hidden, n_params=2, activation=activation)
        self.log_scale_bound = float(log_scale_bound)

    def conditionals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_t(x_<t), log sigma_t(x_<t))`` for every ``t`` in one pass."""
        out = self.made(x)
        return out[:, 0], soft_clamp(out[:, 1], self.log_scale_bound)


class CausalConv1d(nn.Conv1d):
    """A 1-d convolution padded on the left only: output ``t`` reads inputs ``<= t``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left = (kernel_size - 1) * dilation

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (self.left, 0)))


@buildable
class CausalConvAutoregressive(AutoregressiveGaussian):
    """A WaveNet-style Gaussian autoregressive model of sequences of length ``length``.

    The input is shifted right by one step (so position ``t`` sees ``x_<t``), then a causal
    convolution and ``layers`` gated residual blocks with dilations ``1, 2, 4, ...`` (van den Oord
    et al. 2016: ``tanh(W_f * h) . sigmoid(W_g * h)``), then a 1x1 convolution to
    ``(mu_t, log sigma_t)``. The receptive field is ``kernel_size + (kernel_size - 1)(2^layers - 1)``
    past steps (64 for the defaults).
    Density and encoding are one parallel pass; sampling is ``length`` passes (Huang et al. §2).
    """

    def __init__(self, length: int, channels: int = 64, layers: int = 6, kernel_size: int = 2,
                 log_scale_bound: float = 8.0):
        super().__init__()
        if length < 1 or channels < 1 or layers < 0 or kernel_size < 1:
            raise ValueError("length, channels and kernel_size must be >= 1 and layers >= 0, got "
                             f"{length}, {channels}, {kernel_size}, {layers}")
        self.dim = int(length)
        self.log_scale_bound = float(log_scale_bound)
        self.inp = CausalConv1d(1, channels, kernel_size)
        self.filters = nn.ModuleList(CausalConv1d(channels, 2 * channels, kernel_size, 2 ** i) for i in range(layers))
        self.res = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in range(layers))
        self.out = nn.Sequential(nn.ELU(), nn.Conv1d(channels, 2, 1))

    def conditionals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = nn.functional.pad(x, (1, 0))[:, :-1].unsqueeze(1)  # position t holds x_{t-1}
        h = self.inp(shifted)
        for f, r in zip(self.filters, self.res):
            a, b = f(h).chunk(2, dim=1)
            h = h + r(torch.tanh(a) * torch.sigmoid(b))
        out = self.out(h)
        return out[:, 0], soft_clamp(out[:, 1], self.log_scale_bound)
