"""Variational RNN (Chung et al., NeurIPS 2015) written with dgmkd sites (Chen et al. 2023, Fig. 4b).

For ``t = 1..T``::

    z_t ~ p(z_t | h_{t-1})            = N(mu_prior(h_{t-1}), sigma_prior(h_{t-1})^2)     (latent "z{t}")
    x_t ~ p(x_t | z_t, h_{t-1})       Gaussian offsets (target "x{t}") and, optionally, a
                                      Bernoulli pen-up bit (target "pen{t}", for handwriting)
    h_t = GRU([phi_x(x_t), phi_z(z_t)], h_{t-1})

with feature extractors ``phi_x``, ``phi_z`` and one-hidden-layer MLP heads, as in the VRNN paper.
The targets are fed back into the recurrence, so in the unified method (Eq. 7) the student is
*teacher-forced* on the targets (``x_t`` and ``pen_t`` take the teacher's sampled values) while each
``z_t`` is computed by the student's own prior from the teacher's standard-normal noise
``eps_t``: ``L_sd`` compares the two emission distributions at the shared ``(eps_<=t, x_<t)``,
``L_z,t`` the two priors. Local distillation instead substitutes the teacher's ``z_t`` too.

:meth:`VRNN.log_weights` gives the importance weights of the encoder
``q(z_t | x_t, h_{t-1})`` — the ELBO (``k=1``) trains teachers and scratch students, the IWAE bound
(Burda et al. 2016) with ``k`` samples estimates the test NLL.
:class:`SeqCNN` is the small 1-d CNN classifier whose penultimate features compare VRNN samples
(``vrnn-compress`` on MNIST-1D).

Example:
    >>> import torch
    >>> from dgmkd.models import VRNN
    >>> _ = torch.manual_seed(0)
    >>> m = VRNN(x_dim=1, hidden=16, z_dim=4, seq_len=10)
    >>> m(3).shape
    torch.Size([3, 10, 1])
    >>> m.log_weights(torch.randn(3, 10, 1), k=5).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from ..sites import latent, target
from ..saving import buildable

__all__ = ["VRNN", "SeqCNN"]


def _mlp(d_in, hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class _GaussHead(nn.Module):
    def __init__(self, d_in, hidden, d_out, min_std):
        super().__init__()
        self.net = _mlp(d_in, hidden, 2 * d_out)
        self.min_std = min_std

    def forward(self, x):
        loc, s = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(s) + self.min_std


@buildable
class VRNN(nn.Module):
    """A VRNN sampler/density with sites ``z{t}`` (latent), ``pen{t}`` and ``x{t}`` (targets).

    ``x_dim``: Gaussian channels per step; ``pen``: add a Bernoulli pen-up channel in front (the
    data layout ``[pen_up, dx, dy]`` of :mod:`dgmkd.data.iam`); ``hidden``: GRU state and MLP width;
    ``z_dim``: latent size; ``seq_len``: default length of sampled sequences; ``min_std``: floor of
    every Gaussian std (keeps densities bounded on data with near-deterministic steps).

    ``model(n)`` (or ``model(n, T)``) samples ``n`` sequences, returned as ``(n, T, channels)``.
    """

    def __init__(self, x_dim: int = 1, hidden: int = 64, z_dim: int = 8, seq_len: int = 40, pen: bool = False,
                 min_std: float = 1e-2):
        super().__init__()
        if min(x_dim, hidden, z_dim, seq_len) < 1:
            raise ValueError(f"x_dim, hidden, z_dim and seq_len must be positive, got {x_dim}, {hidden}, {z_dim}, {seq_len}")
        self.x_dim, self.hidden, self.z_dim, self.seq_len, self.pen = x_dim, hidden, z_dim, seq_len, bool(pen)
        self.channels = x_dim + int(self.pen)
        self.phi_x = nn.Sequential(nn.Linear(self.channels, hidden), nn.ReLU())
        self.phi_z = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU())
        self.prior = _GaussHead(hidden, hidden, z_dim, 1e-3)
        self.encoder = _GaussHead(2 * hidden, hidden, z_dim, 1e-3)
        self.emission = _GaussHead(2 * hidden, hidden, x_dim, min_std)
        self.pen_head = _mlp(2 * hidden, hidden, 1) if self.pen else None
        self.rnn = nn.GRUCell(2 * hidden, hidden)

    # ------------------------------------------------------------------ generative model (sites)
    def forward(self, n: int, T: int | None = None) -> torch.Tensor:
        T = self.seq_len if T is None else T
        if not isinstance(n, int) or n <= 0 or not isinstance(T, int) or T <= 0:
            raise ValueError(f"VRNN(n, T) needs positive integers, got n={n!r}, T={T!r}")
        h = self.phi_x[0].weight.new_zeros(n, self.hidden)
        xs = []
        for t in range(T):
            loc, scale = self.prior(h)
            z = latent(f"z{t}", Independent(Normal(loc, scale), 1))
            fz = self.phi_z(z)
            dec = torch.cat([fz, h], -1)
            parts = []
            if self.pen:
                parts.append(target(f"pen{t}", Independent(Bernoulli(logits=self.pen_head(dec)), 1)))
            mu, sd = self.emission(dec)
            parts.append(target(f"x{t}", Independent(Normal(mu, sd), 1)))
            x = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
            xs.append(x)
            h = self.rnn(torch.cat([self.phi_x(x), fz], -1), h)
        return torch.stack(xs, 1)

    # ------------------------------------------------------------------ inference
    def log_weights(self, x: torch.Tensor, k: int = 1, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``log p(x, z) - log q(z | x)`` for ``k`` encoder samples per sequence: ``(k, n)``.

        ``x``: ``(n, T, channels)``; ``mask``: optional ``(n, T)`` of 0/1 for padded sequences (steps
        with mask 0 contribute nothing). ``logsumexp(w, 0) - log k`` is the IWAE bound on
        ``log p(x)``; ``w.mean(0)`` the ELBO. Encoder samples are reparameterized, so the ELBO/IWAE
        bound is differentiable in all parameters.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (n, T, {self.channels}), got {shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n, T, _ = x.shape
        xk = x.unsqueeze(0).expand(k, n, T, self.channels).reshape(k * n, T, self.channels)
        mk = None
        if mask is not None:
            if mask.shape != (n, T):
                raise ValueError(f"mask must have shape {(n, T)}, got {tuple(mask.shape)}")
            mk = mask.to(x.dtype).unsqueeze(0).expand(k, n, T).reshape(k * n, T)
        h = x.new_zeros(k * n, self.hidden)
        lw = x.new_zeros(k * n)
        for t in range(T):
            xt = xk[:, t]
            fx = self.phi_x(xt)
            q = Independent(Normal(*self.encoder(torch.cat([fx, h], -1))), 1)
            z = q.rsample()
            p = Independent(Normal(*self.prior(h)), 1)
            fz = self.phi_z(z)
            dec = torch.cat([fz, h], -1)
            mu, sd = self.emission(dec)
            step = p.log_prob(z) - q.log_prob(z)
            if self.pen:
                step = step + Bernoulli(logits=self.pen_head(dec)).log_prob(xt[:, :1]).sum(-1)
                step = step + Normal(mu, sd).log_prob(xt[:, 1:]).sum(-1)
            else:
                step = step + Normal(mu, sd).log_prob(xt).sum(-1)
            if mk is not None:
                step = step * mk[:, t]
            lw = lw + step
            h_new = self.rnn(torch.cat([fx, fz], -1), h)
            h = h_new if mk is None else torch.where(mk[:, t:t + 1] > 0, h_new, h)
        return lw.view(k, n)

    def elbo(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean (over sequences) evidence lower bound, one encoder sample."""
        return self.log_weights(x, 1, mask).mean()

    @torch.no_grad()
    def iwae_nll(self, x: torch.Tensor, k: int = 50, batch: int = 250, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sequence IWAE upper bound on ``-log p(x)`` with ``k`` importance samples: ``(n,)``."""
        out = []
        for i in range(0, len(x), batch):
            m = None if mask is None else mask[i:i + batch]
            lw = self.log_weights(x[i:i + batch], k, m)
            out.append(-(torch.logsumexp(lw, 0) - math.log(k)))
        return torch.cat(out)


class SeqCNN(nn.Module):
    """A small 1-d CNN classifier of ``(n, T)`` / ``(n, T, 1)`` sequences; :meth:`features` is its
    ``feat``-d penultimate layer (the feature space in which VRNN samples are compared)."""

    def __init__(self, seq_len: int = 40, n_classes: int = 10, width: int = 32, feat: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(width * math.ceil(math.ceil(seq_len / 2) / 2), feat), nn.ReLU())
        self.head = nn.Linear(feat, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.reshape(x.shape[0], 1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
