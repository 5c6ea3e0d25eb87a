"""Toy: error accumulation through layers (Chen et al. 2023, Fig. 2 — end of §3.2 — and Fig. 5, §4.1).

A teacher chain of ``L`` scalar latent layers and a target (``dgmkd.models.toy_chain``) is
distilled data-free into a residual student chain by local distillation (every conditional at the
teacher's sampled parents) and by the unified loss (Eq. 7: the surrogate loss on the target, Eq. 4,
plus ``lambda`` times the latent loss, Eq. 6), for ``L`` in ``layers``. The error is the marginal
``KL(p_T(y) || p_S(y))`` of the last layer, measured twice:

* **exactly** on a grid (:mod:`dgmkd.metrics.grid_kl`): finite volumes on a grid chosen from
  samples of both models (continuous variant; the captured mass of each model is reported) and
  exact pmfs over ``0..N`` (binomial variant);
* by **density-ratio estimation** (:mod:`dgmkd.metrics.kl_dre`), the paper's measure, from
  ``eval_samples`` samples of each model; the report gives its gap to the exact value.

The paper claims local distillation's error grows roughly linearly with depth while the unified
method's stays low. Besides the sweep over ``L`` the run compares **regimes** at one depth
(``regime_layers``): per-layer student capacity (``regime_hidden``; 0 = a linear residual),
training budget (``regime_steps``) and ``lambda`` — see ``docs/toy_chain.md`` for the finding.

Run: ``dgmkd run toy-chain [--quick] [--set variant=gaussian|binomial|both] [--set hidden=0]
[--set steps=2000] [--set latent_weight=1.0] [--set layers=1,2,4,8] [--set seeds=3]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .. import rundir
from ..config import ConfigError, to_dict
from ..handlers import trace
from ..metrics.grid_kl import discrete_kl, grid_from_samples, propagate_continuous, propagate_discrete, \
    uniform_cell_masses
from ..metrics.kl_dre import kl_dre
from ..models.toy_chain import BinomialStudentChain, BinomialTeacherChain, GaussianStudentChain, \
    GaussianTeacherChain
from ..train import distill

DESCRIPTION = "Fig. 2 / Fig. 5 toy: marginal KL vs depth, local vs unified, exact grid KL and DRE KL"


@dataclass
class Config:
    variant: Literal["both", "gaussian", "binomial"] = "both"
    layers: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 20)
    methods: tuple[str, ...] = ("local", "unified")
    # unified is run once per value; 0 is the surrogate loss alone (Eq. 4), the default of
    # dgmkd.distill is 0.1. Local distillation has no lambda.
    lambdas: tuple[float, ...] = (0.0, 0.1)
    hidden: int = 4                # student width; 0 = linear residual (see docs/toy_chain.md)
    steps: int = 600
    batch: int = 256
    lr: float = 1e-2
    seeds: int = 3
    noise_var: float = 0.01        # the paper's N(mu, 0.01 I), read as a variance (std 0.1)
    total: int = 1000              # binomial count N
    binomial_hidden: int = -1      # student width for the binomial variant; -1 = same as hidden
    binomial_steps: int = 150      # steps for the binomial variant; -1 = same as steps
    binomial_batch: int = 128      # the inverse-CDF of Bin(1000, p) costs ~4x a Gaussian layer
    binomial_residual: bool = True  # logit(z/N) skip in the binomial student (it then contains the teacher)
    eval_samples: int = 4000       # per model, for DRE (and, x5, for choosing the grid)
    dre: bool = True
    # regime comparison (Gaussian variant, one depth): capacity x budget x method
    regimes: bool = True
    regime_layers: int = 8
    regime_hidden: tuple[int, ...] = (0, 4, 32)
    regime_steps: tuple[int, ...] = (150, 1500)
    regime_seeds: int = 2
    progress: bool = False

    def validate(self) -> None:
        """Called by :func:`dgmkd.config.override`, so ``--set`` mistakes stop before any work."""
        _validate(self)


QUICK = {"layers": (1, 4, 8), "seeds": 1, "steps": 120, "binomial_steps": 40, "eval_samples": 600,
         "regime_layers": 4, "regime_hidden": (0, 16), "regime_steps": (50, 150), "regime_seeds": 1}

VARIANTS = ("gaussian", "binomial")


def _validate(cfg: Config) -> None:
    def bad(key, msg):
        raise ConfigError(f"{key}: {msg}")

    if cfg.variant not in ("both",) + VARIANTS:
        bad("variant", f"{cfg.variant!r} is not allowed; choose both, gaussian or binomial")
    if not cfg.layers or any(L < 1 for L in cfg.layers):
        bad("layers", f"need a non-empty list of depths >= 1, got {cfg.layers}")
    for m in cfg.methods:
        if m not in ("local", "unified"):
            bad("methods", f"{m!r} is not a method; choose local and/or unified")
    if "unified" in cfg.methods and not cfg.lambdas:
        bad("lambdas", "the unified method needs at least one lambda (latent_weight)")
    if any(lam < 0 or not math.isfinite(lam) for lam in cfg.lambdas):
        bad("lambdas", f"latent weights must be finite and >= 0, got {cfg.lambdas}")
    for key in ("steps", "batch", "binomial_batch", "seeds", "eval_samples", "regime_layers", "regime_seeds"):
        if getattr(cfg, key) < 1:
            bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if cfg.hidden < 0 or any(h < 0 for h in cfg.regime_hidden):
        bad("hidden", "student width must be >= 0 (0 = linear residual)")
    if cfg.binomial_hidden < -1 or cfg.binomial_steps < -1 or cfg.binomial_steps == 0:
        bad("binomial_hidden/binomial_steps", "use -1 (same as the Gaussian variant) or a valid value")
    if any(s < 1 for s in cfg.regime_steps):
        bad("regime_steps", f"must all be >= 1, got {cfg.regime_steps}")
    if not cfg.lr > 0:
        bad("lr", f"must be positive, got {cfg.lr}")
    if not cfg.noise_var > 0:
        bad("noise_var", f"must be positive, got {cfg.noise_var}")
    if cfg.total < 1:
        bad("total", f"must be >= 1, got {cfg.total}")
    if cfg.eval_samples < 40 and cfg.dre:
        bad("eval_samples", "DRE needs at least 40 samples per model")


# ----------------------------------------------------------------------------- models
def make_teacher(variant: str, layers: int, cfg: Config):
    if variant == "gaussian":
        return GaussianTeacherChain(layers, noise_var=cfg.noise_var)
    return BinomialTeacherChain(layers, total=cfg.total)


def make_student(variant: str, layers: int, hidden: int, seed: int, cfg: Config):
    torch.manual_seed(10_000 + seed)
    if variant == "gaussian":
        return GaussianStudentChain(layers, hidden=hidden, init_std=math.sqrt(cfg.noise_var))
    return BinomialStudentChain(layers, hidden=hidden, total=cfg.total, residual=cfg.binomial_residual)


def method_label(method: str, lam: float | None) -> str:
    return "local" if method == "local" else f"unified(lambda={lam:g})"


def method_grid(cfg: Config) -> list[tuple[str, float | None]]:
    out = []
    for m in cfg.methods:
        out += [(m, None)] if m == "local" else [(m, lam) for lam in cfg.lambdas]
    return out


# ----------------------------------------------------------------------------- exact KL
@torch.no_grad()
def sample_layers(model, n: int, seed: int) -> list[np.ndarray]:
    """Samples of every variable ``z_1 .. z_L, y`` of a chain (ancestral sampling)."""
    torch.manual_seed(seed)
    with trace() as tr:
        model(n)
    return [m["value"].double().flatten().numpy() for m in tr.sites.values()]


def _loc_scale(model, i):
    @torch.no_grad()
    def f(x):
        d = model.conditional(i, torch.as_tensor(x, dtype=torch.float32)[:, None])
        return d.loc.double().flatten().numpy(), np.broadcast_to(d.scale.double().flatten().numpy(), x.shape)
    return f


@torch.no_grad()
def _min_std(model) -> float:
    x = torch.zeros(1, 1)
    return min(float(model.conditional(i, x).scale.min()) for i in range(model.layers))


def gaussian_grid_kl(teacher, student, n_samples: int, seed: int) -> dict:
    """Exact ``KL(p_T(y) || p_S(y))`` of two Gaussian chains by finite-volume propagation on a
    grid covering samples of every layer of both models (see :mod:`dgmkd.metrics.grid_kl`)."""
    samples = sample_layers(teacher, n_samples, seed) + sample_layers(student, n_samples, seed + 1)
    min_std = min(_min_std(teacher), _min_std(student))
    grid = grid_from_samples(samples, min_std=min_std, pad=8.0, cells_per_std=10.0, max_cells=60_000)
    m1 = uniform_cell_masses(grid, -1.0, 1.0)
    pt = propagate_continuous(m1, [_loc_scale(teacher, i) for i in range(teacher.layers)], grid)
    ps = propagate_continuous(m1, [_loc_scale(student, i) for i in range(student.layers)], grid)
    return {"kl_grid": discrete_kl(pt[-1], ps[-1]), "mass_teacher": float(pt[-1].sum()),
            "mass_student": float(ps[-1].sum()), "grid_cells": len(grid), "grid_h_over_std": grid.h / min_std,
            "grid_lo": float(grid.edges[0]), "grid_hi": float(grid.edges[-1])}


def _binomial_transition(model, i):
    @torch.no_grad()
    def f(k):
        d = model.conditional(i, torch.as_tensor(k, dtype=torch.float32)[:, None])
        p = d.probs.double()  # (N+1, 1)
        j = torch.arange(model.total + 1, dtype=torch.float64)[None, :]
        return torch.distributions.Binomial(model.total, probs=p).log_prob(j).exp().numpy()
    return f


_TEACHER_PMFS: dict[tuple[int, int], list[np.ndarray]] = {}


def binomial_pmfs(model) -> list[np.ndarray]:
    """Exact pmfs of every layer of a binomial chain (``z_1`` uniform on ``0..N``)."""
    n = model.total + 1
    return propagate_discrete(np.full(n, 1.0 / n), [_binomial_transition(model, i) for i in range(model.layers)])


def binomial_grid_kl(teacher, student) -> dict:
    key = (teacher.total, teacher.layers)
    if key not in _TEACHER_PMFS:  # the teacher is parameter-free: its pmfs are the same every run
        _TEACHER_PMFS[key] = binomial_pmfs(teacher)
    pt, ps = _TEACHER_PMFS[key], binomial_pmfs(student)
    return {"kl_grid": discrete_kl(pt[-1], ps[-1]), "mass_teacher": float(pt[-1].sum()),
            "mass_student": float(ps[-1].sum()), "grid_cells": len(pt[-1]), "grid_h_over_std": float("nan"),
            "grid_lo": 0.0, "grid_hi": float(teacher.total)}


@torch.no_grad()
def evaluate(variant: str, teacher, student, cfg: Config, seed: int) -> dict:
    ev = (gaussian_grid_kl(teacher, student, 5 * cfg.eval_samples, seed) if variant == "gaussian"
          else binomial_grid_kl(teacher, student))
    if cfg.dre:
        torch.manual_seed(seed + 7)
        yt = teacher(cfg.eval_samples).flatten()
        ys = student(cfg.eval_samples).flatten()
        r = kl_dre(yt, ys, seed=seed)
        ev.update(kl_dre=r.kl, kl_dre_plugin=r.kl_plugin, dre_accuracy=r.accuracy)
    return ev


# ----------------------------------------------------------------------------- one run
def train_and_evaluate(variant: str, layers: int, method: str, lam: float | None, hidden: int, steps: int,
                       seed: int, cfg: Config) -> dict:
    teacher = make_teacher(variant, layers, cfg)
    student = make_student(variant, layers, hidden, seed, cfg)
    t0 = time.time()
    batch = cfg.binomial_batch if variant == "binomial" else cfg.batch
    hist = distill(teacher, student, inputs=batch, method=method, steps=steps, lr=cfg.lr,
                   latent_weight=lam or 0.0, seed=seed, progress=cfg.progress)
    train_s = time.time() - t0
    t0 = time.time()
    ev = evaluate(variant, teacher, student, cfg, seed=1000 + seed)
    return {"variant": variant, "layers": layers, "method": method_label(method, lam), "lambda": lam,
            "hidden": hidden, "steps": steps, "seed": seed, **ev, "loss_last": float(np.mean(hist["loss"][-20:])),
            "train_s": round(train_s, 2), "eval_s": round(time.time() - t0, 2)}


def _variant_params(variant: str, cfg: Config) -> tuple[int, int]:
    if variant == "binomial":
        return (cfg.hidden if cfg.binomial_hidden < 0 else cfg.binomial_hidden,
                cfg.steps if cfg.binomial_steps < 0 else cfg.binomial_steps)
    return cfg.hidden, cfg.steps


# ----------------------------------------------------------------------------- run
def run(cfg: Config, out: Path) -> dict:
    _validate(cfg)
    torch.set_num_threads(1)
    out = Path(out)
    variants = VARIANTS if cfg.variant == "both" else (cfg.variant,)
    rows: list[dict] = []
    t_start = time.time()

    def log(r):
        print(f"  [{r['variant']:8s} {r.get('sweep', ''):6s}] L={r['layers']:2d} {r['method']:20s} h={r['hidden']:3d} "
              f"steps={r['steps']:5d} seed={r['seed']}  KL grid {r['kl_grid']:.4g}"
              + (f"  DRE {r['kl_dre']:.4g}" if 'kl_dre' in r else "")
              + f"  (train {r['train_s']:.1f}s, eval {r['eval_s']:.1f}s)", flush=True)

    for variant in variants:
        hidden, steps = _variant_params(variant, cfg)
        print(f"{variant}: sweep over L={list(cfg.layers)}, student hidden={hidden}, steps={steps}, "
              f"{cfg.seeds} seed(s)", flush=True)
        for L in cfg.layers:
            for method, lam in method_grid(cfg):
                for seed in range(cfg.seeds):
                    r = {"sweep": "depth", **train_and_evaluate(variant, L, method, lam, hidden, steps, seed, cfg)}
                    rows.append(r)
                    log(r)
        rundir.write_csv(out / "results.csv", rows)
    if cfg.regimes and "gaussian" in variants:
        print(f"regimes: gaussian, L={cfg.regime_layers}, hidden x steps = {list(cfg.regime_hidden)} x "
              f"{list(cfg.regime_steps)}, {cfg.regime_seeds} seed(s)", flush=True)
        for hidden in cfg.regime_hidden:
            for steps in cfg.regime_steps:
                for method, lam in method_grid(cfg):
                    for seed in range(cfg.regime_seeds):
                        r = {"sweep": "regime",
                             **train_and_evaluate("gaussian", cfg.regime_layers, method, lam, hidden, steps, seed, cfg)}
                        rows.append(r)
                        log(r)
        rundir.write_csv(out / "results.csv", rows)
    elapsed = time.time() - t_start
    rundir.write_json(out / "timing.json", {"elapsed_s": elapsed, "runs": len(rows)})
    summary = summarize(rows)
    rundir.write_csv(out / "summary.csv", summary)
    plots = plot(summary, cfg, out)
    write_report(rows, summary, cfg, out, elapsed, plots)
    print(f"toy-chain: {len(rows)} runs in {elapsed:.0f}s; results.csv, summary.csv, "
          f"{', '.join(p.name for p in plots)}, report.md in {out}")
    return {"rows": rows, "summary": summary, "elapsed_s": elapsed}


def rewrite_report(out: str | Path) -> None:
    """Rebuild ``summary.csv``, the plots and ``report.md`` of a finished run from its
    ``results.csv``, ``config.json`` and ``timing.json`` (no retraining)."""
    import csv
    import json

    from ..config import override

    out = Path(out)
    conf = json.loads((out / "config.json").read_text())
    conf.pop("experiment", None)
    cfg = override(Config(), conf)
    with open(out / "results.csv") as f:
        rows = []
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if k in ("sweep", "variant", "method"):
                    row[k] = v
                elif k in ("layers", "hidden", "steps", "seed", "grid_cells"):
                    row[k] = int(v)
                else:
                    row[k] = float(v) if v != "" else None
            rows.append(row)
    timing = out / "timing.json"
    elapsed = json.loads(timing.read_text())["elapsed_s"] if timing.exists() else float("nan")
    summary = summarize(rows)
    rundir.write_csv(out / "summary.csv", summary)
    write_report(rows, summary, cfg, out, elapsed, plot(summary, cfg, out))


# ----------------------------------------------------------------------------- summary / report
_KEYS = ("sweep", "variant", "layers", "method", "hidden", "steps")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation, min and max over seeds of every configuration."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in _KEYS), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(_KEYS, key))
        s["n_seeds"] = len(rs)
        for m in ("kl_grid", "kl_dre", "mass_teacher", "mass_student"):
            if m not in rs[0]:
                continue
            v = np.array([r[m] for r in rs], dtype=float)
            s[f"{m}_mean"] = float(v.mean())
            s[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            if m.startswith("kl"):
                s[f"{m}_min"], s[f"{m}_max"] = float(v.min()), float(v.max())
            else:
                s[f"{m}_min"] = float(v.min())
        if "kl_dre" in rs[0]:
            gap = np.array([r["kl_dre"] - r["kl_grid"] for r in rs])
            s["dre_minus_grid_mean"] = float(gap.mean())
        s["train_s_mean"] = float(np.mean([r["train_s"] for r in rs]))
        out.append(s)
    return out


def _fmt(m, s, n=2):
    if n < 2:  # one seed: no spread to show
        return f"{m:.4f}" if abs(m) < 10 else f"{m:.1f}"
    return f"{m:.4f} ± {s:.4f}" if abs(m) < 10 else f"{m:.1f} ± {s:.1f}"


def depth_table(summary: list[dict], variant: str, measure: str = "kl_grid") -> list[str]:
    rs = [s for s in summary if s["sweep"] == "depth" and s["variant"] == variant]
    if not rs:
        return []
    methods = list(dict.fromkeys(s["method"] for s in rs))
    Ls = sorted({s["layers"] for s in rs})
    lines = ["| L | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for L in Ls:
        cells = []
        for m in methods:
            s = next((s for s in rs if s["layers"] == L and s["method"] == m), None)
            cells.append(_fmt(s[f"{measure}_mean"], s[f"{measure}_std"], s["n_seeds"]) if s and f"{measure}_mean" in s else "")
        lines.append(f"| {L} | " + " | ".join(cells) + " |")
    return lines


def regime_table(summary: list[dict]) -> list[str]:
    rs = [s for s in summary if s["sweep"] == "regime"]
    if not rs:
        return []
    methods = list(dict.fromkeys(s["method"] for s in rs))
    lines = ["| student hidden | steps | " + " | ".join(methods) + " | ordering (grid KL) |",
             "|---:|---:|" + "---:|" * len(methods) + "---|"]
    for h in sorted({s["hidden"] for s in rs}):
        for st in sorted({s["steps"] for s in rs}):
            cells, vals = [], {}
            for m in methods:
                s = next((s for s in rs if s["hidden"] == h and s["steps"] == st and s["method"] == m), None)
                if s:
                    cells.append(_fmt(s["kl_grid_mean"], s["kl_grid_std"], s["n_seeds"]))
                    vals[m] = s["kl_grid_mean"]
                else:
                    cells.append("")
            order = " < ".join(sorted(vals, key=vals.get))
            lines.append(f"| {h if h else '0 (linear)'} | {st} | " + " | ".join(cells) + f" | {order} |")
    return lines


def write_report(rows, summary, cfg: Config, out: Path, elapsed: float, plots) -> None:
    lines = ["# Toy chain: marginal KL against depth (Chen et al. 2023, Fig. 2 and Fig. 5)", "",
             f"Written by `dgmkd.experiments.toy_chain` in {elapsed:.0f} s ({len(rows)} training runs).", "",
             "Config: `" + ", ".join(f"{k}={v}" for k, v in to_dict(cfg).items()) + "`", "",
             "KL = `KL(p_T(y) || p_S(y))` in nats, mean ± std over seeds. *grid*: exact (finite volumes for the "
             "Gaussian variant, pmfs over 0..N for the binomial one); *DRE*: classifier density-ratio "
             "estimate (Donsker–Varadhan form) from "
             f"{cfg.eval_samples} samples per model.", ""]
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["sweep"] == "depth"))
    for v in variants:
        h, st = _variant_params(v, cfg)
        lines += [f"## {v}: KL against depth L (student hidden={h}{' = linear residual' if h == 0 else ''}, "
                  f"{st} steps)", "", "Exact (grid):", ""] + depth_table(summary, v, "kl_grid") + [""]
        if cfg.dre:
            lines += ["DRE:", ""] + depth_table(summary, v, "kl_dre") + [""]
        vs = [s for s in summary if s["sweep"] == "depth" and s["variant"] == v]
        lines += [f"Smallest captured mass on the grid: teacher {min(s['mass_teacher_min'] for s in vs):.6f}, "
                  f"student {min(s['mass_student_min'] for s in vs):.6f}.", ""]
        slope_lines = _slopes(vs)
        lines += slope_lines + [""]
    if cfg.dre:
        d = np.array([r["kl_dre"] - r["kl_grid"] for r in rows])
        rel = np.array([abs(r["kl_dre"] - r["kl_grid"]) / max(r["kl_grid"], 1e-12) for r in rows])
        lines += ["## DRE against the exact grid KL", "",
                  f"Over all {len(rows)} runs: DRE − grid has mean {d.mean():+.4f}, median {np.median(d):+.4f}, "
                  f"mean |DRE − grid| {np.abs(d).mean():.4f} nats, median relative error {np.median(rel):.2f}.", ""]
        lines += ["| variant | exact KL range | runs | mean exact KL | mean DRE − grid | mean abs gap | "
                  "mean DRE / mean exact |", "|---|---|---:|---:|---:|---:|---:|"]
        for v in dict.fromkeys(r["variant"] for r in rows):
            for lo, hi in ((0, 0.01), (0.01, 0.1), (0.1, 1.0), (1.0, float("inf"))):
                rs = [r for r in rows if r["variant"] == v and lo <= r["kl_grid"] < hi]
                if rs:
                    g = np.array([r["kl_dre"] - r["kl_grid"] for r in rs])
                    ex = np.mean([r["kl_grid"] for r in rs])
                    lines.append(f"| {v} | [{lo:g}, {hi:g}) | {len(rs)} | {ex:.4f} | {g.mean():+.4f} | "
                                 f"{np.abs(g).mean():.4f} | {(ex + g.mean()) / ex:.2f} |")
        lines.append("")
    reg = regime_table(summary)
    if reg:
        lines += [f"## Regimes (gaussian, L={cfg.regime_layers}, {cfg.regime_seeds} seed(s)): exact KL", ""] + reg + [""]
    lines += ["Files: `results.csv` (one row per run), `summary.csv` (per configuration), "
              + ", ".join(f"`{p.name}`" for p in plots) + "."]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _slopes(vs: list[dict]) -> list[str]:
    """Least-squares slope of mean grid KL against L per method (nats per layer)."""
    out = []
    for m in dict.fromkeys(s["method"] for s in vs):
        pts = sorted((s["layers"], s["kl_grid_mean"]) for s in vs if s["method"] == m)
        if len(pts) >= 2:
            x, y = np.array(pts, dtype=float).T
            slope = np.polyfit(x, y, 1)[0]
            out.append(f"- {m}: least-squares slope {slope:.4g} nats/layer; KL at L={int(x[0])}: {y[0]:.4g}, "
                       f"at L={int(x[-1])}: {y[-1]:.4g}")
    return out


def plot(summary: list[dict], cfg: Config, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    variants = list(dict.fromkeys(s["variant"] for s in summary if s["sweep"] == "depth"))
    for v in variants:
        vs = [s for s in summary if s["sweep"] == "depth" and s["variant"] == v]
        measures = ["kl_grid"] + (["kl_dre"] if cfg.dre else [])
        fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 3.8), squeeze=False)
        for ax, meas in zip(axes[0], measures):
            for m in dict.fromkeys(s["method"] for s in vs):
                pts = sorted((s["layers"], s[f"{meas}_mean"], s[f"{meas}_min"], s[f"{meas}_max"])
                             for s in vs if s["method"] == m)
                L, mu, lo, hi = np.array(pts, dtype=float).T
                line, = ax.plot(L, mu, "o-", label=m)
                ax.fill_between(L, lo, hi, color=line.get_color(), alpha=0.2)
            ax.set_xlabel("number of latent layers L")
            ax.set_ylabel("KL(p_T(y) || p_S(y)) [nats]")
            ax.set_title(f"{v}: {'exact (grid)' if meas == 'kl_grid' else 'density-ratio estimate'}")
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        h, st = _variant_params(v, cfg)
        fig.suptitle(f"{v} chain, student hidden={h}, {st} steps; line = mean, band = min..max over seeds",
                     fontsize=9)
        fig.tight_layout()
        p = out / f"kl_vs_layers_{v}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    rs = [s for s in summary if s["sweep"] == "regime"]
    if rs:
        methods = list(dict.fromkeys(s["method"] for s in rs))
        confs = sorted({(s["hidden"], s["steps"]) for s in rs})
        fig, ax = plt.subplots(figsize=(1.2 + 1.3 * len(confs), 3.8))
        w = 0.8 / len(methods)
        for k, m in enumerate(methods):
            ys, es = [], []
            for c in confs:
                s = next((s for s in rs if (s["hidden"], s["steps"]) == c and s["method"] == m), None)
                ys.append(s["kl_grid_mean"] if s else np.nan)
                es.append(s["kl_grid_std"] if s else 0)
            ax.bar(np.arange(len(confs)) + (k - (len(methods) - 1) / 2) * w, ys, w, yerr=es, label=m)
        ax.set_xticks(range(len(confs)))
        ax.set_xticklabels([f"{'linear' if h == 0 else f'MLP {h}'}\n{st} steps" for h, st in confs], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("exact KL(p_T(y) || p_S(y)) [nats]")
        ax.set_title(f"regimes: gaussian chain, L={cfg.regime_layers}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "regimes.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)
    return paths
