"""Data-free hierarchical VAE compression (Chen et al., CVPR 2023, §4.2, Table 1), and beyond.

A 5-layer ladder VAE teacher (:class:`dgmkd.models.hvae.LadderVAE`) is trained on data with the
ELBO; then students with the same graph and ~1/15, 1/50, 1/150 of its parameters (the width knob
is picked by code so that the parameter counts hit those ratios) are trained three ways, each
with the same step budget:

* ``unified`` — data-free, Eq. (7): surrogate KL of ``p(x | z1)`` under shared noise plus
  ``latent_weight`` (0.1) times the squared 2-Wasserstein distance of each ``p(z_i | z_{i+1})``
  (the paper's code's choice);
* ``local`` — data-free local distillation: the KL of every conditional at the teacher's sampled
  parents;
* ``scratch`` — the student trained on the real training data with the ELBO (KL warm-up too);
* ``unified-kl`` (beyond the paper, optional) — the unified loss with KL instead of W2 as the
  latent divergence. With W2 and lambda = 0.1 nothing stops a small student from shrinking the
  standard deviation of a prior layer towards zero (the surrogate term, an MSE on the decoder mean
  for a fixed-sigma Gaussian, rewards removing variability the student cannot map correctly; W2
  charges only ``(sigma_T - sigma_S)^2``); the samples stay good but the student's prior becomes
  nearly degenerate and its test likelihood collapses. KL charges ``log sigma_S`` and prevents it.

Beyond the paper: its code leaves the students' inference networks untrained, so its students
cannot encode or score data. Here the data-free students' encoders are distilled too, with the
*same* site machinery and the same method as their decoders, on images the teacher generates:
``q_T(z | x) -> q_S(z | x)`` (``LadderVAE.inference()`` is a DGM whose latents are the posterior
layers and whose target is the reconstruction ``x_rec``; only encoder parameters are trained, the
distilled decoder is frozen). Every model then gets a test negative log-likelihood (importance
weighted bound, ``nll_k`` samples).

Metrics (Table 1 layout): FD / EMD / MMD^2 / 1NN between model samples and held-out data, and the
same four between student samples and the teacher's samples ("-T"), all on the features of the
cached digits CNN (:mod:`dgmkd.metrics.features`) — "FD" is a Fréchet distance in that feature
space, not an Inception FID. Means and standard deviations over seeds (one teacher; the seed
changes the students' initialization and training noise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..models.hvae import LadderVAE, iw_nll, train_elbo
from ..train import distill

DESCRIPTION = "Table 1: data-free ladder-VAE compression (unified vs local vs scratch), FD/EMD/MMD/1NN(-T), NLL"

METHODS = ("unified", "local", "scratch", "unified-kl")


@dataclass
class Config:
    dataset: str = "digits"          # digits (embedded) | svhn | cifar10 | celeba (need data_root)
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
    threads: int = 1
    progress: bool = True


QUICK = {"teacher_width": 32, "ratios": (15, 50), "teacher_steps": 800, "warmup": 250, "student_steps": 350,
         "encoder_steps": 150, "methods": ("unified", "local", "scratch"), "seeds": (0,), "eval_samples": 400,
         "nll_k": 20}


# ---------------------------------------------------------------------------------------- data
def _load(cfg: Config):
    """``(train images, train labels, test images)`` in [0, 1]."""
    from ..data import digits_split, load_celeba, load_cifar10, load_svhn
    from ..data.celeba import feature_labels

    if cfg.dataset == "digits":
        xtr, ytr = digits_split("train", binarize=cfg.likelihood == "bernoulli")
        xte, _ = digits_split("test", binarize=cfg.likelihood == "bernoulli")
        return xtr, ytr, xte
    if not cfg.data_root:
        raise ValueError(f"dataset={cfg.dataset!r} needs data_root=<folder with its files>; nothing is downloaded")
    lim = cfg.data_limit or None
    if cfg.dataset == "svhn":
        (xtr, ytr), (xte, _) = load_svhn(cfg.data_root, "train", lim), load_svhn(cfg.data_root, "test", lim)
    elif cfg.dataset == "cifar10":
        (xtr, ytr), (xte, _) = load_cifar10(cfg.data_root, "train", lim), load_cifar10(cfg.data_root, "test", lim)
    elif cfg.dataset == "celeba":
        xtr, atr, names = load_celeba(cfg.data_root, "train", limit=lim)
        xte, _, _ = load_celeba(cfg.data_root, "test", limit=lim)
        ytr = feature_labels(atr, names)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose digits, svhn, cifar10 or celeba")
    if cfg.likelihood == "bernoulli":
        xtr, xte = (xtr > 0.5).float(), (xte > 0.5).float()
    return xtr, ytr, xte


def _feature_net(cfg: Config, xtr, ytr, out: Path):
    from ..metrics.features import data_feature_net

    return data_feature_net(cfg.dataset, xtr, ytr, out / "feature_cnn.pt")


# ---------------------------------------------------------------------------------------- models
def _vae(cfg: Config, width: int, image_size: int, channels: int) -> LadderVAE:
    return LadderVAE(image_size=image_size, channels=channels, width=width, latent_dims=cfg.latent_dims,
                     likelihood=cfg.likelihood, sigma=cfg.sigma)


def student_widths(cfg: Config, image_size: int, channels: int) -> list[tuple[int, int]]:
    """For each ratio r, ``(width, ratio)`` with the width whose total parameter count is closest
    (in log scale) to ``teacher / r``; duplicates are kept (they are reported as such)."""
    n_t = _vae(cfg, cfg.teacher_width, image_size, channels).num_parameters()
    counts = {w: _vae(cfg, w, image_size, channels).num_parameters() for w in range(1, cfg.teacher_width + 1)}
    out = []
    for r in cfg.ratios:
        w = min(counts, key=lambda w: abs(math.log(counts[w]) - math.log(n_t / r)))
        out.append((w, r))
    return out


def _method(method: str, cfg: Config) -> tuple[str, str]:
    """``(distill method, latent divergence)`` of an experiment method name."""
    if method == "unified-kl":
        return "unified", "kl"
    return method, cfg.latent_divergence


def _distill_encoder(teacher: LadderVAE, student: LadderVAE, method: str, cfg: Config, seed: int, progress: bool):
    """Data-free distillation of the inference network on images the teacher generates (see the
    module docstring): only the student's encoder parameters train."""
    gen = list(student.generative_parameters())
    for p in gen:
        p.requires_grad_(False)
    try:
        def teacher_images():
            return (teacher.sample(cfg.batch, mean=True),)

        m, ldiv = _method(method, cfg)
        return distill(teacher.inference(), student.inference(), inputs=teacher_images, method=m,
                       steps=cfg.encoder_steps, lr=cfg.student_lr, latent_weight=cfg.latent_weight,
                       latent_divergence=ldiv, seed=seed, progress=progress)
    finally:
        for p in gen:
            p.requires_grad_(True)


def _train_student(method, teacher, student, xtr, cfg: Config, seed: int, progress: bool):
    if method == "scratch":
        warm = int(cfg.warmup * cfg.student_steps / max(cfg.teacher_steps, 1))
        return train_elbo(student, xtr, cfg.student_steps, batch=cfg.batch, lr=cfg.student_lr, warmup=warm,
                          seed=seed, progress=progress, desc="scratch")
    m, ldiv = _method(method, cfg)
    h = distill(teacher, student, inputs=cfg.batch, method=m, steps=cfg.student_steps, lr=cfg.student_lr,
                latent_weight=cfg.latent_weight, latent_divergence=ldiv, seed=seed, progress=progress)
    if cfg.encoder_steps:
        _distill_encoder(teacher, student, method, cfg, seed, progress)
    return h


# ---------------------------------------------------------------------------------------- evaluation
def _samples(model: LadderVAE, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    model.eval()
    return torch.cat([model.sample(min(500, n - i)) for i in range(0, n, 500)])


def _evaluate(model, xte, teacher_samples, net, cfg: Config, seed: int) -> dict:
    from ..metrics.features import compare

    s = _samples(model, max(cfg.eval_samples, len(xte)), 10_000 + seed)
    data = compare(xte, s[:len(xte)], net)
    row = {k: data[k] for k in ("fd", "kd", "emd", "mmd2", "nn1")}
    row["mmd_bandwidth"] = data["mmd_bandwidth"]
    if teacher_samples is not None:
        t = compare(teacher_samples, s[:cfg.eval_samples], net)
        row.update({f"{k}_t": t[k] for k in ("fd", "kd", "emd", "mmd2", "nn1")})
        row["mmd_bandwidth_t"] = t["mmd_bandwidth"]
    torch.manual_seed(20_000 + seed)
    row["nll"] = float(iw_nll(model, xte, k=cfg.nll_k).mean())
    # where the NLL comes from: the ELBO's reconstruction and KL terms on the test images
    with torch.no_grad():
        _, rec, kl = model.elbo(xte)
    row["elbo_rec"], row["elbo_kl"] = float(rec.mean()), float(kl.mean())
    return row, s


def _grid_png(images: torch.Tensor, path: Path, n: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = images[: n * n].clamp(0, 1)
    n = int(math.isqrt(len(x))) if len(x) < n * n else n
    x = torch.nn.functional.pad(x[: n * n], (0, 1, 0, 1), value=0.5)  # a grey line between images
    c, h, w = x.shape[1:]
    g = x.reshape(n, n, c, h, w).permute(0, 3, 1, 4, 2).reshape(n * h, n * w, c).numpy()
    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(g[..., 0] if c == 1 else g, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_run(run_dir: Path):
    import json

    from .. import config as cfgmod

    raw = json.loads((run_dir / "config.json").read_text())
    raw.pop("experiment", None)
    return cfgmod.override(Config(), {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in raw.items()})


def analyze(run_dir: str | Path) -> Path:
    """Post-hoc analysis of a finished run directory (its ``config.json``, ``teacher.ckpt`` and
    ``models/``), written to ``analysis.md`` there:

    * the teacher row with the -T *floor*: two independent teacher samples (the same seeds
      :func:`run` uses), i.e. what a student identical to the teacher would score — runs made
      before the table had it get it here;
    * the ELBO's reconstruction and KL terms on the held-out images for every saved student, which
      locates a bad NLL: a large KL with a good reconstruction means the (distilled) posterior puts
      its mass where the student's own prior has almost none.

        python -m dgmkd.experiments.hvae_compress runs/hvae-compress-full
    """
    import re

    from .. import checkpoint

    run_dir = Path(run_dir)
    cfg = _load_run(run_dir)
    torch.set_num_threads(cfg.threads)
    xtr, ytr, xte = _load(cfg)
    size, channels = xtr.shape[-1], xtr.shape[1]
    net, feat = _feature_net(cfg, xtr, ytr, run_dir)
    teacher = _vae(cfg, cfg.teacher_width, size, channels)
    teacher.load_state_dict(checkpoint.load(run_dir / "teacher.ckpt")["state"]["model"])
    teacher.eval().requires_grad_(False)
    t_samples = _samples(teacher, cfg.eval_samples, 777)
    trow, _ = _evaluate(teacher, xte, t_samples, net, cfg, 0)
    widths = {str(r): w for w, r in student_widths(cfg, size, channels)}
    groups: dict[tuple, list] = {}
    for f in sorted((run_dir / "models").glob("student_*_seed*.pt")):
        m = re.match(r"student_(\d+)_(.+)_seed(\d+)\.pt", f.name)
        if not m or m.group(1) not in widths:
            continue
        st = _vae(cfg, widths[m.group(1)], size, channels)
        st.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
        st.eval()
        torch.manual_seed(int(m.group(3)))
        with torch.no_grad():
            _, rec, kl = st.elbo(xte)
        groups.setdefault((f"1/{m.group(1)}", m.group(2)), []).append((float(rec.mean()), float(kl.mean())))
    with torch.no_grad():
        torch.manual_seed(0)
        _, trec, tkl = teacher.elbo(xte)
    lines = [f"# Analysis of {run_dir}", "", "Produced by `python -m dgmkd.experiments.hvae_compress "
             f"{run_dir}`.", "", f"## Teacher and the -T floor ({feat} features)", "",
             "| FD | EMD | MMD² | 1NN | FD-T floor | EMD-T floor | MMD²-T floor | 1NN-T floor | NLL |",
             "|---|---|---|---|---|---|---|---|---|",
             "| " + " | ".join(_fmt([trow[k]]) for k, _ in COLS) + " |", "",
             f"-T floor: {cfg.eval_samples} teacher samples vs {cfg.eval_samples} other teacher samples.", "",
             "## ELBO terms on the held-out images (nats per image; mean ± std over seeds)", "",
             "| model | method | E_q log p(x\\|z) | KL(q(z\\|x) \\|\\| p(z)) |", "|---|---|---|---|",
             f"| teacher | teacher | {float(trec.mean()):.2f} | {float(tkl.mean()):.2f} |"]
    order = {m: i for i, m in enumerate(METHODS)}
    for (sz, meth), v in sorted(groups.items(), key=lambda kv: (int(kv[0][0].split("/")[1]), order.get(kv[0][1], 9))):
        lines.append(f"| {sz} | {meth} | {_fmt([a for a, _ in v])} | {_fmt([b for _, b in v])} |")
    path = run_dir / "analysis.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------- table
COLS = [("fd", "FD"), ("emd", "EMD"), ("mmd2", "MMD²"), ("nn1", "1NN"),
        ("fd_t", "FD-T"), ("emd_t", "EMD-T"), ("mmd2_t", "MMD²-T"), ("nn1_t", "1NN-T"), ("nll", "NLL")]


def _fmt(vals: list[float]) -> str:
    a = np.asarray(vals, dtype=float)
    big = np.abs(a).max() >= 100
    f = (lambda v: f"{v:.1f}") if big else (lambda v: f"{v:.3f}")
    if len(a) == 1:
        return f(a[0])
    return f"{f(a.mean())} ± {f(a.std(ddof=0))}"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def table(rows: list[dict]) -> list[str]:
    """Markdown table in the layout of Table 1 from per-seed result rows."""
    head = "| model | method | #param | " + " | ".join(c for _, c in COLS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLS))]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["method"]), []).append(r)
    for (size, method), rs in groups.items():
        cells = []
        for k, _ in COLS:
            v = [r[k] for r in rs if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
            cells.append(_fmt(v) if v else "-")
        lines.append(f"| {size} | {method} | {_count(rs[0]['params'])} | " + " | ".join(cells) + " |")
    return lines


def goal_check(rows: list[dict]) -> tuple[list[str], bool]:
    """Does ``unified`` beat ``local`` and ``scratch`` (mean over seeds, lower is better) on all
    four -T metrics and on at least three of the four data metrics, for every student size?"""
    lines, ok_all = [], True
    sizes = sorted({r["size"] for r in rows if r["method"] != "teacher"}, key=lambda s: [r["size"] for r in rows].index(s))
    for size in sizes:
        mean = {}
        for m in ("unified", "local", "scratch"):
            rs = [r for r in rows if r["size"] == size and r["method"] == m]
            if rs:
                mean[m] = {k: float(np.mean([r[k] for r in rs])) for k, _ in COLS}
        if "unified" not in mean or len(mean) < 2:
            continue
        others = [m for m in mean if m != "unified"]
        t_wins = [k for k in ("fd_t", "emd_t", "mmd2_t", "nn1_t") if all(mean["unified"][k] < mean[o][k] for o in others)]
        d_wins = [k for k in ("fd", "emd", "mmd2", "nn1") if all(mean["unified"][k] < mean[o][k] for o in others)]
        ok = len(t_wins) == 4 and len(d_wins) >= 3
        ok_all &= ok
        lines.append(f"- {size}: unified best on -T metrics {t_wins or 'none'} (4 needed), on data metrics "
                     f"{d_wins or 'none'} (3 needed) -> {'MET' if ok else 'NOT MET'}")
    return lines, ok_all


# ---------------------------------------------------------------------------------------- run
def run(cfg: Config, out: Path) -> dict:
    unknown = set(cfg.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    xtr, ytr, xte = _load(cfg)
    size, channels = xtr.shape[-1], xtr.shape[1]
    net, feat_name = _feature_net(cfg, xtr, ytr, out)
    timing = {}

    # teacher (checkpointed in the run directory: a rerun with the same --out resumes / reuses it)
    torch.manual_seed(1234)
    teacher = _vae(cfg, cfg.teacher_width, size, channels)
    t0 = time.time()
    print(f"teacher: width {cfg.teacher_width}, {teacher.num_parameters():,} parameters, {cfg.teacher_steps} ELBO steps")
    th = train_elbo(teacher, xtr, cfg.teacher_steps, batch=cfg.batch, lr=cfg.teacher_lr, warmup=cfg.warmup, seed=1234,
                    progress=cfg.progress, desc="teacher", checkpoint=out / "teacher.ckpt",
                    checkpoint_every=max(1, cfg.teacher_steps // 4))
    timing["teacher_train_s"] = time.time() - t0
    teacher.eval().requires_grad_(False)
    t_samples = _samples(teacher, cfg.eval_samples, 777)

    rows = []
    # the teacher's -T entries compare two independent teacher samples: the floor of the -T metrics
    trow, ts = _evaluate(teacher, xte, t_samples, net, cfg, 0)
    rows.append({"size": "teacher", "method": "teacher", "seed": 0, "width": cfg.teacher_width,
                 "params": teacher.num_parameters(), "params_generative": teacher.num_parameters("generative"),
                 "final_loss": th["loss"][-1] if th["loss"] else float("nan"), **trow})
    _grid_png(ts, out / "samples_teacher.png", cfg.grid, f"teacher ({_count(teacher.num_parameters())})")

    widths = student_widths(cfg, size, channels)
    t0 = time.time()
    for seed in cfg.seeds:
        for w, r in widths:
            for method in cfg.methods:
                torch.manual_seed(seed)
                student = _vae(cfg, w, size, channels)
                name = f"1/{r}"
                print(f"seed {seed} student {name} (width {w}, {student.num_parameters():,} params): {method}")
                t1 = time.time()
                h = _train_student(method, teacher, student, xtr, cfg, seed, cfg.progress)
                train_s = time.time() - t1
                student.eval().requires_grad_(False)
                row, s = _evaluate(student, xte, t_samples, net, cfg, seed)
                rows.append({"size": name, "method": method, "seed": seed, "width": w,
                             "params": student.num_parameters(), "params_generative": student.num_parameters("generative"),
                             "final_loss": h["loss"][-1], "train_s": train_s, **row})
                (out / "models").mkdir(exist_ok=True)
                torch.save(student.state_dict(), out / "models" / f"student_{r}_{method}_seed{seed}.pt")
                if seed == cfg.seeds[0]:
                    _grid_png(s, out / f"samples_{r}_{method}.png", cfg.grid,
                              f"student 1/{r} ({_count(student.num_parameters())}), {method}")
                rundir.write_csv(out / "results.csv", rows)
        # a report after every seed, so a long run that is stopped still leaves a table
        timing["students_s"] = time.time() - t0
        timing["total_s"] = time.time() - t_start
        _report(cfg, rows, out, feat_name, timing, len(xtr), len(xte), quiet=True)
    timing["students_s"] = time.time() - t0
    timing["total_s"] = time.time() - t_start
    _report(cfg, rows, out, feat_name, timing, len(xtr), len(xte))
    return {"rows": rows, "timing": timing}


def _report(cfg, rows, out, feat_name, timing, n_train, n_test, quiet=False):
    import json

    rundir.write_csv(out / "results.csv", rows)
    rundir.write_json(out / "timing.json", timing)
    check, ok = goal_check(rows)
    acc = ""
    if cfg.dataset == "digits":
        from ..metrics.features import cache_dir

        p = cache_dir() / "digits_cnn_v1.json"
        if p.is_file():
            acc = f" (held-out accuracy {json.loads(p.read_text())['test_accuracy']:.3f})"
    lines = [
        f"# Data-free ladder-VAE compression on {cfg.dataset} (Table 1 of Chen et al. 2023)", "",
        f"Seeds {list(cfg.seeds)} (mean ± std over seeds; one teacher). Teacher: width {cfg.teacher_width}, "
        f"{cfg.teacher_steps} ELBO steps. Students: {cfg.student_steps} steps each "
        f"(unified/local: data-free distillation + {cfg.encoder_steps} steps of data-free encoder distillation; "
        f"scratch: ELBO on the {n_train} training images). Batch {cfg.batch}, latent weight {cfg.latent_weight}, "
        f"latent divergence {cfg.latent_divergence}.", "",
        f"Metrics on {feat_name} features{acc} — FD is a Fréchet distance in that space, not Inception FID. "
        f"Data metrics: {n_test} held-out images vs {n_test} model samples (decoder means). -T metrics: "
        f"{cfg.eval_samples} teacher samples vs {cfg.eval_samples} student samples. MMD² is the unbiased estimate "
        "with Gaussian kernels at 0.5/1/2 x the median-heuristic bandwidth (bandwidths in results.csv). 1NN: "
        "leave-one-out 1-NN two-sample accuracy (0.5 ideal). NLL: importance-weighted bound with "
        f"k={cfg.nll_k} on the {n_test} held-out images, nats per image (Gaussian density on [0,1] pixels "
        f"with fixed sigma={cfg.sigma}; negative values are possible). Lower is better everywhere.", "",
        *table(rows), "",
        "The teacher row's -T entries compare two independent samples of the teacher (the value a student "
        "identical to the teacher would get: the finite-sample floor of each -T metric).", "",
        "Goal (unified beats local and scratch on all four -T metrics and >= 3 of 4 data metrics, per size):",
        *check, f"- overall: {'MET' if ok else 'NOT MET'}", "",
        f"Wall time: {timing['total_s'] / 60:.1f} min (teacher {timing['teacher_train_s'] / 60:.1f} min, "
        f"students {timing['students_s'] / 60:.1f} min) with {cfg.threads} thread(s).", "",
        "Sample grids: samples_teacher.png, samples_<ratio>_<method>.png (first seed).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if quiet:
        return
    print("\n".join(table(rows)))
    print("\n".join(check))


if __name__ == "__main__":  # python -m dgmkd.experiments.hvae_compress RUN_DIR
    import sys

    print(analyze(sys.argv[1]).read_text())
