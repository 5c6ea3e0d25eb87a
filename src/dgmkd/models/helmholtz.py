"""A deep Helmholtz machine with binary latents and two Gaussian targets (Chen et al. 2023, Fig. 4c).

Generative chain (each ``z`` two Bernoulli units, each ``y`` a scalar Gaussian with a fixed std)::

    z4 -> z3 -> y2 -> z2 -> z1 -> y1

``p(z4)`` has free logits; every other conditional is a one-hidden-layer MLP (width ``hidden``,
tanh) of its single parent. On Old Faithful ``y1`` is the eruption duration and ``y2`` the
waiting time (standardized). The paper extends the classical Helmholtz machine (Dayan et al. 1995:
one target, linear layers) to this 5-layer, two-target chain to show that the unified method works
with *discrete* latents: their inverse-CDF reparameterization ``z = 1[u >= 1 - p]`` is piecewise
constant in ``p``, so the surrogate loss gives no gradient to the latent conditionals and the latent
loss (Eq. 6) carries it.

Why the density is exact here: with 2 bits per layer, ``p(y2) = sum_{z4, z3} p(z4) p(z3|z4)
N(y2; mu(z3), s^2)`` has 16 terms and, since ``y2`` separates the chain,
``p(y1 | y2) = sum_{z2, z1} p(z2|y2) p(z1|z2) N(y1; mu(z1), s^2)`` has 16 more — so
:meth:`HelmholtzMachine.log_prob` evaluates ``log p(y1, y2)`` exactly, and KL divergences between
two machines can be estimated with exact densities (no variational bound).

Training is by wake-sleep (Hinton et al. 1995) or reweighted wake-sleep (Bornschein & Bengio
2015) with a :class:`HelmholtzRecognition` network; :func:`wake_sleep_loss` gives the losses of
one step, to be minimized by :func:`dgmkd.train.fit`.

Example:
    >>> import torch
    >>> from dgmkd.models import HelmholtzMachine
    >>> _ = torch.manual_seed(0)
    >>> hm = HelmholtzMachine(hidden=8)
    >>> hm(5).shape                       # samples [y1, y2]
    torch.Size([5, 2])
    >>> hm.log_prob(torch.zeros(3, 2)).shape
    torch.Size([3])
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

from ..handlers import trace
from ..sites import latent, target
from ..saving import buildable

__all__ = ["HelmholtzMachine", "HelmholtzRecognition", "wake_sleep_loss", "LATENTS"]

LATENTS = ("z4", "z3", "z2", "z1")


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))


@buildable
class HelmholtzMachine(nn.Module):
    """The generative model ``z4 -> z3 -> y2 -> z2 -> z1 -> y1`` (site names as written).

    ``model(n)`` draws ``n`` samples and returns them as an ``(n, 2)`` tensor ``[y1, y2]``
    (duration, waiting). ``z_units`` binary units per latent layer (2 in the paper's Fig. 4c;
    enumeration cost grows as ``4**z_units``), ``y_std`` the fixed std of the Gaussian targets.
    """

    def __init__(self, hidden: int = 8, z_units: int = 2, y_std: float = 0.5):
        super().__init__()
        if hidden < 1 or z_units < 1:
            raise ValueError(f"hidden and z_units must be positive, got hidden={hidden}, z_units={z_units}")
        if not y_std > 0:
            raise ValueError(f"y_std must be positive, got {y_std}")
        self.hidden, self.z_units, self.y_std = hidden, z_units, float(y_std)
        self.prior_logits = nn.Parameter(torch.zeros(z_units))
        self.p_z3 = _mlp(z_units, hidden, z_units)
        self.p_y2 = _mlp(z_units, hidden, 1)
        self.p_z2 = _mlp(1, hidden, z_units)
        self.p_z1 = _mlp(z_units, hidden, z_units)
        self.p_y1 = _mlp(z_units, hidden, 1)

    # ------------------------------------------------------------------ sampler (dgmkd sites)
    def forward(self, n: int) -> torch.Tensor:
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"HelmholtzMachine(n) needs a positive number of samples, got {n!r}")
        z4 = latent("z4", Bernoulli(logits=self.prior_logits.expand(n, self.z_units)))
        z3 = latent("z3", Bernoulli(logits=self.p_z3(z4)))
        y2 = target("y2", Normal(self.p_y2(z3), self.y_std))
        z2 = latent("z2", Bernoulli(logits=self.p_z2(y2)))
        z1 = latent("z1", Bernoulli(logits=self.p_z1(z2)))
        y1 = target("y1", Normal(self.p_y1(z1), self.y_std))
        return torch.cat([y1, y2], -1)

    def sample_joint(self, n: int) -> dict[str, torch.Tensor]:
        """``n`` joint samples of every site (``z4, z3, y2, z2, z1, y1``), by tracing :meth:`forward`."""
        with trace() as tr:
            self(n)
        return {k: m["value"] for k, m in tr.sites.items()}

    # ------------------------------------------------------------------ densities
    def log_joint(self, y: torch.Tensor, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log p(y1, y2, z1..z4)`` per row; ``y`` is ``(n, 2)`` = ``[y1, y2]``, ``z`` name -> ``(n, units)``."""
        y = _check_y(y)
        y1, y2 = y[:, :1], y[:, 1:]
        lp = Bernoulli(logits=self.prior_logits.expand_as(z["z4"])).log_prob(z["z4"]).sum(-1)
        lp = lp + Bernoulli(logits=self.p_z3(z["z4"])).log_prob(z["z3"]).sum(-1)
        lp = lp + Normal(self.p_y2(z["z3"]), self.y_std).log_prob(y2).sum(-1)
        lp = lp + Bernoulli(logits=self.p_z2(y2)).log_prob(z["z2"]).sum(-1)
        lp = lp + Bernoulli(logits=self.p_z1(z["z2"])).log_prob(z["z1"]).sum(-1)
        return lp + Normal(self.p_y1(z["z1"]), self.y_std).log_prob(y1).sum(-1)

    def configs(self) -> torch.Tensor:
        """All ``2**z_units`` binary configurations of one layer, ``(K, z_units)``."""
        w = self.prior_logits
        return torch.tensor(list(itertools.product((0.0, 1.0), repeat=self.z_units)), dtype=w.dtype, device=w.device)

    def _log_cond_table(self, net: nn.Module, parents: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``[i, k] = log p(z = c[k] | parent i)``: ``(P, K)``."""
        logits = net(parents)  # (P, units)
        return Bernoulli(logits=logits.unsqueeze(1)).log_prob(c.unsqueeze(0)).sum(-1)

    def log_prob_y2(self, y2: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(y2)``: a sum over the ``K*K`` configurations of ``(z4, z3)``. ``y2``: ``(n,)``."""
        c = self.configs()
        lp4 = Bernoulli(logits=self.prior_logits).log_prob(c).sum(-1)          # (K,)
        lp3 = self._log_cond_table(self.p_z3, c, c)                             # (K4, K3)
        lpz3 = torch.logsumexp(lp4.unsqueeze(1) + lp3, 0)                       # (K3,) log p(z3)
        mu = self.p_y2(c).squeeze(-1)                                           # (K3,)
        ly = Normal(mu, self.y_std).log_prob(y2.reshape(-1, 1))                 # (n, K3)
        return torch.logsumexp(lpz3 + ly, -1)

    def log_prob_y1_given_y2(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(y1 | y2)``: a sum over the ``K*K`` configurations of ``(z2, z1)``."""
        c = self.configs()
        lp2 = self._log_cond_table(self.p_z2, y2.reshape(-1, 1), c)             # (n, K2)
        lp1 = self._log_cond_table(self.p_z1, c, c)                             # (K2, K1)
        lpz1 = torch.logsumexp(lp2.unsqueeze(2) + lp1.unsqueeze(0), 1)          # (n, K1) log p(z1|y2)
        mu = self.p_y1(c).squeeze(-1)                                           # (K1,)
        ly = Normal(mu, self.y_std).log_prob(y1.reshape(-1, 1))                 # (n, K1)
        return torch.logsumexp(lpz1 + ly, -1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(y1, y2)`` per row of ``y`` = ``(n, 2)`` ``[y1, y2]``, by enumeration."""
        y = _check_y(y)
        return self.log_prob_y2(y[:, 1]) + self.log_prob_y1_given_y2(y[:, 0], y[:, 1])


def _check_y(y: torch.Tensor) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[1] != 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"expected y of shape (n, 2) = [y1 (duration), y2 (waiting)], got {shape}")
    return y


@buildable
class HelmholtzRecognition(nn.Module):
    """Recognition model ``q(z | y)`` for wake-sleep, with the true posterior's structure.

    ``y2`` separates the chain, so ``p(z3, z4 | y) = p(z3 | y2) p(z4 | z3)`` and
    ``p(z1, z2 | y) = p(z1 | y1, y2) p(z2 | z1, y2)``; the recognition model has exactly these
    factors, each a one-hidden-layer MLP, so wake-sleep can in principle reach the exact posterior.
    """

    def __init__(self, hidden: int = 16, z_units: int = 2):
        super().__init__()
        self.z_units = z_units
        self.q_z3 = _mlp(1, hidden, z_units)
        self.q_z4 = _mlp(z_units, hidden, z_units)
        self.q_z1 = _mlp(2, hidden, z_units)
        self.q_z2 = _mlp(z_units + 1, hidden, z_units)

    def _dists(self, y, z):
        y2 = y[:, 1:]
        return {"z3": lambda: Bernoulli(logits=self.q_z3(y2)),
                "z4": lambda: Bernoulli(logits=self.q_z4(z["z3"])),
                "z1": lambda: Bernoulli(logits=self.q_z1(y)),
                "z2": lambda: Bernoulli(logits=self.q_z2(torch.cat([z["z1"], y2], -1)))}

    def sample(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One draw ``z ~ q(z | y)`` per row (name -> ``(n, units)``)."""
        y = _check_y(y)
        z: dict[str, torch.Tensor] = {}
        d = self._dists(y, z)
        for name in ("z3", "z4", "z1", "z2"):
            z[name] = d[name]().sample()
        return z

    def log_prob(self, y: torch.Tensor, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log q(z | y)`` per row."""
        y = _check_y(y)
        d = self._dists(y, z)
        return sum(d[name]().log_prob(z[name]).sum(-1) for name in ("z3", "z4", "z1", "z2"))


def wake_sleep_loss(model: HelmholtzMachine, recog: HelmholtzRecognition, y: torch.Tensor,
                    algorithm: str = "ws", k: int = 5, sleep_samples: int | None = None) -> dict[str, torch.Tensor]:
    """The losses of one wake-sleep step on a data batch ``y``; minimize ``loss`` (their sum).

    ``algorithm="ws"`` — wake-sleep (Hinton et al. 1995; Dayan et al. 1995): the *wake* phase fits
    the generative model to ``(y, z ~ q(z|y))`` (``-log p(y, z)``); the *sleep* phase fits the
    recognition model to dreams ``(z, y) ~ p`` (``-log q(z|y)``).

    ``algorithm="rws"`` — reweighted wake-sleep (Bornschein & Bengio 2015): ``k`` samples
    ``z_k ~ q(z|y)`` with self-normalized importance weights ``w_k ∝ p(y, z_k) / q(z_k|y)``; the
    generative model ascends ``sum_k w_k log p(y, z_k)`` (an estimate of ``grad log p(y)``), the
    recognition model ``sum_k w_k log q(z_k|y)`` (wake-phase q update) plus the sleep-phase term.

    The two losses touch disjoint parameters (samples and weights are detached), so their sum can
    be minimized with one optimizer. Returns ``{"loss", "wake", "sleep"}``.
    """
    if algorithm not in ("ws", "rws"):
        raise ValueError(f"unknown wake-sleep algorithm {algorithm!r}; choose 'ws' or 'rws'")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = _check_y(y)
    n = y.shape[0]
    with torch.no_grad():
        dream = model.sample_joint(sleep_samples or n)
    y_dream = torch.cat([dream["y1"], dream["y2"]], -1)
    sleep = -recog.log_prob(y_dream, {k_: dream[k_] for k_ in LATENTS}).mean()
    if algorithm == "ws":
        with torch.no_grad():
            z = recog.sample(y)
        wake = -model.log_joint(y, z).mean()
        return {"loss": wake + sleep, "wake": wake.detach(), "sleep": sleep.detach()}
    yk = y.repeat(k, 1)  # (k*n, 2): sample-major
    with torch.no_grad():
        z = recog.sample(yk)
    lp = model.log_joint(yk, z).view(k, n)
    lq = recog.log_prob(yk, z).view(k, n)
    w = torch.softmax((lp - lq).detach(), 0)
    wake = -(w * lp).sum(0).mean()
    wake_q = -(w * lq).sum(0).mean()
    return {"loss": wake + wake_q + sleep, "wake": wake.detach(), "sleep": sleep.detach()}
