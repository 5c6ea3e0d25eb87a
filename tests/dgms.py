"""Small DGMs shared by the tests: an enumerable table DGM with exact losses, and a mixed model."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, Poisson

import dgmkd


class TableDGM(nn.Module):
    """Discrete DGM given by conditional probability tables.

    ``spec``: list of ``(name, kind, K, parents)``; kind is "latent" (Categorical), "bern" (a
    Bernoulli latent, K=2) or "target" (Categorical). Data-free: ``model(n)``.
    """

    def __init__(self, spec, scale=2.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.spec = spec
        ks = {name: k for name, _, k, _ in spec}
        self.logits = nn.ParameterDict()
        for name, kind, k, parents in spec:
            shape = tuple(ks[p] for p in parents) + ((k,) if kind != "bern" else ())
            self.logits[name] = nn.Parameter(scale * torch.randn(shape, generator=g, dtype=torch.float64))

    def forward(self, n):
        vals = {}
        for name, kind, k, parents in self.spec:
            lg = self.logits[name]
            lg = lg[tuple(vals[p] for p in parents)] if parents else lg.expand((n,) + lg.shape)
            if kind == "bern":
                v = dgmkd.latent(name, Bernoulli(logits=lg)).long()
            elif kind == "latent":
                v = dgmkd.latent(name, Categorical(logits=lg))
            else:
                v = dgmkd.target(name, Categorical(logits=lg))
            vals[name] = v.long()
        return vals

    # ---- exact quantities by enumeration
    def probs(self, name, kind, assign, parents):
        lg = self.logits[name].detach()
        if parents:
            lg = lg[tuple(assign[p] for p in parents)]
        if kind == "bern":
            p = torch.sigmoid(lg).item()
            return np.array([1 - p, p])
        return torch.softmax(lg, -1).numpy()


def _kl(p, q):
    m = p > 0
    return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))


def coupled_cells(pt, ps):
    """Joint law of (a, b) when a ~ pt and b ~ ps are quantile-coupled by one shared uniform."""
    ft, fs = np.concatenate([[0], np.cumsum(pt)]), np.concatenate([[0], np.cumsum(ps)])
    ft[-1] = fs[-1] = 1.0
    for a in range(len(pt)):
        for b in range(len(ps)):
            w = min(ft[a + 1], fs[b + 1]) - max(ft[a], fs[b])
            if w > 0:
                yield a, b, w


def exact_losses(t: TableDGM, s: TableDGM):
    """Exact surrogate, latent and local KL losses, and the exact marginal KD loss."""
    spec = t.spec
    out = {"surrogate": 0.0, "latent": 0.0, "local": 0.0}

    def rec_coupled(i, at, as_, w):
        if i == len(spec):
            return
        name, kind, k, parents = spec[i]
        pt, ps = t.probs(name, kind, at, parents), s.probs(name, kind, as_, parents)
        if kind == "target":
            out["surrogate"] += w * _kl(pt, ps)
            for a in range(k):
                if pt[a] > 0:
                    rec_coupled(i + 1, {**at, name: a}, {**as_, name: a}, w * pt[a])
        else:
            out["latent"] += w * _kl(pt, ps)
            for a, b, wc in coupled_cells(pt, ps):
                rec_coupled(i + 1, {**at, name: a}, {**as_, name: b}, w * wc)

    def rec_local(i, at, w):
        if i == len(spec):
            return
        name, kind, k, parents = spec[i]
        pt, ps = t.probs(name, kind, at, parents), s.probs(name, kind, at, parents)
        out["local"] += w * _kl(pt, ps)
        for a in range(len(pt)):
            if pt[a] > 0:
                rec_local(i + 1, {**at, name: a}, w * pt[a])

    rec_coupled(0, {}, {}, 1.0)
    rec_local(0, {}, 1.0)

    def marginal(m):
        targets = [n for n, kind, _, _ in spec if kind == "target"]
        dist = {}
        sizes = [2 if kind == "bern" else k for _, kind, k, _ in spec]
        for values in itertools.product(*[range(k) for k in sizes]):
            assign, p = {}, 1.0
            for (name, kind, k, parents), v in zip(spec, values):
                p *= m.probs(name, kind, assign, parents)[v]
                assign[name] = v
            key = tuple(assign[n] for n in targets)
            dist[key] = dist.get(key, 0.0) + p
        return dist

    mt, ms = marginal(t), marginal(s)
    keys = sorted(mt)
    out["marginal"] = _kl(np.array([mt[k] for k in keys]), np.array([ms[k] for k in keys]))
    return out


class Mixed(nn.Module):
    """Continuous, discrete and deterministic sites together; ``model(x)`` with inputs."""

    def __init__(self, d_in=3, hidden=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(d_in, hidden)
        self.z1 = nn.Linear(hidden, 4)
        self.z2 = nn.Linear(2, 2)
        self.rate = nn.Linear(2, 1)
        self.out = nn.Linear(2 + 1, 5)

    def forward(self, x):
        h = dgmkd.deterministic("h", torch.tanh(self.enc(x)))
        loc, s = self.z1(h).chunk(2, -1)
        z1 = dgmkd.latent("z1", Independent(Normal(loc, nn.functional.softplus(s) + 0.1), 1))
        b = dgmkd.latent("b", Bernoulli(logits=self.z2(z1)))
        k = dgmkd.latent("k", Poisson(nn.functional.softplus(self.rate(b)) + 0.5))
        return dgmkd.target("y", Categorical(logits=self.out(torch.cat([z1, k], -1))))
