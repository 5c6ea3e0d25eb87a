"""Probability density distillation and its alternatives (Huang et al., UAI 2019).

A teacher ``T`` (e.g. :class:`~dgmkd.models.autoregressive.GaussianAutoregressive`) samples by a
slow map ``T^-1: z -> x`` but encodes (``T: x -> z``) and evaluates densities in one parallel
pass; a student ``S: z -> x`` (e.g. :class:`~dgmkd.models.iaf.IAF`) samples in one parallel pass.
Both follow the :class:`~dgmkd.models.autoregressive.InvertibleSampler` interface:
``from_noise(z) -> (x, log|det dx/dz|)``, ``to_noise(x) -> (z, log|det dz/dx|)``, ``log_prob(x)``.

Losses (each a scalar: a per-example quantity summed over dimensions, averaged over the batch,
the reduction of :func:`dgmkd.divergences.reduce`):

* :func:`reverse_kl` — Eq. (2), the Parallel WaveNet objective
  ``E_{x~S}[log p_S(x) - log p_T(x)]``; the student's entropy by the change of variables (Eq. 4).
  It is "evaluative": §3.1 shows its gradient rarely points outward (Prop. 1), so the student
  stays concentrated on the teacher's mode.
* :func:`z_reconstruction` — §4 item 1: ``d(z, T(S(z)))``, ``z ~ N(0, I)``; the distance
  ``d_T(T^-1(z), S(z))`` induced by the teacher (Prop. 2).
* :func:`x_reconstruction` — §4 item 2: ``d(x, S(T(x) + noise))`` on data ``x``; with Gaussian
  noise injected into the encodings (§4.1.3, their N(0, 0.5)) the student is trained as a
  decoder of a smoothed code space. "Instructive": it is shown typical samples.
* :func:`oracle_prediction` — §4: ``d(T^-1(z), S(z))``. It *is* the unified surrogate /
  latent loss of Chen et al. (2023) with a distance when both models are written with dgmkd sites
  (one shared standard-normal latent ``z``, output ``x`` a deterministic site or a target):
  :func:`oracle_prediction_coupled` computes it that way and the tests check the two agree.

Distances: ``"l2"`` (squared Euclidean) and ``"l1"`` (absolute), from :mod:`dgmkd.divergences`.

Analysis tools of §3.1–3.2: :func:`expansion_signal` (the Monte-Carlo frequency of the event
``{(x - c)^T g_x > 0}``) and :func:`expansion_probability` (its closed form for Gaussians,
Proposition 1, evaluated by Imhof's formula).

Example (linear case, every loss 0 at the teacher itself):
    >>> import torch
    >>> from dgmkd.models.linear_gaussian import LinearGaussian
    >>> from dgmkd.methods import density
    >>> t = LinearGaussian.random(3, generator=torch.Generator().manual_seed(0))
    >>> s = LinearGaussian(3, t.loc, t.matrix)
    >>> z = torch.randn(8, 3)
    >>> [abs(round(float(density.loss(k, t, s, z=z, x=t.sample(8)).detach()), 4)) for k in density.LOSSES]
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .. import divergences as D
from .. import losses
from ..coupling import couple
from ..models.autoregressive import standard_normal_log_prob

__all__ = ["reverse_kl", "z_reconstruction", "x_reconstruction", "oracle_prediction",
           "oracle_prediction_coupled", "loss", "LOSSES", "DISTANCES", "objective",
           "expansion_signal", "expansion_probability", "relative_eigenvalues"]

DISTANCES = ("l2", "l1")
LOSSES = ("reverse_kl", "z_recon", "x_recon", "oracle")


def _distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    return D.site(distance, a, b)


def _noise_for(model, z: torch.Tensor | int) -> torch.Tensor:
    if isinstance(z, torch.Tensor):
        model._check(z, "z")
        return z
    return model.noise(z)


def reverse_kl(teacher, student, z: torch.Tensor | int) -> torch.Tensor:
    """``KL(p_S || p_T) = E_{x~S}[log p_S(x) - log p_T(x)]`` (Eq. 2), one sample per noise row.

    ``x = S(z)`` is reparameterized; ``log p_S(x) = log N(z) - log|det dS/dz|`` (Eq. 4) needs no
    inverse of the student; ``log p_T(x)`` is the teacher's parallel density pass. Gradients flow
    through ``x`` into the student (the path derivative of Eq. 6 plus the score term).
    """
    z = _noise_for(student, z)
    x, logdet = student.from_noise(z)
    log_ps = standard_normal_log_prob(z) - logdet
    return (log_ps - teacher.log_prob(x)).mean()


def z_reconstruction(teacher, student, z: torch.Tensor | int, distance: str = "l2") -> torch.Tensor:
    """``d(z, T(S(z)))`` (§4, item 1): the student as encoder... of noise into data, scored by the
    teacher's encoder; equals ``d_T(T^-1(z), S(z))`` for the teacher-induced metric (Prop. 2)."""
    z = _noise_for(student, z)
    x, _ = student.from_noise(z)
    z_rec, _ = teacher.to_noise(x)
    return _distance(z, z_rec, distance)


def x_reconstruction(teacher, student, x: torch.Tensor, distance: str = "l2",
                     noise_std: float = 0.0) -> torch.Tensor:
    """``d(x, S(T(x) + noise_std * eps))`` on data ``x`` (§4, item 2; noise injection §4.1.3).

    The teacher's encoding is computed without gradients (the teacher is fixed). When ``p_T``
    equals the data distribution, ``T(x) ~ N(0, I)`` and (with ``noise_std = 0``) this is oracle
    prediction on the teacher's own noise.
    """
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    teacher._check(x, "x")
    with torch.no_grad():
        z, _ = teacher.to_noise(x)
    if noise_std:
        z = z + noise_std * torch.randn_like(z)
    x_rec, _ = student.from_noise(z)
    return _distance(x, x_rec, distance)


def oracle_prediction(teacher, student, z: torch.Tensor | int, distance: str = "l2") -> torch.Tensor:
    """``d(T^-1(z), S(z))`` with ``z ~ N(0, I)`` (§4, "distillation with oracle prediction").

    ``T^-1(z)`` (the teacher's sequential sampler) runs without gradients.
    """
    z = _noise_for(student, z)
    with torch.no_grad():
        x_t, _ = teacher.from_noise(z)
    x_s, _ = student.from_noise(z)
    return _distance(x_t, x_s, distance)


def oracle_prediction_coupled(teacher, student, n: int, distance: str = "l2", output: str = "deterministic",
                              ) -> torch.Tensor:
    """Oracle prediction as the *unified* loss of Chen et al. (2023) on a dgmkd coupling.

    ``couple`` runs both models' site-based ``forward(n)``: the latent ``z`` (standard normal)
    gets one shared noise, so both compute ``x`` from the same ``z``; the output ``x`` is a
    deterministic site (then ``losses.latent`` with a distance compares the two values: Eq. 6/8)
    or a target ``N(x, I)`` (then ``losses.surrogate`` with ``l2``/``l1`` compares the two means:
    Eq. 4). The latent ``z`` itself contributes 0 (both are ``N(0, I)``).
    """
    c = couple(teacher, student, n, output=output)
    if output == "deterministic":
        return losses.latent(c, distance)
    return losses.surrogate(c, distance) + losses.latent(c, distance)


def loss(name: str, teacher, student, *, z: torch.Tensor | int | None = None, x: torch.Tensor | None = None,
         distance: str = "l2", noise_std: float = 0.0) -> torch.Tensor:
    """Dispatch by name (one of :data:`LOSSES`). ``z`` (noise or a batch size) feeds the
    data-free losses, ``x`` (data) feeds ``x_recon``."""
    if name == "x_recon":
        if x is None:
            raise ValueError("the x_recon loss needs data x (a batch of shape (n, dim))")
        return x_reconstruction(teacher, student, x, distance, noise_std)
    if z is None:
        raise ValueError(f"the {name} loss needs noise z (a tensor or a batch size)")
    if name == "reverse_kl":
        return reverse_kl(teacher, student, z)
    if name == "z_recon":
        return z_reconstruction(teacher, student, z, distance)
    if name == "oracle":
        return oracle_prediction(teacher, student, z, distance)
    raise ValueError(f"unknown density-distillation loss {name!r}; choose one of {', '.join(LOSSES)}")


def objective(name: str, teacher, student, *, distance: str = "l2", noise_std: float = 0.0,
              extra: Callable[[int], dict] | None = None) -> Callable[[tuple, int], dict]:
    """An ``objective(args, step)`` for :func:`dgmkd.train.fit`: loss ``name`` on one step's inputs.

    ``args`` is ``(batch,)`` for data-free losses (a batch size or a noise tensor) and ``(x,)``
    (a data batch) for ``x_recon``. The teacher is frozen (``requires_grad_(False)``, eval mode)
    so gradients reach only the student. ``extra(step)`` (optional) returns more metrics computed
    *before* the update (e.g. the expansion-signal frequency of Fig. 3).

    Example:
        >>> import torch
        >>> from dgmkd.train import fit
        >>> from dgmkd.models.linear_gaussian import LinearGaussian
        >>> t = LinearGaussian.random(3, generator=torch.Generator().manual_seed(0))
        >>> s = LinearGaussian(3)
        >>> h = fit(objective("oracle", t, s), s, 64, steps=300, lr=5e-2, progress=False)
        >>> h["loss"][-1] < 0.05 * h["loss"][0]
        True
    """
    if name not in LOSSES:
        raise ValueError(f"unknown density-distillation loss {name!r}; choose one of {', '.join(LOSSES)}")
    teacher.requires_grad_(False)
    teacher.eval()

    def step(args, i):
        metrics = extra(i) if extra is not None else {}
        (a,) = args
        data = {"x": a} if name == "x_recon" else {"z": a}
        return {"loss": loss(name, teacher, student, distance=distance, noise_std=noise_std, **data), **metrics}

    return step


def expansion_signal(teacher, student, n: int, center: torch.Tensor | None = None) -> float:
    """Frequency of the expansion signal ``{(x - c)^T g_x > 0}`` over ``n`` student samples (§3.1).

    ``g_x = grad_x (log p_T(x) - log p_S(x))`` is the negative gradient of the reverse-KL
    integrand with respect to the sample (autograd through both densities); the event says the
    gradient points away from the centre ``c`` — by default 0, the teacher's mode in Prop. 1; in the
    §3.2 study pass the teacher's mean — i.e. it would expand the student. Fig. 3 averages it
    over 128 samples per step and 8 repeats.
    """
    with torch.no_grad():
        x = student.sample(n)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad((teacher.log_prob(x) - student.log_prob(x)).sum(), x)[0]
    c = torch.zeros(()) if center is None else center.detach()
    return float((((x.detach() - c) * g).sum(-1) > 0).float().mean())


def relative_eigenvalues(teacher, student) -> torch.Tensor:
    """Eigenvalues of ``Sigma_S^{-1} Sigma_T``, the teacher's covariance in the student's whitened
    coordinates (Huang et al. footnote 1: Prop. 1 for a student other than ``N(0, I)``), in float64,
    for Gaussian samplers with a ``covariance()`` (e.g. :class:`~dgmkd.models.linear_gaussian.LinearGaussian`)."""
    l = torch.linalg.cholesky(student.covariance().detach().double())
    st = teacher.covariance().detach().double()
    m = torch.linalg.solve_triangular(l, torch.linalg.solve_triangular(l, st, upper=False).T, upper=False)
    return torch.linalg.eigvalsh(0.5 * (m + m.T))


def expansion_probability(eigenvalues) -> float:
    """Proposition 1 in closed form: ``P{x^T g_x > 0}`` for ``p_S = N(0, I)``, ``p_T = N(0, Sigma)``.

    With ``rho_i = 1 - 1/d_i^2`` (``d_i^2`` the eigenvalues of ``Sigma``), the probability is the
    fraction ``A_{U cap rho} / A_U`` of the unit sphere where ``sum_i rho_i u_i^2 > 0``, i.e.
    ``P{Q > 0}`` for the indefinite quadratic form ``Q = sum_i rho_i eps_i^2`` in standard normals.
    It is evaluated by Imhof's (1961) exact inversion formula

        ``P{Q > 0} = 1/2 + (1/pi) int_0^inf sin(theta(u)) / (u rho(u)) du``,
        ``theta(u) = 1/2 sum_i arctan(rho_i u)``, ``rho(u) = prod_i (1 + rho_i^2 u^2)^(1/4)``,

    a one-dimensional integral computed to ~1e-8 by adaptive quadrature. (In 2-d it reduces to
    ``(2/pi) arctan(sqrt(rho_1 / -rho_2))``, which the tests check.)
    """
    from scipy import integrate

    ev = np.asarray(torch.as_tensor(eigenvalues, dtype=torch.float64).detach().cpu(), dtype=np.float64).ravel()
    if ev.size == 0:
        raise ValueError("expansion_probability needs at least one eigenvalue")
    if np.any(~np.isfinite(ev)) or np.any(ev <= 0):
        raise ValueError("eigenvalues of a covariance matrix must be finite and positive")
    rho = 1.0 - 1.0 / ev
    rho = rho[np.abs(rho) > 1e-12]
    if rho.size == 0:
        return 0.0  # Sigma = I: g_x = 0, the event never happens
    if np.all(rho > 0):
        return 1.0
    if np.all(rho < 0):
        return 0.0
    lam = rho / np.abs(rho).max()

    def f(u):
        if u == 0.0:
            return 0.5 * lam.sum()
        theta = 0.5 * np.arctan(lam * u).sum()
        logr = 0.25 * np.log1p((lam * u) ** 2).sum()
        return math.sin(theta) / (u * math.exp(logr))

    val = 0.0
    edges = [0.0, 1.0, 10.0, 100.0, 1000.0, np.inf]
    for a, b in zip(edges[:-1], edges[1:]):
        val += integrate.quad(f, a, b, limit=400, epsabs=1e-11, epsrel=1e-10)[0]
    return float(min(1.0, max(0.0, 0.5 + val / math.pi)))
