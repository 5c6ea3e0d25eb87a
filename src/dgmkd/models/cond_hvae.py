"""A conditional ladder VAE for continual learning (Chen et al., CVPR 2023, §4.4, Fig. 4d).

:class:`CondLadderVAE` is :class:`dgmkd.models.hvae.LadderVAE` with a one-hot condition ``c``
(the task: 0 = the old part of the data, 1 = the new part) entering *every* block, as in the
paper's code:

* encoder: ``c`` is concatenated to the input of the stem's fully connected layer (after the
  convolutions) and of every bottom-up MLP block;
* decoder: ``c`` is concatenated to the input of every prior network ``p(z_i | z_{i+1}, c)`` and
  of the image decoder ``p(x | z1, c)``;
* the top prior is learned: ``p(z_L | c) = N(mu(c), sigma(c))`` (a linear map of the one-hot).

The site names are those of :class:`LadderVAE` (``z5 .. z1``, ``x``; the inference DGM has
``x_rec``) whatever the condition, so :func:`dgmkd.couple` pairs ``M_old(n, 0)`` with
``M_new(n, 0)`` site by site. ``hvae.py`` is not changed: every method here takes the condition
as an extra argument ``c`` (an ``int`` for the whole batch, or a ``(N,)`` integer tensor), which
defaults to 0, so :func:`dgmkd.models.hvae.train_elbo` trains condition 0 unchanged.

Example:
    >>> import torch, dgmkd
    >>> from dgmkd.models.cond_hvae import CondLadderVAE
    >>> m = CondLadderVAE(num_conditions=2, image_size=8, width=8)
    >>> m.sample(4, c=1).shape
    torch.Size([4, 1, 8, 8])
    >>> c = dgmkd.couple(m, m, 16, 0)
    >>> float(dgmkd.losses.unified(c))
    0.0
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.distributions import Normal
import torch.nn.functional as F

from .. import sites
from .hvae import LadderVAE, _std

__all__ = ["CondLadderVAE", "train_cond_elbo"]


class CondLadderVAE(LadderVAE):
    """:class:`LadderVAE` conditioned on a one-hot ``c`` in every encoder and decoder block.

    Args:
        num_conditions: number of conditions (tasks); 2 for one continual-learning step.
        Other arguments as :class:`LadderVAE`.
    """

    def __init__(self, num_conditions: int = 2, image_size: int = 8, channels: int = 1, width: int = 32,
                 latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4), hidden_mult: int = 4,
                 likelihood: str = "gaussian", sigma: float = 0.1, min_std: float = 1e-3):
        super().__init__(image_size=image_size, channels=channels, width=width, latent_dims=latent_dims,
                         hidden_mult=hidden_mult, likelihood=likelihood, sigma=sigma, min_std=min_std)
        if int(num_conditions) < 1:
            raise ValueError(f"num_conditions must be >= 1, got {num_conditions}")
        K = self.num_conditions = int(num_conditions)
        c, h = width, hidden_mult * width
        n_down = int(math.log2(image_size // 4))
        act = nn.SiLU
        # rebuild every block with the condition among its inputs (same layout as LadderVAE)
        # the convolutions see only x (one-hot image planes would change their fan-in, hence their
        # initial scale, and made the ELBO collapse the posterior far more often); the condition
        # joins at the stem's fully connected layer
        stem = [nn.Conv2d(channels, c, 3, padding=1), act()]
        for _ in range(n_down):
            stem += [nn.Conv2d(c, c, 4, stride=2, padding=1), act()]
        stem += [nn.Flatten()]
        self.stem = nn.Sequential(*stem)
        self.stem_fc = nn.Sequential(nn.Linear(16 * c + K, h), act())
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(h + K, h), act()) for _ in self.latent_dims)
        self.prior = nn.ModuleList(
            nn.Sequential(nn.Linear(self.latent_dims[i + 1] + K, h), act(), nn.Linear(h, h), act(),
                          nn.Linear(h, 2 * self.latent_dims[i]))
            for i in range(len(self.latent_dims) - 1))
        self.top_prior = nn.Linear(K, 2 * self.latent_dims[-1])
        nn.init.zeros_(self.top_prior.weight)  # starts as N(0, softplus(0.5413)+min_std ~ 1)
        nn.init.constant_(self.top_prior.bias, 0.0)
        with torch.no_grad():
            self.top_prior.bias[self.latent_dims[-1]:] = math.log(math.e - 1)  # softplus^-1(1)
        dec = [nn.Linear(self.latent_dims[0] + K, h), act(), nn.Linear(h, 16 * c), act(), nn.Unflatten(1, (c, 4, 4))]
        for _ in range(n_down):
            dec += [nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), act()]
        dec += [nn.Conv2d(c, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ parameters
    def encoder_parameters(self):
        yield from super().encoder_parameters()
        yield from self.stem_fc.parameters()

    def generative_parameters(self):
        yield from super().generative_parameters()
        yield from self.top_prior.parameters()

    # ------------------------------------------------------------------ the condition
    def onehot(self, c, n: int, like: torch.Tensor) -> torch.Tensor:
        """``(n, K)`` one-hot rows of condition ``c`` (an int, or an ``(n,)`` integer tensor)."""
        if isinstance(c, torch.Tensor) and c.dim() == 2:  # already one-hot / soft
            if c.shape != (n, self.num_conditions):
                raise ValueError(f"condition of shape {tuple(c.shape)}, want ({n}, {self.num_conditions})")
            return c.to(like)
        idx = torch.as_tensor(c, device=like.device, dtype=torch.long)
        if idx.dim() == 0:
            idx = idx.expand(n)
        if idx.shape != (n,):
            raise ValueError(f"condition must be an int or a ({n},) tensor, got shape {tuple(idx.shape)}")
        if bool(((idx < 0) | (idx >= self.num_conditions)).any()):
            raise ValueError(f"conditions must be in 0..{self.num_conditions - 1}, got {idx.unique().tolist()}")
        return F.one_hot(idx, self.num_conditions).to(like.dtype)

    # ------------------------------------------------------------------ building blocks
    def _prior_c(self, i: int, z_above, oh: torch.Tensor) -> Normal:
        if i == len(self.latent_dims) - 1:
            mu, raw = self.top_prior(oh).chunk(2, dim=-1)
        else:
            mu, raw = self.prior[i](torch.cat([z_above, oh], -1)).chunk(2, dim=-1)
        return Normal(mu, _std(raw, self.min_std))

    def bottom_up(self, x: torch.Tensor, c=0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self._check_images(x)
        oh = self.onehot(c, len(x), x)
        d = self.stem_fc(torch.cat([self.stem(x), oh], -1))
        out = []
        for up, head in zip(self.up, self.q_head):
            d = up(torch.cat([d, oh], -1))
            mu, raw = head(d).chunk(2, dim=-1)
            out.append((mu, _std(raw, self.min_std)))
        return out

    def _top_down_c(self, oh: torch.Tensor, draw: Callable, bu=None):
        L = len(self.latent_dims)
        layers = [None] * L
        z = None
        for i in range(L - 1, -1, -1):
            p = self._prior_c(i, z, oh)
            if bu is None:
                q = None
                z = draw(f"z{i + 1}", p)
            else:
                mu_hat, sd_hat = bu[i]
                q = Normal(mu_hat, sd_hat) if i == L - 1 else self.merge(mu_hat, sd_hat, p)
                z = draw(f"z{i + 1}", q)
            layers[i] = (z, q, p)
        return layers, self.decoder(torch.cat([layers[0][0], oh], -1))

    # ------------------------------------------------------------------ the two DGMs
    def forward(self, n: int, c=0) -> torch.Tensor:
        """The generative DGM of condition ``c``: latents ``z5..z1``, target ``x``."""
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"CondLadderVAE(n, c): n must be a positive batch size, got {n!r}")
        oh = self.onehot(c, n, next(self.parameters()))
        _, out = self._top_down_c(oh, sites.latent)
        return sites.target("x", self._likelihood(out))

    def encode(self, x: torch.Tensor, c=0) -> torch.Tensor:
        """The inference DGM ``q(z | x, c)`` with sites ``z5..z1`` and target ``x_rec``."""
        bu = self.bottom_up(x, c)
        layers, out = self._top_down_c(self.onehot(c, len(x), x), sites.latent, bu)
        sites.target("x_rec", self._likelihood(out))
        return layers[0][0]

    def inference(self) -> "_CondInference":
        return _CondInference(self)

    # ------------------------------------------------------------------ plain use
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, c=0) -> torch.Tensor:
        oh = self.onehot(c, n, next(self.parameters()))
        _, out = self._top_down_c(oh, lambda name, d: d.sample())
        px = self._likelihood(out)
        return px.mean if mean else px.sample()

    def elbo(self, x: torch.Tensor, beta: float = 1.0, c=0):
        """``(elbo, log p(x|z1,c), KL)`` per image under condition ``c`` (see :meth:`LadderVAE.elbo`)."""
        bu = self.bottom_up(x, c)
        layers, out = self._top_down_c(self.onehot(c, len(x), x), lambda name, d: d.rsample(), bu)
        rec = self._log_px(out, x)
        kl = sum(torch.distributions.kl_divergence(q, p).sum(-1) for _, q, p in layers)
        return rec - beta * kl, rec, kl

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int = 100, c=0) -> torch.Tensor:
        self._check_images(x)
        n = len(x)
        xr = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        if isinstance(c, torch.Tensor) and c.dim() >= 1:
            c = c.unsqueeze(0).expand(k, *c.shape).reshape(k * n, *c.shape[1:])
        bu = self.bottom_up(xr, c)
        layers, out = self._top_down_c(self.onehot(c, k * n, xr), lambda name, d: d.sample(), bu)
        lw = self._log_px(out, xr)
        for z, q, p in layers:
            lw = lw + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        return lw.view(k, n)


class _CondInference(nn.Module):
    """The inference network of a :class:`CondLadderVAE` as a DGM with inputs ``(x, c)``."""

    def __init__(self, vae: CondLadderVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x, c=0):
        return self.vae.encode(x, c)


def train_cond_elbo(model: CondLadderVAE, data: torch.Tensor, steps: int, *, c=0, batch: int = 128,
                    lr: float = 1e-3, warmup: int = 0, seed: int = 0, progress: bool = True,
                    desc: str = "elbo", checkpoint=None, checkpoint_every: int = 100) -> dict[str, list]:
    """ELBO training of condition ``c`` on ``data`` (KL warm-up as :func:`hvae.train_elbo`),
    through :func:`dgmkd.train`."""
    from ..train import train

    model._check_images(data)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data)

    def batches():
        return (data[torch.randint(n, (batch,))],)

    def step_fn(args, step):
        (x,) = args
        beta = min(1.0, (step + 1) / warmup) if warmup else 1.0
        elbo, rec, kl = model.elbo(x, beta, c=c)
        loss = -elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "rec": rec.mean().detach(), "kl": kl.mean().detach()}

    model.train()
    return train(step_fn, batches, steps, state={"model": model, "optimizer": opt}, seed=seed,
                 progress=progress, desc=desc, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
