"""Inference speed of the flow-kd teachers and students (Walton et al., Table 2 analogue).

For each architecture of ``dgmkd run flow-kd``'s default config (MAF 6 -> 3 steps, tabular Glow
6 steps hidden 64 -> 3 steps hidden 32, at the 63-d patch dimension; the digits Glow 2 levels x 8
steps hidden 64 -> 2 levels x 2 steps hidden 32) this times one batch of density evaluation
(``log_prob``) and of sampling, teacher vs student, and prints ms/batch and parameter counts. The
last line is ``student_speedup=<x>``: the smallest teacher/student ratio of density-evaluation
time over the architectures (the paper's Table 2 measures "a single batch inference"). Weights do
not affect the speed, so freshly initialized models are timed, in interleaved rounds, each model's
median round is used, so a load spike on a shared machine hits all alike.

    python benchmarks/flow_speed.py [--batch 1000] [--rounds 15] [--threads 1] [--dim 63]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dgmkd.experiments.flow_kd import Config, _make, n_params
from dgmkd.models.flows import Glow


def _time(fn, arg, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(arg)
    return (time.perf_counter() - t0) / reps * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dim", type=int, default=63)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = Config()
    models = {}
    for arch in ("maf", "glow"):
        models[f"{arch} (d={a.dim})"] = (_make(arch, a.dim, getattr(cfg, f"{arch}_teacher")).eval(),
                                         _make(arch, a.dim, getattr(cfg, f"{arch}_student")).eval(),
                                         torch.randn(a.batch, a.dim))
    kt, ht = cfg.image_teacher
    ks, hs = cfg.image_student
    models["glow digits 8x8"] = (Glow((1, 8, 8), cfg.image_levels, kt, ht).eval(),
                                 Glow((1, 8, 8), cfg.image_levels, ks, hs).eval(), torch.rand(a.batch, 1, 8, 8) - 0.5)
    times = {(k, who, op): [] for k in models for who in ("teacher", "student") for op in ("log_prob", "sample")}
    with torch.no_grad():
        for _ in range(a.rounds):
            for k, (t, s, x) in models.items():
                for who, m in (("teacher", t), ("student", s)):
                    times[(k, who, "log_prob")].append(_time(m.log_prob, x, a.reps))
                    n = a.batch if not k.startswith("maf") else max(1, a.batch // 10)
                    times[(k, who, "sample")].append(_time(lambda n: m.sample(n), n, 1))
    speedups = []
    print(f"{'model':20s} {'who':8s} {'K params':>9s} {'log_prob ms':>12s} {'sample ms':>10s}")
    for k, (t, s, _) in models.items():
        for who, m in (("teacher", t), ("student", s)):
            lp = statistics.median(times[(k, who, 'log_prob')])
            sm = statistics.median(times[(k, who, 'sample')])
            print(f"{k:20s} {who:8s} {n_params(m) / 1e3:9.1f} {lp:12.2f} {sm:10.2f}")
        r = statistics.median(times[(k, "teacher", "log_prob")]) / statistics.median(times[(k, "student", "log_prob")])
        rs = statistics.median(times[(k, "teacher", "sample")]) / statistics.median(times[(k, "student", "sample")])
        print(f"{k:20s} speed-up: log_prob {r:.2f}x, sample {rs:.2f}x")
        speedups.append(r)
    print("(MAF sampling is timed on batch/10: its inverse runs one pass per dimension)")
    print(f"student_speedup={min(speedups):.2f}")


if __name__ == "__main__":
    main()
