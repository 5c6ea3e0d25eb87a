"""Sequences part of ``dgmkd run density-distill``: a WaveNet-style teacher on MNIST-1D.

The issue's sequence analogue of Huang et al.'s §4.1.2 / §4.1.4 (their neural vocoder distils a
Gaussian-conditional autoregressive model of audio into a parallel student): a causal-convolution
Gaussian autoregressive teacher (:class:`~dgmkd.models.autoregressive.CausalConvAutoregressive`,
gated dilated residual blocks) is fitted by maximum likelihood to MNIST-1D signals (length 40,
standardized; built offline by the ``mnist1d`` package, :mod:`dgmkd.data.mnist1d`), then distilled
into an IAF student (MADE layers over the 40 steps: one parallel pass per layer) by each loss of
:func:`dgmkd.experiments.density_digits.distill_student`.

Evaluation on ``eval_samples`` samples: the teacher log-likelihood of student samples and the
Fréchet distance in signal space (40-d) to an independent teacher sample and to the data; sample
plots in ``sequences_samples.png``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..models.autoregressive import CausalConvAutoregressive
from .density_digits import distill_student, fit_teacher, frechet_distance


def run_sequences(cfg, out: Path) -> dict:
    from ..data.mnist1d import load_mnist1d

    out = Path(out)
    torch.manual_seed(cfg.seed)
    d = load_mnist1d(num_samples=cfg.seq_samples)
    tr, te = d["x"][..., 0], d["x_test"][..., 0]
    length = tr.shape[1]

    def batches():
        return tr[torch.randint(len(tr), (cfg.img_batch,))]

    teacher = CausalConvAutoregressive(length, channels=cfg.seq_teacher_channels, layers=cfg.seq_teacher_layers)
    print(f"sequences: fitting the causal-conv teacher ({cfg.seq_teacher_steps} steps)")
    th = fit_teacher(cfg, teacher, batches, cfg.seq_teacher_steps, cfg.img_teacher_lr, "mnist1d teacher")
    with torch.no_grad():
        nll_tr = float(-teacher.log_prob(tr).mean() / length)
        nll_te = float(-teacher.log_prob(te).mean() / length)
    print(f"  teacher NLL per step (nats, standardized signal): train {nll_tr:.3f}  test {nll_te:.3f}")

    n_eval = cfg.seq_eval_samples
    torch.manual_seed(cfg.seed + 5)
    with torch.no_grad():
        x_ref = teacher.sample(n_eval)
        t0 = time.perf_counter()
        x_teacher = teacher.sample(n_eval)
        t_teacher = time.perf_counter() - t0
        pool = teacher.sample(cfg.seq_oracle_pool)
    ref, data = x_ref.numpy(), torch.cat([tr, te]).numpy()

    def row(model, xs, final_loss, seconds):
        with torch.no_grad():
            ll = teacher.log_prob(xs)
        a = xs.numpy()
        return {"model": model, "teacher_loglik_mean": float(ll.mean()), "teacher_loglik_std": float(ll.std()),
                "fd_to_teacher": frechet_distance(a, ref), "fd_to_data": frechet_distance(a, data),
                "final_loss": final_loss, "sample_seconds": seconds}

    results = [row("teacher", x_teacher, float("nan"), t_teacher)]
    curves = {"data": tr[:6].numpy(), "teacher": x_teacher[:6].numpy()}
    hist_rows = [{"model": "teacher", "step": s, "value": v} for s, v in zip(th["step"], th["nll"]) if s % 10 == 0]
    for name in cfg.img_losses:
        print(f"sequences: distilling with {name} ({cfg.seq_steps} steps)")
        student, h = distill_student(cfg, name, teacher, batches, pool, f"mnist1d {name}", steps=cfg.seq_steps)
        hist_rows += [{"model": name, "step": s, "value": v} for s, v in zip(h["step"], h["loss"]) if s % 10 == 0]
        torch.manual_seed(cfg.seed + 5)
        with torch.no_grad():
            t0 = time.perf_counter()
            xs = student.sample(n_eval)
            t_s = time.perf_counter() - t0
        results.append(row(name, xs, float(np.mean(h["loss"][-50:])), t_s))
        curves[name] = xs[:6].numpy()
        r = results[-1]
        print(f"  {name:14s} FD to teacher {r['fd_to_teacher']:.3f}  teacher loglik {r['teacher_loglik_mean']:.1f} "
              f"(teacher's own {results[0]['teacher_loglik_mean']:.1f})")
    rundir.write_csv(out / "sequences_results.csv", results)
    rundir.write_csv(out / "sequences_history.csv", hist_rows)
    _plot(curves, out / "sequences_samples.png")
    return {"results": results, "nll_train": nll_tr, "nll_test": nll_te}


def _plot(curves: dict[str, np.ndarray], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(2.4 * len(curves), 2.6), sharey=True)
    for ax, (name, xs) in zip(np.atleast_1d(axes), curves.items()):
        for i, x in enumerate(xs):
            ax.plot(x + 4 * i, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sequences_report(summary: dict, cfg) -> list[str]:
    lines = ["", "## Sequences: WaveNet-style teacher on MNIST-1D distilled into an IAF student", "",
             f"teacher: causal conv, {cfg.seq_teacher_channels} channels, {cfg.seq_teacher_layers} gated dilated "
             f"blocks, {cfg.seq_teacher_steps} MLE steps; NLL per step (nats, standardized signal): train "
             f"{summary['nll_train']:.3f}, test {summary['nll_test']:.3f}. Students as in the digits part but "
             f"{cfg.seq_steps} steps; oracle pool {cfg.seq_oracle_pool} teacher samples; {cfg.seq_eval_samples} "
             "samples per model.", "",
             "FD = Fréchet distance of Gaussians fitted to the 40-d signals. 'to teacher' compares with a reference "
             "sample of the teacher; the teacher's own row uses an independent sample of the same size.", "",
             "| model | teacher log-lik of samples (mean±sd) | FD → teacher | FD → data | final loss | sampling s |",
             "|---|---|---|---|---|---|"]
    for r in summary["results"]:
        lines.append(f"| {r['model']} | {r['teacher_loglik_mean']:.1f}±{r['teacher_loglik_std']:.1f} | "
                     f"{r['fd_to_teacher']:.3f} | {r['fd_to_data']:.3f} | {r['final_loss']:.3f} | "
                     f"{r['sample_seconds']:.3f} |")
    lines += ["", "Samples (6 per model, offset vertically): `sequences_samples.png`."]
    if not all(math.isfinite(r["fd_to_teacher"]) for r in summary["results"]):
        lines.append("Some FD values are not finite (degenerate samples).")
    return lines
