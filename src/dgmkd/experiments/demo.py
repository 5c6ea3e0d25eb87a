"""Demo: data-free distillation of a two-latent Gaussian DGM (``z1 -> z2 -> y``, 2-d latents, MLP
conditionals of width 64 drawn with a large gain, so its outputs are curved) into a student of width
8, by the unified loss (Eq. 7, Chen et al. 2023) and by local distillation. Prints the losses as they
fall and the squared MMD between teacher and student outputs before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import harness
from ..config import ConfigError
from ..metrics import mmd2
from ..models import MLPDGM
from ..train import distill

DESCRIPTION = "two-latent Gaussian DGM, data-free unified vs local distillation (prints losses falling)"


@dataclass
class Config:
    steps: int = 1500
    batch: int = 256
    lr: float = 3e-3
    teacher_hidden: int = 64
    student_hidden: int = 8
    teacher_gain: float = 2.5
    latent_weight: float = 0.1
    eval_samples: int = 2000
    seed: int = 0
    methods: tuple[str, ...] = ("unified", "local", "default")
    progress: bool = True

    def validate(self) -> None:
        if not self.methods:
            raise ConfigError("methods=(): need at least one method")
        for m in self.methods:
            try:
                harness.distill_method(m)
            except ValueError as e:
                raise ConfigError(f"methods={self.methods!r}: {e}") from None
        for key, value in vars(self).items():
            if key not in ("seed", "progress", "methods") and not (value >= 0 if key == "latent_weight" else value > 0):
                raise ConfigError(f"{key}={value!r}: must be {'>= 0' if key == 'latent_weight' else 'positive'}")


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'teacher_gain': "factor on the teacher's initial weight matrices (curves its output distribution)",
}

QUICK = {"steps": 300}
TEST = {"steps": 40, "eval_samples": 200}


@torch.no_grad()
def _mmd(teacher, student, cfg: Config) -> float:
    harness.manual_seed(cfg.seed, "mmd-samples")
    return float(mmd2(teacher(cfg.eval_samples), student(cfg.eval_samples)))


def run(cfg: Config, out: Path) -> dict:
    harness.manual_seed(cfg.seed, "teacher")
    teacher = MLPDGM(latent_dims=(2, 2), hidden=cfg.teacher_hidden, out_dim=2)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(cfg.teacher_gain if p.dim() == 2 else 1.0)
    rows, results, every = [], {}, max(1, cfg.steps // 6)
    trained = {"teacher": teacher}
    for method in cfg.methods:
        harness.manual_seed(cfg.seed, "student-init")  # every method starts from the same student
        student = MLPDGM(latent_dims=(2, 2), hidden=cfg.student_hidden, out_dim=2)
        before = _mmd(teacher, student, cfg)

        def log(step, row, method=method):
            if step % every == 0 or step == cfg.steps - 1:
                tqdm.write(f"  [{method}] step {step:5d}  loss {row['loss']:.4f}")

        print(f"{method}: distilling (teacher hidden {cfg.teacher_hidden} -> student hidden {cfg.student_hidden})")
        hist = distill(teacher, student, inputs=cfg.batch, steps=cfg.steps, lr=cfg.lr,
                       **harness.distill_method(method, cfg.latent_weight), seed=harness.seed(cfg.seed, "distill"),
                       progress=cfg.progress, callback=log)
        after = _mmd(teacher, student, cfg)
        print(f"  [{method}] MMD^2(teacher y, student y): before {before:.4f}  after {after:.4f}")
        results[method] = {"mmd2_before": before, "mmd2_after": after,
                           "loss_first": hist["loss"][0], "loss_last": hist["loss"][-1]}
        rows += [{"method": method, "step": s, "loss": l} for s, l in zip(hist["step"], hist["loss"])]
        trained[f"student-{method}-s{cfg.seed}"] = student
    harness.save_models(out, trained)
    harness.write_csv(out / "history.csv", rows)
    harness.write_json(out / "results.json", results)
    report(out)
    return results


def report(out: str | Path) -> str:
    """Rebuild ``report.md`` and ``loss.png`` from the run's ``results.json`` and ``history.csv``."""
    out = Path(out)
    results = harness.read_json(out / "results.json")
    history = harness.read_csv(out / "history.csv", required=("method", "step", "loss"))
    keys = ("loss_first", "loss_last", "mmd2_before", "mmd2_after")
    lines = ["# Demo: two-latent DGM, data-free distillation", "",
             "A narrow student imitates a wide teacher without data, by the unified loss (Chen et al. 2023, "
             "Eq. 7) and by local distillation: the losses should fall, and so should the squared MMD between "
             "teacher and student outputs (the marginal the student should match). One seed: no spread.", ""]
    lines += harness.table(["method", "first loss", "last loss", "MMD^2 before", "MMD^2 after"],
                           [[m] + [harness.fmt(r[k], digits=4) for k in keys] for m, r in results.items()])
    lines += ["", "MMD^2 after distillation as a fraction of its value at initialization: "
              + ", ".join(f"{m} {r['mmd2_after'] / r['mmd2_before']:.3f}" for m, r in results.items()) + "."]
    fig, ax = harness.pyplot().subplots(figsize=(5, 3.5))
    for m in results:
        ax.plot(*zip(*[(r["step"], r["loss"]) for r in history if r["method"] == m]), label=m)
    ax.set(yscale="log", xlabel="step", ylabel="distillation loss")
    ax.legend()
    fig.tight_layout()
    harness.save_figure(fig, out / "loss.png", dpi=120)
    return harness.write_text(out / "report.md", "\n".join(lines) + "\n").read_text()
