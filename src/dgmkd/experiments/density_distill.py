"""``dgmkd run density-distill``: probability density distillation (Huang et al., UAI 2019).

Three parts (``parts=linear,digits,sequences``): the linear-Gaussian study below (§3.2, §4.1.1),
the digits study of :mod:`dgmkd.experiments.density_digits` (§4.1.2–4.1.3) and the MNIST-1D study
of :mod:`dgmkd.experiments.density_sequences` (a WaveNet-style teacher).

Linear part.

Teacher ``x = mu + R z`` with ``mu = 2``, ``R_ij ~ N(0, 1)`` fixed; student ``x = mu_S + R_S z``
(full matrix, initialised at ``N(0, I)``), trained by each loss of :mod:`dgmkd.methods.density`
(reverse KL, z-reconstruction, x-reconstruction on fresh teacher samples, oracle prediction) for
``T`` in {4, 16, 32, 64}; batch 64, Adam 5e-3, 5000 updates (the paper's budget).

Outputs (in the run directory, all written by this code):

* ``fig2_loglik_hist.png`` — their Fig. 2: histograms of ``log p_T(x)`` for 1000 teacher samples
  and 1000 samples of each student, one panel per ``T``;
* ``fig3_expansion_signal.png`` — their Fig. 3: the frequency of the expansion signal
  ``{(x - mu_T)^T g_x > 0}`` during reverse-KL training, 128 student samples per step, mean over
  8 repeats (each repeat a new teacher ``R`` and seed);
* ``results.csv``, ``expansion.csv``, ``prop1.csv``, ``history.csv`` and ``report.md`` (tables).

The Prop. 1 table compares, per ``T``, the closed form (Imhof's formula on the eigenvalues of the
teacher covariance relative to the student's, footnote 1) with the Monte Carlo frequency — at the
student's initialisation (both centred) and at the end of reverse-KL training.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributions import kl_divergence

from .. import rundir
from ..methods import density
from ..models.linear_gaussian import LinearGaussian
from ..train import train

DESCRIPTION = "probability density distillation: reverse KL vs z/x-recon vs oracle; linear-Gaussian, digits, MNIST-1D (Huang et al.)"


@dataclass
class Config:
    dims: tuple[int, ...] = (4, 16, 32, 64)
    losses: tuple[str, ...] = ("reverse_kl", "z_recon", "x_recon", "oracle")
    distance: str = "l2"
    noise_std: float = 0.0          # noise injected into T(x) for x_recon (0 in the paper's §4.1.1)
    steps: int = 5000               # "make 5000 updates" (§3.2)
    batch: int = 64
    lr: float = 5e-3
    teacher_loc: float = 2.0
    repeats: int = 8                # Fig. 3: 8 repeats of reverse-KL training
    signal_samples: int = 128       # Fig. 3: 128 samples per step
    signal_every: int = 1           # measure the expansion signal every k steps
    eval_samples: int = 1000        # Fig. 2: 1000 samples of teacher and of each student
    prop1_samples: int = 100000
    smooth: int = 50                # moving-average window of the Fig. 3 curves
    seed: int = 0
    threads: int = 1
    progress: bool = True
    parts: tuple[str, ...] = ("linear", "digits", "sequences")
    # digits part (density_digits.py)
    img_losses: tuple[str, ...] = ("reverse_kl", "z_recon", "x_recon", "x_recon_noise", "oracle")
    img_alpha: float = 0.05
    img_teacher_hidden: tuple[int, ...] = (512, 512)
    img_teacher_steps: int = 5000
    img_teacher_lr: float = 1e-3
    img_batch: int = 64             # §4.1.2: minibatch 64
    img_steps: int = 4000
    img_lr: float = 5e-4            # §4.1.2: Adam 0.0005
    img_student_layers: int = 4
    img_student_hidden: tuple[int, ...] = (256,)
    img_oracle_pool: int = 20000
    img_grad_clip: float = 10.0
    noise_std_img: float = 0.5      # §4.1.3: "N(0, 0.5)" noise on the encodings
    img_cnn_metrics: bool = True    # digits-CNN FD and class histogram (trains + caches the CNN once)
    # sequences part (density_sequences.py; students and their optimizer use the img_* settings)
    seq_samples: int = 5000         # MNIST-1D set size (80/20 train/test)
    seq_teacher_channels: int = 32
    seq_teacher_layers: int = 6     # dilations 1..32: receptive field 65 >= 40 steps
    seq_teacher_steps: int = 3000
    seq_steps: int = 1500           # student updates (CPU convolutions are slow here; see docs)
    seq_oracle_pool: int = 5000
    seq_eval_samples: int = 1000

    def validate(self):
        bad = [l for l in self.losses if l not in density.LOSSES]
        if bad:
            raise ValueError(f"unknown loss(es) {bad}; choose from {', '.join(density.LOSSES)}")
        if self.distance not in density.DISTANCES:
            raise ValueError(f"distance must be one of {density.DISTANCES}, got {self.distance!r}")
        if any(d < 1 for d in self.dims) or not self.dims:
            raise ValueError(f"dims must be positive, got {self.dims}")
        if self.steps < 1 or self.batch < 1 or self.repeats < 1 or self.signal_every < 1:
            raise ValueError("steps, batch, repeats and signal_every must be >= 1")
        bad = [p for p in self.parts if p not in ("linear", "digits", "sequences")]
        if bad or not self.parts:
            raise ValueError(f"parts must be a non-empty subset of linear,digits,sequences; got {self.parts}")
        from .density_digits import STUDENT_LOSSES
        bad = [l for l in self.img_losses if l not in STUDENT_LOSSES]
        if bad:
            raise ValueError(f"unknown digits loss(es) {bad}; choose from {', '.join(STUDENT_LOSSES)}")


QUICK = {"steps": 600, "repeats": 2, "signal_every": 2, "smooth": 20, "prop1_samples": 20000,
         "img_teacher_steps": 600, "img_steps": 300, "img_oracle_pool": 2000, "img_teacher_hidden": "256,256",
         "parts": "linear,digits",  # the sequence part is slow on CPU: try `--quick --set parts=sequences`
         "seq_samples": 2000, "seq_teacher_steps": 300, "seq_steps": 150, "seq_oracle_pool": 500,
         "seq_eval_samples": 300}


def _teacher(cfg: Config, dim: int, repeat: int) -> LinearGaussian:
    g = torch.Generator().manual_seed(10_000 * cfg.seed + 100 * dim + repeat)
    return LinearGaussian.random(dim, loc=cfg.teacher_loc, generator=g)


def _relative_eigs(teacher: LinearGaussian, student: LinearGaussian) -> torch.Tensor:
    """Eigenvalues of ``Sigma_S^{-1} Sigma_T`` (the teacher's covariance in the student's whitened
    coordinates, Huang et al. footnote 1), computed in float64."""
    ss = student.covariance().detach().double()
    st = teacher.covariance().detach().double()
    l = torch.linalg.cholesky(ss)
    m = torch.linalg.solve_triangular(l, torch.linalg.solve_triangular(l, st, upper=False).T, upper=False)
    return torch.linalg.eigvalsh(0.5 * (m + m.T))


def _train_one(cfg, teacher, name, dim, seed, signal: bool):
    student = LinearGaussian(dim)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    extra = None
    if signal:
        def extra(step):
            if step % cfg.signal_every:
                return {}
            return {"p_expand": density.expansion_signal(teacher, student, cfg.signal_samples, teacher.loc)}
    step_fn = density.make_step(name, teacher, student, opt, distance=cfg.distance, noise_std=cfg.noise_std,
                                extra=extra)
    inputs = (lambda: teacher.sample(cfg.batch)) if name == "x_recon" else cfg.batch
    hist = train(step_fn, inputs, cfg.steps, state={"student": student, "optimizer": opt}, seed=seed,
                 progress=cfg.progress, desc=f"T={dim} {name} s{seed}")
    return student, hist


@torch.no_grad()
def _metrics(cfg, teacher, student, name, dim, hist) -> tuple[dict, torch.Tensor]:
    """Teacher log-likelihood of 1000 teacher and 1000 student samples (Fig. 2) and the closed-form
    KLs in float64."""
    torch.manual_seed(cfg.seed + 7)
    lt = teacher.log_prob(teacher.sample(cfg.eval_samples))
    torch.manual_seed(cfg.seed + 11)
    ls = teacher.log_prob(student.sample(cfg.eval_samples))
    ps_ = copy.deepcopy(student).double().distribution()
    pt_ = copy.deepcopy(teacher).double().distribution()
    row = {"T": dim, "loss": name,
           "teacher_loglik_mean": float(lt.mean()), "teacher_loglik_std": float(lt.std()),
           "student_loglik_mean": float(ls.mean()), "student_loglik_std": float(ls.std()),
           "shift_in_teacher_std": float((ls.mean() - lt.mean()) / lt.std()),
           "kl_student_teacher": float(kl_divergence(ps_, pt_)),
           "kl_teacher_student": float(kl_divergence(pt_, ps_)),
           "logdet_cov_ratio": float(torch.linalg.slogdet(ps_.covariance_matrix).logabsdet
                                     - torch.linalg.slogdet(pt_.covariance_matrix).logabsdet),
           "final_loss": float(np.mean(hist["loss"][-50:]))}
    return row, ls


def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(out)
    summary: dict = {}
    lines: list[str] = ["# Density distillation (Huang et al., UAI 2019)", ""]
    if "linear" in cfg.parts:
        summary["linear"] = _run_linear(cfg, out, lines)
    if "digits" in cfg.parts:
        from .density_digits import digits_report, run_digits

        summary["digits"] = run_digits(cfg, out)
        lines += digits_report(summary["digits"], cfg)
    if "sequences" in cfg.parts:
        from .density_sequences import run_sequences, sequences_report

        summary["sequences"] = run_sequences(cfg, out)
        lines += sequences_report(summary["sequences"], cfg)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return summary


def _run_linear(cfg: Config, out: Path, lines: list[str]) -> dict:
    rows, exp_rows, prop_rows, hist_rows, rep_rows = [], [], [], [], []
    loglik: dict[int, dict[str, np.ndarray]] = {}
    curves: dict[int, np.ndarray] = {}
    for dim in cfg.dims:
        teacher = _teacher(cfg, dim, 0)
        torch.manual_seed(cfg.seed + 7)
        with torch.no_grad():
            lt = teacher.log_prob(teacher.sample(cfg.eval_samples))
        loglik[dim] = {"teacher": lt.numpy()}
        # Proposition 1 at the initial student N(0, I), both centred: closed form vs Monte Carlo
        centred = LinearGaussian(dim, 0.0, teacher.matrix, trainable=False)
        init = LinearGaussian(dim, trainable=False)
        p_cf = density.expansion_probability(_relative_eigs(centred, init))
        p_mc = density.expansion_signal(centred, init, cfg.prop1_samples)
        prop = {"T": dim, "p_closed_init": p_cf, "p_mc_init": p_mc,
                "se_init": math.sqrt(max(p_cf * (1 - p_cf), 1e-12) / cfg.prop1_samples)}
        signal_runs = []
        for name in cfg.losses:
            n_rep = cfg.repeats if name == "reverse_kl" else 1
            for r in range(n_rep):
                t_r = teacher if r == 0 else _teacher(cfg, dim, r)
                student, hist = _train_one(cfg, t_r, name, dim, cfg.seed + r, signal=name == "reverse_kl")
                if name == "reverse_kl":
                    steps_m = [s for s in hist["step"] if s % cfg.signal_every == 0]
                    signal_runs.append(np.array(hist["p_expand"]))
                    exp_rows += [{"T": dim, "repeat": r, "step": s, "p_expand": p}
                                 for s, p in zip(steps_m, hist["p_expand"])]
                if r:  # later reverse-KL repeats: only their summary numbers
                    rep_rows.append({"repeat": r, **_metrics(cfg, t_r, student, name, dim, hist)[0]})
                    continue
                hist_rows += [{"T": dim, "loss": name, "step": s, "value": v}
                              for s, v in zip(hist["step"], hist["loss"]) if s % 10 == 0]
                row, ls = _metrics(cfg, teacher, student, name, dim, hist)
                loglik[dim][name] = ls.numpy()
                rows.append(row)
                if name == "reverse_kl":
                    rep_rows.append({"repeat": 0, **row})
                if name == "reverse_kl":
                    p_end_cf = density.expansion_probability(_relative_eigs(teacher, student))
                    prop.update({"p_closed_end_rkl": p_end_cf,
                                 "p_mc_end_rkl": density.expansion_signal(teacher, student, cfg.prop1_samples,
                                                                          teacher.loc)})
                print(f"  T={dim:3d} {name:10s} KL(S||T)={row['kl_student_teacher']:.3f} "
                      f"KL(T||S)={row['kl_teacher_student']:.3f} shift={row['shift_in_teacher_std']:+.2f} sd")
        if signal_runs:
            curves[dim] = np.stack(signal_runs)
        prop_rows.append(prop)
    rundir.write_csv(out / "results.csv", rows)
    rundir.write_csv(out / "expansion.csv", exp_rows)
    rundir.write_csv(out / "prop1.csv", prop_rows)
    rundir.write_csv(out / "reverse_kl_repeats.csv", rep_rows)
    rundir.write_csv(out / "history.csv", hist_rows)
    _plot_hist(cfg, loglik, out / "fig2_loglik_hist.png")
    if curves:
        _plot_signal(cfg, curves, out / "fig3_expansion_signal.png")
    return _report(cfg, rows, prop_rows, curves, rep_rows, lines)


def _moving(x: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or x.shape[-1] < w:
        return x
    k = np.ones(w) / w
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), -1, x)


def _plot_hist(cfg, loglik, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = list(loglik)
    fig, axes = plt.subplots(1, len(dims), figsize=(4 * len(dims), 3.2), squeeze=False)
    colors = {"teacher": "k", "reverse_kl": "tab:red", "z_recon": "tab:blue", "x_recon": "tab:green",
              "oracle": "tab:orange"}
    for ax, dim in zip(axes[0], dims):
        vals = loglik[dim]
        t = vals["teacher"]
        allv = np.concatenate(list(vals.values()))
        # the range covers the teacher's samples generously; lower student values (heavy left
        # tails) are piled into the first bin so their mass stays visible
        lo, hi = min(t.min(), np.percentile(allv, 1)) - 2 * t.std(), allv.max()
        bins = np.linspace(lo, hi, 50)
        for k, v in vals.items():
            ax.hist(np.clip(v, lo, hi), bins=bins, histtype="step" if k != "teacher" else "stepfilled",
                    alpha=0.35 if k == "teacher" else 1.0, color=colors.get(k), label=k, lw=1.4,
                    ls="--" if k == "oracle" else "-")
        ax.set_title(f"T = {dim}")
        ax.set_xlabel("log p_T(x)")
    axes[0][0].set_ylabel("count")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_signal(cfg, curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for dim, c in curves.items():
        raw = c.mean(0)
        m = _moving(raw, cfg.smooth)
        offset = (len(raw) - len(m)) / 2  # a 'valid' moving average is centred on its window
        steps = (np.arange(len(m)) + offset) * cfg.signal_every
        ax.plot(steps, m, label=f"T={dim}")
    ax.set_xlabel("update")
    ax.set_ylabel("P(expansion signal)")
    ax.set_title(f"reverse KL: mean over {next(iter(curves.values())).shape[0]} repeats, "
                 f"{cfg.signal_samples} samples/step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(cfg, rows, prop_rows, curves, rep_rows, lines) -> dict:
    lines += ["## Linear-Gaussian teacher (§3.2, §4.1.1)", "",
             f"steps={cfg.steps}, batch={cfg.batch}, Adam lr={cfg.lr}, distance={cfg.distance}, "
             f"x_recon noise_std={cfg.noise_std}, reverse-KL repeats={cfg.repeats}, seed={cfg.seed}", "",
             "## Teacher log-likelihood of 1000 student samples (Fig. 2) and closed-form KLs", "",
             "`shift` = (mean log p_T of student samples - mean of teacher samples) / std of teacher samples;"
             " positive = the student concentrates on the teacher's high-density region.", "",
             "| T | loss | teacher mean±sd | student mean±sd | shift (sd) | KL(S‖T) | KL(T‖S) | logdet Σ_S/Σ_T |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['loss']} | {r['teacher_loglik_mean']:.2f}±{r['teacher_loglik_std']:.2f} | "
                     f"{r['student_loglik_mean']:.2f}±{r['student_loglik_std']:.2f} | {r['shift_in_teacher_std']:+.2f} | "
                     f"{r['kl_student_teacher']:.3f} | {r['kl_teacher_student']:.3f} | {r['logdet_cov_ratio']:+.2f} |")
    lines += ["", f"Reverse KL over {cfg.repeats} repeats (a new teacher R and seed each): mean ± sd", "",
              "| T | shift (sd) | KL(S‖T) | KL(T‖S) |", "|---|---|---|---|"]
    for dim in cfg.dims:
        rr = [r for r in rep_rows if r["T"] == dim]
        if not rr:
            continue
        f = lambda k: f"{np.mean([r[k] for r in rr]):.3f} ± {np.std([r[k] for r in rr]):.3f}"  # noqa: E731
        lines.append(f"| {dim} | {f('shift_in_teacher_std')} | {f('kl_student_teacher')} | {f('kl_teacher_student')} |")
    lines += ["", "## Expansion signal during reverse-KL training (Fig. 3)", "",
              "| T | mean P, first 5% of updates | max P (smoothed) | mean P, last 10% |", "|---|---|---|---|"]
    summary = {"rows": rows, "prop1": prop_rows, "expansion": {}}
    for dim, c in curves.items():
        m = c.mean(0)
        n = len(m)
        first, last = float(m[: max(1, n // 20)].mean()), float(m[-max(1, n // 10):].mean())
        peak = float(_moving(m, cfg.smooth).max())
        summary["expansion"][dim] = {"first": first, "peak": peak, "last": last}
        lines.append(f"| {dim} | {first:.3f} | {peak:.3f} | {last:.3f} |")
    lines += ["", "## Proposition 1: closed form (Imhof) vs Monte Carlo", "",
              "At init: p_S = N(0, I), p_T = N(0, RR^T). End: the reverse-KL student (repeat 0), relative "
              "covariance Σ_S^{-1}Σ_T (footnote 1), MC centred at the teacher mean.", "",
              "| T | closed form, init | MC, init (±se) | closed form, end | MC, end |", "|---|---|---|---|---|"]
    for p in prop_rows:
        end = (f"{p['p_closed_end_rkl']:.4f} | {p['p_mc_end_rkl']:.4f}" if "p_closed_end_rkl" in p else "– | –")
        lines.append(f"| {p['T']} | {p['p_closed_init']:.4f} | {p['p_mc_init']:.4f} ± {p['se_init']:.4f} | {end} |")
    lines += ["", "Figures: `fig2_loglik_hist.png`, `fig3_expansion_signal.png`."]
    return summary
