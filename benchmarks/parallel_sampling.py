"""Sampling speed: the autoregressive teacher (sequential) vs the IAF student (parallel) on digits.

The models have the architectures of ``dgmkd run density-distill`` on the 8x8 digits (64
dimensions): teacher ``GaussianAutoregressive(64, hidden=(512, 512))`` — sampling is 64 sequential
network passes (Huang et al. §2: "sampling is sequential, requiring T passes"); student
``IAF(64, layers=4, hidden=(256,))`` — one parallel pass per layer (§3, Eq. 3). Sampling speed does
not depend on the weights, so the models are used as initialised (the IAF's output layers are
randomised so the timed pass is not a trivially cheap identity-like computation — it costs the
same either way). Timings are interleaved over several rounds (the machine is shared) and the
medians compared; one CPU thread.

    python benchmarks/parallel_sampling.py [--batch 256] [--rounds 7]

Prints samples/second for both and a last line ``parallel_speedup=<teacher time / student time>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dgmkd.models.autoregressive import GaussianAutoregressive
from dgmkd.models.iaf import IAF


def _time(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = GaussianAutoregressive(args.dim, hidden=(512, 512)).eval()
    student = IAF(args.dim, layers=4, hidden=(256,)).eval()
    with torch.no_grad():
        for layer in student.layers:
            out = layer.made.net[-1]
            out.weight.normal_(0, 0.01)
    z = torch.randn(args.batch, args.dim)
    t_times, s_times = [], []
    with torch.no_grad():
        teacher.from_noise(z), student.from_noise(z)  # warm-up
        for _ in range(args.rounds):
            t_times.append(_time(lambda: teacher.from_noise(z), 2))
            s_times.append(_time(lambda: student.from_noise(z), 20))
    t_med, s_med = statistics.median(t_times), statistics.median(s_times)
    print(f"teacher (autoregressive, {args.dim} sequential passes): {args.batch / t_med:10.0f} samples/s "
          f"({t_med * 1e3:.2f} ms per batch of {args.batch})")
    print(f"student (IAF, {len(student.layers)} parallel layers):          {args.batch / s_med:10.0f} samples/s "
          f"({s_med * 1e3:.2f} ms per batch of {args.batch})")
    print(f"parallel_speedup={t_med / s_med:.1f}")


if __name__ == "__main__":
    main()
