"""Overhead of dgmkd's coupled execution against a hand-written distillation step.

Both steps do the same math on the same models: the teacher runs without gradients from fresh
noise, the student reuses that noise along its own path, the loss is the unified loss (Eq. 7,
Chen et al. 2023: KL at the target + 0.1 x KL at each latent), then backward and an Adam step.
The dgmkd step goes through ``couple`` + ``losses.unified``; the hand-written step calls the
networks directly and writes the Gaussian KL by hand (no handlers, no distribution objects).
Timings are interleaved in one process (the machine is noisy) and medians compared.

    python benchmarks/core_overhead.py [--rounds 15] [--steps 10]

Prints one line per case and a last line ``overhead_ratio=<max of the medians' ratios>``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import dgmkd
from dgmkd.models import MLPDGM, ResidualChain


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


def dgmkd_loss(t, s, n, lw):
    # as dgmkd.distill runs every step after its first: without torch's per-distribution argument checks
    return dgmkd.losses.unified(dgmkd.couple(t, s, n, validate_args=False), latent_weight=lw)


def bench(name, teacher, student, n, manual, rounds, steps, lw=0.1):
    s_a, s_b = student, copy.deepcopy(student)
    opt_a, opt_b = torch.optim.Adam(s_a.parameters(), 1e-4), torch.optim.Adam(s_b.parameters(), 1e-4)
    # same math: from the same RNG state both steps give the same loss
    torch.manual_seed(0)
    la = dgmkd_loss(teacher, s_a, n, lw)
    torch.manual_seed(0)
    lb = manual(teacher, s_b, n, lw)
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-5), (float(la), float(lb))

    def run(loss_fn, s, opt):
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = loss_fn(teacher, s, n, lw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps

    for _ in range(2):  # warm-up
        run(dgmkd_loss, s_a, opt_a), run(manual, s_b, opt_b)
    ta, tb = [], []
    for r in range(rounds):
        if r % 2:
            ta.append(run(dgmkd_loss, s_a, opt_a)); tb.append(run(manual, s_b, opt_b))
        else:
            tb.append(run(manual, s_b, opt_b)); ta.append(run(dgmkd_loss, s_a, opt_a))
    ma, mb = statistics.median(ta), statistics.median(tb)
    print(f"{name}: dgmkd {ma * 1e3:.2f} ms/step, hand-written {mb * 1e3:.2f} ms/step, ratio {ma / mb:.3f}")
    return ma / mb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    ratios = [
        bench("chain-20 scalar Gaussian latents, residual MLP, batch 512",
              ResidualChain(20, hidden=64), ResidualChain(20, hidden=16), 512, manual_chain, a.rounds, a.steps),
        bench("mlp-dgm 5 latent layers x 256, batch 256",
              MLPDGM((256,) * 5, hidden=512, out_dim=64), MLPDGM((256,) * 5, hidden=128, out_dim=64), 256,
              manual_mlp, a.rounds, a.steps),
    ]
    print(f"overhead_ratio={max(ratios):.3f}")


if __name__ == "__main__":
    main()
