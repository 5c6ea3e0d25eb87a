"""What robustness costs: time per step of the default method against unified's.

The default (``dgmkd.distill`` without ``method``, see ``dgmkd.train.DEFAULT``) runs two couplings
per step (shared noise and teacher-forced) and, where the models have discrete latents, the
boundary probes of ``discrete_grad``. This times whole ``dgmkd.distill`` steps of both methods on
the regime benchmark's model families, interleaved in one process (the machine is noisy), and
compares medians.

    python benchmarks/default_cost.py [--rounds 7] [--steps 20]

Prints one line per model and a last line ``default_cost_ratio=<max over models of the median
ratio default / unified>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dgmkd
from dgmkd.models import MLPDGM
from dgmkd.models.helmholtz import HelmholtzMachine
from dgmkd.models.hvae import LadderVAE
from dgmkd.models.toy_chain import GaussianStudentChain, GaussianTeacherChain


def cases():
    torch.manual_seed(0)
    yield "demo DGM (Gaussian latents)", MLPDGM((2, 2), hidden=64, out_dim=2), MLPDGM((2, 2), hidden=8, out_dim=2), 256
    yield "Gaussian chain L=20, width 4", GaussianTeacherChain(20, noise_var=0.01), GaussianStudentChain(20, hidden=4), 256
    yield "Helmholtz machine 8 -> 2 (binary latents)", HelmholtzMachine(8), HelmholtzMachine(2), 256
    yield "ladder VAE 8x8, width 32 -> 8", LadderVAE(image_size=8, width=32), LadderVAE(image_size=8, width=8), 128


def time_steps(teacher, student, batch, method, steps) -> float:
    t0 = time.perf_counter()
    dgmkd.distill(teacher, student, batch, method=method, steps=steps, lr=1e-4, progress=False, seed=None)
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    worst = 0.0
    for name, teacher, student, batch in cases():
        for m in ("unified", "default"):  # warm-up: first-step validation, allocator
            time_steps(teacher, student, batch, m, 2)
        ratios, tu, td = [], [], []
        for _ in range(args.rounds):
            u = time_steps(teacher, student, batch, "unified", args.steps)
            d = time_steps(teacher, student, batch, "default", args.steps)
            tu.append(u)
            td.append(d)
            ratios.append(d / u)
        r = statistics.median(ratios)
        worst = max(worst, r)
        print(f"{name:45s} unified {1e3 * statistics.median(tu):7.2f} ms/step  default "
              f"{1e3 * statistics.median(td):7.2f} ms/step  ratio {r:5.2f}", flush=True)
    print(f"default_cost_ratio={worst:.2f}")


if __name__ == "__main__":
    main()
