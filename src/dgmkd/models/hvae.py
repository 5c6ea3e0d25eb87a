"""A ladder VAE (Sønderby et al. 2016) with five stochastic layers, written with dgmkd sites.

The model of the hierarchical-VAE compression experiment of Chen et al. (CVPR 2023, §4.2,
Table 1): a teacher and much smaller students that share the *graph* and differ only in one width
knob (``width``: convolution channels; the MLPs are ``hidden_mult * width`` wide), as in the
paper's code where the students are the same network with fewer channels. The latent sizes are
the same for teacher and student, which is what lets the two share the auxiliary noise of every
latent (Eq. 4–7).

Generative model (top-down)::

    z5 ~ N(0, I),   z_i ~ N(mu_i(z_{i+1}), sigma_i(z_{i+1}))  (i = 4..1),   x ~ p(x | z1)

with ``p(x | z1)`` a Gaussian with a *fixed* standard deviation ``sigma`` around a sigmoid mean
(default; data in [0, 1]) or a Bernoulli (``likelihood="bernoulli"``, for binarized data).

Inference model (Sønderby et al. 2016, Eq. 17–19): a deterministic bottom-up pass
``d_1 = f_1(x), d_i = f_i(d_{i-1})`` gives ``(mu_hat_i, sigma_hat_i)`` per layer; the top-down
posterior merges them with the prior of the layer by precision weighting::

    sigma_q^-2 = sigma_hat^-2 + sigma_p^-2,   mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2

and ``q(z5 | x) = N(mu_hat_5, sigma_hat_5)``. Training uses the ELBO with a KL warm-up (``beta``
from 0 to 1, Sønderby et al. §2.3) — see :func:`train_elbo`.

Sites. ``model(n)`` is the data-free generative model: latents ``z5, z4, z3, z2, z1`` and the
target ``x`` (what :func:`dgmkd.distill` needs; the unified loss's surrogate term is the KL of
``p(x | z1)`` and its latent term compares ``p(z_i | z_{i+1})``). ``model.inference()`` is the
inference network as a DGM in its own right: ``x`` is its input, the posterior layers are
latents named ``z5 .. z1`` and the reconstruction ``p(x | z1)`` is a target named ``x_rec``; so the
same coupling and losses distill ``q_T(z | x)`` into ``q_S(z | x)`` (the experiment does so on
the teacher's samples, without data).

Example:
    >>> import torch
    >>> from dgmkd.models.hvae import LadderVAE
    >>> m = LadderVAE(image_size=8, width=8)
    >>> m.sample(4).shape
    torch.Size([4, 1, 8, 8])
    >>> lw = m.log_weights(torch.rand(3, 1, 8, 8), k=5)
    >>> lw.shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal
import torch.nn.functional as F

from .. import sites

__all__ = ["LadderVAE", "train_elbo", "iw_nll"]

LIKELIHOODS = ("gaussian", "bernoulli")


def _std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    return F.softplus(raw) + min_std


class LadderVAE(nn.Module):
    """Five-layer ladder VAE for ``image_size`` in {8, 16, 32, 64} (square images).

    Args:
        image_size: side of the square images; the convolutional stem halves it down to 4x4.
        channels: image channels (1 for digits, 3 for SVHN / CIFAR-10 / CelebA).
        width: the one size knob: convolution channels; MLP layers are ``hidden_mult * width``.
        latent_dims: sizes of ``z1 .. z5`` (bottom to top); must match between teacher and
            student for shared noise.
        likelihood: ``"gaussian"`` (fixed ``sigma``) or ``"bernoulli"``.
        sigma: the decoder's fixed standard deviation (Gaussian likelihood).
        min_std: floor added to every latent standard deviation (keeps KLs finite).
    """

    def __init__(self, image_size: int = 8, channels: int = 1, width: int = 32,
                 latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4), hidden_mult: int = 4,
                 likelihood: str = "gaussian", sigma: float = 0.1, min_std: float = 1e-3):
        super().__init__()
        if image_size not in (8, 16, 32, 64):
            raise ValueError(f"image_size must be 8, 16, 32 or 64, got {image_size}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if len(latent_dims) < 1 or any(int(d) <= 0 for d in latent_dims):
            raise ValueError(f"latent_dims must be positive sizes, got {latent_dims}")
        if width <= 0 or hidden_mult <= 0:
            raise ValueError(f"width and hidden_mult must be positive, got {width}, {hidden_mult}")
        if likelihood == "gaussian" and not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.image_size, self.channels, self.width = image_size, channels, width
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.likelihood, self.sigma, self.min_std = likelihood, float(sigma), float(min_std)
        c, h = width, hidden_mult * width
        n_down = int(math.log2(image_size // 4))
        act = nn.SiLU
        # bottom-up (inference) path
        stem = [nn.Conv2d(channels, c, 3, padding=1), act()]
        for _ in range(n_down):
            stem += [nn.Conv2d(c, c, 4, stride=2, padding=1), act()]
        stem += [nn.Flatten(), nn.Linear(16 * c, h), act()]
        self.stem = nn.Sequential(*stem)
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(h, h), act()) for _ in self.latent_dims)
        self.q_head = nn.ModuleList(nn.Linear(h, 2 * d) for d in self.latent_dims)
        # top-down (generative) path: p(z_i | z_{i+1}) for i < L
        self.prior = nn.ModuleList(
            nn.Sequential(nn.Linear(self.latent_dims[i + 1], h), act(), nn.Linear(h, h), act(),
                          nn.Linear(h, 2 * self.latent_dims[i]))
            for i in range(len(self.latent_dims) - 1))
        dec = [nn.Linear(self.latent_dims[0], h), act(), nn.Linear(h, 16 * c), act(), nn.Unflatten(1, (c, 4, 4))]
        for _ in range(n_down):
            dec += [nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), act()]
        dec += [nn.Conv2d(c, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ parameters
    def generative_parameters(self):
        """Parameters used to sample (priors and decoder)."""
        yield from self.prior.parameters()
        yield from self.decoder.parameters()

    def encoder_parameters(self):
        """Parameters only the inference network uses (stem, bottom-up MLPs, posterior heads)."""
        for m in (self.stem, self.up, self.q_head):
            yield from m.parameters()

    def num_parameters(self, part: str = "all") -> int:
        """Parameter count of ``"all"``, ``"generative"`` or ``"encoder"``."""
        it = {"all": self.parameters, "generative": self.generative_parameters,
              "encoder": self.encoder_parameters}[part]()
        return sum(p.numel() for p in it)

    # ------------------------------------------------------------------ building blocks
    def _prior(self, i: int, z_above: torch.Tensor | None, n: int, like: torch.Tensor) -> Normal:
        if i == len(self.latent_dims) - 1:
            zeros = like.new_zeros(n, self.latent_dims[i])
            return Normal(zeros, torch.ones_like(zeros))
        mu, raw = self.prior[i](z_above).chunk(2, dim=-1)
        return Normal(mu, _std(raw, self.min_std))

    def _likelihood(self, out: torch.Tensor):
        if self.likelihood == "gaussian":
            return Normal(torch.sigmoid(out), self.sigma)
        return Bernoulli(logits=out)

    def _check_images(self, x: torch.Tensor):
        want = (self.channels, self.image_size, self.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"LadderVAE expects images of shape (N, {want[0]}, {want[1]}, {want[2]}), got {got}")

    def bottom_up(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(mu_hat_i, sigma_hat_i)`` for layers 1..L (Sønderby et al. 2016, Eq. 17)."""
        self._check_images(x)
        d = self.stem(x)
        out = []
        for up, head in zip(self.up, self.q_head):
            d = up(d)
            mu, raw = head(d).chunk(2, dim=-1)
            out.append((mu, _std(raw, self.min_std)))
        return out

    @staticmethod
    def merge(mu_hat, sd_hat, prior: Normal) -> Normal:
        """Precision-weighted merge of the bottom-up estimate and the prior (Sønderby Eq. 18–19)."""
        prec_hat, prec_p = sd_hat.pow(-2), prior.scale.pow(-2)
        var = 1.0 / (prec_hat + prec_p)
        return Normal((mu_hat * prec_hat + prior.loc * prec_p) * var, var.sqrt())

    def _top_down(self, n: int, like: torch.Tensor, draw: Callable, bu=None):
        """Run the top-down pass; ``bu`` (bottom-up stats) switches from the prior to the posterior.
        Returns ``[(z_i, q_i or None, p_i)]`` bottom to top and the decoder output."""
        L = len(self.latent_dims)
        layers = [None] * L
        z = None
        for i in range(L - 1, -1, -1):
            p = self._prior(i, z, n, like)
            if bu is None:
                q = None
                z = draw(f"z{i + 1}", p)
            else:
                mu_hat, sd_hat = bu[i]
                q = Normal(mu_hat, sd_hat) if i == L - 1 else self.merge(mu_hat, sd_hat, p)
                z = draw(f"z{i + 1}", q)
            layers[i] = (z, q, p)
        return layers, self.decoder(layers[0][0])

    # ------------------------------------------------------------------ the two DGMs
    def forward(self, n: int) -> torch.Tensor:
        """The generative model with sites (data-free): latents ``z5..z1``, target ``x``.
        Returns the sampled ``x``."""
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"LadderVAE(n): n must be a positive batch size, got {n!r}")
        like = next(self.parameters())
        _, out = self._top_down(n, like, sites.latent)
        return sites.target("x", self._likelihood(out))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The inference network with sites: latents ``z5..z1`` drawn from ``q(z | x)``, target
        ``x_rec`` from ``p(x | z1)``. Returns ``z1``. (Use :meth:`inference` for a module.)"""
        bu = self.bottom_up(x)
        layers, out = self._top_down(len(x), x, sites.latent, bu)
        sites.target("x_rec", self._likelihood(out))
        return layers[0][0]

    def inference(self) -> "_Inference":
        """An ``nn.Module`` whose ``forward(x)`` is :meth:`encode` — a DGM with input ``x``."""
        return _Inference(self)

    # ------------------------------------------------------------------ plain use
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """``n`` images: the decoder mean (``mean=True``, what sample grids and metrics use) or a
        draw of ``p(x | z1)``."""
        like = next(self.parameters())
        _, out = self._top_down(n, like, lambda name, d: d.sample())
        px = self._likelihood(out)
        return px.mean if mean else px.sample()

    def _log_px(self, out, x):
        return self._likelihood(out).log_prob(x).flatten(1).sum(-1)

    def elbo(self, x: torch.Tensor, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(elbo, log p(x|z1), KL)`` per image, one posterior sample; KLs analytic layer by layer
        given the sampled parents (each ``q_i`` and ``p_i`` share the same conditioning ``z_{i+1}``).
        ``beta`` weighs the KL (warm-up); ``elbo`` uses it."""
        bu = self.bottom_up(x)
        layers, out = self._top_down(len(x), x, lambda name, d: d.rsample(), bu)
        rec = self._log_px(out, x)
        kl = sum(torch.distributions.kl_divergence(q, p).sum(-1) for _, q, p in layers)
        return rec - beta * kl, rec, kl

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int = 100) -> torch.Tensor:
        """Importance log-weights ``log p(x, z) - log q(z | x)``, shape ``(k, N)``, ``z ~ q(z|x)``."""
        self._check_images(x)
        n = len(x)
        xr = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        bu = self.bottom_up(xr)
        layers, out = self._top_down(k * n, xr, lambda name, d: d.sample(), bu)
        lw = self._log_px(out, xr)
        for z, q, p in layers:
            lw = lw + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        return lw.view(k, n)


class _Inference(nn.Module):
    """The inference network of a :class:`LadderVAE` as a DGM (see :meth:`LadderVAE.encode`)."""

    def __init__(self, vae: LadderVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        return self.vae.encode(x)


def iw_nll(model: LadderVAE, x: torch.Tensor, k: int = 100, batch: int = 64) -> torch.Tensor:
    """Importance-weighted bound (Burda et al. 2016) ``-log 1/k sum_j p(x, z_j)/q(z_j|x)`` per image:
    an upper bound of the negative log-likelihood in nats, tightening as ``k`` grows. With the
    Gaussian decoder it is a *density* on [0, 1]-valued pixels, so it may be negative."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        lw = model.log_weights(x[i:i + batch], k)
        out.append(-(torch.logsumexp(lw, 0) - math.log(k)))
    model.train(was)
    return torch.cat(out)


def train_elbo(model: LadderVAE, data: torch.Tensor, steps: int, *, batch: int = 128, lr: float = 1e-3,
               warmup: int = 0, seed: int = 0, progress: bool = True, desc: str = "elbo",
               checkpoint=None, checkpoint_every: int = 100, callback=None) -> dict[str, list]:
    """Fit ``model`` to ``data`` by maximizing the ELBO with Adam, using :func:`dgmkd.train`.

    KL warm-up (Sønderby et al. 2016, §2.3): the KL term is weighted by ``beta = min(1, step /
    warmup)``, so the top layers are not switched off by the prior before the decoder uses them.
    Minibatches are drawn uniformly with replacement from ``data`` by torch's RNG (seeded by
    :func:`dgmkd.train`, so runs are reproducible and resumable).
    """
    from ..train import train

    model._check_images(data)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data)

    def batches():
        return (data[torch.randint(n, (batch,))],)

    def step_fn(args, step):
        (x,) = args
        beta = min(1.0, (step + 1) / warmup) if warmup else 1.0
        elbo, rec, kl = model.elbo(x, beta)
        loss = -elbo.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "rec": rec.mean().detach(), "kl": kl.mean().detach()}

    model.train()
    return train(step_fn, batches, steps, state={"model": model, "optimizer": opt}, seed=seed,
                 progress=progress, desc=desc, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                 callback=callback)
