"""Data-free VRNN compression (Chen et al. 2023, §3.6, §4.3, Fig. 4b / Fig. 8) on MNIST-1D or IAM-OnDB.

A teacher :class:`~dgmkd.models.VRNN` is trained by the ELBO on MNIST-1D (embedded) or, with
``dataset=iam data_root=DIR``, on IAM-OnDB pen strokes (the paper's data: windows of ``seq_len``
points ``[pen_up, dx, dy]``, see :func:`dgmkd.data.iam.iam_split`). Students of about 4x and 8x
fewer hidden units come from ``unified`` (Eq. 7: targets teacher-forced, each ``z_t`` from the
student's prior and the teacher's noise), ``local`` and ``scratch`` (the ELBO on the data). Measured:
Fréchet distance and MMD² between student and teacher samples in a feature space (MNIST-1D: a 1-d
CNN classifier's penultimate layer; IAM, which has no labels here: the raw windows) and the IWAE
test NLL, after fitting a distilled student's never-trained encoder with its generative model frozen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import harness
from ..config import ConfigError, to_dict
from ..data.iam import iam_split, strokes_to_lines
from ..data.mnist1d import load_mnist1d
from ..metrics import mmd2
from ..metrics.frechet import frechet_features
from ..models.vrnn import VRNN, SeqCNN
from ..train import fit, minibatches
from .hm_compress import METHODS, check_methods, check_sizes, load_models, student, summary, verdict

DESCRIPTION = "VRNN on MNIST-1D (or IAM-OnDB) sequences: unified vs local vs scratch, FD/MMD to teacher, IWAE NLL"


@dataclass
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_seed: int = 0             # one teacher, shared by the student seeds (time budget)
    dataset: str = "mnist1d"; data_root: str = ""            # "mnist1d" or "iam" (lineStrokes XML under data_root)
    seq_len: int = 100; num_samples: int = 5000              # IAM window length (MNIST-1D: 40); MNIST-1D size
    teacher_hidden: int = 64; z_dim: int = 8
    student_hidden: tuple[int, ...] = (16, 8)
    teacher_steps: int = 2000; scratch_steps: int = 500      # ELBO steps
    batch: int = 128; lr: float = 3e-3
    distill_steps: int = 500; distill_batch: int = 128; distill_lr: float = 3e-3
    latent_weight: float = 0.1
    methods: tuple[str, ...] = METHODS
    lr_decay: bool = True             # cosine decay to 5% of lr (the same schedule for every method)
    classifier_steps: int = 600       # the MNIST-1D feature classifier
    eval_samples: int = 2000          # samples per model for FD and MMD
    iwae_k: int = 20; iwae_test: int = 500                   # IWAE samples; test sequences of the NLL
    encoder_steps: int = 100          # distilled students: fit the (untrained) encoder before the IWAE NLL
    png_samples: int = 6              # sample rows of samples.png
    teacher_from: str = ""            # a teacher.pt of an earlier run with the same sizes: skip teacher training
    progress: bool = True

    def validate(self):
        if self.dataset not in ("mnist1d", "iam") or (self.dataset == "iam") != bool(self.data_root):
            raise ConfigError(f"dataset={self.dataset!r}, data_root={self.data_root!r}: choose dataset=mnist1d, or "
                              "dataset=iam with data_root the folder of IAM-OnDB lineStrokes XML files")
        check_methods(self)
        check_sizes(self, teacher_hidden=self.teacher_hidden, z_dim=self.z_dim, seq_len=self.seq_len, iwae_k=self.iwae_k)
        if self.eval_samples < 10:
            raise ConfigError(f"eval_samples={self.eval_samples}: FD and MMD need at least 10 samples")
        from ..config import check_ranges

        check_ranges(self, positive=("num_samples", "teacher_steps", "scratch_steps", "batch", "lr", "distill_steps",
                                     "distill_batch", "distill_lr", "classifier_steps", "iwae_test", "png_samples"),
                     nonnegative=("latent_weight", "encoder_steps", "teacher_seed"))


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'z_dim': 'latent size per time step',
}

QUICK = {"seeds": (0,), "num_samples": 1000, "student_hidden": (16,), "teacher_steps": 150, "scratch_steps": 150,
         "distill_steps": 100, "classifier_steps": 150, "eval_samples": 300, "iwae_k": 5, "iwae_test": 100,
         "encoder_steps": 20}
TEST = {"num_samples": 200, "teacher_hidden": 16, "student_hidden": (4,), "teacher_steps": 5, "scratch_steps": 5,
        "distill_steps": 5, "classifier_steps": 5, "eval_samples": 40, "iwae_k": 2, "iwae_test": 10,
        "encoder_steps": 5, "png_samples": 2}
METRICS = ("fd_to_teacher", "mmd2_to_teacher", "fd_to_test_data", "iwae_nll")


def make(cfg: Config, hidden: int) -> VRNN:
    iam = cfg.dataset == "iam"
    return VRNN(1 + iam, hidden, cfg.z_dim, cfg.seq_len if iam else 40, pen=iam)


def fit_elbo(model: VRNN, x: torch.Tensor, cfg: Config, steps: int, seed: int, desc: str):
    """Maximize the ELBO on ``x`` over the model's trainable parameters (lr schedule :func:`cosine`)."""
    return fit(lambda a, _: -model.elbo(a[0]), model, minibatches(x, batch=cfg.batch), steps, lr=cfg.lr,
               grad_clip=10.0, lr_schedule=cosine(steps, cfg.lr_decay), seed=seed, progress=cfg.progress, desc=desc)


def cosine(steps: int, decay: bool = True):
    """The lr factor at a step: from 1 down to 0.05 over ``steps`` by a half cosine (1 without ``decay``)."""
    return lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))) if decay else 1.0


def features(data: dict, cfg: Config):
    """The feature map of FD/MMD and the classifier's test accuracy: on MNIST-1D a 1-d CNN trained
    on the labels (its penultimate layer), on IAM (no labels) the flattened windows (accuracy None)."""
    if "y" not in data:
        return (lambda s: s.flatten(1)), None
    harness.manual_seed(cfg.teacher_seed, "classifier-init")
    net = SeqCNN(data["x"].shape[1])
    fit(lambda a, _: torch.nn.functional.cross_entropy(net(a[0]), a[1]), net, minibatches(data["x"], data["y"], batch=128),
        cfg.classifier_steps, lr=2e-3, seed=harness.seed(cfg.teacher_seed, "classifier"), progress=cfg.progress, desc="classifier")
    net.eval().requires_grad_(False)
    return net.features, float((net(data["x_test"]).argmax(-1) == data["y_test"]).float().mean())


def run(cfg: Config, out: Path) -> dict:
    torch.set_num_threads(1)
    out, t0 = Path(out), time.time()
    harness.write_json(out / "config.json", {"experiment": "vrnn-compress", **to_dict(cfg)})  # report() reads it
    data = iam_split(cfg.data_root, cfg.seq_len, generator=harness.generator("iam-split")) if cfg.dataset == "iam" \
        else load_mnist1d(cfg.num_samples)
    feat, acc = features(data, cfg)
    x_test = data["x_test"][:cfg.iwae_test]
    harness.manual_seed(cfg.teacher_seed, "teacher-init")
    teacher = make(cfg, cfg.teacher_hidden)
    if cfg.teacher_from:
        teacher.load_state_dict(torch.load(cfg.teacher_from, weights_only=True))
    else:
        fit_elbo(teacher, data["x"], cfg, cfg.teacher_steps, harness.seed(cfg.teacher_seed, "teacher-train"), "teacher")
    torch.save(teacher.state_dict(), out / "teacher.pt")
    models = {"teacher": teacher.eval()}

    @torch.no_grad()
    def measure(m, *stream):
        harness.manual_seed(*stream)
        f = feat(m(cfg.eval_samples))
        return {"fd_to_teacher": frechet_features(f_t, f), "mmd2_to_teacher": float(mmd2(f_t, f)),
                "fd_to_test_data": frechet_features(f_data, f[:len(f_data)]),
                "iwae_nll": float(m.iwae_nll(x_test, cfg.iwae_k).mean()), "params": sum(p.numel() for p in m.parameters())}

    with torch.no_grad():
        harness.manual_seed(cfg.teacher_seed, "teacher-samples")
        f_t, f_data = feat(teacher(cfg.eval_samples)), feat(data["x_test"][:cfg.eval_samples])
    rows = [{"seed": cfg.teacher_seed, "hidden": cfg.teacher_hidden, "method": "teacher",
             **measure(teacher, cfg.teacher_seed, "teacher-samples-again")}]  # FD, MMD: the noise floor

    def one(seed, hidden, method):
        s = student(seed, hidden, method, cfg, lambda h: make(cfg, h), teacher,
                    lambda m, sd: fit_elbo(m, data["x"], cfg, cfg.scratch_steps, sd, f"scratch[{seed},h{hidden}]"),
                    distill_kw)
        if method != "scratch" and cfg.encoder_steps:
            s.requires_grad_(False).encoder.requires_grad_(True)
            fit_elbo(s, data["x"], cfg, cfg.encoder_steps, harness.seed(seed, "encoder", hidden, method), "encoder")
            s.requires_grad_(True).eval()
        models.update({f"h{hidden} {method}": s} if seed == cfg.seeds[0] else {})
        return measure(s, seed, "samples", hidden)  # one noise stream per seed and width: paired methods

    def distill_kw(s):
        opt = torch.optim.Adam(s.parameters(), lr=cfg.distill_lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(cfg.distill_steps, cfg.lr_decay))
        return {"optimizer": opt, "grad_clip": 10.0, "callback": lambda *_: sched.step()}

    rows += harness.sweep(one, seed=cfg.seeds, hidden=cfg.student_hidden, method=cfg.methods,
                          log=print if cfg.progress else None)
    harness.write_csv(out / "results.csv", rows)
    torch.save({k: m.state_dict() for k, m in models.items()}, out / "models.pt")
    harness.save_models(out, {k if k == "teacher" else f"student-{k.split()[1]}-{k.split()[0]}-s{cfg.seeds[0]}": m
                              for k, m in models.items()})
    harness.write_json(out / "meta.json", {"elapsed_s": time.time() - t0, "classifier_acc": acc, "iwae_sequences": len(x_test)})
    report(out)
    return {"rows": rows, "classifier_acc": acc}


def report(out: Path) -> str:
    """Rebuild ``report.md``, ``summary.csv`` and ``samples.png`` from the run directory."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    rows = harness.read_csv(out / "results.csv", required=("seed", "hidden", "method", *METRICS))
    meta = harness.read_json(out / "meta.json")
    t = next(r for r in rows if r["method"] == "teacher")
    summ = summary(rows, METRICS, "fd_to_teacher")
    harness.write_csv(out / "summary.csv", summ)
    feats = (f"the flattened {cfg.seq_len}x3 windows themselves (IAM-OnDB lines carry no class labels to train a "
             "feature classifier on: FD compares the means and covariances of the sequences, MMD² uses a Gaussian "
             "kernel on them)" if cfg.dataset == "iam" else
             f"the 64-d penultimate layer of a 1-d CNN trained on MNIST-1D (test accuracy {meta['classifier_acc']:.3f})")
    text = "\n".join([
        f"# VRNN compression on {'IAM-OnDB' if cfg.dataset == 'iam' else 'MNIST-1D'} (data-free)", "",
        "The paper (Chen et al. 2023, §4.3, Fig. 8) shows VRNN students distilled without data by the unified "
        "method generating like their teacher, better than local distillation; it gives no numbers. Here the "
        "students' samples are compared with the teacher's in a feature space.", "",
        f"Teacher: hidden {cfg.teacher_hidden}, z {cfg.z_dim}, ELBO for {cfg.teacher_steps} steps; IWAE NLL "
        f"{t['iwae_nll']:.2f} nats/sequence (k={cfg.iwae_k}, {meta['iwae_sequences']} test sequences). "
        f"Distillation {cfg.distill_steps} steps, batch {cfg.distill_batch}, latent weight {cfg.latent_weight}; "
        f"scratch = ELBO on the data for {cfg.scratch_steps} steps. Student seeds {list(cfg.seeds)}, one teacher. "
        f"Before the IWAE NLL a distilled student's encoder is fitted to the training data for {cfg.encoder_steps} "
        "steps with its generative model frozen; its sampler, and so FD/MMD, is unaffected.", "",
        f"Features: {feats}; FD and MMD² on {cfg.eval_samples} samples per model. Noise floor (two teacher draws): "
        f"FD {t['fd_to_teacher']:.3f}, MMD² {t['mmd2_to_teacher']:.5f}; FD(test data, teacher) "
        f"{t['fd_to_test_data']:.3f}. Cells: {harness.SPREAD}. 'wins': seeds where the method has the smallest FD "
        "to the teacher.", "",
        *harness.table(["student hidden", "method", "FD→teacher", "MMD²→teacher", "FD→test data", "IWAE NLL", "wins"],
                       [[s["hidden"], s["method"], *(harness.cell(s, m) for m in METRICS), s["wins"]] for s in summ]),
        "", *verdict(summ, "fd_to_teacher", "FD to the teacher"), "",
        f"Wall time {meta['elapsed_s'] / 60:.1f} min. Samples: samples.png (the same noise in every column).", ""])
    harness.write_text(out / "report.md", text)
    _plot(load_models(out, lambda h: make(cfg, h), cfg.teacher_hidden), cfg, out / "samples.png")
    return text


@torch.no_grad()
def _plot(models, cfg, path):
    plt = harness.pyplot()
    n = cfg.png_samples
    fig, axes = plt.subplots(n, len(models), figsize=(1.9 * len(models), 0.9 * n), squeeze=False)
    for j, (name, m) in enumerate(models.items()):
        harness.manual_seed("png-samples")
        for i, s in enumerate(m(n)):
            lines = strokes_to_lines(s) if cfg.dataset == "iam" else [torch.stack([torch.arange(len(s.T[0])), s.T[0]], 1)]
            for line in lines:
                axes[i, j].plot(line[:, 0], line[:, 1], lw=1)
            axes[i, j].set(xticks=[], yticks=[])
        axes[0, j].set_title(name, fontsize=8)
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=100)
