"""Data-free Helmholtz-machine compression on Old Faithful (Chen et al. 2023, §3.6, §4.3, Fig. 4c).

A teacher :class:`~dgmkd.models.HelmholtzMachine` (chain ``z4 -> z3 -> y2 -> z2 -> z1 -> y1``,
binary latents of two units, MLP conditionals of hidden width 8) is trained on the standardized
Old Faithful data by wake-sleep. Students (hidden widths ``student_hidden``) are then obtained by

* ``unified`` — data-free, Eq. (7): surrogate KL on the (teacher-forced) targets ``y2, y1`` plus
  ``latent_weight`` times the latent KL of every binary layer, the latents of both models computed
  from one shared uniform per unit (``z = 1[u >= 1 - p]``). The inverse CDF is piecewise constant,
  so the Bernoulli conditionals are learned only through the latent term;
* ``local`` — data-free local distillation: every conditional at the teacher's sampled parents;
* ``scratch`` — the student trained on the data by the same wake-sleep as the teacher.

Evaluation is exact (see :mod:`dgmkd.models.helmholtz`): ``log p(y1, y2)`` of every model is a sum
over 256 latent configurations, so ``KL(p_T || p_S)`` is a Monte Carlo average of
``log p_T(y) - log p_S(y)`` over ``kl_samples`` teacher samples with *exact* densities (the same
samples for every student, so differences between methods are paired; its standard error is
reported), and the test log-likelihood is exact. The paper only shows contour plots for this
experiment (its Fig. 7, Appendix H); the numbers here are ours.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rundir
from ..data.faithful import split_faithful
from ..models.helmholtz import HelmholtzMachine, HelmholtzRecognition, wake_sleep_loss
from ..train import distill, train

DESCRIPTION = "Helmholtz machine (binary latents) on Old Faithful: unified vs local vs scratch, exact KL"

METHODS = ("unified", "local", "scratch")


@dataclass
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_hidden: int = 8
    student_hidden: tuple[int, ...] = (2, 1)
    recog_hidden: int = 16
    y_std: float = 0.5
    n_test: int = 72                  # held-out rows of the 272 (fixed split, split_seed)
    split_seed: int = 0
    algorithm: str = "ws"             # "ws" wake-sleep or "rws" reweighted wake-sleep
    rws_k: int = 10
    teacher_steps: int = 3000
    scratch_steps: int = 3000
    ws_batch: int = 100
    ws_lr: float = 3e-3
    distill_steps: int = 3000
    distill_batch: int = 256
    distill_lr: float = 3e-3
    latent_weight: float = 1.0
    kl_samples: int = 100000
    grid: int = 120
    progress: bool = True

    def validate(self):
        if self.algorithm not in ("ws", "rws"):
            raise ValueError(f"algorithm must be 'ws' or 'rws', got {self.algorithm!r}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if any(h < 1 for h in (self.teacher_hidden, *self.student_hidden)):
            raise ValueError("hidden widths must be positive")


QUICK = {"seeds": "0", "student_hidden": "2", "teacher_steps": 300, "scratch_steps": 300, "distill_steps": 300,
         "kl_samples": 20000, "grid": 60}


def wake_sleep(model: HelmholtzMachine, data: torch.Tensor, cfg: Config, steps: int, seed: int, desc: str):
    """Train ``model`` on ``data`` by (reweighted) wake-sleep with :func:`dgmkd.train`."""
    recog = HelmholtzRecognition(cfg.recog_hidden, model.z_units)
    opt = torch.optim.Adam(list(model.parameters()) + list(recog.parameters()), lr=cfg.ws_lr)
    g = torch.Generator().manual_seed(seed)

    def batch():
        return data[torch.randint(0, len(data), (cfg.ws_batch,), generator=g)]

    def step(args, i):
        losses = wake_sleep_loss(model, recog, args[0], cfg.algorithm, k=cfg.rws_k)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        return losses

    return train(step, batch, steps, state={"model": model, "recog": recog, "opt": opt}, seed=seed,
                 progress=cfg.progress, desc=desc)


@torch.no_grad()
def exact_kl(teacher: HelmholtzMachine, student: HelmholtzMachine, y: torch.Tensor) -> tuple[float, float]:
    """``KL(p_T || p_S)`` estimated on teacher samples ``y`` with exact log densities; (mean, s.e.)."""
    d = (teacher.log_prob(y) - student.log_prob(y)).double()
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


@torch.no_grad()
def objectives(teacher: HelmholtzMachine, student: HelmholtzMachine, n: int, seed: int) -> dict[str, float]:
    """The two methods' objectives at the end of training, by Monte Carlo over ``n`` coupled runs.

    ``surrogate`` (Eq. 4) and ``latent`` (Eq. 6, summed over the four layers) on the shared-noise
    coupling, ``joint_kl`` = the local-distillation loss, which for a chain equals
    ``KL(p_T(z, y) || p_S(z, y))``; both ``surrogate`` and ``joint_kl`` upper-bound the marginal KL
    (Prop. 3.1 and the chain rule); ``joint_kl_targets`` is its part from the two target
    conditionals (the target networks evaluated at the teacher's latents). ``mismatch``: the fraction of binary units whose coupled value
    differs between teacher and student (0 when the coupling is perfect).
    """
    from .. import divergences, losses
    from ..coupling import couple

    torch.manual_seed(seed)
    c = couple(teacher, student, n, validate_args=False)
    mism = torch.stack([(c.student_trace[k]["value"] != c.latents[k].value).float().mean() for k in c.latents])
    cl = couple(teacher, student, n, mode="teacher_forced", validate_args=False)
    tgt = sum(float(divergences.site("kl", p.teacher, p.student, p.value)) for p in cl.targets.values())
    return {"surrogate": float(losses.surrogate(c)), "latent": float(losses.latent(c)),
            "joint_kl": float(losses.local(cl)), "joint_kl_targets": tgt, "mismatch": float(mism.mean())}


@torch.no_grad()
def test_ll(model: HelmholtzMachine, test: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    """Exact mean test log-likelihood per point: (standardized units, original units [log 1/min^2])."""
    ll = float(model.log_prob(test).double().mean())
    return ll, ll - float(torch.log(std.double()).sum())


def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    torch.set_num_threads(1)
    out = Path(out)
    train_y, test_y, (mean, std) = split_faithful(cfg.n_test, cfg.split_seed)
    rows, models = [], {}
    t0 = time.time()
    for seed in cfg.seeds:
        torch.manual_seed(seed)
        teacher = HelmholtzMachine(cfg.teacher_hidden, y_std=cfg.y_std)
        wake_sleep(teacher, train_y, cfg, cfg.teacher_steps, seed, f"teacher[{seed}]")
        teacher.eval()
        torch.manual_seed(10_000 + seed)
        with torch.no_grad():
            y_kl = teacher(cfg.kl_samples)
        ll, ll_min = test_ll(teacher, test_y, std)
        rows.append({"seed": seed, "model": "teacher", "hidden": cfg.teacher_hidden, "method": "-", "kl": 0.0,
                     "kl_se": 0.0, "test_ll": ll, "test_ll_minutes": ll_min,
                     "params": sum(p.numel() for p in teacher.parameters())})
        models[(seed, "teacher")] = teacher
        print(f"[seed {seed}] teacher (hidden {cfg.teacher_hidden}): test LL {ll:.4f}")
        for width in cfg.student_hidden:
            for method in METHODS:
                torch.manual_seed(1000 * seed + width)  # the same initial student for every method
                student = HelmholtzMachine(width, y_std=cfg.y_std)
                if method == "scratch":
                    wake_sleep(student, train_y, cfg, cfg.scratch_steps, seed, f"scratch[{seed},h{width}]")
                else:
                    distill(teacher, student, cfg.distill_batch, method, cfg.distill_steps, lr=cfg.distill_lr,
                            latent_weight=cfg.latent_weight, seed=seed, progress=cfg.progress)
                student.eval()
                kl, se = exact_kl(teacher, student, y_kl)
                ll, ll_min = test_ll(student, test_y, std)
                rows.append({"seed": seed, "model": "student", "hidden": width, "method": method, "kl": kl,
                             "kl_se": se, "test_ll": ll, "test_ll_minutes": ll_min,
                             "params": sum(p.numel() for p in student.parameters()),
                             **objectives(teacher, student, cfg.kl_samples, 20_000 + seed)})
                models[(seed, width, method)] = student
                r = rows[-1]
                print(f"[seed {seed}] student h{width} {method:8s}: KL(T||S) {kl:.5f} ± {se:.5f}  test LL {ll:.4f}  "
                      f"[L_sd {r['surrogate']:.4f}, L_z {r['latent']:.4f}, joint KL {r['joint_kl']:.4f} (targets {r['joint_kl_targets']:.4f}), mismatch {r['mismatch']:.3f}]")
    elapsed = time.time() - t0
    rundir.write_csv(out / "results.csv", rows)
    summary = _summary(rows, cfg)
    rundir.write_csv(out / "summary.csv", summary)
    _plot(models, train_y, test_y, cfg, out / "contours.png")
    _report(summary, cfg, elapsed, out / "report.md")
    return {"rows": rows, "summary": summary, "elapsed_s": elapsed}


def _mean_sd(v):
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(v) > 1 else 0.0)


def _summary(rows, cfg):
    out = []
    t = [r for r in rows if r["model"] == "teacher"]
    m, s = _mean_sd([r["test_ll"] for r in t])
    out.append({"hidden": cfg.teacher_hidden, "method": "teacher", "kl_mean": 0.0, "kl_sd": 0.0, "test_ll_mean": m,
                "test_ll_sd": s, "n_seeds": len(t), "wins": "", "surrogate_mean": 0.0, "latent_mean": 0.0,
                "joint_kl_mean": 0.0, "joint_kl_targets_mean": 0.0, "mismatch_mean": 0.0})
    for width in cfg.student_hidden:
        by = {meth: [r for r in rows if r["model"] == "student" and r["hidden"] == width and r["method"] == meth]
              for meth in METHODS}
        # per seed: which method has the smallest KL
        wins = {meth: 0 for meth in METHODS}
        for seed in cfg.seeds:
            best = min(METHODS, key=lambda mm: next(r["kl"] for r in by[mm] if r["seed"] == seed))
            wins[best] += 1
        for meth in METHODS:
            km, ks = _mean_sd([r["kl"] for r in by[meth]])
            lm, ls = _mean_sd([r["test_ll"] for r in by[meth]])
            out.append({"hidden": width, "method": meth, "kl_mean": km, "kl_sd": ks, "test_ll_mean": lm,
                        "test_ll_sd": ls, "n_seeds": len(by[meth]), "wins": wins[meth],
                        **{k + "_mean": _mean_sd([r[k] for r in by[meth]])[0]
                           for k in ("surrogate", "latent", "joint_kl", "joint_kl_targets", "mismatch")}})
    return out


def _report(summary, cfg, elapsed, path):
    lines = ["# Helmholtz-machine compression on Old Faithful (data-free)", "",
             f"Teacher hidden width {cfg.teacher_hidden}, trained by {cfg.algorithm} for {cfg.teacher_steps} steps; "
             f"students distilled for {cfg.distill_steps} steps (batch {cfg.distill_batch}, latent weight "
             f"{cfg.latent_weight}); scratch = {cfg.algorithm} on the {272 - cfg.n_test} training rows for "
             f"{cfg.scratch_steps} steps. Seeds {list(cfg.seeds)}. KL(p_T || p_S) is a Monte Carlo average over "
             f"{cfg.kl_samples} teacher samples of exact log-density differences (enumeration over 256 latent "
             "configurations); test LL is the exact mean log p(y) of the held-out rows in standardized units. "
             "'wins' counts the seeds where a method has the smallest KL among the three.", "",
             "The last five columns are the methods' objectives at the end (Monte Carlo, same sample count): "
             "the surrogate L_sd (Eq. 4) and latent loss L_z (Eq. 6; unified minimizes L_sd + λ·L_z), the joint KL "
             "(= the local loss) and its part from the two target conditionals; L_sd and the joint KL are upper "
             "bounds of the marginal KL. Last, the fraction of coupled binary units on which teacher and "
             "student disagree.", "",
             "| student hidden | method | KL(p_T‖p_S) mean ± sd | test LL mean ± sd | wins | L_sd | L_z | joint KL | "
             "of which targets | mismatch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['hidden']} | {r['method']} | {r['kl_mean']:.5f} ± {r['kl_sd']:.5f} | "
                     f"{r['test_ll_mean']:.4f} ± {r['test_ll_sd']:.4f} | {r['wins']} | {r['surrogate_mean']:.4f} | "
                     f"{r['latent_mean']:.4f} | {r['joint_kl_mean']:.4f} | {r['joint_kl_targets_mean']:.4f} | "
                     f"{r['mismatch_mean']:.3f} |")
    for width in cfg.student_hidden:
        rs = {r["method"]: r["kl_mean"] for r in summary if r["hidden"] == width and r["method"] in METHODS}
        best = min(rs, key=rs.get)
        lines += ["", f"Hidden {width}: smallest mean KL — **{best}**" +
                  ("" if best == "unified" else " (not unified; see docs/hm_vrnn.md for the analysis)")]
    lines += ["", f"Wall time {elapsed / 60:.1f} min. Contours: contours.png (seed {cfg.seeds[0]}).", ""]
    Path(path).write_text("\n".join(lines))


def _plot(models, train_y, test_y, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = cfg.seeds[0]
    allx = torch.cat([train_y, test_y])
    lo, hi = allx.min(0).values - 1.0, allx.max(0).values + 1.0
    g1, g2 = torch.linspace(float(lo[0]), float(hi[0]), cfg.grid), torch.linspace(float(lo[1]), float(hi[1]), cfg.grid)
    G1, G2 = torch.meshgrid(g1, g2, indexing="xy")
    pts = torch.stack([G1.reshape(-1), G2.reshape(-1)], -1)

    def dens(m):
        with torch.no_grad():
            return m.log_prob(pts).exp().reshape(G1.shape).numpy()

    panels = [("data", None), ("teacher", models[(seed, "teacher")])]
    for width in cfg.student_hidden:
        panels += [(f"h{width} {m}", models[(seed, width, m)]) for m in METHODS]
    ncol = len(METHODS)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.8 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    order = [panels[0], panels[1]] + [None] * (ncol - 2) + panels[2:]
    for ax, p in zip(axes.flat, order):
        if p is None:
            continue
        name, m = p
        ax.axis("on")
        if m is None:
            ax.scatter(train_y[:, 0], train_y[:, 1], s=4, c="k", label="train")
            ax.scatter(test_y[:, 0], test_y[:, 1], s=4, c="r", label="test")
            ax.legend(fontsize=6, loc="upper left")
        else:
            ax.contour(G1.numpy(), G2.numpy(), dens(m), levels=10)
            ax.scatter(train_y[:, 0], train_y[:, 1], s=1, c="0.6")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        ax.tick_params(labelsize=6)
    axes[0, 0].set_xlabel("duration (std.)", fontsize=7)
    axes[0, 0].set_ylabel("waiting (std.)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
