"""Data-free VRNN compression (Chen et al. 2023, §3.6, §4.3, Fig. 4b / Fig. 8) on MNIST-1D.

A teacher :class:`~dgmkd.models.VRNN` (GRU state ``teacher_hidden``) is trained on MNIST-1D
sequences (the embedded stand-in for IAM-OnDB, see :mod:`dgmkd.data.mnist1d`) by maximizing the
ELBO. Students with about 4x and 8x fewer hidden units are then obtained by

* ``unified`` — data-free Eq. (7): the targets ``x_t`` are teacher-forced, the latents ``z_t``
  share the teacher's standard-normal noise and follow the student's own prior;
* ``local`` — data-free local distillation (every site at the teacher's sampled values);
* ``scratch`` — the student trained on the data by the ELBO.

The paper shows only pictures for this experiment. We also measure, between 2000 student and 2000
teacher samples (a fresh draw each), the Fréchet distance and the squared MMD in the 64-d
penultimate features of a small 1-d CNN classifier trained on the MNIST-1D training set (not
Inception: "FD (MNIST-1D CNN features)"), and the test NLL bound (IWAE, ``iwae_k`` samples, nats
per sequence; a distilled student's encoder is never trained by distillation, so it is first
fitted to the training data with the generative model frozen, ``encoder_steps``). The FD between
two independent teacher draws is reported as the noise floor. Learning rates follow a cosine decay
(``lr_decay``), the same schedule for every method.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import rundir
from ..data.mnist1d import load_mnist1d
from ..metrics import mmd2
from ..models.vrnn import VRNN
from ..train import distill, train

DESCRIPTION = "VRNN on MNIST-1D sequences: unified vs local vs scratch, FD/MMD to teacher, IWAE NLL"

METHODS = ("unified", "local", "scratch")


@dataclass
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_seed: int = 0             # one teacher, shared by the student seeds (time budget)
    num_samples: int = 5000           # MNIST-1D size (80/20 train/test)
    teacher_hidden: int = 64
    student_hidden: tuple[int, ...] = (16, 8)
    z_dim: int = 8
    teacher_steps: int = 2000
    scratch_steps: int = 500
    batch: int = 128
    lr: float = 3e-3
    distill_steps: int = 500
    distill_batch: int = 128
    distill_lr: float = 3e-3
    latent_weight: float = 0.1
    lr_decay: bool = True             # cosine decay to 5% of lr (the same schedule for every method)
    classifier_steps: int = 600
    eval_samples: int = 2000
    iwae_k: int = 20
    iwae_test: int = 500              # test sequences used for the IWAE NLL
    encoder_steps: int = 100          # distilled students: fit the (untrained) encoder before the IWAE NLL
    png_samples: int = 6
    teacher_from: str = ""            # a teacher.pt of an earlier run with the same sizes: skip teacher training
    progress: bool = True

    def validate(self):
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        if min(self.teacher_hidden, *self.student_hidden, self.z_dim) < 1:
            raise ValueError("hidden widths and z_dim must be positive")
        if self.eval_samples < 10 or self.iwae_k < 1:
            raise ValueError("eval_samples must be >= 10 and iwae_k >= 1")


QUICK = {"seeds": "0", "num_samples": 1000, "student_hidden": "16", "teacher_steps": 150, "scratch_steps": 150,
         "distill_steps": 100, "classifier_steps": 150, "eval_samples": 300, "iwae_k": 5, "iwae_test": 100,
         "encoder_steps": 20}


# ---------------------------------------------------------------------------- feature classifier
class SeqCNN(nn.Module):
    """A small 1-d CNN classifier of length-T sequences; :meth:`features` is its 64-d penultimate layer."""

    def __init__(self, seq_len: int = 40, n_classes: int = 10, width: int = 32, feat: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(width * math.ceil(math.ceil(seq_len / 2) / 2), feat), nn.ReLU())
        self.head = nn.Linear(feat, n_classes)

    def features(self, x):
        """``x``: ``(n, T)``, ``(n, T, 1)`` or an image-shaped ``(n, 1, 1, T)`` batch -> ``(n, feat)``."""
        return self.body(x.reshape(x.shape[0], 1, -1))

    def forward(self, x):
        return self.head(self.features(x))


class _FeatureView(nn.Module):
    """The classifier's features as a module, for :mod:`dgmkd.metrics.frechet` (image-shaped input)."""

    def __init__(self, net: SeqCNN):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.features(x)


def train_classifier(data: dict, steps: int, seed: int, progress: bool) -> tuple[SeqCNN, float]:
    torch.manual_seed(seed)
    net = SeqCNN(data["x"].shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    x, y = data["x"], data["y"]

    def batch():
        i = torch.randint(0, len(x), (128,), generator=g)
        return x[i], y[i]

    def step(args, i):
        loss = nn.functional.cross_entropy(net(args[0]), args[1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss}

    train(step, batch, steps, state={"net": net, "opt": opt}, seed=seed, progress=progress, desc="classifier")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        acc = float((net(data["x_test"]).argmax(-1) == data["y_test"]).float().mean())
    return net, acc


def frechet(real: torch.Tensor, fake: torch.Tensor, net: SeqCNN) -> float:
    """FD in the classifier's features via :func:`dgmkd.metrics.frechet.frechet_distance` (torchmetrics)."""
    try:
        from ..metrics.frechet import frechet_distance
    except ImportError:  # pragma: no cover - fallback while the shared metric module is absent
        frechet_distance = None
    as_img = lambda s: s.reshape(s.shape[0], 1, 1, -1)  # noqa: E731 - (n, T, 1) -> image-shaped
    if frechet_distance is not None:
        return float(frechet_distance(as_img(real), as_img(fake), _FeatureView(net)))
    from torchmetrics.image.fid import FrechetInceptionDistance

    view = _FeatureView(copy.deepcopy(net))  # set_dtype below casts the module: keep the caller's
    view.num_features = net.head.in_features
    m = FrechetInceptionDistance(feature=view)
    m.set_dtype(torch.float64)
    m.update(as_img(real).double(), real=True)
    m.update(as_img(fake).double(), real=False)
    return float(m.compute())


# ---------------------------------------------------------------------------- training
def fit_elbo(model: VRNN, x: torch.Tensor, cfg: Config, steps: int, seed: int, desc: str):
    """Maximize the ELBO on ``x`` with :func:`dgmkd.train`."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)

    def batch():
        return x[torch.randint(0, len(x), (cfg.batch,), generator=g)]

    def step(args, i):
        _set_lr(opt, cfg.lr, i, steps, cfg.lr_decay)
        loss = -model.elbo(args[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        return {"neg_elbo": loss}

    return train(step, batch, steps, state={"model": model, "opt": opt}, seed=seed, progress=cfg.progress, desc=desc)


def _set_lr(opt, lr, step, steps, decay):
    """Cosine decay from ``lr`` to ``0.05 * lr`` over ``steps`` (constant without ``decay``)."""
    if decay:
        lr = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
    for g in opt.param_groups:
        g["lr"] = lr


def distill_student(teacher: VRNN, student: VRNN, method: str, cfg: Config, seed: int):
    """:func:`dgmkd.distill` with the experiment's optimizer and learning-rate schedule."""
    opt = torch.optim.Adam(student.parameters(), lr=cfg.distill_lr)
    return distill(teacher, student, cfg.distill_batch, method, cfg.distill_steps, optimizer=opt,
                   latent_weight=cfg.latent_weight, grad_clip=10.0, seed=seed, progress=cfg.progress,
                   callback=lambda i, row: _set_lr(opt, cfg.distill_lr, i + 1, cfg.distill_steps, cfg.lr_decay))


def fit_encoder(model: VRNN, x: torch.Tensor, cfg: Config, seed: int):
    """Fit only the encoder ``q(z_t | x_t, h_{t-1})`` by the ELBO, the generative model frozen.

    Data-free distillation never trains a student's encoder, and the IWAE bound with a random
    encoder is very loose; refitting the inference network (on the training data) before
    evaluation measures the generative model, not the untrained encoder. The sampler is unchanged.
    """
    enc = list(model.encoder.parameters())
    frozen = [p for p in model.parameters() if all(p is not e for e in enc)]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(enc, lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)

    def step(args, i):
        loss = -model.elbo(args[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"neg_elbo": loss}

    try:
        train(step, lambda: x[torch.randint(0, len(x), (cfg.batch,), generator=g)], cfg.encoder_steps,
              state={"enc": model.encoder, "opt": opt}, seed=seed, progress=cfg.progress, desc="encoder")
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def sample(model: VRNN, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return model(n)


def run(cfg: Config, out: Path) -> dict:
    cfg.validate()
    torch.set_num_threads(1)
    out = Path(out)
    t0 = time.time()
    data = load_mnist1d(cfg.num_samples)
    T = data["x"].shape[1]
    clf, acc = train_classifier(data, cfg.classifier_steps, 0, cfg.progress)
    print(f"feature classifier: test accuracy {acc:.3f}")
    x_test = data["x_test"][:cfg.iwae_test]

    torch.manual_seed(cfg.teacher_seed)
    teacher = VRNN(1, cfg.teacher_hidden, cfg.z_dim, T)
    if cfg.teacher_from:
        if not Path(cfg.teacher_from).exists():
            raise FileNotFoundError(f"teacher_from={cfg.teacher_from!r} does not exist")
        teacher.load_state_dict(torch.load(cfg.teacher_from, weights_only=True))
        print(f"teacher loaded from {cfg.teacher_from}")
    else:
        fit_elbo(teacher, data["x"], cfg, cfg.teacher_steps, cfg.teacher_seed, "teacher")
    torch.save(teacher.state_dict(), out / "teacher.pt")
    teacher.eval()
    torch.manual_seed(0)
    t_nll = float(teacher.iwae_nll(x_test, cfg.iwae_k).mean())
    n_eval = min(cfg.eval_samples, len(data["x_test"]))
    t_a, t_b = sample(teacher, cfg.eval_samples, 101), sample(teacher, cfg.eval_samples, 102)
    with torch.no_grad():
        f_a, f_b = clf.features(t_a), clf.features(t_b)
    floor_fd, floor_mmd = frechet(t_a, t_b, clf), float(mmd2(f_a, f_b))
    data_fd = frechet(data["x_test"][:n_eval], t_a[:n_eval], clf)
    rows = [{"seed": cfg.teacher_seed, "model": "teacher", "hidden": cfg.teacher_hidden, "method": "-",
             "fd_to_teacher": floor_fd, "mmd2_to_teacher": floor_mmd, "fd_to_test_data": data_fd,
             "iwae_nll": t_nll, "params": sum(p.numel() for p in teacher.parameters())}]
    print(f"teacher: IWAE NLL {t_nll:.2f}, FD(test data, teacher) {data_fd:.3f}, "
          f"FD(teacher, teacher') {floor_fd:.3f} (noise floor)")
    students = {}
    for seed in cfg.seeds:
        for width in cfg.student_hidden:
            for method in METHODS:
                torch.manual_seed(1000 * seed + width)  # the same initial student for every method
                student = VRNN(1, width, cfg.z_dim, T)
                if method == "scratch":
                    fit_elbo(student, data["x"], cfg, cfg.scratch_steps, seed, f"scratch[{seed},h{width}]")
                else:
                    distill_student(teacher, student, method, cfg, seed)
                    if cfg.encoder_steps:
                        fit_encoder(student, data["x"], cfg, seed)
                student.eval()
                s = sample(student, cfg.eval_samples, 200 + seed)
                with torch.no_grad():
                    fs = clf.features(s)
                torch.manual_seed(0)
                row = {"seed": seed, "model": "student", "hidden": width, "method": method,
                       "fd_to_teacher": frechet(t_a, s, clf), "mmd2_to_teacher": float(mmd2(f_a, fs)),
                       "fd_to_test_data": frechet(data["x_test"][:n_eval], s[:n_eval], clf),
                       "iwae_nll": float(student.iwae_nll(x_test, cfg.iwae_k).mean()),
                       "params": sum(p.numel() for p in student.parameters())}
                rows.append(row)
                students[(seed, width, method)] = student
                print(f"[seed {seed}] h{width} {method:8s}: FD->T {row['fd_to_teacher']:.3f}  "
                      f"MMD2->T {row['mmd2_to_teacher']:.4f}  FD->data {row['fd_to_test_data']:.3f}  "
                      f"IWAE NLL {row['iwae_nll']:.2f}")
    elapsed = time.time() - t0
    rundir.write_csv(out / "results.csv", rows)
    summary = _summary(rows, cfg)
    rundir.write_csv(out / "summary.csv", summary)
    _plot(teacher, students, cfg, out / "samples.png")
    _report(summary, rows[0], acc, cfg, elapsed, out / "report.md")
    return {"rows": rows, "summary": summary, "classifier_acc": acc, "elapsed_s": elapsed}


def _ms(v):
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(v) > 1 else 0.0)


def _summary(rows, cfg):
    out = []
    for width in cfg.student_hidden:
        by = {m: [r for r in rows if r["model"] == "student" and r["hidden"] == width and r["method"] == m]
              for m in METHODS}
        wins = {m: 0 for m in METHODS}
        for seed in cfg.seeds:
            wins[min(METHODS, key=lambda m: next(r["fd_to_teacher"] for r in by[m] if r["seed"] == seed))] += 1
        for m in METHODS:
            row = {"hidden": width, "method": m, "n_seeds": len(by[m]), "fd_wins": wins[m]}
            for k in ("fd_to_teacher", "mmd2_to_teacher", "fd_to_test_data", "iwae_nll"):
                row[k + "_mean"], row[k + "_sd"] = _ms([r[k] for r in by[m]])
            out.append(row)
    return out


def _report(summary, t, acc, cfg, elapsed, path):
    lines = ["# VRNN compression on MNIST-1D (data-free)", "",
             f"Teacher: hidden {cfg.teacher_hidden}, z {cfg.z_dim}, ELBO for {cfg.teacher_steps} steps; IWAE NLL "
             f"{t['iwae_nll']:.2f} nats/sequence (k={cfg.iwae_k}, {cfg.iwae_test} test sequences). Distillation "
             f"{cfg.distill_steps} steps, batch {cfg.distill_batch}, latent weight {cfg.latent_weight}; scratch = "
             f"ELBO on the data for {cfg.scratch_steps} steps. Student seeds {list(cfg.seeds)} (one teacher). Before the "
             f"IWAE NLL, a distilled student's encoder (never trained by distillation) is fitted to the training data "
             f"for {cfg.encoder_steps} steps with its generative model frozen; the sampler, and so FD/MMD, is "
             "unaffected.", "",
             f"Features: 64-d penultimate layer of a 1-d CNN trained on MNIST-1D (test accuracy {acc:.3f}); FD and "
             f"MMD² on {cfg.eval_samples} samples per model. Noise floor FD(teacher, teacher') = "
             f"{t['fd_to_teacher']:.3f}, MMD² {t['mmd2_to_teacher']:.5f}; FD(test data, teacher) = "
             f"{t['fd_to_test_data']:.3f}. 'wins': seeds where the method has the smallest FD to the teacher.", "",
             "| student hidden | method | FD→teacher | MMD²→teacher | FD→test data | IWAE NLL | wins |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {r['hidden']} | {r['method']} | {r['fd_to_teacher_mean']:.3f} ± {r['fd_to_teacher_sd']:.3f} | "
                     f"{r['mmd2_to_teacher_mean']:.4f} ± {r['mmd2_to_teacher_sd']:.4f} | "
                     f"{r['fd_to_test_data_mean']:.3f} ± {r['fd_to_test_data_sd']:.3f} | "
                     f"{r['iwae_nll_mean']:.2f} ± {r['iwae_nll_sd']:.2f} | {r['fd_wins']} |")
    for width in cfg.student_hidden:
        rs = {r["method"]: r["fd_to_teacher_mean"] for r in summary if r["hidden"] == width}
        best = min(rs, key=rs.get)
        lines += ["", f"Hidden {width}: smallest mean FD to the teacher — **{best}**"]
    lines += ["", f"Wall time {elapsed / 60:.1f} min. Samples: samples.png (same noise seed in every column).", ""]
    Path(path).write_text("\n".join(lines))


def _plot(teacher, students, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = cfg.seeds[0]
    cols = [("teacher", teacher)] + [(f"h{w} {m}", students[(seed, w, m)]) for w in cfg.student_hidden for m in METHODS]
    n = cfg.png_samples
    fig, axes = plt.subplots(n, len(cols), figsize=(1.9 * len(cols), 0.9 * n), squeeze=False, sharey=True)
    for j, (name, m) in enumerate(cols):
        s = sample(m, n, 7).squeeze(-1)  # the same seed: every model gets the same noise draws
        for i in range(n):
            ax = axes[i, j]
            ax.plot(s[i].numpy(), lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
