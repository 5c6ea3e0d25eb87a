"""The whole ``dgmkd.distill`` loop against a hand-written distillation loop doing the same work.

The models are shaped like the VAE of pytorch/examples (``vae/main.py``): a 20-d standard-normal
latent, a decoder ``20 -> 400 -> 784`` with ReLU and a 784-d Bernoulli output; the teacher has
that decoder, the student one of width 100. Distillation is data-free (batch 128): each step draws
``z``, runs the teacher without gradients and the student on the same ``z``, and minimizes the
unified loss (Chen et al. 2023, Eq. 7) — the Bernoulli KL at the output plus 0.1 x the KL at the
latent (zero here: both priors are N(0, I)) — with Adam.

* ``dgmkd``: ``dgmkd.distill(teacher, student, 128, steps=K, progress=False)`` — everything the
  call does (set-up, fingerprint, the NaN guard, history) is timed;
* ``hand-written``: the loop a user writes: a fresh Adam, then K times ``z = randn``, teacher
  logits under ``no_grad``, student logits, ``kl_divergence(Bernoulli, Bernoulli).sum(1).mean()``,
  ``zero_grad``, ``backward``, ``step``.

Both start from the same RNG state and give the same losses (checked before timing). Rounds are
interleaved, alternating which case runs first, and the medians compared.

    python benchmarks/distill_overhead.py [--rounds 11] [--steps 50] [--cpu-time]

Last line: ``distill_overhead_ratio=<median dgmkd / median hand-written>`` (goal <= 1.10).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import dgmkd

CLOCK = time.perf_counter
BATCH, LATENT, PIXELS = 128, 20, 784


class Decoder(nn.Module):
    """The generative half of pytorch/examples' VAE, written with sites (data-free: ``model(n)``)."""

    def __init__(self, hidden: int = 400):
        super().__init__()
        self.fc3, self.fc4 = nn.Linear(LATENT, hidden), nn.Linear(hidden, PIXELS)
        self.register_buffer("zero", torch.zeros(()))

    def logits(self, z):
        return self.fc4(torch.relu(self.fc3(z)))

    def forward(self, n):
        z = dgmkd.latent("z", Independent(Normal(self.zero.expand(n, LATENT), 1.0), 1))
        return dgmkd.target("x", Independent(Bernoulli(logits=self.logits(z)), 1))


def run_dgmkd(teacher, student, steps):
    return dgmkd.distill(teacher, student, BATCH, steps=steps, lr=1e-3, progress=False, seed=None)["loss"]


def run_hand(teacher, student, steps):
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    teacher.eval()
    student.train()
    out = []
    for _ in range(steps):
        z = torch.randn(BATCH, LATENT)
        with torch.no_grad():
            lt = teacher.logits(z)
        loss = kl_divergence(Bernoulli(logits=lt), Bernoulli(logits=student.logits(z))).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(loss.detach())
    return [float(v) for v in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--steps", type=int, default=50, help="steps per distill call / hand-written loop")
    ap.add_argument("--cpu-time", action="store_true", help="time this thread's CPU time (steadier on a loaded "
                                                                 "machine)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    global CLOCK
    torch.set_num_threads(a.threads)
    if a.cpu_time:
        CLOCK = time.thread_time
    torch.manual_seed(0)
    teacher, student0 = Decoder(400), Decoder(100)

    # the same work: from the same RNG state the two loops give the same losses
    torch.manual_seed(1)
    la = run_dgmkd(teacher, copy.deepcopy(student0), 5)
    torch.manual_seed(1)
    lb = run_hand(teacher, copy.deepcopy(student0), 5)
    assert all(abs(x - y) <= 1e-4 * abs(y) + 1e-4 for x, y in zip(la, lb)), (la, lb)

    def timed(fn):
        s = copy.deepcopy(student0)
        t0 = CLOCK()
        fn(teacher, s, a.steps)
        return (CLOCK() - t0) / a.steps

    cases = {"dgmkd": run_dgmkd, "hand-written": run_hand}
    for fn in cases.values():  # warm-up
        timed(fn)
    times = {k: [] for k in cases}
    for r in range(a.rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for k in order:
            times[k].append(timed(cases[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"VAE decoder 20-400-784 (student 20-100-784), Bernoulli output, batch {BATCH}, {a.steps} steps x "
          f"{a.rounds} rounds, {a.threads} thread(s), {'CPU' if a.cpu_time else 'wall'} time")
    for k, v in med.items():
        print(f"{k:13s} {v * 1e3:.2f} ms/step (median; min {min(times[k]) * 1e3:.2f}, max {max(times[k]) * 1e3:.2f})")
    print(f"distill_overhead_ratio={med['dgmkd'] / med['hand-written']:.3f}")


if __name__ == "__main__":
    main()
