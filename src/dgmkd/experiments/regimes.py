"""The regime benchmark: is one distillation method near the best everywhere?

No single published method is the best distiller of every DGM. Unified distillation (Eq. 7, Chen
et al. 2023) wins where a narrow student's errors compound along its own path; local distillation
wins on deep chains a wide student can copy exactly and where latents are discrete (the
surrogate's gradient does not pass through a discrete latent, §3.3 of the paper). A user cannot
know in advance which regime their model is in, so :func:`dgmkd.distill` without a ``method``
runs the library's default (``dgmkd.train.DEFAULT``), and this benchmark measures it against every
named method in the regimes the reproductions cover:

* toy Gaussian chains (L = 8, 20) with narrow (width 4) and wide (width 32) students; binomial
  chains (L = 20) with the residual student (it contains the teacher) and a capacity-limited one —
  exact marginal KL (``toy_chain``);
* Helmholtz machines with binary latents, student widths 1 and 2 — exact KL (``hm_compress``);
* ladder VAEs on 8x8 digits, students at 1/15 and 1/150 of the teacher — FD to the teacher's
  samples and held-out NLL (its gap to the teacher's), each its own cell (``hvae_compress``);
* VRNNs on MNIST-1D, student hidden 8 and 16 — FD to the teacher's samples (``vrnn_compress``);
* the two-latent demo DGM — MMD² to the teacher (``demo``).

Each cell reports every method's error (mean ± sd over seeds) and its ratio to the best method
other than the default; ``worst_default_ratio`` is the largest ratio of the default over cells.
The experiment families run in ``workers`` processes; the other experiments write their own run
directories under this one (``hm/``, ``hvae/``, ``vrnn/``, ``demo-s<seed>/``), each with its
report, so the default stands in every reproduction's table too.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from .. import harness
from ..config import ConfigError, to_dict

DESCRIPTION = "regime benchmark: the default method against local, unified (λ 0 / 0.1), the paper's variant and scratch in 15 cells"

FAMILIES = ("chain", "binomial", "hm", "hvae", "vrnn", "demo")
BASE_METHODS = ("local", "unified-l0", "unified-l0.1", "default")


@dataclass
class Config:
    families: tuple[str, ...] = FAMILIES
    seeds: tuple[int, ...] = (0, 1, 2)
    workers: int = 2                  # processes running families side by side (one thread each)
    chain_layers: tuple[int, ...] = (8, 20)
    chain_widths: tuple[int, ...] = (4, 32)
    chain_steps: int = 600
    binomial_layers: int = 20
    binomial_steps: int = 150
    hm_steps: int = 1500              # distillation and scratch (wake-sleep) steps
    hm_teacher_steps: int = 3000
    hm_kl_samples: int = 20000
    hvae_teacher_width: int = 32
    hvae_teacher_steps: int = 1500
    hvae_student_steps: int = 600
    hvae_ratios: tuple[int, ...] = (15, 150)
    vrnn_teacher_steps: int = 1500
    vrnn_steps: int = 500
    vrnn_hidden: tuple[int, ...] = (16, 8)
    demo_steps: int = 1500
    progress: bool = False

    def validate(self) -> None:
        from ..config import check_ranges

        if not self.families or not set(self.families) <= set(FAMILIES):
            raise ConfigError(f"families={self.families!r}: choose from {', '.join(FAMILIES)}")
        check_ranges(self, positive=("workers", "chain_steps", "binomial_layers", "binomial_steps", "hm_steps",
                                     "hm_teacher_steps", "hm_kl_samples", "hvae_teacher_width", "hvae_teacher_steps",
                                     "hvae_student_steps", "vrnn_teacher_steps", "vrnn_steps", "demo_steps"),
                     nonempty=("seeds", "chain_layers", "chain_widths", "hvae_ratios", "vrnn_hidden"))
        for key in ("chain_layers", "chain_widths", "hvae_ratios", "vrnn_hidden"):
            if min(getattr(self, key)) < 1:
                raise ConfigError(f"{key}={getattr(self, key)!r}: every value must be >= 1")


CONFIG_HELP = {
    "families": "which experiment families to run (chain, binomial, hm, hvae, vrnn, demo)",
    "workers": "processes running families side by side (one thread each)",
    "chain_layers": "depths L of the Gaussian toy chains", "chain_widths": "student widths of the Gaussian chains",
    "chain_steps": "distillation steps on the Gaussian chains", "binomial_layers": "depth of the binomial chain",
    "binomial_steps": "distillation steps on the binomial chain", "hm_steps": "HM distillation / scratch steps",
    "hm_teacher_steps": "HM teacher wake-sleep steps", "hm_kl_samples": "teacher samples of the HM exact KL",
    "hvae_teacher_width": "ladder-VAE teacher width", "hvae_teacher_steps": "ladder-VAE teacher ELBO steps",
    "hvae_student_steps": "ladder-VAE student steps (every method)", "hvae_ratios": "teacher/student parameter ratios",
    "vrnn_teacher_steps": "VRNN teacher ELBO steps", "vrnn_steps": "VRNN distillation / scratch steps",
    "vrnn_hidden": "VRNN student hidden sizes", "demo_steps": "demo distillation steps",
}

QUICK = {"seeds": (0,), "chain_layers": (8,), "chain_steps": 200, "binomial_layers": 8, "binomial_steps": 60,
         "hm_steps": 300, "hm_teacher_steps": 600, "hm_kl_samples": 5000, "hvae_teacher_width": 16,
         "hvae_teacher_steps": 300, "hvae_student_steps": 150, "hvae_ratios": (15,), "vrnn_teacher_steps": 300,
         "vrnn_steps": 100, "vrnn_hidden": (8,), "demo_steps": 300}
TEST = {"families": ("chain", "binomial", "demo"), "chain_widths": (4,), "chain_steps": 10, "binomial_layers": 2,
        "binomial_steps": 5, "demo_steps": 20, "workers": 1}


# ---------------------------------------------------------------------------------------- families
def _row(cell: str, metric: str, method: str, seed: int, value: float) -> dict:
    return {"cell": cell, "metric": metric, "method": method, "seed": seed, "value": float(value)}


def _chain_rows(cfg: Config, out: Path, binomial: bool) -> list[dict]:
    from . import toy_chain

    tcfg = toy_chain.Config(dre=False, progress=cfg.progress)
    spec = {"local": ("local", None), "unified-l0": ("unified", 0.0), "unified-l0.1": ("unified", 0.1),
            "default": ("default", None)}
    if binomial:
        cells = [(f"binomial L={cfg.binomial_layers} {name}", cfg.binomial_layers, 4, residual)
                 for name, residual in (("residual", True), ("limited", False))]
    else:
        cells = [(f"gaussian L={layers} w={width}", layers, width, True)
                 for layers in cfg.chain_layers for width in cfg.chain_widths]
    rows = []
    for name, layers, width, residual in cells:
        c = replace(tcfg, binomial_residual=residual, binomial_steps=cfg.binomial_steps, steps=cfg.chain_steps)
        for seed in cfg.seeds:
            for m in BASE_METHODS:
                method, lam = spec[m]
                r = toy_chain.train_and_evaluate("binomial" if binomial else "gaussian", layers, method, lam, width,
                                                 c.binomial_steps if binomial else c.steps, seed, c, out=out)
                rows.append(_row(name, "KL", m, seed, r["kl_grid"]))
    return rows


def _hm_rows(cfg: Config, out: Path) -> list[dict]:
    from . import hm_compress as hm

    h = hm.Config(seeds=cfg.seeds, student_hidden=(2, 1), teacher_steps=cfg.hm_teacher_steps,
                  scratch_steps=cfg.hm_steps, distill_steps=cfg.hm_steps, kl_samples=cfg.hm_kl_samples, grid=40,
                  methods=("local", "unified-l0", "unified-l0.1", "unified", "scratch", "default"), progress=False)
    h.validate()
    res = hm.run(h, _subdir(out, "hm", h))
    return [_row(f"HM w={r['hidden']}", "KL", _paper(r["method"], "unified"), r["seed"], r["kl"])
            for r in res["rows"] if r["method"] != "teacher"]


def _hvae_rows(cfg: Config, out: Path) -> list[dict]:
    from . import hvae_compress as hv

    h = hv.Config(teacher_width=cfg.hvae_teacher_width, ratios=cfg.hvae_ratios, teacher_steps=cfg.hvae_teacher_steps,
                  warmup=cfg.hvae_teacher_steps // 3, student_steps=cfg.hvae_student_steps, encoder_steps=150,
                  methods=("local", "unified-l0", "unified-l0.1", "unified", "scratch", "default"), seeds=cfg.seeds,
                  eval_samples=500, nll_k=20, progress=False)
    h.validate()
    res = hv.run(h, _subdir(out, "hvae", h))
    nll_t = {r["seed"]: r["nll"] for r in res["rows"] if r["method"] == "teacher"}
    rows = []
    for r in res["rows"]:
        if r["method"] == "teacher":
            continue
        m, size = _paper(r["method"], "unified"), r["size"]
        rows.append(_row(f"HVAE {size} FD-T", "FD-T", m, r["seed"], r["fd_t"]))
        teacher_nll = nll_t.get(r["seed"], next(iter(nll_t.values())))
        rows.append(_row(f"HVAE {size} NLL gap", "NLL - teacher's", m, r["seed"], r["nll"] - teacher_nll))
    return rows


def _vrnn_rows(cfg: Config, out: Path) -> list[dict]:
    from . import vrnn_compress as vr

    v = vr.Config(seeds=cfg.seeds, student_hidden=cfg.vrnn_hidden, teacher_steps=cfg.vrnn_teacher_steps,
                  scratch_steps=cfg.vrnn_steps, distill_steps=cfg.vrnn_steps,
                  methods=("local", "unified-l0", "unified-l0.1", "scratch", "default"), progress=False)
    v.validate()
    res = vr.run(v, _subdir(out, "vrnn", v))
    return [_row(f"VRNN h={r['hidden']}", "FD-T", r["method"], r["seed"], r["fd_to_teacher"])
            for r in res["rows"] if r["method"] != "teacher"]


def _demo_rows(cfg: Config, out: Path) -> list[dict]:
    from . import demo

    rows = []
    for seed in cfg.seeds:
        d = demo.Config(steps=cfg.demo_steps, seed=seed, methods=BASE_METHODS, progress=False)
        d.validate()
        res = demo.run(d, _subdir(out, f"demo-s{seed}", d))
        rows += [_row("demo DGM", "MMD²", m, seed, r["mmd2_after"]) for m, r in res.items()]
    return rows


def _paper(method: str, paper: str) -> str:
    return "paper" if method == paper else method


def _subdir(out: Path, name: str, cfg) -> Path:
    d = out / name
    d.mkdir(parents=True, exist_ok=False)
    harness.write_json(d / "config.json", {"experiment": _SUB[name.split("-s")[0]], **to_dict(cfg)})
    return d


_SUB = {"hm": "hm-compress", "hvae": "hvae-compress", "vrnn": "vrnn-compress", "demo": "demo"}


def _family(args) -> tuple[str, list[dict], float]:
    name, cfg, out = args
    torch.set_num_threads(1)
    t0 = time.time()
    fn = {"chain": lambda: _chain_rows(cfg, out, False), "binomial": lambda: _chain_rows(cfg, out, True),
          "hm": lambda: _hm_rows(cfg, out), "hvae": lambda: _hvae_rows(cfg, out), "vrnn": lambda: _vrnn_rows(cfg, out),
          "demo": lambda: _demo_rows(cfg, out)}[name]
    rows = fn()
    harness.write_csv(out / f"rows-{name}.csv", rows)
    return name, rows, time.time() - t0


# ---------------------------------------------------------------------------------------- run
def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    out, t0 = Path(out), time.time()
    harness.write_json(out / "config.json", {"experiment": "regimes", **to_dict(cfg)})
    jobs = [(f, cfg, out) for f in cfg.families]
    # the slow families first, so two workers finish together
    jobs.sort(key=lambda j: ("hm", "chain", "hvae", "vrnn", "binomial", "demo").index(j[0]))
    rows, times = [], {}
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(cfg.workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            for name, r, s in pool.map(_family, jobs):
                rows += r
                times[name] = round(s, 1)
                print(f"regimes: {name} done in {s / 60:.1f} min", flush=True)
    else:
        for job in jobs:
            name, r, s = _family(job)
            rows += r
            times[name] = round(s, 1)
    order = {f: i for i, f in enumerate(FAMILIES)}
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r["cell"], i)
    rows.sort(key=lambda r: (order[_family_of(r["cell"])], first[r["cell"]], r["method"], r["seed"]))
    harness.write_csv(out / "results.csv", rows)
    from ..train import DEFAULT

    harness.write_json(out / "timing.json", {"elapsed_s": round(time.time() - t0, 1), "family_s": times,
                                             "default": DEFAULT})
    report(out)
    return {"rows": rows}


def _family_of(cell: str) -> str:
    return {"gaussian": "chain", "binomial": "binomial", "HM": "hm", "HVAE": "hvae", "VRNN": "vrnn",
            "demo": "demo"}[cell.split()[0]]


# ---------------------------------------------------------------------------------------- report
METHOD_ORDER = ("local", "unified-l0", "unified-l0.1", "paper", "scratch", "default")


def cells(rows: list[dict]) -> list[dict]:
    """Per cell: every method's summary, the best non-default method and the default's ratio to it.

    Errors estimated without bias can be at or below zero (an unbiased MMD² at its noise floor, an
    NLL gap where a student beats its teacher). Then there is no ratio: a default at or below the
    best counts as 1 (``floor``); a default above a best at or below zero is compared on errors
    shifted so the best equals its own seed spread (``shifted``)."""
    summ = harness.summarize(rows, ("cell", "metric", "method"), ("value",))
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        by = {s["method"]: s for s in summ if s["cell"] == cell}
        others = {m: s for m, s in by.items() if m != "default"}
        best = min(others, key=lambda m: others[m]["value_mean"]) if others else None
        entry = {"cell": cell, "metric": next(iter(by.values()))["metric"], "methods": by, "best": best,
                 "ratio": math.nan, "note": ""}
        if best is not None and "default" in by:
            b, d = others[best]["value_mean"], by["default"]["value_mean"]
            if b > 0 and d > 0:
                entry["ratio"] = d / b
            elif d <= b:
                entry["ratio"], entry["note"] = 1.0, "floor"
            else:
                floor = others[best].get("value_sd", math.nan)
                floor = floor if floor == floor and floor > 0 else 1e-3
                entry["ratio"], entry["note"] = (d - b + floor) / floor, "shifted"
        out.append(entry)
    return out


def report(out: str | Path) -> str:
    """Rebuild ``report.md``, ``summary.csv`` and ``ratios.png`` from the run directory."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    need = ("cell", "metric", "method", "seed", "value")
    missing = []
    if (out / "results.csv").exists():
        rows = harness.read_csv(out / "results.csv", required=need)
        timing = harness.read_json(out / "timing.json")
    else:  # a run stopped before every family finished: the families that did, said so
        rows, missing = [], [f for f in cfg.families if not (out / f"rows-{f}.csv").exists()]
        for f in cfg.families:
            if f not in missing:
                rows += harness.read_csv(out / f"rows-{f}.csv", required=need)
        if not rows:
            raise harness.ReportDataError(f"{str(out)!r} holds no finished family of the regime benchmark yet")
        timing = {"elapsed_s": None, "family_s": {}}
    cs = cells(rows)
    methods = [m for m in METHOD_ORDER if any(m in c["methods"] for c in cs)]
    table = []
    for c in cs:
        line = [c["cell"], c["metric"]]
        for m in methods:
            s = c["methods"].get(m)
            if s is None:
                line.append("—")
                continue
            sd = s.get("value_sd", math.nan)
            val = f"{s['value_mean']:.4g}" + (f" ± {sd:.2g}" if sd == sd else "")  # the spread convention above
            if m == c["best"]:
                val = f"**{val}**"
            if m == "default" and c["ratio"] == c["ratio"]:
                val += f" ({c['ratio']:.2f}x{'*' if c['note'] else ''})"
            line.append(val)
        table.append(line)
    ratios = [c["ratio"] for c in cs if c["ratio"] == c["ratio"]]
    worst = max(ratios) if ratios else math.nan
    better = [c["cell"] for c in cs if "default" in c["methods"] and all(
        c["methods"]["default"]["value_mean"] < c["methods"][m]["value_mean"]
        for m in ("local", "unified-l0", "unified-l0.1", "paper") if m in c["methods"])]
    short = [(c["cell"], c["ratio"], c["best"]) for c in cs if c["ratio"] == c["ratio"] and c["ratio"] > 1.5]
    harness.write_csv(out / "summary.csv", [{"cell": c["cell"], "metric": c["metric"], "best": c["best"],
                                             "default_ratio": c["ratio"], "note": c["note"]} for c in cs])
    from ..train import DEFAULT

    d = timing.get("default", DEFAULT)  # as it was when the run was made
    lines = [
        "# Regime benchmark: the default distillation method against every named one", "",
        f"The default (`dgmkd.distill` without `method`): the {d['method']} objective, local weight "
        f"{d['local_weight']} (power {d.get('power', 1)}), latent weight {d.get('latent_weight', 0.1)}, gradient clip "
        f"{d.get('grad_clip')}, discrete_grad={d.get('discrete_grad')} where latents are discrete. Cells: {harness.SPREAD}; seeds "
        f"{list(cfg.seeds)}. Every method starts from the same student in a cell and seed. **Bold**: the best "
        "method other than the default; after the default's error, its ratio to that best (x). `paper`: the "
        "paper's own variant where it differs from the named ones (HM: latent weight 1; HVAE: the W2 latent "
        "term). `scratch`: the student trained on the teacher's data. Errors: exact marginal KL (chains, HM), "
        "FD to the teacher's samples (FD-T), held-out NLL minus the teacher's (nats), MMD² to the teacher. "
        "A ratio marked * has no plain ratio because an error is <= 0 (an unbiased MMD² at its noise floor, a "
        "student below its teacher's NLL): 1 when the default is at or below the best, else the ratio of errors "
        "shifted so the best equals its seed spread.", "",
        *harness.table(["cell", "error", *methods], table), "",
        f"The default is strictly better than local and every unified variant in {len(better)} of {len(cs)} cells"
        + (f" ({', '.join(better)})" if better else "") + ".",
        "Cells where the default is more than 1.5x the best other method: "
        + ("; ".join(f"{c} ({r:.2f}x {b})" for c, r, b in short) if short else "none") + ".", "",
        (f"Wall time {timing['elapsed_s'] / 60:.1f} min; per family (min, running side by side): "
         + ", ".join(f"{k} {v / 60:.1f}" for k, v in timing["family_s"].items()) + "." if not missing else
         f"**The run has not finished: no results yet for {', '.join(missing)}** (this table holds the families "
         "that finished; `worst_default_ratio` is over those cells only)."), "",
        f"worst_default_ratio={worst:.3f}",
    ]
    _plot(cs, out / "ratios.png")
    return harness.write_text(out / "report.md", "\n".join(lines) + "\n").read_text()


def _plot(cs: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(cs) + 1.2))
    names = [c["cell"] for c in cs]
    for i, c in enumerate(cs):
        others = {m: s["value_mean"] for m, s in c["methods"].items()}
        b = others.get(c["best"], math.nan)
        for m, v in others.items():
            r = (v / b) if b and b > 0 else math.nan
            if r == r:
                ax.scatter(min(r, 100), i, marker="o" if m == "default" else ".", s=40 if m == "default" else 14,
                           color={"default": "C3", "local": "C0", "scratch": "C2"}.get(m, "C7"), zorder=3)
    ax.axvline(1.5, ls="--", color="k", lw=0.8)
    ax.set(xscale="log", yticks=range(len(names)), yticklabels=names, xlabel="error / best non-default (capped at 100)")
    ax.invert_yaxis()
    fig.tight_layout()
    harness.save_figure(fig, path)
