"""Toy: error accumulation through layers (Chen et al. 2023, Fig. 2 — end of §3.2 — and Fig. 5, §4.1).

Teacher chains of ``L`` scalar latent layers (:mod:`dgmkd.models.toy_chain`) are distilled
data-free into residual student chains by local distillation and by the unified loss (Eq. 7;
``lambda = 0``: the surrogate loss alone, Eq. 4), for ``L`` in ``layers``, and, at one depth, over
**regimes** of student width (0 = linear residual) x training budget. The error ``KL(p_T(y) ||
p_S(y))`` is measured **exactly** (:mod:`dgmkd.metrics.grid_kl`) and by the paper's density-ratio
estimate (:mod:`dgmkd.metrics.kl_dre`). ``docs/toy_chain.md`` says where the paper's claim (local's
error grows about linearly with depth, the unified method's stays low) holds, and why.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import harness
from ..config import ConfigError, to_dict
from ..metrics.grid_kl import binomial_chain_kl, binomial_chain_pmfs, gaussian_chain_kl, sample_layers
from ..metrics.kl_dre import kl_dre
from ..models.toy_chain import BinomialStudentChain, BinomialTeacherChain, GaussianStudentChain, \
    GaussianTeacherChain
from ..train import distill

DESCRIPTION = "Fig. 2 / Fig. 5 toy: marginal KL vs depth, local vs unified, exact grid KL and DRE KL"


@dataclass
class Config:
    variant: Literal["both", "gaussian", "binomial"] = "both"
    layers: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 20)
    methods: tuple[str, ...] = ("local", "unified", "default")
    # unified is run once per value; 0 is the surrogate loss alone (Eq. 4). Local has no lambda.
    lambdas: tuple[float, ...] = (0.0, 0.1)
    hidden: int = 4                # student width; 0 = linear residual (see docs/toy_chain.md)
    steps: int = 600
    batch: int = 256
    lr: float = 1e-2
    seeds: tuple[int, ...] = (0, 1, 2)
    noise_var: float = 0.01        # the paper's N(mu, 0.01 I), read as a variance (std 0.1)
    total: int = 1000              # binomial count N
    binomial_hidden: int = -1      # student width for the binomial variant; -1 = same as hidden
    binomial_steps: int = 150      # steps for the binomial variant; -1 = same as steps
    binomial_batch: int = 128      # the inverse-CDF of Bin(1000, p) costs ~4x a Gaussian layer
    binomial_residual: bool = True  # logit(z/N) skip in the binomial student (it then contains the teacher)
    eval_samples: int = 4000       # per model, for DRE (and, x5, for choosing the grid)
    dre: bool = True
    regimes: bool = True           # compare capacity x budget x method at one depth (Gaussian chain)
    regime_layers: int = 8
    regime_hidden: tuple[int, ...] = (0, 4, 32)
    regime_steps: tuple[int, ...] = (150, 1500)
    regime_seeds: tuple[int, ...] = (0, 1)
    progress: bool = False

    def validate(self) -> None:
        """Called by :func:`dgmkd.config.override`, so ``--set`` mistakes stop before any work."""
        checks = [("variant", self.variant in ("both",) + VARIANTS, "choose both, gaussian or binomial"),
                  ("layers", self.layers and min(self.layers) >= 1, "need a non-empty list of depths >= 1"),
                  ("methods", self.methods and set(self.methods) <= {"local", "unified", "default"},
                   "choose from local, unified, default"),
                  ("lambdas", self.lambdas or "unified" not in self.methods, "the unified method needs a lambda"),
                  ("lambdas", all(0 <= lam < math.inf for lam in self.lambdas), "latent weights must be finite, >= 0"),
                  ("seeds", self.seeds, "need at least one seed, e.g. 0,1,2"),
                  ("regime_seeds", self.regime_seeds, "need at least one seed, e.g. 0,1"),
                  ("hidden", self.hidden >= 0, "student width must be >= 0 (0 = linear residual)"),
                  ("regime_hidden", min(self.regime_hidden, default=0) >= 0, "widths must be >= 0 (0 = linear)"),
                  ("regime_steps", min(self.regime_steps, default=1) >= 1, "must all be >= 1"),
                  ("binomial_hidden", self.binomial_hidden >= -1, "use -1 (same as hidden) or a width >= 0"),
                  ("binomial_steps", self.binomial_steps == -1 or self.binomial_steps >= 1,
                   "use -1 (same as steps) or a number of steps >= 1"),
                  ("eval_samples", self.eval_samples >= 40 or not self.dre, "DRE needs at least 40 samples per model")]
        checks += [(k, getattr(self, k) >= 1, "must be >= 1")
                   for k in ("steps", "batch", "binomial_batch", "eval_samples", "regime_layers", "total")]
        checks += [(k, getattr(self, k) > 0, "must be positive") for k in ("lr", "noise_var")]
        for key, ok, msg in checks:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {msg}")


VARIANTS = ("gaussian", "binomial")
CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'variant': 'which chains: gaussian, binomial or both',
    'layers': 'chain depths L of the depth sweep',
    'dre': 'also estimate the KL by density-ratio estimation (a classifier) next to the exact grid KL',
    'regime_layers': 'chain depth of the regime sweep',
    'regime_hidden': 'student widths of the regime sweep (0 = linear)',
    'regime_steps': 'distillation steps of the regime sweep',
    'regime_seeds': 'seeds of the regime sweep',
}

QUICK = {"layers": (1, 4, 8), "seeds": (0,), "steps": 120, "binomial_steps": 40, "eval_samples": 600,
         "regime_layers": 4, "regime_hidden": (0, 16), "regime_steps": (50, 150), "regime_seeds": (0,)}
TEST = {"layers": (1, 2), "steps": 10, "binomial_steps": 5, "eval_samples": 120, "regime_layers": 2,
        "regime_hidden": (0,), "regime_steps": (5,), "regime_seeds": (0, 1)}


def make_student(variant: str, layers: int, hidden: int, seed: int, cfg: Config):
    harness.manual_seed(seed, "student-init", variant, layers, hidden)  # every method starts from it
    if variant == "gaussian":
        return GaussianStudentChain(layers, hidden=hidden, init_std=math.sqrt(cfg.noise_var))
    return BinomialStudentChain(layers, hidden=hidden, total=cfg.total, residual=cfg.binomial_residual)


def method_grid(cfg: Config) -> list[tuple[str, float | None]]:
    return [(m, lam) for m in cfg.methods for lam in (cfg.lambdas if m == "unified" else (None,))]


def variant_params(variant: str, cfg: Config) -> tuple[int, int]:  # width and steps of the depth sweep
    if variant == "binomial":
        return (cfg.hidden if cfg.binomial_hidden < 0 else cfg.binomial_hidden,
                cfg.steps if cfg.binomial_steps < 0 else cfg.binomial_steps)
    return cfg.hidden, cfg.steps


@functools.lru_cache(maxsize=None)
def _teacher_pmf(layers: int, total: int) -> np.ndarray:
    return binomial_chain_pmfs(BinomialTeacherChain(layers, total=total))[-1]  # parameter-free: cached


@torch.no_grad()
def evaluate(variant: str, teacher, student, cfg: Config, seed: int) -> dict:
    """Exact KL (and DRE KL) of one student; every sample from a stream named after ``seed``."""
    if variant == "gaussian":
        samples = []
        for who, model in (("teacher", teacher), ("student", student)):
            harness.manual_seed(seed, "grid-samples", who)
            samples += sample_layers(model, 5 * cfg.eval_samples)
        ev = gaussian_chain_kl(teacher, student, samples)
    else:
        ev = binomial_chain_kl(_teacher_pmf(teacher.layers, teacher.total), student)
    if cfg.dre:
        harness.manual_seed(seed, "dre-samples")
        yt, ys = teacher(cfg.eval_samples).flatten(), student(cfg.eval_samples).flatten()
        r = kl_dre(yt, ys, seed=harness.seed(seed, "dre-classifier"))
        ev.update(kl_dre=r.kl, kl_dre_plugin=r.kl_plugin, dre_accuracy=r.accuracy)
    return ev


def train_and_evaluate(variant: str, layers: int, method: str, lam: float | None, hidden: int, steps: int,
                       seed: int, cfg: Config, out: Path | None = None) -> dict:
    """Distill one student (init, distillation noise, evaluation: each its own stream of ``seed``), measure it;
    with ``out``, save it as ``models/student-<method>-<variant>-L<layers>-h<hidden>-n<steps>-s<seed>``."""
    teacher = (GaussianTeacherChain(layers, noise_var=cfg.noise_var) if variant == "gaussian"
               else BinomialTeacherChain(layers, total=cfg.total))
    student = make_student(variant, layers, hidden, seed, cfg)
    t0 = time.time()
    hist = distill(teacher, student, inputs=cfg.binomial_batch if variant == "binomial" else cfg.batch,
                   method=method, steps=steps, lr=cfg.lr, **({} if lam is None else {"latent_weight": lam}),
                   seed=harness.seed(seed, "distill", variant, layers), progress=cfg.progress)
    train_s, t0 = time.time() - t0, time.time()
    if out is not None:
        harness.save_models(out, {f"student-{method if lam is None else f'unified{lam:g}'}-{variant}-L{layers}"
                                  f"-h{hidden}-n{steps}-s{seed}": student})
    ev = evaluate(variant, teacher, student, cfg, seed=harness.seed(seed, "eval", variant, layers, hidden, steps))
    label = method if lam is None else f"unified(lambda={lam:g})"
    return {"variant": variant, "layers": layers, "method": label, "lambda": lam, "hidden": hidden, "steps": steps,
            "seed": seed, **ev, "loss_last": float(np.mean(hist["loss"][-20:])), "train_s": round(train_s, 2),
            "eval_s": round(time.time() - t0, 2)}


def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    torch.set_num_threads(1)
    out, t_start = Path(out), time.time()
    variants = VARIANTS if cfg.variant == "both" else (cfg.variant,)

    def log(r):
        print(f"  [{r['variant']:8s} {r['sweep']:6s}] L={r['layers']:2d} {r['method']:20s} h={r['hidden']:3d} steps="
              f"{r['steps']:5d} seed={r['seed']}  KL grid {r['kl_grid']:.4g}  DRE {r.get('kl_dre', float('nan')):.4g}"
              f"  (train {r['train_s']:.1f}s, eval {r['eval_s']:.1f}s)", flush=True)

    def sweep(name, variant, layers, hidden, steps, seeds):
        return harness.sweep(lambda layers, hidden, steps, m, seed: {"sweep": name, **train_and_evaluate(
            variant, layers, *m, hidden, steps, seed, cfg, out)}, layers=layers, hidden=hidden, steps=steps,
            m=method_grid(cfg), seed=seeds, log=log)

    rows = []
    for variant in variants:
        hidden, steps = variant_params(variant, cfg)
        print(f"{variant}: L={list(cfg.layers)}, hidden={hidden}, steps={steps}, seeds {list(cfg.seeds)}", flush=True)
        rows += sweep("depth", variant, cfg.layers, (hidden,), (steps,), cfg.seeds)
    if cfg.regimes and "gaussian" in variants:
        print(f"regimes: gaussian, L={cfg.regime_layers}, hidden={list(cfg.regime_hidden)}, "
              f"steps={list(cfg.regime_steps)}, seeds {list(cfg.regime_seeds)}", flush=True)
        rows += sweep("regime", "gaussian", (cfg.regime_layers,), cfg.regime_hidden, cfg.regime_steps,
                      cfg.regime_seeds)
    rows = [{"sweep": r["sweep"], "variant": r["variant"], **{k: v for k, v in r.items() if k != "m"}} for r in rows]
    harness.write_csv(out / "results.csv", rows)
    elapsed = time.time() - t_start
    harness.write_json(out / "timing.json", {"elapsed_s": round(elapsed, 1), "runs": len(rows)})
    report(out)
    print(f"toy-chain: {len(rows)} runs in {elapsed:.0f}s; results.csv, summary.csv, plots and report.md in {out}")
    return {"rows": rows, "elapsed_s": elapsed}


_KEYS = ("sweep", "variant", "layers", "method", "hidden", "steps")
_METRICS = ("kl_grid", "kl_dre", "mass_teacher", "mass_student", "train_s")


def _pick(summary, **kv) -> list[dict]:
    return [s for s in summary if all(s[k] == v for k, v in kv.items())]


def depth_table(summary: list[dict], variant: str, measure: str = "kl_grid") -> list[str]:
    rs = _pick(summary, sweep="depth", variant=variant)
    methods = list(dict.fromkeys(s["method"] for s in rs))
    body = [[L] + [harness.cell(_pick(rs, layers=L, method=m)[0], measure, digits=4) for m in methods]
            for L in sorted({s["layers"] for s in rs})]
    return harness.table(["L"] + methods, body, align=["---:"] * (1 + len(methods)))


def regime_table(summary: list[dict]) -> list[str]:
    rs = _pick(summary, sweep="regime")
    methods = list(dict.fromkeys(s["method"] for s in rs))
    body = []
    for h, st in sorted({(s["hidden"], s["steps"]) for s in rs}):
        cells = {m: _pick(rs, hidden=h, steps=st, method=m)[0] for m in methods}
        order = " < ".join(sorted(methods, key=lambda m: cells[m]["kl_grid_mean"]))
        body.append([h or "0 (linear)", st] + [harness.cell(cells[m], "kl_grid", digits=4) for m in methods] + [order])
    return harness.table(["student hidden", "steps"] + methods + ["ordering (grid KL)"], body,
                         align=["---:"] * (2 + len(methods)) + ["---"])


def _findings(vs: list[dict]) -> list[str]:
    """Least-squares slope of mean grid KL against L per method; the depths where unified is below local."""
    out = []
    for m in dict.fromkeys(s["method"] for s in vs):
        x, y = np.array(sorted((s["layers"], s["kl_grid_mean"]) for s in vs if s["method"] == m), dtype=float).T
        if len(x) >= 2:
            out.append(f"- {m}: least-squares slope {np.polyfit(x, y, 1)[0]:.4g} nats/layer; KL at L={int(x[0])}: "
                       f"{y[0]:.4g}, at L={int(x[-1])}: {y[-1]:.4g}")
    local = {s["layers"]: s["kl_grid_mean"] for s in vs if s["method"] == "local"}
    for m in dict.fromkeys(s["method"] for s in vs if local and s["method"] != "local"):
        below = [s["layers"] for s in vs if s["method"] == m and s["kl_grid_mean"] < local[s["layers"]]]
        out.append(f"- {m} is below local at {'L = ' + ', '.join(map(str, below)) if below else 'no depth'} "
                   f"(of L = {', '.join(map(str, sorted(local)))}).")
    return out


def _dre_section(rows: list[dict]) -> list[str]:
    d = np.array([r["kl_dre"] - r["kl_grid"] for r in rows])
    rel = np.array([abs(r["kl_dre"] - r["kl_grid"]) / max(r["kl_grid"], 1e-12) for r in rows])
    lines, body = ["## DRE against the exact grid KL", "",
                   f"Over all {len(rows)} runs: DRE − grid has mean {d.mean():+.4f}, median {np.median(d):+.4f}, "
                   f"mean |DRE − grid| {np.abs(d).mean():.4f} nats, median relative error {np.median(rel):.2f}.", ""], []
    for v in dict.fromkeys(r["variant"] for r in rows):
        for lo, hi in ((0, 0.01), (0.01, 0.1), (0.1, 1.0), (1.0, float("inf"))):
            rs = [r for r in rows if r["variant"] == v and lo <= r["kl_grid"] < hi]
            if rs:
                g, ex = np.array([r["kl_dre"] - r["kl_grid"] for r in rs]), np.mean([r["kl_grid"] for r in rs])
                body.append([v, f"[{lo:g}, {hi:g})", len(rs), f"{ex:.4f}", f"{g.mean():+.4f}", f"{np.abs(g).mean():.4f}",
                             f"{(ex + g.mean()) / ex:.2f}"])
    return lines + harness.table(["variant", "exact KL range", "runs", "mean exact KL", "mean DRE − grid",
                                  "mean abs gap", "mean DRE / mean exact"], body,
                                 align=["---", "---"] + ["---:"] * 5) + [""]


def report(out: str | Path) -> str:
    """Rebuild ``summary.csv``, plots and ``report.md`` from ``results.csv``, ``config.json``, ``timing.json``."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    rows = harness.read_csv(out / "results.csv", required=_KEYS + ("seed", "kl_grid"))
    timing = harness.read_json(out / "timing.json")
    summary = harness.summarize(rows, by=_KEYS, metrics=_METRICS)
    harness.write_csv(out / "summary.csv", summary)
    plots = plot(summary, cfg, out)
    lines = ["# Toy chain: marginal KL against depth (Chen et al. 2023, Fig. 2 and Fig. 5)", "",
             "The paper's claim: a student distilled by local distillation (every conditional at the teacher's "
             "parents) accumulates error about linearly with the number of layers, while the unified method "
             "(surrogate loss on the target plus lambda times the latent loss) keeps it low. Measured here: the "
             "last layer's marginal KL of students distilled by each method, for each depth L; whether and why "
             "the ordering holds in each regime is discussed in docs/toy_chain.md.", "",
             f"Written by `dgmkd.experiments.toy_chain` in {timing['elapsed_s']:.0f} s ({len(rows)} training runs).",
             "", "Config: `" + ", ".join(f"{k}={v}" for k, v in to_dict(cfg).items()) + "`", "",
             f"KL = `KL(p_T(y) || p_S(y))` in nats, {harness.SPREAD}. *grid*: exact (finite volumes for the "
             "Gaussian variant, pmfs over 0..N for the binomial one); *DRE*: classifier density-ratio "
             f"estimate (Donsker–Varadhan form) from {cfg.eval_samples} samples per model.", ""]
    for v in dict.fromkeys(r["variant"] for r in rows if r["sweep"] == "depth"):
        h, st = variant_params(v, cfg)
        vs = _pick(summary, sweep="depth", variant=v)
        lines += [f"## {v}: KL against depth L (student hidden={h}{' = linear residual' if h == 0 else ''}, "
                  f"{st} steps)", "", "Exact (grid):", ""] + depth_table(summary, v) + [""]
        if cfg.dre:
            lines += ["DRE:", ""] + depth_table(summary, v, "kl_dre") + [""]
        lines += [f"Smallest captured mass on the grid: teacher {min(s['mass_teacher_min'] for s in vs):.6f}, "
                  f"student {min(s['mass_student_min'] for s in vs):.6f}.", ""] + _findings(vs) + [""]
    if cfg.dre:
        lines += _dre_section(rows)
    if any(r["sweep"] == "regime" for r in rows):
        lines += [f"## Regimes (gaussian, L={cfg.regime_layers}, seeds {', '.join(map(str, cfg.regime_seeds))}): "
                  "exact KL", ""] + regime_table(summary) + [""]
    lines += ["Files: `results.csv` (one row per run), `summary.csv` (per configuration), "
              + ", ".join(f"`{p.name}`" for p in plots) + "."]
    return harness.write_text(out / "report.md", "\n".join(lines) + "\n").read_text()


def plot(summary: list[dict], cfg: Config, out: Path) -> list[Path]:
    plt, paths = harness.pyplot(), []
    for v in dict.fromkeys(s["variant"] for s in summary if s["sweep"] == "depth"):
        vs = _pick(summary, sweep="depth", variant=v)
        measures = ["kl_grid"] + (["kl_dre"] if cfg.dre else [])
        fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 3.8), squeeze=False)
        for ax, meas in zip(axes[0], measures):
            for m in dict.fromkeys(s["method"] for s in vs):
                L, mu, lo, hi = np.array(sorted((s["layers"], s[f"{meas}_mean"], s[f"{meas}_min"], s[f"{meas}_max"])
                                                for s in vs if s["method"] == m), dtype=float).T
                line, = ax.plot(L, mu, "o-", label=m)
                ax.fill_between(L, lo, hi, color=line.get_color(), alpha=0.2)
            ax.set(xlabel="number of latent layers L", ylabel="KL(p_T(y) || p_S(y)) [nats]",
                   title=f"{v}: {'exact (grid)' if meas == 'kl_grid' else 'density-ratio estimate'}")
            ax.set_yscale("symlog", linthresh=1e-3), ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        h, st = variant_params(v, cfg)
        fig.suptitle(f"{v} chain, student hidden={h}, {st} steps; line = mean, band = min..max over seeds", fontsize=9)
        fig.tight_layout()
        paths.append(harness.save_figure(fig, out / f"kl_vs_layers_{v}.png", dpi=120))
    rs = _pick(summary, sweep="regime")
    if rs:
        methods = list(dict.fromkeys(s["method"] for s in rs))
        confs = sorted({(s["hidden"], s["steps"]) for s in rs})
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(confs), 3.8))
        w = 0.8 / len(methods)
        for k, m in enumerate(methods):
            ss = [_pick(rs, hidden=h, steps=st, method=m)[0] for h, st in confs]
            ax.bar(np.arange(len(confs)) + (k - (len(methods) - 1) / 2) * w, [s["kl_grid_mean"] for s in ss], w,
                   yerr=[0 if s["n"] < 2 else s["kl_grid_sd"] for s in ss], label=m)
        ax.set(yscale="log", ylabel="exact KL(p_T(y) || p_S(y)) [nats]", xticks=range(len(confs)),
               xticklabels=[f"{f'MLP {h}' if h else 'linear'}\n{st} steps" for h, st in confs],
               title=f"regimes: gaussian chain, L={cfg.regime_layers}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(harness.save_figure(fig, out / "regimes.png", dpi=120))
    return paths
