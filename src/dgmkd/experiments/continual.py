"""KD-based VAE continual learning (Chen et al., CVPR 2023, §4.4, Table 2) on the embedded digits.

For each split (:mod:`dgmkd.data.splits`: ``0-4>5-9``, ``even>odd``, ``thin>thick``) and seed:

1. step 0: a conditional ladder VAE ``M_old`` (:class:`~dgmkd.models.cond_hvae.CondLadderVAE`) is
   trained with the ELBO (KL warm-up) on the old part of the training images, condition 0;
2. step 1: for each method, ``M_new`` starts as a copy of ``M_old`` and trains on the new part only
   (condition 1) with ``(1 - r) L_pre + r L_new`` (:mod:`dgmkd.methods.continual`: ``unified``,
   ``local``, ``lgm``, ``curl``; optional ``finetune`` = ``r = 1``, no ``L_pre``, the
   catastrophic-forgetting reference). ``r`` defaults to the new part's share of the training
   images.

Metrics (Table 2 layout): FD / EMD / MMD² / 1NN on the cached digits CNN's features
(:func:`dgmkd.metrics.features.compare`; FD is a Fréchet distance in that feature space, not an
Inception FID). "Old": samples of condition 0 against the held-out old images; "New": samples of
condition 1 against the held-out new images; as many samples as held-out images. Old cells show
``value(±delta)`` with delta the change from ``M_old`` before step 1 (same seed, same evaluation
noise). Lower is better everywhere (1NN: 0.5 ideal).

CelebA from your own files: ``dataset=celeba data_root=DIR splits=Female>Male`` (or ``No_Beard>Beard``,
``No_Eyeglasses>Eyeglasses``) runs the same on :func:`dgmkd.data.load_celeba`'s train / test partitions
at ``image_size``, with the metrics on a CNN trained on the training faces as in hvae-compress.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import rundir

DESCRIPTION = ("Table 2: KD-based VAE continual learning on digit (or your CelebA attribute) splits "
               "(unified vs local vs LGM vs CURL replay)")

METHODS = ("unified", "local", "lgm", "curl", "finetune")
METRICS = (("fd", "FD"), ("emd", "EMD"), ("mmd2", "MMD²"), ("nn1", "1NN"))
DATASETS = ("digits", "celeba")
IMAGE_SIZES = (8, 16, 32, 64)  # what the ladder VAE's stem handles


def dataset_splits(dataset: str) -> tuple[str, ...]:
    """The split names of ``dataset`` (``digits`` or ``celeba``)."""
    from ..data.splits import CELEBA_SPLITS, SPLITS

    return tuple(CELEBA_SPLITS) if dataset == "celeba" else SPLITS


@dataclass
class Config:
    dataset: str = "digits"         # digits (embedded) | celeba (your files in data_root, as hvae-compress)
    data_root: str = ""             # celeba: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt
    data_limit: int = 0             # celeba: at most this many train and test images each (0 = all)
    image_size: int = 0             # celeba: 8 | 16 | 32 | 64 (0 = 64); digits are 8x8 (0 or 8)
    # celeba splits: Female>Male, No_Beard>Beard, No_Eyeglasses>Eyeglasses
    splits: tuple[str, ...] = ("0-4>5-9", "even>odd", "thin>thick")
    methods: tuple[str, ...] = ("unified", "local", "lgm", "curl")
    seeds: tuple[int, ...] = (0, 1, 2)
    width: int = 16
    latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4)
    sigma: float = 0.1
    batch: int = 128
    old_steps: int = 2000
    old_lr: float = 2e-3
    warmup: int = 500
    new_steps: int = 600
    new_lr: float = 1e-3
    r: float = 0.0                  # weight of L_new; 0 = the new part's share of the training images
    latent_weight: float = 0.1
    latent_divergence: str = "w2"   # w2 (paper's code) | kl
    consistency_weight: float = 1.0  # lgm
    grid: int = 6                   # sample grids: grid x grid images per condition
    threads: int = 1
    progress: bool = True

    def validate(self) -> None:
        """Called by :func:`dgmkd.config.override` (and :func:`run`): mistakes stop before any work."""
        from ..config import ConfigError

        def bad(key, msg):
            raise ConfigError(f"{key}: {msg}")

        if self.dataset not in DATASETS:
            bad("dataset", f"{self.dataset!r} is not allowed; choose from {', '.join(DATASETS)}")
        if self.dataset == "celeba":
            if not self.data_root:
                bad("data_root", "dataset=celeba needs data_root=<folder with img_align_celeba/, "
                    "list_attr_celeba.txt and list_eval_partition.txt>; nothing is downloaded")
            if not Path(self.data_root).is_dir():
                bad("data_root", f"{self.data_root!r} is not a folder")
            if self.image_size not in (0, *IMAGE_SIZES):
                bad("image_size", f"{self.image_size} is not allowed for celeba; choose from 0 (= 64), "
                    f"{', '.join(map(str, IMAGE_SIZES))}")
        elif self.image_size not in (0, 8):
            bad("image_size", f"the digits are 8x8; use 0 or 8, got {self.image_size}")
        if self.data_limit < 0:
            bad("data_limit", f"must be >= 0 (0 = all images), got {self.data_limit}")
        allowed = dataset_splits(self.dataset)
        if not self.splits:
            bad("splits", f"need at least one split of dataset={self.dataset!r}; choose from {', '.join(allowed)}")
        wrong = [s for s in self.splits if s not in allowed]
        if wrong:
            bad("splits", f"{', '.join(map(repr, wrong))} not a split of dataset={self.dataset!r}; "
                f"choose from {', '.join(allowed)}")
        wrong = [m for m in self.methods if m not in METHODS]
        if wrong or not self.methods:
            bad("methods", (f"unknown methods {sorted(wrong)}" if wrong else "need at least one method")
                + f"; choose from {', '.join(METHODS)}")
        if not self.seeds:
            bad("seeds", "must not be empty")
        if self.latent_divergence not in ("w2", "kl"):
            bad("latent_divergence", f"must be w2 or kl, got {self.latent_divergence!r}")


QUICK = {"splits": ("0-4>5-9",), "seeds": (0,), "old_steps": 1000, "warmup": 300, "new_steps": 300,
         "methods": ("unified", "local", "lgm", "curl", "finetune")}


def _slug(split: str) -> str:
    return split.replace(">", "_to_")


def _model(cfg: Config, image_size: int = 8, channels: int = 1):
    from ..models.cond_hvae import CondLadderVAE

    return CondLadderVAE(num_conditions=2, image_size=image_size, channels=channels, width=cfg.width,
                         latent_dims=cfg.latent_dims, sigma=cfg.sigma)


def _data(cfg: Config):
    """``(parts, x_train, y_train)``: ``parts(split)`` is ``((old, new) train images, (old, new) test
    images)``; ``x_train, y_train`` are what the feature network trains on (``None`` for the digits,
    whose feature network is the cached digits CNN)."""
    if cfg.dataset == "digits":
        from ..data.splits import continual_split

        def parts(split):
            (xo, _), (xn, _) = continual_split(split, "train")
            (to, _), (tn, _) = continual_split(split, "test")
            return (xo, xn), (to, tn)

        return parts, None, None
    # celeba, read as hvae-compress reads it: train / test partitions, data_limit images of each
    from ..data import DataFormatError, load_celeba
    from ..data.celeba import feature_labels, read_attributes
    from ..data.splits import CELEBA_SPLITS, celeba_split

    names = read_attributes(Path(cfg.data_root) / "list_attr_celeba.txt")[0]
    missing = sorted({CELEBA_SPLITS[s][0] for s in cfg.splits} - set(names))
    if missing:  # before reading any image
        raise DataFormatError(f"list_attr_celeba.txt in {cfg.data_root!r} has no column {missing} "
                              f"(splits {list(cfg.splits)} need it)")
    lim, size = cfg.data_limit or None, cfg.image_size or 64
    xtr, atr, names = load_celeba(cfg.data_root, "train", size=size, limit=lim)
    xte, ate, _ = load_celeba(cfg.data_root, "test", size=size, limit=lim)

    def parts(split):
        return celeba_split(split, xtr, atr, names), celeba_split(split, xte, ate, names)

    return parts, xtr, feature_labels(atr, names)


@torch.no_grad()
def _samples(model, n: int, c: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    model.eval()
    return model.sample(n, mean=True, c=c)


def _metrics(model, x_test: torch.Tensor, c: int, net, seed: int):
    from ..metrics.features import compare

    s = _samples(model, len(x_test), c, seed)
    m = compare(x_test, s, net)
    return {k: m[k] for k, _ in METRICS}, s


def _grids_png(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, grid_n: int, title: str):
    """One row per model: old-condition and new-condition sample grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(x):
        n = min(grid_n, math.isqrt(len(x)))  # fewer held-out images than grid cells: a smaller grid
        x = torch.nn.functional.pad(x[: n * n].clamp(0, 1), (0, 1, 0, 1), value=0.5)
        c, h, w = x.shape[1:]
        g = x.reshape(n, n, c, h, w).permute(0, 3, 1, 4, 2).reshape(n * h, n * w, c).numpy()
        return g[..., 0] if c == 1 else g  # grey (digits) or RGB (celeba)

    fig, axes = plt.subplots(len(panels), 2, figsize=(4.2, 2.1 * len(panels) + 0.3), squeeze=False)
    for row, (name, old, new) in zip(axes, panels):
        for ax, x, cond in ((row[0], old, "old (c=0)"), (row[1], new, "new (c=1)")):
            if x is not None:
                ax.imshow(grid(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}: {cond}", fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: Config, out: Path) -> dict:
    from ..methods.continual import train_continual
    from ..metrics.features import data_feature_net
    from ..models.cond_hvae import train_cond_elbo

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    parts, xtr, ytr = _data(cfg)
    (out / "models").mkdir(parents=True, exist_ok=True)
    net, _ = data_feature_net(cfg.dataset, xtr, ytr, None if xtr is None else out / "feature_cnn.pt")
    rows, timing = [], {"old_s": 0.0, "new_s": 0.0, "eval_s": 0.0}
    for split in cfg.splits:
        (xo, xn), (to, tn) = parts(split)
        for name, x in (("old train", xo), ("new train", xn), ("old test", to), ("new test", tn)):
            if len(x) == 0:
                raise ValueError(f"split {split!r} of dataset={cfg.dataset!r}: the {name} part has no images")
        size, channels = xo.shape[-1], xo.shape[1]
        r = cfg.r or len(xn) / (len(xo) + len(xn))
        for seed in cfg.seeds:
            t0 = time.time()
            torch.manual_seed(seed)
            old = _model(cfg, size, channels)
            print(f"{split} seed {seed}: M_old ({old.num_parameters():,} params) on {len(xo)} old images, "
                  f"{cfg.old_steps} ELBO steps")
            train_cond_elbo(old, xo, cfg.old_steps, c=0, batch=cfg.batch, lr=cfg.old_lr, warmup=cfg.warmup,
                            seed=seed, progress=cfg.progress, desc=f"M_old {split}",
                            checkpoint=out / "models" / f"old_{_slug(split)}_seed{seed}.ckpt",
                            checkpoint_every=max(1, cfg.old_steps // 3))
            old.eval().requires_grad_(False)
            timing["old_s"] += time.time() - t0
            t0 = time.time()
            base_old, s_old = _metrics(old, to, 0, net, 10_000 + seed)
            timing["eval_s"] += time.time() - t0
            rows.append({"split": split, "method": "M_old", "seed": seed, "r": r, "n_old": len(xo), "n_new": len(xn),
                         **{f"old_{k}": v for k, v in base_old.items()},
                         **{f"new_{k}": float("nan") for k, _ in METRICS},
                         **{f"dold_{k}": 0.0 for k, _ in METRICS}, "train_s": float("nan")})
            panels = [("M_old", s_old, None)]
            for method in cfg.methods:
                t0 = time.time()
                new = copy.deepcopy(old)
                print(f"{split} seed {seed}: step 1 with {method} (r = {r:.3f}) on {len(xn)} new images")
                h = train_continual(old, new, xn, "curl" if method == "finetune" else method, cfg.new_steps,
                                    r=1.0 if method == "finetune" else r, batch=cfg.batch, lr=cfg.new_lr,
                                    latent_weight=cfg.latent_weight, latent_divergence=cfg.latent_divergence,
                                    consistency_weight=cfg.consistency_weight, seed=100 + seed,
                                    progress=cfg.progress, desc=f"{method} {split}")
                train_s = time.time() - t0
                timing["new_s"] += train_s
                t0 = time.time()
                mo, so = _metrics(new, to, 0, net, 10_000 + seed)
                mn, sn = _metrics(new, tn, 1, net, 20_000 + seed)
                timing["eval_s"] += time.time() - t0
                rows.append({"split": split, "method": method, "seed": seed, "r": r, "n_old": len(xo), "n_new": len(xn),
                             **{f"old_{k}": v for k, v in mo.items()}, **{f"new_{k}": v for k, v in mn.items()},
                             **{f"dold_{k}": mo[k] - base_old[k] for k, _ in METRICS},
                             "final_l_new": h["l_new"][-1], "final_l_pre": h["l_pre"][-1], "train_s": train_s})
                torch.save(new.state_dict(), out / "models" / f"new_{_slug(split)}_{method}_seed{seed}.pt")
                panels.append((method, so, sn))
                print("   old " + "  ".join(f"{n} {mo[k]:.3f}({mo[k] - base_old[k]:+.3f})" for k, n in METRICS)
                      + " | new " + "  ".join(f"{n} {mn[k]:.3f}" for k, n in METRICS))
            if seed == cfg.seeds[0]:
                _grids_png(panels, out / f"samples_{_slug(split)}.png", cfg.grid,
                           f"{split}, seed {seed}: samples after step 1 (decoder means)")
            timing["total_s"] = time.time() - t_start
            rundir.write_csv(out / "results.csv", rows)
            rundir.write_json(out / "timing.json", timing)
            report(out, quiet=True)
    timing["total_s"] = time.time() - t_start
    rundir.write_json(out / "timing.json", timing)
    text = report(out)
    print(text)
    return {"rows": rows, "timing": timing}


# ---------------------------------------------------------------------------------------- report
def _load(out: Path):
    import csv
    import json

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("split", "method"):
                try:
                    r[k] = float(v)
                except (TypeError, ValueError):
                    pass
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    cfg = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
    return rows, timing, cfg


def _mean(rows, key):
    v = [r[key] for r in rows if isinstance(r.get(key), float) and not math.isnan(r[key])]
    return float(np.mean(v)) if v else float("nan")


def _f(v: float) -> str:
    return "-" if math.isnan(v) else (f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}")


def _groups(rows):
    g: dict[tuple[str, str], list] = {}
    for r in rows:
        g.setdefault((r["split"], r["method"]), []).append(r)
    return g


def table(rows) -> list[str]:
    """Table 2 layout: per split and method, Old(±delta) and New columns of each metric (means)."""
    head = "| split | method | " + " | ".join(f"{n} Old | {n} New" for _, n in METRICS) + " | seeds |"
    lines = [head, "|" + "---|" * (3 + 2 * len(METRICS))]
    for (split, method), rs in _groups(rows).items():
        cells = []
        for k, _ in METRICS:
            o, d, n = _mean(rs, f"old_{k}"), _mean(rs, f"dold_{k}"), _mean(rs, f"new_{k}")
            cells += [f"{_f(o)}({d:+.3f})" if method != "M_old" else _f(o), _f(n)]
        lines.append(f"| {split} | {method} | " + " | ".join(cells) + f" | {len(rs)} |")
    return lines


def std_table(rows) -> list[str]:
    head = "| split | method | " + " | ".join(f"{n} Old Δ | {n} New" for _, n in METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(METRICS))]
    for (split, method), rs in _groups(rows).items():
        if method == "M_old":
            continue
        cells = []
        for k, _ in METRICS:
            for key in (f"dold_{k}", f"new_{k}"):
                v = [r[key] for r in rs]
                cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}")
        lines.append(f"| {split} | {method} | " + " | ".join(cells) + " |")
    return lines


def goal_check(rows) -> tuple[list[str], bool]:
    """Per split and metric: does ``unified`` have the smallest Old degradation (mean delta) of the
    four paper methods, and is its New value within 10% of the best of them (``<= best +
    0.1 |best|``)?"""
    g = _groups(rows)
    lines, ok_all = [], True
    splits = list(dict.fromkeys(r["split"] for r in rows))
    for split in splits:
        ms = [m for m in ("unified", "local", "lgm", "curl") if (split, m) in g]
        if "unified" not in ms or len(ms) < 2:
            continue
        old_wins, new_ok = [], []
        for k, name in METRICS:
            d = {m: _mean(g[(split, m)], f"dold_{k}") for m in ms}
            n = {m: _mean(g[(split, m)], f"new_{k}") for m in ms}
            if min(d, key=d.get) == "unified":
                old_wins.append(name)
            best = min(n.values())
            if n["unified"] <= best + 0.1 * abs(best):
                new_ok.append(name)
        ok = len(old_wins) == len(METRICS) and len(new_ok) == len(METRICS)
        ok_all &= ok
        lines.append(f"- {split}: unified has the smallest Old degradation on {old_wins or 'none'} "
                     f"of {len(METRICS)}; New within 10% of the best on {new_ok or 'none'} -> "
                     f"{'MET' if ok else 'NOT MET'}")
    return lines, ok_all


def compare(runs: list[Path], out: Path | None = None) -> str:
    """The trade-off across runs that differ in ``r`` (the weight of ``L_new``): per split and
    method, the Old degradation and the New value of each metric at every ``r`` (means over
    seeds), and with ``out`` a plot ``tradeoff.png`` of FD New against FD Old change, one line
    per method through its ``r`` values. A method is better on both counts where its line lies
    below and left of another's."""
    pts: dict[tuple[str, str], dict[float, dict[str, float]]] = {}
    for run in runs:
        rows, _, _ = _load(Path(run))
        for (split, method), rs in _groups([r for r in rows if r["method"] != "M_old"]).items():
            r_val = round(float(rs[0]["r"]), 3)
            cell = {f"dold_{k}": _mean(rs, f"dold_{k}") for k, _ in METRICS}
            cell.update({f"new_{k}": _mean(rs, f"new_{k}") for k, _ in METRICS})
            cell["seeds"] = len(rs)
            pts.setdefault((split, method), {})[r_val] = cell
    head = "| split | method | r | seeds | " + " | ".join(f"{n} Old Δ | {n} New" for _, n in METRICS) + " |"
    lines = ["## Trade-off over r (weight of L_new): Old change and New value, means over seeds", "",
             head, "|" + "---|" * (4 + 2 * len(METRICS))]
    for (split, method), by_r in sorted(pts.items()):
        for r_val, c in sorted(by_r.items()):
            cells = [f"{c[f'dold_{k}']:+.3f} | {_f(c[f'new_{k}'])}" for k, _ in METRICS]
            lines.append(f"| {split} | {method} | {r_val} | {c['seeds']} | " + " | ".join(cells) + " |")
    if out is not None and pts:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        splits = sorted({s for s, _ in pts})
        fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
        for ax, split in zip(axes[0], splits):
            for (s_, method), by_r in sorted(pts.items()):
                if s_ != split:
                    continue
                rs = sorted(by_r)
                xs, ys = [by_r[r]["dold_fd"] for r in rs], [by_r[r]["new_fd"] for r in rs]
                ax.plot(xs, ys, "o-", label=method)
                for r_val, x, y in zip(rs, xs, ys):
                    ax.annotate(f"r={r_val}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_title(split, fontsize=9)
            ax.set_xlabel("FD Old change (lower: less forgetting)", fontsize=8)
            ax.set_ylabel("FD New (lower: better new samples)", fontsize=8)
            ax.legend(fontsize=7)
        fig.tight_layout()
        Path(out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out) / "tradeoff.png", dpi=110)
        plt.close(fig)
        lines += ["", "![trade-off](tradeoff.png)"]
    return "\n".join(lines) + "\n"


def report(out: str | Path, quiet: bool = False) -> str:
    """(Re)build ``report.md`` from the run's ``results.csv``, ``timing.json`` and ``config.json``."""
    out = Path(out)
    rows, timing, cfg = _load(out)
    check, ok = goal_check(rows)
    seeds = sorted({int(r["seed"]) for r in rows})
    rs = {(r["split"], round(r["r"], 3)) for r in rows}
    if cfg.get("dataset", "digits") == "celeba":
        where = f"CelebA attribute splits ({cfg.get('data_root', '?')}, {cfg.get('image_size') or 64}x" \
                f"{cfg.get('image_size') or 64} RGB)"
        feats = ("the features of a CNN trained on the CelebA training faces to classify their Male attribute "
                 "(feature_cnn.pt, as in hvae-compress)")
    else:
        where, feats = "the digits", "the cached digits-CNN features"
    lines = [
        f"# KD-based VAE continual learning on {where} (Table 2 of Chen et al. 2023)", "",
        f"Conditional ladder VAE (width {cfg.get('width', '?')}, latents {cfg.get('latent_dims', '?')}, "
        f"Gaussian decoder sigma {cfg.get('sigma', '?')}). M_old: {cfg.get('old_steps', '?')} ELBO steps "
        f"(warm-up {cfg.get('warmup', '?')}) on the old part, condition 0. Step 1: {cfg.get('new_steps', '?')} "
        f"steps of (1 - r) L_pre + r L_new on the new part, condition 1, lr {cfg.get('new_lr', '?')}, batch "
        f"{cfg.get('batch', '?')}; r per split = " + ", ".join(f"{s}: {v}" for s, v in sorted(rs)) + ". "
        f"unified: latent weight {cfg.get('latent_weight', '?')}, latent divergence "
        f"{cfg.get('latent_divergence', '?')}; lgm: consistency weight {cfg.get('consistency_weight', '?')}. "
        f"Seeds {seeds}; cells are means over seeds.", "",
        f"Metrics on {feats} (FD is a Fréchet distance in that space, not an Inception "
        "FID). Old: condition-0 samples vs the held-out old images; New: condition-1 samples vs the held-out "
        "new images (as many samples as held-out images; decoder means). Old cells: value(±change from M_old "
        "before step 1). Lower is better (1NN: 0.5 ideal). MMD² is the unbiased estimate (can be < 0).", "",
        *table(rows), "",
        "Mean ± std over seeds of the Old change and of the New value:", "",
        *std_table(rows), "",
        "Goal (unified: smallest Old degradation of the four methods, New within 10% of the best), per split "
        "and metric:", *check, f"- overall: {'MET' if ok else 'NOT MET'}", "",
    ]
    if timing:
        lines.append(f"Wall time: {timing.get('total_s', float('nan')) / 60:.1f} min (M_old "
                     f"{timing.get('old_s', 0) / 60:.1f}, step 1 {timing.get('new_s', 0) / 60:.1f}, evaluation "
                     f"{timing.get('eval_s', 0) / 60:.1f}) with {cfg.get('threads', 1)} thread(s).")
    lines += ["", "Sample grids (first seed): " + ", ".join(
        f"samples_{_slug(s)}.png" for s in dict.fromkeys(r["split"] for r in rows)) + "."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
