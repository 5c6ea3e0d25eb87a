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

and ``q(z5 | x) = N(mu_hat_5, sigma_hat_5)``. The model exposes its loss, :meth:`LadderVAE.loss`
(the negative ELBO with the KL weighted by ``beta``); training is the caller's, e.g. with the KL
warm-up of Sønderby et al. §2.3 (:func:`kl_weight`)::

    fit(lambda a, step: m.loss(a[0], kl_weight(step, 500)), m, minibatches(x, batch=128), 2000)

Conditions. With ``num_conditions = K > 0`` a one-hot condition ``c`` (an ``int`` for the whole
batch, or an ``(N,)`` integer tensor) enters every block: the stem's fully connected layer (after
the convolutions), every bottom-up MLP, every prior ``p(z_i | z_{i+1}, c)``, the image decoder, and
a learned top prior ``p(z_L | c)``; :class:`CondLadderVAE` in :mod:`.cond_hvae` is this model
with ``K = 2`` (continual learning). Every method takes ``c`` as its last argument.

Sites. ``model(n)`` (``model(n, c)``) is the data-free generative model: latents ``z5 .. z1``
and the target ``x``. ``model.inference()`` is the inference network as a DGM in its own right:
``x`` is its input, the posterior layers are latents ``z5 .. z1`` and the reconstruction
``p(x | z1)`` is a target ``x_rec``; so the same coupling and losses distill ``q_T(z | x)`` into
``q_S(z | x)``.

Example:
    >>> import torch
    >>> from dgmkd.models.hvae import LadderVAE
    >>> m = LadderVAE(image_size=8, width=8)
    >>> m.sample(4).shape
    torch.Size([4, 1, 8, 8])
    >>> m.log_weights(torch.rand(3, 1, 8, 8), k=5).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal
import torch.nn.functional as F

from .. import sites
from ..saving import buildable

__all__ = ["LadderVAE", "iw_nll", "kl_weight"]

LIKELIHOODS = ("gaussian", "bernoulli")


def _std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    return F.softplus(raw) + min_std


def kl_weight(step: int, warmup: int) -> float:
    """The KL warm-up of Sønderby et al. (2016, §2.3): ``beta = min(1, (step + 1) / warmup)``
    (1 without warm-up), so the top layers are not switched off by the prior before the decoder
    uses them."""
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


def _rename_old_stem_keys(fc_index: int):
    """Weights saved before the stem's fully connected layer became ``stem_fc`` (it was entry
    ``fc_index`` of ``stem``) load under the new names."""
    def hook(state_dict, prefix, *args):
        for kind in ("weight", "bias"):
            old = f"{prefix}stem.{fc_index}.{kind}"
            if old in state_dict and f"{prefix}stem_fc.0.{kind}" not in state_dict:
                state_dict[f"{prefix}stem_fc.0.{kind}"] = state_dict.pop(old)
    return hook


@buildable
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
        num_conditions: ``K`` one-hot conditions entering every block (0: unconditional).
    """

    def __init__(self, image_size: int = 8, channels: int = 1, width: int = 32,
                 latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4), hidden_mult: int = 4,
                 likelihood: str = "gaussian", sigma: float = 0.1, min_std: float = 1e-3, num_conditions: int = 0):
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
        if int(num_conditions) < 0:
            raise ValueError(f"num_conditions must be >= 0, got {num_conditions}")
        self.image_size, self.channels, self.width = image_size, channels, width
        self.latent_dims = tuple(int(d) for d in latent_dims)
        self.likelihood, self.sigma, self.min_std = likelihood, float(sigma), float(min_std)
        K = self.num_conditions = int(num_conditions)
        c, h, dims = width, hidden_mult * width, self.latent_dims
        n_down = int(math.log2(image_size // 4))
        act = nn.SiLU
        # bottom-up (inference) path; the convolutions see only x (a condition joins after them:
        # as one-hot image planes it would change their fan-in, hence their initial scale)
        stem = [nn.Conv2d(channels, c, 3, padding=1), act()]
        for _ in range(n_down):
            stem += [nn.Conv2d(c, c, 4, stride=2, padding=1), act()]
        self.stem = nn.Sequential(*stem, nn.Flatten())
        self.stem_fc = nn.Sequential(nn.Linear(16 * c + K, h), act())
        self._register_load_state_dict_pre_hook(_rename_old_stem_keys(len(stem) + 1))
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(h + K, h), act()) for _ in dims)
        self.q_head = nn.ModuleList(nn.Linear(h, 2 * d) for d in dims)
        # top-down (generative) path: p(z_i | z_{i+1}) for i < L, the learned p(z_L | c) if K > 0
        self.prior = nn.ModuleList(
            nn.Sequential(nn.Linear(dims[i + 1] + K, h), act(), nn.Linear(h, h), act(), nn.Linear(h, 2 * dims[i]))
            for i in range(len(dims) - 1))
        self.top_prior = nn.Linear(K, 2 * dims[-1]) if K else None
        if K:  # starts as N(0, I): zero weights, bias (0, softplus^-1(1))
            nn.init.zeros_(self.top_prior.weight)
            with torch.no_grad():
                self.top_prior.bias.zero_()
                self.top_prior.bias[dims[-1]:] = math.log(math.e - 1)
        dec = [nn.Linear(dims[0] + K, h), act(), nn.Linear(h, 16 * c), act(), nn.Unflatten(1, (c, 4, 4))]
        for _ in range(n_down):
            dec += [nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), act()]
        dec += [nn.Conv2d(c, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ parameters
    def generative_parameters(self):
        """Parameters used to sample (priors and decoder)."""
        for m in (self.prior, self.top_prior, self.decoder):
            if m is not None:
                yield from m.parameters()

    def encoder_parameters(self):
        """Parameters only the inference network uses (stem, bottom-up MLPs, posterior heads)."""
        for m in (self.stem, self.stem_fc, self.up, self.q_head):
            yield from m.parameters()

    def num_parameters(self, part: str = "all") -> int:
        """Parameter count of ``"all"``, ``"generative"`` or ``"encoder"``."""
        it = {"all": self.parameters, "generative": self.generative_parameters,
              "encoder": self.encoder_parameters}[part]()
        return sum(p.numel() for p in it)

    # ------------------------------------------------------------------ the condition
    def onehot(self, c, n: int, like: torch.Tensor) -> torch.Tensor | None:
        """``(n, K)`` one-hot rows of condition ``c`` (an int, an ``(n,)`` integer tensor, or
        ``(n, K)`` rows already); ``None`` for an unconditional model (which takes only ``c = 0``)."""
        K = self.num_conditions
        if K == 0:
            if not (isinstance(c, int) and c == 0):
                raise ValueError(f"this LadderVAE has no conditions (num_conditions=0), got c={c!r}")
            return None
        if isinstance(c, torch.Tensor) and c.dim() == 2:
            if c.shape != (n, K):
                raise ValueError(f"condition of shape {tuple(c.shape)}, want ({n}, {K})")
            return c.to(like)
        idx = torch.as_tensor(c, device=like.device, dtype=torch.long)
        if idx.dim() == 0:
            idx = idx.expand(n)
        if idx.shape != (n,):
            raise ValueError(f"condition must be an int or a ({n},) tensor, got shape {tuple(idx.shape)}")
        if bool(((idx < 0) | (idx >= K)).any()):
            raise ValueError(f"conditions must be in 0..{K - 1}, got {idx.unique().tolist()}")
        return F.one_hot(idx, K).to(like.dtype)

    @staticmethod
    def _join(t: torch.Tensor, oh: torch.Tensor | None) -> torch.Tensor:
        return t if oh is None else torch.cat([t, oh], -1)

    # ------------------------------------------------------------------ building blocks
    def _prior(self, i: int, z_above: torch.Tensor | None, oh, n: int, like: torch.Tensor) -> Normal:
        if i == len(self.latent_dims) - 1:
            if oh is None:
                zeros = like.new_zeros(n, self.latent_dims[i])
                return Normal(zeros, torch.ones_like(zeros))
            mu, raw = self.top_prior(oh).chunk(2, dim=-1)
        else:
            mu, raw = self.prior[i](self._join(z_above, oh)).chunk(2, dim=-1)
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

    def bottom_up(self, x: torch.Tensor, c=0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(mu_hat_i, sigma_hat_i)`` for layers 1..L (Sønderby et al. 2016, Eq. 17)."""
        self._check_images(x)
        oh = self.onehot(c, len(x), x)
        d = self.stem_fc(self._join(self.stem(x), oh))
        out = []
        for up, head in zip(self.up, self.q_head):
            d = up(self._join(d, oh))
            mu, raw = head(d).chunk(2, dim=-1)
            out.append((mu, _std(raw, self.min_std)))
        return out

    @staticmethod
    def merge(mu_hat, sd_hat, prior: Normal) -> Normal:
        """Precision-weighted merge of the bottom-up estimate and the prior (Sønderby Eq. 18–19)."""
        prec_hat, prec_p = sd_hat.pow(-2), prior.scale.pow(-2)
        var = 1.0 / (prec_hat + prec_p)
        return Normal((mu_hat * prec_hat + prior.loc * prec_p) * var, var.sqrt())

    def _top_down(self, n: int, like: torch.Tensor, draw: Callable, bu=None, c=0):
        """Run the top-down pass; ``bu`` (bottom-up stats) switches from the prior to the posterior.
        Returns ``[(z_i, q_i or None, p_i)]`` bottom to top and the decoder output."""
        oh = self.onehot(c, n, like)
        L = len(self.latent_dims)
        layers = [None] * L
        z = None
        for i in range(L - 1, -1, -1):
            p = self._prior(i, z, oh, n, like)
            q = None
            if bu is not None:
                mu_hat, sd_hat = bu[i]
                q = Normal(mu_hat, sd_hat) if i == L - 1 else self.merge(mu_hat, sd_hat, p)
            z = draw(f"z{i + 1}", p if q is None else q)
            layers[i] = (z, q, p)
        return layers, self.decoder(self._join(layers[0][0], oh))

    # ------------------------------------------------------------------ the two DGMs
    def forward(self, n: int, c=0) -> torch.Tensor:
        """The generative model (of condition ``c``) with sites: latents ``z5..z1``, target ``x``.
        Returns the sampled ``x``."""
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"{type(self).__name__}(n): n must be a positive batch size, got {n!r}")
        _, out = self._top_down(n, next(self.parameters()), sites.latent, c=c)
        return sites.target("x", self._likelihood(out))

    def encode(self, x: torch.Tensor, c=0) -> torch.Tensor:
        """The inference network with sites: latents ``z5..z1`` drawn from ``q(z | x, c)``, target
        ``x_rec`` from ``p(x | z1, c)``. Returns ``z1``. (Use :meth:`inference` for a module.)"""
        layers, out = self._top_down(len(x), x, sites.latent, self.bottom_up(x, c), c)
        sites.target("x_rec", self._likelihood(out))
        return layers[0][0]

    def inference(self) -> "_Inference":
        """An ``nn.Module`` whose ``forward(x, c=0)`` is :meth:`encode` — a DGM with input ``x``."""
        return _Inference(self)

    # ------------------------------------------------------------------ plain use
    @torch.no_grad()
    def sample(self, n: int, mean: bool = True, c=0) -> torch.Tensor:
        """``n`` images: the decoder mean (``mean=True``, what sample grids and metrics use) or a
        draw of ``p(x | z1)``."""
        _, out = self._top_down(n, next(self.parameters()), lambda name, d: d.sample(), c=c)
        px = self._likelihood(out)
        return px.mean if mean else px.sample()

    def _log_px(self, out, x):
        return self._likelihood(out).log_prob(x).flatten(1).sum(-1)

    def elbo(self, x: torch.Tensor, beta: float = 1.0, c=0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(elbo, log p(x|z1), KL)`` per image, one posterior sample; KLs analytic layer by layer
        given the sampled parents (each ``q_i`` and ``p_i`` share the same conditioning ``z_{i+1}``).
        ``beta`` weighs the KL (warm-up); ``elbo`` uses it."""
        layers, out = self._top_down(len(x), x, lambda name, d: d.rsample(), self.bottom_up(x, c), c)
        rec = self._log_px(out, x)
        kl = sum(torch.distributions.kl_divergence(q, p).sum(-1) for _, q, p in layers)
        return rec - beta * kl, rec, kl

    def loss(self, x: torch.Tensor, beta: float = 1.0, c=0) -> dict[str, torch.Tensor]:
        """The training objective: ``{"loss": -ELBO (batch mean, KL weighted by beta), "rec", "kl"}``."""
        elbo, rec, kl = self.elbo(x, beta, c)
        return {"loss": -elbo.mean(), "rec": rec.mean().detach(), "kl": kl.mean().detach()}

    @torch.no_grad()
    def log_weights(self, x: torch.Tensor, k: int = 100, c=0) -> torch.Tensor:
        """Importance log-weights ``log p(x, z) - log q(z | x)``, shape ``(k, N)``, ``z ~ q(z|x)``."""
        self._check_images(x)
        n = len(x)
        xr = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        if isinstance(c, torch.Tensor) and c.dim() >= 1:
            c = c.unsqueeze(0).expand(k, *c.shape).reshape(k * n, *c.shape[1:])
        layers, out = self._top_down(k * n, xr, lambda name, d: d.sample(), self.bottom_up(xr, c), c)
        lw = self._log_px(out, xr)
        for z, q, p in layers:
            lw = lw + p.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        return lw.view(k, n)


class _Inference(nn.Module):
    """The inference network of a :class:`LadderVAE` as a DGM (see :meth:`LadderVAE.encode`)."""

    def __init__(self, vae: LadderVAE):
        super().__init__()
        self.vae = vae

    def forward(self, x, c=0):
        return self.vae.encode(x, c)


def iw_nll(model: LadderVAE, x: torch.Tensor, k: int = 100, batch: int = 64, c=0) -> torch.Tensor:
    """Importance-weighted bound (Burda et al. 2016) ``-log 1/k sum_j p(x, z_j)/q(z_j|x)`` per image:
    an upper bound of the negative log-likelihood in nats, tightening as ``k`` grows. With the
    Gaussian decoder it is a *density* on [0, 1]-valued pixels, so it may be negative."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        lw = model.log_weights(x[i:i + batch], k, c)
        out.append(-(torch.logsumexp(lw, 0) - math.log(k)))
    model.train(was)
    return torch.cat(out)
