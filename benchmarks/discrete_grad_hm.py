"""Helmholtz-machine compression (``hm-compress``'s models, data, training and exact KL) with the
unified method with and without ``discrete_grad=True``, and local for reference; one seed.

    python benchmarks/discrete_grad_hm.py [--seed 0] [--widths 2 1] [--steps 3000] [--methods ...]
        [--latent-weight 1.0]

Prints per student width and method the exact KL(p_T || p_S) (mean over the teacher samples, its
standard error), the test log-likelihood and the distillation time.
"""

from __future__ import annotations

import argparse
import time

import torch

from dgmkd import harness
from dgmkd.data.faithful import split_faithful
from dgmkd.experiments.hm_compress import Config, evaluate, student, wake_sleep
from dgmkd.models.helmholtz import HelmholtzMachine


METHODS = {"unified": ("unified", {}), "unified+dg": ("unified", {"discrete_grad": True}),
           "unified+dg1": ("unified", {"discrete_grad": 1}), "local": ("local", {})}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--steps", type=int, default=3000, help="distillation steps (hm-compress: 3000)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                    help="unified+dg: discrete_grad=True; unified+dg1: discrete_grad=1")
    ap.add_argument("--latent-weight", type=float, default=1.0, help="hm-compress: 1.0")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Config(seeds=(a.seed,), student_hidden=tuple(a.widths), distill_steps=a.steps, progress=False,
                 latent_weight=a.latent_weight)
    train_y, test_y, (_, std) = split_faithful(cfg.n_test, cfg.split_seed)
    seed = a.seed
    harness.manual_seed(seed, "teacher-init")
    teacher = HelmholtzMachine(cfg.teacher_hidden, y_std=cfg.y_std)
    wake_sleep(teacher, train_y, cfg, cfg.teacher_steps, harness.seed(seed, "teacher-train"), "teacher")
    with torch.no_grad():
        harness.manual_seed(seed, "kl-samples")
        y_kl = teacher.eval()(cfg.kl_samples)
    print(f"seed {seed}, teacher width {cfg.teacher_hidden}, {cfg.distill_steps} distillation steps, batch "
          f"{cfg.distill_batch}, lr {cfg.distill_lr}, latent weight {cfg.latent_weight}, KL over {cfg.kl_samples} "
          "teacher samples (exact densities)")
    print(f"{'width':>5} {'method':28s} {'KL(p_T||p_S)':>14} {'s.e.':>9} {'test LL':>9} {'time s':>7}")
    for w in cfg.student_hidden:
        for name in a.methods:
            method, kw = METHODS[name]
            t0 = time.perf_counter()
            s = student(seed, w, method, cfg, lambda h: HelmholtzMachine(h, y_std=cfg.y_std), teacher, None,
                        lambda _: {"lr": cfg.distill_lr, **kw})
            dt = time.perf_counter() - t0
            e = evaluate(s, teacher, y_kl, test_y, std)
            print(f"{w:>5} {name:28s} {e['kl']:14.5f} {e['kl_se']:9.5f} {e['test_ll']:9.4f} {dt:7.1f}", flush=True)


if __name__ == "__main__":
    main()
