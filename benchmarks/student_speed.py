"""Sampling speed of the hvae-compress teacher and its students (batch 256, CPU).

The students of Table 1 (Chen et al. 2023, §4.2) exist to be cheaper to run: this prints the
samples/second of ancestral sampling (``LadderVAE.sample``: top-down prior pass and decoder mean)
for the teacher and the student of each parameter ratio of the experiment's default config, and a
last line ``smallest_student_speedup=<x>`` (teacher time / smallest student time). Weights do not
affect the speed, so freshly initialized models are timed. Models are timed in interleaved rounds
and each one's median round is used, so a load spike on a shared machine hits all of them alike.

    python benchmarks/student_speed.py [--batch 256] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dgmkd.experiments.hvae_compress import Config, _vae, student_widths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--reps", type=int, default=5, help="sampling calls per round")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = Config()
    torch.manual_seed(0)
    models = {"teacher": _vae(cfg, cfg.teacher_width, 8, 1)}
    for w, r in student_widths(cfg, 8, 1):
        models[f"student 1/{r}"] = _vae(cfg, w, 8, 1)
    for m in models.values():
        m.eval()
        for _ in range(3):
            m.sample(a.batch)  # warm-up
    times = {k: [] for k in models}
    for _ in range(a.rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(a.reps):
                m.sample(a.batch)
            times[k].append((time.perf_counter() - t0) / a.reps)
    print(f"batch {a.batch}, {a.threads} thread(s), median of {a.rounds} rounds x {a.reps} calls")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, m in models.items():
        print(f"{k:16s} params {m.num_parameters():>9,d} (generative {m.num_parameters('generative'):>8,d})  "
              f"{a.batch / med[k]:>10.0f} samples/s")
    smallest = min((k for k in models if k != "teacher"), key=lambda k: models[k].num_parameters())
    print(f"smallest_student_speedup={med['teacher'] / med[smallest]:.2f}")


if __name__ == "__main__":
    main()
