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
with ``x`` supplied by the generator instead of ``p_data(x)``. :func:`generated_inputs` makes a
trained generator an ``inputs=`` callable for :func:`dgmkd.distill`. The generators are DGMs too
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
    ['d_loss', 'g_adv', 'g_loss', 'g_prior', 'g_recon', 's_kd']
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, Independent, Normal

from .. import divergences
from ..coupling import couple
from ..losses import surrogate
from ..sites import deterministic, latent
from ..train import train

__all__ = ["Generator", "GaussianGenerator", "Discriminator", "MLPDiscriminator", "discriminator_loss",
           "teacher_log_likelihood", "disagreement", "vkd_kl", "kd_update", "generated_inputs", "AVKD"]


# ----------------------------------------------------------------------------------- generators
class Generator(nn.Module):
    """``x = G(y, eps)``: noise (and the one-hot label when ``num_classes > 0``) -> image in [0, 1].

    A DGM: ``forward(y)`` (labels, conditional) or ``forward(n)`` (unconditional, ``num_classes=0``)
    draws the latent site ``"eps" ~ N(0, I)`` and returns the deterministic site ``"x"``.
    Architecture after the DAFL/DFAD generators (linear, then upsampling convolutions with batch
    norm), sized for ``out_shape`` with spatial side divisible by 4.
    """

    def __init__(self, num_classes: int = 10, noise_dim: int = 32, out_shape: tuple[int, int, int] = (1, 8, 8),
                 hidden: int = 64):
        super().__init__()
        self.num_classes, self.noise_dim, self.out_shape = num_classes, noise_dim, tuple(out_shape)
        c, h, w = self.out_shape
        self.init = (h // 4, w // 4)
        self.fc = nn.Linear(noise_dim + num_classes, hidden * self.init[0] * self.init[1])
        self.net = nn.Sequential(
            nn.BatchNorm2d(hidden), nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.BatchNorm2d(hidden), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden // 2, 3, 1, 1), nn.BatchNorm2d(hidden // 2), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden // 2, c, 3, 1, 1))
        self.hidden = hidden

    def decode(self, eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = eps if not self.num_classes else torch.cat([eps, F.one_hot(y, self.num_classes).float()], 1)
        h = self.fc(h).view(len(eps), self.hidden, *self.init)
        return torch.sigmoid(self.net(h))

    def forward(self, y_or_n) -> torch.Tensor:
        y = y_or_n if isinstance(y_or_n, torch.Tensor) else None
        n = len(y) if y is not None else int(y_or_n)
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs labels y, not a batch size")
        dev = self.fc.weight.device
        eps = latent("eps", Independent(Normal(torch.zeros(n, self.noise_dim, device=dev), 1.0), 1))
        return deterministic("x", self.decode(eps, y))


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


def kd_update(teacher, student, x: torch.Tensor, opt: torch.optim.Optimizer, temperature: float = 1.0,
              validate_args: bool | None = False) -> torch.Tensor:
    """One student step of Eq. 3.18 on inputs ``x``: the surrogate (vanilla KD) loss of the coupled
    classifiers, ``losses.surrogate(couple(teacher, student, x))``."""
    loss = surrogate(couple(teacher, student, x, validate_args=validate_args), temperature=temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _labels(n: int, num_classes: int, device=None) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), device=device)


def generated_inputs(generator: nn.Module, batch: int, num_classes: int | None = None) -> Callable[[], torch.Tensor]:
    """An ``inputs=`` callable for :func:`dgmkd.distill`: each call returns a fresh batch
    ``G(y, eps)`` (``y ~ Uniform`` for a conditional generator), without gradient."""
    k = getattr(generator, "num_classes", 0) if num_classes is None else num_classes

    @torch.no_grad()
    def supply():
        dev = next(generator.parameters()).device
        return generator(_labels(batch, k, dev)) if k else generator(batch)

    return supply


# ------------------------------------------------------------------------------------ the method
class AVKD:
    """Algorithm 1 of Tang & Lin as a step function for :func:`dgmkd.train`.

    ``prior_data`` (a tensor of unlabeled inputs) with a ``discriminator`` gives AVKD; with
    ``prior_data=None`` and a :class:`GaussianGenerator`, the prior term is VKD's analytic KL to
    ``N(0, I)``. Every iteration: one generator step on ``L_G`` (module docstring), one
    discriminator step (Eq. 3.17, on the same generated batch), ``n_student`` student KD steps on
    fresh generated batches. ``p(y)`` is uniform over ``num_classes`` (their §4.2).

    Optimizers are Adam (the paper: Adam for the generator, Nesterov SGD for student and
    discriminator; Adam is less sensitive on these small models); the student's learning rate
    follows a cosine schedule over the run when ``fit`` is used.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *,
                 prior_data: torch.Tensor | None = None, discriminator: nn.Module | None = None,
                 num_classes: int | None = None, batch: int = 128, n_student: int = 5,
                 lr_g: float = 1e-3, lr_d: float = 2e-4, lr_s: float = 2e-3,
                 w_prior: float = 1.0, w_recon: float = 1.0, w_adv: float = 1.0, temperature: float = 1.0,
                 prior_loc: float = 0.0, prior_scale: float = 1.0):
        if (prior_data is None) != (discriminator is None):
            raise ValueError("AVKD needs both prior_data and a discriminator; VKD (Gaussian prior) neither")
        self.teacher, self.student, self.generator, self.disc = teacher, student, generator, discriminator
        self.prior = prior_data
        self.num_classes = num_classes or getattr(generator, "num_classes", None) or teacher.num_classes
        self.batch, self.n_student = batch, n_student
        self.w_prior, self.w_recon, self.w_adv, self.temperature = w_prior, w_recon, w_adv, temperature
        self.prior_loc, self.prior_scale = prior_loc, prior_scale
        teacher.eval()
        teacher.requires_grad_(False)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr_g, betas=(0.5, 0.999))
        self.opt_s = torch.optim.Adam(student.parameters(), lr_s)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr_d, betas=(0.5, 0.999)) if discriminator else None
        self.sched_s = None

    @property
    def mode(self) -> str:
        return "avkd" if self.disc is not None else "vkd"

    def state(self) -> dict:
        s = {"generator": self.generator, "student": self.student, "opt_g": self.opt_g, "opt_s": self.opt_s}
        if self.disc is not None:
            s.update(discriminator=self.disc, opt_d=self.opt_d)
        if self.sched_s is not None:
            s["sched_s"] = self.sched_s
        return s

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

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` generated inputs (``y`` uniform unless given), without gradient."""
        with torch.no_grad():
            y = _labels(n, self.num_classes) if y is None else y
            return self.generator(y)

    def step(self, args, step: int) -> dict:
        m = self.batch
        # generator (Eq. 3.16)
        y = _labels(m, self.num_classes)
        loss_g, terms = self.generator_terms(y)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        out = {"g_loss": loss_g.detach(), "g_prior": terms["prior"].detach(), "g_recon": terms["recon"].detach(),
               "g_adv": terms["adv"].detach()}
        # discriminator (Eq. 3.17)
        if self.disc is not None:
            idx = torch.randint(0, len(self.prior), (m,))
            loss_d = discriminator_loss(self.disc, terms["x"].detach(), y, self.prior[idx], _labels(m, self.num_classes))
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out["d_loss"] = loss_d.detach()
        # n student steps (Eq. 3.18): vanilla KD on generated inputs
        kd = 0.0
        for _ in range(self.n_student):
            kd += kd_update(self.teacher, self.student, self.sample(m), self.opt_s, self.temperature)
            if self.sched_s is not None:
                self.sched_s.step()
        out["s_kd"] = kd / max(1, self.n_student)
        return out

    def fit(self, steps: int, *, checkpoint: str | os.PathLike | None = None, seed: int | None = 0,
            progress: bool = True, callback=None, cosine: bool = True) -> dict[str, list]:
        """Run ``steps`` iterations of Algorithm 1 with :func:`dgmkd.train`; returns the history."""
        self.student.train()
        self.generator.train()
        if cosine and self.sched_s is None:
            self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_s, max(1, steps * self.n_student))
        return train(self.step, self.batch, steps, state=self.state(), checkpoint=checkpoint, seed=seed,
                     progress=progress, desc=self.mode, callback=callback)
