"""Adversarial Variational Knowledge Distillation (Tang & Lin), and its Gaussian-prior ablation VKD.

Data-free distillation of a classifier ``p_T(y|x)`` into ``p_S(y|x)``: the missing inputs ``x``
are treated as the *latent* variable of a VAE whose observation is the label ``y`` and whose
likelihood is the frozen teacher. A generator ``q_phi(x|y)``, ``x = G_phi(y, eps)``, maximizes
the ELBO ``E_q[log p(x) - log q(x|y) + log p_T(y|x)]`` (Eq. 3.9). With a prior ``p(x)`` known only
through samples (*prior data*: unlabeled images of a related domain) the term
``log p(x) - log q(x|y)`` is estimated by an AVB discriminator ``D(x, y)`` trained with the
logistic loss (Eq. 3.11/3.17) whose optimum is ``D* = log q(x|y) - log p(x)`` (Eq. 3.12).
The generator also maximizes the teacher/student disagreement ``KL(p_T(.|x) || p_S(.|x))``
(the adversarial term), so its objective, minimized here, is the negative of Eq. 3.16::

    L_G = w_prior * D(G(y,eps), y) - log p_T(y | G(y,eps)) - w_adv * KL(p_T || p_S)(G(y,eps))

and the student minimizes the KD loss on generated inputs (Eq. 3.18), ``n_student`` times per
generator/discriminator update (Algorithm 1).

In the vocabulary of :mod:`dgmkd`: the classifier is a DGM with one target site and inputs, and
the student update is exactly ``losses.surrogate(couple(teacher, student, x))`` — vanilla KD —
with ``x`` supplied by the generator instead of ``p_data(x)`` (:func:`~dgmkd.methods.generator_kd.kd_loss`;
the game is run by :class:`~dgmkd.methods.generator_kd.GeneratorKD`).
:func:`~dgmkd.methods.generator_kd.generated_inputs` makes a trained generator an ``inputs=``
callable for :func:`dgmkd.distill`. The generators are DGMs too
(latent noise site ``"eps"``, deterministic site ``"x"``; VKD's Gaussian ``q(x|y)`` is a latent
site ``"x"``).

VKD (§3.2): ``q(x|y)`` Gaussian and ``p(x) = N(0, I)``: the prior term is the analytic
``KL(q(x|y) || p(x))`` (:func:`vkd_kl`) instead of the discriminator.

Example (a few steps on random "prior data"):
    >>> import torch
    >>> from dgmkd.models.classifiers import teacher_net, student_net
    >>> _ = torch.manual_seed(0)
    >>> m = AVKD(teacher_net(3), student_net(3), Generator(3), prior_data=torch.rand(64, 1, 8, 8),
    ...          discriminator=Discriminator(3), batch=16, n_student=2)
    >>> hist = m.fit(3, progress=False)
    >>> sorted(k for k in hist if k != "step")
    ['discriminator.loss', 'generator.adv', 'generator.loss', 'generator.prior', 'generator.recon', 'student.loss']
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from .. import divergences
from ..sites import latent
from ..train import minibatches
from .generator_kd import Generator, GeneratorKD, _labels, generated_inputs, kd_loss

__all__ = ["Generator", "GaussianGenerator", "Discriminator", "MLPDiscriminator", "discriminator_loss",
           "teacher_log_likelihood", "disagreement", "vkd_kl", "kd_loss", "generated_inputs", "AVKD"]


# ----------------------------------------------------------------------------------- generators
class GaussianGenerator(nn.Module):
    """VKD's explicit ``q(x|y) = N(mu_y, diag sigma_y^2)``: one learned mean image and scale per
    class. ``forward(y)`` returns the reparameterized latent site ``"x"``."""

    def __init__(self, num_classes: int = 10, out_shape: tuple[int, int, int] = (1, 8, 8), init_scale: float = 0.5):
        super().__init__()
        self.num_classes, self.out_shape = num_classes, tuple(out_shape)
        self.mu = nn.Parameter(0.1 * torch.randn(num_classes, *out_shape))
        self.log_sigma = nn.Parameter(torch.full((num_classes, *out_shape), float(torch.tensor(init_scale).log())))

    def dist(self, y: torch.Tensor) -> Independent:
        return Independent(Normal(self.mu[y], self.log_sigma[y].exp()), len(self.out_shape))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return latent("x", self.dist(y))


# ------------------------------------------------------------------------------- discriminators
class Discriminator(nn.Module):
    """``D(x, y)`` for images: three convolutions (as in the paper) and a projection on the label
    embedding (Miyato & Koyama 2018): ``D = w^T h(x) + e_y^T h(x) + b``. Returns logits ``(N,)``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2))
        self.out = nn.Linear(2 * width, 1)
        self.embed = nn.Embedding(num_classes, 2 * width)
        nn.init.zeros_(self.embed.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))
        return self.out(h).squeeze(-1) + (self.embed(y) * h).sum(-1)


class MLPDiscriminator(nn.Module):
    """``D(x, y)`` for flat inputs ``(N, d)``: an MLP body with the same label projection."""

    def __init__(self, x_dim: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)

    def forward(self, x, y):
        h = self.body(x)
        return self.out(h).squeeze(-1) + (self.embed(y) * h).sum(-1)


# ------------------------------------------------------------------------------------ objectives
def discriminator_loss(disc: Callable, x_gen: torch.Tensor, y_gen: torch.Tensor, x_prior: torch.Tensor,
                       y_prior: torch.Tensor) -> torch.Tensor:
    """Negative of Eq. 3.17: ``-log sigma(D(x_gen, y)) - log(1 - sigma(D(x_prior, y')))``, batch
    means. Its minimizer is ``D*(x, y) = log q(x|y) - log p(x)`` (Eq. 3.12) when ``y`` and ``y'``
    follow the same ``p(y)`` and ``x_prior`` is independent of ``y'``."""
    return F.softplus(-disc(x_gen, y_gen)).mean() + F.softplus(disc(x_prior, y_prior)).mean()


def teacher_log_likelihood(t_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p_T(y|x)`` per example: the VAE's reconstruction term."""
    return -F.cross_entropy(t_logits, y, reduction="none")


def disagreement(t_logits: torch.Tensor, s_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(p_T(.|x) || p_S(.|x))`` batch mean (the adversarial term; also the KD loss), with the
    library's KL and temperature (``T**2``-scaled)."""
    return divergences.site("kl", Categorical(logits=t_logits), Categorical(logits=s_logits), None, temperature)


def vkd_kl(q: Independent, prior_loc: float = 0.0, prior_scale: float = 1.0) -> torch.Tensor:
    """VKD's analytic ``KL(q(x|y) || N(prior_loc, prior_scale^2 I))`` summed over x, batch mean."""
    base = q.base_dist
    p = Independent(Normal(torch.full_like(base.loc, prior_loc), torch.full_like(base.scale, prior_scale)),
                    q.reinterpreted_batch_ndims)
    return divergences.reduce(divergences.kl(q, p))


# ------------------------------------------------------------------------------------ the method
class AVKD(GeneratorKD):
    """Algorithm 1 of Tang & Lin, a :class:`~dgmkd.methods.generator_kd.GeneratorKD` game.

    ``prior_data`` (a tensor of unlabeled inputs) with a ``discriminator`` gives AVKD; with
    ``prior_data=None`` and a :class:`GaussianGenerator`, the prior term is VKD's analytic KL to
    ``N(prior_loc, prior_scale^2 I)``. Every iteration: one generator step on ``L_G`` (module
    docstring), one discriminator step (Eq. 3.17, on the same generated batch, detached),
    ``n_student`` student KD steps on fresh generated batches. ``p(y)`` is uniform over
    ``num_classes`` (their §4.2).

    Optimizers are Adam with ``betas=(0.5, 0.999)`` for all three players (the paper: Adam for the
    generator, Nesterov SGD for student and discriminator; Adam is less sensitive on these small
    models); the student's learning rate follows a cosine decay over the run.
    """

    betas = (0.5, 0.999)

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *,
                 prior_data: torch.Tensor | None = None, discriminator: nn.Module | None = None,
                 num_classes: int | None = None, batch: int = 128, n_student: int = 5,
                 lr_g: float = 1e-3, lr_d: float = 2e-4, lr_s: float = 2e-3,
                 w_prior: float = 1.0, w_recon: float = 1.0, w_adv: float = 1.0, temperature: float = 1.0,
                 prior_loc: float = 0.0, prior_scale: float = 1.0):
        if (prior_data is None) != (discriminator is None):
            raise ValueError("AVKD needs both prior_data and a discriminator; VKD (Gaussian prior) neither")
        super().__init__(teacher, student, generator, batch=batch, n_student=n_student, lr_g=lr_g, lr_s=lr_s,
                         temperature=temperature,
                         num_classes=num_classes or getattr(generator, "num_classes", None) or teacher.num_classes)
        self.disc, self.prior, self.lr_d = discriminator, prior_data, lr_d
        self._prior_batch = minibatches(prior_data, batch=batch) if prior_data is not None else None
        self.w_prior, self.w_recon, self.w_adv = w_prior, w_recon, w_adv
        self.prior_loc, self.prior_scale = prior_loc, prior_scale
        self._last = None

    @property
    def mode(self) -> str:
        return "avkd" if self.disc is not None else "vkd"

    @property
    def name(self) -> str:
        return self.mode

    def generator_terms(self, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``(L_G, terms)`` on a fresh ``x = G(y, eps)``; ``terms`` holds ``x`` and the three batch-mean terms."""
        if self.mode == "vkd":
            q = self.generator.dist(y)
            x = q.rsample()
            prior = vkd_kl(q, self.prior_loc, self.prior_scale)
        else:
            x = self.generator(y)
            prior = self.disc(x, y).mean()  # ~ E_q[log q(x|y) - log p(x)] at the optimum (Eq. 3.12)
        t = self.teacher.logits(x)
        recon = teacher_log_likelihood(t, y).mean()
        adv = disagreement(t, self.student.logits(x), self.temperature)
        loss = self.w_prior * prior - self.w_recon * recon - self.w_adv * adv
        return loss, {"x": x, "prior": prior, "recon": recon, "adv": adv}

    def generator_loss(self) -> dict:
        y = _labels(self.batch, self.num_classes)
        loss, terms = self.generator_terms(y)
        self._last = (terms["x"].detach(), y)
        return {"loss": loss, "prior": terms["prior"].detach(), "recon": terms["recon"].detach(),
                "adv": terms["adv"].detach()}

    def discriminator_loss(self) -> dict:
        x, y = self._last
        (prior,) = self._prior_batch()
        return {"loss": discriminator_loss(self.disc, x, y, prior, _labels(self.batch, self.num_classes))}

    def players(self) -> dict:
        p = super().players()
        if self.disc is not None:
            p["discriminator"] = (self.discriminator_loss, self.disc, self.lr_d)
        return p
