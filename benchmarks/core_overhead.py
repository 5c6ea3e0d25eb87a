"""Overhead of dgmkd's coupled execution against a hand-written distillation step.

Both steps do the same math on the same models: the teacher runs without gradients from fresh
noise, the student reuses that noise along its own path, the loss is the unified loss (Eq. 7,
Chen et al. 2023: KL at the target + 0.1 x KL at each latent), then backward and an Adam step.
The dgmkd step goes through ``couple`` + ``losses.unified``; the hand-written step calls the
networks directly and writes the Gaussian KL by hand (no handlers, no distribution objects).
Timings are interleaved in one process (the machine is noisy) and medians compared.

    python benchmarks/core_overhead.py [--rounds 15] [--steps 10] [--cpu-time]

Prints one line per case and a last line ``overhead_ratio=<max of the medians' ratios>``. Each
line also times a third step, hand-written with torch.distributions objects (``Normal``,
``kl_divergence``) but without handlers: it separates the cost of building distribution objects,
which any model written with sites pays, from the cost of dgmkd's handlers and coupling.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

import dgmkd
from dgmkd.models import MLPDGM, ResidualChain


CLOCK = time.perf_counter


def kl_normal(m1, s1, m2, s2):
    vr = (s1 / s2) ** 2
    return 0.5 * (vr + ((m1 - m2) / s2) ** 2 - 1 - vr.log())


def manual_chain(t: ResidualChain, s: ResidualChain, n: int, lw: float):
    with torch.no_grad():
        z = 2 * torch.rand(n, 1) - 1  # Uniform(-1, 1) by its inverse CDF, as dgmkd does
        u = z
        rec = []
        for i, r in enumerate(t.res):
            loc, std = z + r(z), t.log_std[i].exp()
            eps = torch.randn(n, 1)
            rec.append((loc, std, eps))
            z = loc + std * eps
    zs, lat = u, 0.0
    last = len(s.res) - 1
    for i, r in enumerate(s.res):
        loc, std = zs + r(zs), s.log_std[i].exp()
        kl = kl_normal(rec[i][0], rec[i][1], loc, std).sum(1).mean()
        if i == last:
            return kl + lw * lat
        lat = lat + kl
        zs = loc + std * rec[i][2]


def manual_mlp(t: MLPDGM, s: MLPDGM, n: int, lw: float):
    d0 = t.latent_dims[0]
    with torch.no_grad():
        z = torch.randn(n, d0)
        eps0, rec = z, []
        for layer in t.layers:
            loc, scale = layer(z)
            eps = torch.randn_like(loc)
            rec.append((loc, scale, eps))
            z = loc + scale * eps
        yt = t.out(z)
    zs, lat = eps0, 0.0
    for (lt, st, eps), layer in zip(rec, s.layers):
        loc, scale = layer(zs)
        lat = lat + kl_normal(lt, st, loc, scale).sum(1).mean()
        zs = loc + scale * eps
    ys = s.out(zs)
    sd = torch.tensor(t.out_std)
    return kl_normal(yt, sd, ys, torch.tensor(s.out_std)).sum(1).mean() + lw * lat


def dist_chain(t: ResidualChain, s: ResidualChain, n: int, lw: float):
    """``manual_chain`` written with torch.distributions objects (``Normal``, ``kl_divergence``) as a
    user of them would: the same math again, no handlers. Its gap to ``manual_chain`` is the cost
    of constructing the distributions, which every model written with sites pays."""
    with torch.no_grad():
        z = 2 * torch.rand(n, 1) - 1
        u, rec = z, []
        for i, r in enumerate(t.res):
            d = Normal(z + r(z), t.log_std[i].exp())
            eps = torch.randn(n, 1)
            rec.append((d, eps))
            z = d.loc + d.scale * eps
    zs, lat = u, 0.0
    last = len(s.res) - 1
    for i, r in enumerate(s.res):
        d = Normal(zs + r(zs), s.log_std[i].exp())
        kl = kl_divergence(rec[i][0], d).sum(1).mean()
        if i == last:
            return kl + lw * lat
        lat = lat + kl
        zs = d.loc + d.scale * rec[i][1]


def dist_mlp(t: MLPDGM, s: MLPDGM, n: int, lw: float):
    """``manual_mlp`` with torch.distributions objects (see ``dist_chain``)."""
    d0 = t.latent_dims[0]
    with torch.no_grad():
        z = torch.randn(n, d0)
        eps0, rec = z, []
        for layer in t.layers:
            d = Independent(Normal(*layer(z)), 1)
            eps = torch.randn_like(d.base_dist.loc)
            rec.append((d, eps))
            z = d.base_dist.loc + d.base_dist.scale * eps
        yt = Independent(Normal(t.out(z), t.out_std), 1)
    zs, lat = eps0, 0.0
    for (dt, eps), layer in zip(rec, s.layers):
        d = Independent(Normal(*layer(zs)), 1)
        lat = lat + kl_divergence(dt, d).mean()
        zs = d.base_dist.loc + d.base_dist.scale * eps
    ys = Independent(Normal(s.out(zs), s.out_std), 1)
    return kl_divergence(yt, ys).mean() + lw * lat


def dgmkd_loss(t, s, n, lw):
    # as dgmkd.distill runs every step after its first: without torch's per-distribution argument checks
    return dgmkd.losses.unified(dgmkd.couple(t, s, n, validate_args=False), latent_weight=lw)


def bench(name, teacher, student, n, manual, by_dist, rounds, steps, lw=0.1):
    s_a, s_b, s_c = student, copy.deepcopy(student), copy.deepcopy(student)
    opt_a, opt_b, opt_c = (torch.optim.Adam(m.parameters(), 1e-4) for m in (s_a, s_b, s_c))
    # same math: from the same RNG state the three steps give the same loss
    torch.manual_seed(0)
    la = dgmkd_loss(teacher, s_a, n, lw)
    torch.manual_seed(0)
    lb = manual(teacher, s_b, n, lw)
    torch.manual_seed(0)
    lc = by_dist(teacher, s_c, n, lw)
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-5), (float(la), float(lb))
    assert torch.allclose(lc, lb, rtol=1e-4, atol=1e-5), (float(lc), float(lb))

    def run(loss_fn, s, opt):
        t0 = CLOCK()
        for _ in range(steps):
            loss = loss_fn(teacher, s, n, lw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (CLOCK() - t0) / steps

    cases = [(dgmkd_loss, s_a, opt_a), (manual, s_b, opt_b), (by_dist, s_c, opt_c)]
    for _ in range(2):  # warm-up
        for c in cases:
            run(*c)
    times = [[], [], []]
    for r in range(rounds):  # interleaved, in a rotating order
        for k in range(3):
            i = (r + k) % 3
            times[i].append(run(*cases[i]))
    ma, mb, mc = (statistics.median(t) for t in times)
    print(f"{name}: dgmkd {ma * 1e3:.2f} ms/step, hand-written {mb * 1e3:.2f} ms/step, ratio {ma / mb:.3f} "
          f"(hand-written with torch.distributions {mc * 1e3:.2f} ms/step: dgmkd / that {ma / mc:.3f})")
    return ma / mb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cpu-time", action="store_true",
                    help="one torch thread, timed by this thread's CPU time (steadier on a loaded machine)")
    a = ap.parse_args()
    global CLOCK
    if a.cpu_time:
        torch.set_num_threads(1)
        CLOCK = time.thread_time
    torch.manual_seed(0)
    ratios = [
        bench("chain-20 scalar Gaussian latents, residual MLP, batch 512",
              ResidualChain(20, hidden=64), ResidualChain(20, hidden=16), 512, manual_chain, dist_chain,
              a.rounds, a.steps),
        bench("mlp-dgm 5 latent layers x 256, batch 256",
              MLPDGM((256,) * 5, hidden=512, out_dim=64), MLPDGM((256,) * 5, hidden=128, out_dim=64), 256,
              manual_mlp, dist_mlp, a.rounds, a.steps),
    ]
    print(f"overhead_ratio={max(ratios):.3f}")


if __name__ == "__main__":
    main()
