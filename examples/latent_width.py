"""Compressing a VAE's latent width with a latent map (dgmkd.maps): a teacher with 8 latent
dimensions distilled data-free into students with 2 and 4, on the embedded 8x8 digits (binarized).

    python examples/latent_width.py [--seeds 0 1 2] [--steps 3000] [--out DIR]

The student shares the teacher's noise through a fixed map, so it is still a DGM of the shared
noise and Prop. 3.1 of Chen et al. (2023) holds. Methods per width k:

* ``kd-select`` — data-free unified distillation, the student's noise = the teacher's k most used
  latent coordinates (by their KL(q(z_j|x) || p(z_j)) on the training images: the active units);
* ``kd-first``  — the same with the teacher's first k coordinates (an arbitrary choice);
* ``scratch``   — the same student architecture trained by the ELBO on the training images.

Every model (the teacher too) then gets an evaluation encoder trained by the ELBO on the training
images with its decoder frozen, and the held-out NLL is the importance-weighted bound (Burda et
al. 2016) with 500 samples on the test split. Table: mean ± sample sd over seeds. Writes
``DIR/results.csv`` and ``DIR/report.md`` (``report(DIR)`` rebuilds the latter from the CSV).
"""

import argparse
import math
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import dgmkd
from dgmkd import harness, maps
from dgmkd.data import digits_split
from dgmkd.train import fit, minibatches

TEACHER_WIDTH, WIDTHS, METHODS = 8, (2, 4), ("kd-select", "kd-first", "scratch")


class VAE(nn.Module):
    """z ~ N(0, I_latent); x | z ~ Bernoulli(dec(z)) over 64 pixels. ``forward(n)`` is the DGM
    (data-free: n samples); the encoder is used only for the ELBO and the NLL bound."""

    def __init__(self, latent, hidden):
        super().__init__()
        self.latent = latent
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 64))
        self.enc = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))

    def forward(self, n):
        z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, self.latent), 1.0), 1))
        return dgmkd.target("x", Independent(Bernoulli(logits=self.dec(z)), 1))

    def posterior(self, x):
        loc, log_s = self.enc(x).chunk(2, -1)
        return Normal(loc, log_s.clamp(-8, 4).exp())

    def log_weights(self, x, k):
        q = self.posterior(x)
        z = q.rsample((k,))
        return (Normal(0.0, 1.0).log_prob(z).sum(-1) + Bernoulli(logits=self.dec(z)).log_prob(x).sum(-1)
                - q.log_prob(z).sum(-1))

    def neg_elbo(self, x):
        return -self.log_weights(x, 1).mean()


def train_elbo(model, x, steps, seed, params=None, lr=2e-3):
    fit(lambda args, step: model.neg_elbo(args[0]), model, minibatches(x, batch=128), steps, lr=lr,
        params=params, seed=seed, progress=False)


@torch.no_grad()
def nll(model, x, k=500):
    lw = torch.cat([model.log_weights(x[i:i + 64], k) for i in range(0, len(x), 64)], 1)
    return float(-(torch.logsumexp(lw, 0) - math.log(k)).mean())


@torch.no_grad()
def active_order(model, x):
    """The latent coordinates by their mean KL(q(z_j|x) || N(0, 1)) on ``x``, largest first."""
    q = model.posterior(x)
    kl = (0.5 * (q.scale ** 2 + q.loc ** 2 - 1) - q.scale.log()).mean(0)
    return kl.argsort(descending=True).tolist(), kl.tolist()


def evaluate(model, xtr, xte, steps, seed):
    """Held-out NLL after an evaluation encoder (decoder frozen) is trained by the ELBO."""
    train_elbo(model, xtr, steps, seed, params=list(model.enc.parameters()))
    harness.manual_seed(seed, "nll")
    return nll(model, xte)


def run_seed(s, steps, eval_steps):
    torch.set_num_threads(1)
    xtr, xte = (digits_split(split, binarize=True)[0].flatten(1) for split in ("train", "test"))
    harness.manual_seed(s, "init", "teacher")
    teacher = VAE(TEACHER_WIDTH, 128)
    train_elbo(teacher, xtr, 2 * steps, harness.seed(s, "teacher"))
    order, kl = active_order(teacher, xtr)
    rows = [{"seed": s, "method": "teacher", "width": TEACHER_WIDTH,
             "nll": evaluate(teacher, xtr, xte, eval_steps, harness.seed(s, "eval", "teacher"))}]
    teacher.requires_grad_(False)
    for k in WIDTHS:
        for method in METHODS:
            harness.manual_seed(s, "init", method, k)
            student = VAE(k, 64)
            if method == "scratch":
                train_elbo(student, xtr, steps, harness.seed(s, "train", method, k))
            else:
                m = maps.select(order[:k]) if method == "kd-select" else maps.first(k)
                dgmkd.distill(teacher, student, 256, steps=steps, lr=2e-3, latent_maps={"z": m},
                              seed=harness.seed(s, "train", method, k), progress=False)
            rows.append({"seed": s, "method": method, "width": k,
                         "nll": evaluate(student, xtr, xte, eval_steps, harness.seed(s, "eval", method, k))})
            print(rows[-1], flush=True)
    rows[0]["teacher_kl_by_coordinate"] = " ".join(f"{v:.2f}" for v in kl)
    return rows


def report(out):
    out = Path(out)
    rows = harness.read_csv(out / "results.csv", required=("seed", "method", "width", "nll"))
    summ = {(r["method"], r["width"]): r for r in harness.summarize(rows, ("method", "width"), ("nll",))}
    n = len({r["seed"] for r in rows})
    kls = [r["teacher_kl_by_coordinate"] for r in rows if r["method"] == "teacher"]
    lines = ["# Latent-width compression of a VAE (examples/latent_width.py)", "",
             f"Teacher: latent {TEACHER_WIDTH}, hidden 128; students: hidden 64. Held-out NLL (nats, importance-"
             f"weighted bound, 500 samples, 359 test images of the binarized 8x8 digits), mean ± sample sd over "
             f"{n} seed(s); lower is better.", "",
             *harness.table(["model", *(f"latent {k}" for k in WIDTHS)],
                            [[m, *(harness.cell(summ[(m, k)], "nll", 2) for k in WIDTHS)] for m in METHODS]),
             "", f"Teacher (latent {TEACHER_WIDTH}): {harness.cell(summ[('teacher', TEACHER_WIDTH)], 'nll', 2)}.", "",
             "Teacher KL(q(z_j|x) || p(z_j)) per latent coordinate (nats, training images), per seed:", "",
             *(f"* {k}" for k in kls), ""]
    return harness.write_text(out / "report.md", "\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2000, help="student steps (the teacher trains twice as long)")
    ap.add_argument("--eval-steps", type=int, default=1000, help="evaluation-encoder steps per model")
    ap.add_argument("--out", default="runs/latent-width")
    a = ap.parse_args(argv)
    rows = [r for s in a.seeds for r in run_seed(s, a.steps, a.eval_steps)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    harness.write_csv(Path(a.out) / "results.csv", rows)
    print(report(a.out).read_text())


if __name__ == "__main__":
    main()
