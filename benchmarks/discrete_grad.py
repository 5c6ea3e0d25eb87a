"""Cost and variance of ``discrete_grad=True`` (boundary terms at the quantile's jumps).

Cost: time of one distillation step (``couple`` + ``losses.unified`` + backward + Adam) with and
without ``discrete_grad``, interleaved in one process, medians compared, on

* the Helmholtz machine of ``hm-compress`` (teacher width 8, student width 2, four Bernoulli
  sites: 3 x 4 = 12 extra passes without gradients per step);
* the two-discrete-layer model of ``tests/test_discrete_grad.py`` (Bernoulli + Categorical);
* a Gaussian chain (no discrete latent: no extra pass, the ratio should be ~1);
* the 20-layer binomial chain of ``toy-chain`` (19 Binomial(1000) sites; ``--binomial-rounds``
  rounds, few: ``discrete_grad=True`` takes seconds per step there). Its ``QuantileBinomial`` is
  registered in the library without jumps; this script registers ``reparam.binomial_jump`` for
  it, the one-argument change ``models/toy_chain.py`` needs for ``discrete_grad``.

Variance, on the two-layer model (batch ``--batch``, ``--repeats`` independent estimates): the
boundary estimator against the score-function (REINFORCE) estimator of the same gradient. Under
the shared-uniform coupling, given the teacher's value ``k_T`` of a unit, ``u`` is uniform on the
teacher's interval ``[F_T(k_T - 1), F_T(k_T))`` and the student's value has the law
``pi(k_S | k_T) = |I_T(k_T) n I_S(k_S)| / |I_T(k_T)|``, smooth in the student's parameters; the
score-function estimator is ``grad L + (L - b) * sum over units grad log pi(k_S | k_T)`` (per
example, ``b`` the leave-one-out batch mean of ``L``, or 0). Both are compared with the exact
gradient (enumeration of the coupled configurations). Reported: the summed variance over the
parameters that act only through discrete latents (``a``, ``W``, ``b``), and over all, and the
variance ratio times the time ratio (the variance at equal compute: above 1, the boundary
estimator is the better use of time).

    python benchmarks/discrete_grad.py [--rounds 7] [--steps 10] [--batch 256] [--repeats 200]
        [--binomial-rounds 2]

Last line: ``cost_ratio_hm=<median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.distributions import Bernoulli, Binomial

import dgmkd
from dgmkd import divergences as D
from dgmkd import losses
from dgmkd.models import HelmholtzMachine, ResidualChain

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_discrete_grad import TwoLayer, exact_loss  # noqa: E402  (the test's model and enumeration)


def step_fn(t, s, lw, discrete, n):
    opt = torch.optim.Adam(s.parameters(), lr=1e-4)

    def step():
        c = dgmkd.couple(t, s, n, validate_args=False, discrete_grad=discrete)
        loss = losses.unified(c, lw)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def time_case(name, t, s, lw, n, rounds, steps, variant=True):
    fns = {d: step_fn(t, s, lw, d, n) for d in (False, variant)}
    for f in fns.values():
        f()
    times = {False: [], variant: []}
    for _ in range(rounds):
        for d, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                f()
            times[d].append((time.perf_counter() - t0) / steps)
    c = dgmkd.couple(t, s, n, discrete_grad=variant)
    losses.unified(c, lw)
    passes = c.probes.passes if c.probes is not None else 0
    plain, disc = statistics.median(times[False]), statistics.median(times[variant])
    print(f"{name:46s} plain {plain * 1e3:7.2f} ms  discrete_grad={variant!s:4s} {disc * 1e3:7.2f} ms  "
          f"ratio {disc / plain:5.2f}  extra passes/step {passes}")
    return disc / plain


def _intervals(d, k):
    """``[F(k - 1), F(k))`` of a Bernoulli / Categorical / Binomial at the values ``k``."""
    if isinstance(d, Bernoulli):
        p = d.probs
        hi = torch.where(k > 0, torch.ones_like(p), 1 - p)
        lo = torch.where(k > 0, 1 - p, torch.zeros_like(p))
        return lo, hi
    if isinstance(d, Binomial):
        n = int(d.total_count.max())
        cdf = d.log_prob(torch.arange(n + 1, dtype=d.probs.dtype).reshape(-1, *[1] * d.probs.dim())).exp().cumsum(0)
        cdf = cdf.movedim(0, -1)
    else:
        cdf = d.probs.cumsum(-1)
    cdf0 = torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)
    k = k.long()
    return cdf0.gather(-1, k.unsqueeze(-1)).squeeze(-1), cdf0.gather(-1, (k + 1).unsqueeze(-1)).squeeze(-1)


def score_estimate(t, s, lw, n, baseline: bool):
    s.zero_grad()
    c = dgmkd.couple(t, s, n)
    with D.per_example():
        per = losses.unified(c, lw)  # (n,)
    logpi = 0
    for name, pair in c.latents.items():
        lo_t, hi_t = _intervals(pair.teacher, pair.value)
        lo_s, hi_s = _intervals(pair.student, c.student_trace[name]["value"])
        ov = (torch.minimum(hi_t, hi_s) - torch.maximum(lo_t, lo_s)).clamp(min=1e-300)
        lp = ov.log()
        logpi = logpi + lp.reshape(n, -1).sum(1)
    L = per.detach()
    b = (L.sum() - L) / (n - 1) if baseline else 0.0
    (per.mean() + ((L - b) * logpi).mean()).backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in s.parameters()])


def boundary_estimate(t, s, lw, n, variant=True):
    s.zero_grad()
    losses.unified(dgmkd.couple(t, s, n, discrete_grad=variant), lw).backward()
    return torch.cat([p.grad.reshape(-1) for p in s.parameters()])


def variance(batch, repeats, lw=0.5):
    torch.manual_seed(0)
    t, s = TwoLayer("categorical", 1), TwoLayer("categorical", 2)
    s.zero_grad()
    exact_loss(t, s, lw).backward()
    exact = torch.cat([p.grad.reshape(-1) for p in s.parameters()])
    nd = 2 + s.W.numel() + s.b.numel()
    ests = {"boundary (discrete_grad)": lambda: boundary_estimate(t, s, lw, batch),
            "boundary, discrete_grad=1": lambda: boundary_estimate(t, s, lw, batch, 1),
            "score function": lambda: score_estimate(t, s, lw, batch, False),
            "score function + loo baseline": lambda: score_estimate(t, s, lw, batch, True)}
    print(f"\nvariance on the two-layer model (Bernoulli x2 -> Categorical(3) -> Normal), batch {batch}, "
          f"{repeats} estimates, unified latent_weight {lw}:")
    out = {}
    for name, f in ests.items():
        t0 = time.perf_counter()
        g = torch.stack([f() for _ in range(repeats)])
        dt = (time.perf_counter() - t0) / repeats
        var = g.var(0)
        zmax = ((g.mean(0) - exact).abs() / (g.std(0) / repeats ** 0.5).clamp(min=1e-12)).max()
        out[name] = (var, dt)
        print(f"  {name:30s} sum var (a, W, b) {float(var[:nd].sum()):10.3e}  sum var (all) "
              f"{float(var.sum()):10.3e}  max |mean - exact| / se {float(zmax):5.2f}  {dt * 1e3:6.1f} ms/estimate")
    vb, tb = out["boundary (discrete_grad)"]
    for name in list(ests)[1:]:
        v, dt = out[name]
        r = float(v[:nd].sum() / vb[:nd].sum())
        print(f"  {name} / boundary, sum var (a, W, b): {r:.2f}; x time per estimate (variance at equal "
              f"compute): {r * dt / tb:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--binomial-rounds", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"time per distillation step (batch {a.batch}; medians of {a.rounds} rounds x {a.steps} steps):")
    hm = time_case("Helmholtz machine 8 -> 2 (4 Bernoulli sites)", HelmholtzMachine(8), HelmholtzMachine(2), 1.0,
                   a.batch, a.rounds, a.steps)
    time_case("Helmholtz machine 8 -> 2, one site per step", HelmholtzMachine(8), HelmholtzMachine(2), 1.0,
              a.batch, a.rounds, a.steps, variant=1)
    time_case("two-layer (Bernoulli, Categorical)", TwoLayer("categorical", 1), TwoLayer("categorical", 2), 0.5,
              a.batch, a.rounds, a.steps)
    time_case("Gaussian chain, 8 layers (no discrete)", ResidualChain(8), ResidualChain(8), 0.1, a.batch, a.rounds,
              a.steps)
    from dgmkd.models import toy_chain as tc

    if dgmkd.reparam.lookup(tc.QuantileBinomial(1, torch.tensor(0.5))).boundary is None:
        dgmkd.reparam.register(tc.QuantileBinomial, tc._qbinom_noise, tc._qbinom_transform, law="standard_uniform",
                               boundary=dgmkd.reparam.binomial_jump)
    for v in (True, 1):
        time_case("binomial chain L=20 (19 Binomial sites)", tc.BinomialTeacherChain(20), tc.BinomialStudentChain(20),
                  0.0, a.batch, a.binomial_rounds, 2, variant=v)
    variance(a.batch, a.repeats)
    print(f"cost_ratio_hm={hm:.2f}")


if __name__ == "__main__":
    main()
