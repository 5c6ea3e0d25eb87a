"""Variants of the default method on the Gaussian toy chains, the cells where it is weakest.

The regime benchmark (``dgmkd run regimes``) measures the default as it is; this measures what
changing one of its settings does on the four Gaussian-chain cells (L = 8, 20; student widths
4 and 32; exact marginal KL; the regime benchmark's seeds, budgets and seed streams), so a
proposed change can be checked before the whole benchmark is re-run.

    python benchmarks/default_variants.py [--power 2] [--latent-weight 0.1] [--grad-clip 1]
        [--seeds 0 1 2] [--out FILE]

Prints one line per cell (mean and per-seed KL) and a last line ``worst_chain_ratio=<max over the
cells of the variant's mean KL over the best named method's mean in --baseline, a regimes run
directory or its results CSV>`` when ``--baseline`` is given.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

import dgmkd.train as T
from dgmkd import harness
from dgmkd.experiments import toy_chain


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--power", type=float, default=T.DEFAULT["power"])
    ap.add_argument("--latent-weight", type=float, default=T.DEFAULT.get("latent_weight", 0.1))
    ap.add_argument("--grad-clip", type=float, default=T.DEFAULT["grad_clip"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--baseline", type=Path, help="a regimes run directory (or its results CSV): ratios to its best "
                    "named method")
    ap.add_argument("--out", type=Path, help="also write the lines to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    T.DEFAULT.update(power=args.power, latent_weight=args.latent_weight, grad_clip=args.grad_clip)
    best = {}
    if args.baseline:
        from dgmkd.experiments.regimes import cells

        csv = args.baseline / "results.csv" if args.baseline.is_dir() else args.baseline
        best = {c["cell"]: c["methods"][c["best"]]["value_mean"] for c in cells(harness.read_csv(csv)) if c["best"]}
    cfg = toy_chain.Config(dre=False, steps=args.steps)
    lines = [f"default variant: power {args.power}, latent weight {args.latent_weight}, grad clip {args.grad_clip}"]
    ratios = []
    for layers in (8, 20):
        for width in (4, 32):
            kl = [toy_chain.train_and_evaluate("gaussian", layers, "default", None, width, args.steps, s, cfg)["kl_grid"]
                  for s in args.seeds]
            cell = f"gaussian L={layers} w={width}"
            m = statistics.mean(kl)
            r = m / best[cell] if cell in best else float("nan")
            ratios.append(r)
            lines.append(f"{cell}: mean KL {m:.4f}  seeds {[round(v, 4) for v in kl]}"
                         + (f"  ratio to the best named method {r:.2f}" if cell in best else ""))
            print(lines[-1], flush=True)
    if best:
        lines.append(f"worst_chain_ratio={max(ratios):.2f}")
    print(lines[-1] if best else "", flush=True)
    if args.out:
        harness.write_text(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
