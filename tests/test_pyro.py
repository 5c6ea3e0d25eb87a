"""Pyro models through the adapter: same couple and losses; Prop. 3.1 against quadrature +
enumeration on a model with a continuous and a discrete latent."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

import dgmkd
import dgmkd.pyro
from dgmkd import losses


class Model(nn.Module):
    """z ~ N(m, s); b | z ~ Bernoulli(sigmoid(a z + c)); y | z, b ~ Categorical(softmax(W[b] + v z))."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        r = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float64)  # noqa: E731
        self.m, self.log_s = nn.Parameter(0.5 * r(())), nn.Parameter(0.3 * r(()))
        self.a, self.c = nn.Parameter(2 * r(())), nn.Parameter(r(()))
        self.W, self.v = nn.Parameter(1.5 * r(2, 3)), nn.Parameter(r(3))

    def forward(self, n):
        with pyro.plate("batch", n):
            z = pyro.sample("z", dist.Normal(self.m, self.log_s.exp()))
            b = pyro.sample("b", dist.Bernoulli(logits=self.a * z + self.c))
            return pyro.sample("y", dist.Categorical(logits=self.W[b.long()] + self.v * z.unsqueeze(-1)), obs=None)

    # exact quantities -------------------------------------------------------------
    @torch.no_grad()
    def parts(self, eps):
        z = self.m + self.log_s.exp() * eps
        pb = torch.sigmoid(self.a * z + self.c)
        py = torch.stack([torch.softmax(self.W[k] + self.v * z.unsqueeze(-1), -1) for k in (0, 1)])  # (2, n, 3)
        return pb.numpy(), py.numpy()


def exact(t, s, nodes=120):
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    eps = torch.tensor(x)
    pbt, pyt = t.parts(eps)
    pbs, pys = s.parts(eps)
    kl = lambda p, q: (p * (np.log(p) - np.log(q))).sum(-1)  # noqa: E731
    marg_t = (w[:, None] * ((1 - pbt)[:, None] * pyt[0] + pbt[:, None] * pyt[1])).sum(0)
    marg_s = (w[:, None] * ((1 - pbs)[:, None] * pys[0] + pbs[:, None] * pys[1])).sum(0)
    # quantile coupling of b: b = 1[u >= 1 - p]; P(bT=1, bS=1) = min(pT, pS) etc.
    p11 = np.minimum(pbt, pbs)
    p10, p01 = pbt - p11, pbs - p11
    p00 = 1 - p11 - p10 - p01
    sur = (w * (p00 * kl(pyt[0], pys[0]) + p11 * kl(pyt[1], pys[1]) + p10 * kl(pyt[1], pys[0])
                + p01 * kl(pyt[0], pys[1]))).sum()
    return float(kl(marg_t, marg_s)), float(sur)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prop_3_1_on_a_pyro_model(seed):
    t, s = Model(10 + seed), Model(20 + seed)
    marginal, sur = exact(t, s)
    assert marginal <= sur
    T, S = dgmkd.pyro.model(t, targets=["y"]), dgmkd.pyro.model(s, targets=["y"])
    torch.manual_seed(seed)
    with torch.no_grad():
        est = np.array([float(losses.surrogate(dgmkd.couple(T, S, 4000))) for _ in range(30)])
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - sur) < 4 * se


def test_observed_sites_are_targets_and_values_come_from_the_teacher():
    def m(n):
        z = pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))
        return pyro.sample("x", dist.Normal(z, 0.1), obs=torch.full((n,), 99.0))

    c = dgmkd.couple(dgmkd.pyro.model(m), dgmkd.pyro.model(m), 8)
    assert list(c.targets) == ["x"] and list(c.latents) == ["z"]
    assert bool((c.targets["x"].value.abs() < 50).all())  # sampled by the teacher, not the obs
    assert float(losses.unified(c)) == 0.0


def test_outer_pyro_trace_still_records():
    def m(n):
        return pyro.sample("z", dist.Normal(torch.zeros(n), 1.0))

    with poutine.trace() as tr:
        with dgmkd.handlers.trace() as dt, dgmkd.handlers.draw_noise():
            dgmkd.pyro.model(m)(3)
    assert torch.equal(tr.trace.nodes["z"]["value"], dt.sites["z"]["value"])


def test_distill_a_pyro_student():
    t, s = Model(0), Model(1)
    T, S = dgmkd.pyro.model(t, targets=["y"]), dgmkd.pyro.model(s, targets=["y"])
    assert isinstance(S, nn.Module) and {id(p) for p in S.parameters()} == {id(p) for p in s.parameters()}
    h = dgmkd.distill(T, S, 512, steps=150, lr=3e-2, progress=False)
    assert np.mean(h["loss"][-10:]) < 0.5 * np.mean(h["loss"][:10])
    assert all(p.grad is None for p in t.parameters())
