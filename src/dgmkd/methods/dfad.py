"""DFAD — Data-Free Adversarial Distillation (Fang et al. 2019), a baseline of AVKD.

A generator ``x = G(z)`` and the student play a min-max game on the mean absolute logit gap
(MAE, an upper bound of the KL-type discrepancies the authors discuss)::

    gap(x) = mean_{batch, classes} |t(x) - s(x)|
    student: min gap(G(z))   (``n_student`` = 5 steps per generator step, as the authors)
    generator: max gap(G(z)) (gradient through both frozen teacher and student)

No prior data and no teacher-confidence terms: the generator searches the whole input space for
hard examples.

Example:
    >>> import torch
    >>> float(logit_gap(torch.tensor([[1., 2.]]), torch.tensor([[0., 4.]])))
    1.5
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..train import train

__all__ = ["logit_gap", "DFAD"]


def logit_gap(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the logits (``F.l1_loss``), DFAD's discrepancy."""
    return (t_logits - s_logits).abs().mean()


class DFAD:
    """DFAD as a step function for :func:`dgmkd.train`: ``n_student`` student steps on fresh
    generated batches, then one generator step maximizing the gap."""

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *, batch: int = 128,
                 n_student: int = 5, lr_g: float = 1e-3, lr_s: float = 2e-3):
        if getattr(generator, "num_classes", 0):
            raise ValueError("DFAD's generator is unconditional: build it with num_classes=0")
        self.teacher, self.student, self.generator = teacher, student, generator
        self.batch, self.n_student = batch, n_student
        teacher.eval()
        teacher.requires_grad_(False)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr_g)
        self.opt_s = torch.optim.Adam(student.parameters(), lr_s)
        self.sched_s = None

    def state(self) -> dict:
        s = {"generator": self.generator, "student": self.student, "opt_g": self.opt_g, "opt_s": self.opt_s}
        if self.sched_s is not None:
            s["sched_s"] = self.sched_s
        return s

    def sample(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.generator(n)

    def student_step(self) -> torch.Tensor:
        x = self.sample(self.batch)
        with torch.no_grad():
            t = self.teacher.logits(x)
        loss = logit_gap(t, self.student.logits(x))
        self.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_s.step()
        if self.sched_s is not None:
            self.sched_s.step()
        return loss.detach()

    def generator_step(self) -> torch.Tensor:
        x = self.generator(self.batch)
        gap = logit_gap(self.teacher.logits(x), self.student.logits(x))
        self.opt_g.zero_grad(set_to_none=True)
        (-gap).backward()
        self.opt_g.step()
        return gap.detach()

    def step(self, args, step: int) -> dict:
        s = sum(self.student_step() for _ in range(self.n_student)) / max(1, self.n_student)
        return {"s_gap": s, "g_gap": self.generator_step()}

    def fit(self, steps: int, *, checkpoint: str | os.PathLike | None = None, seed: int | None = 0,
            progress: bool = True, callback=None, cosine: bool = True) -> dict[str, list]:
        self.student.train()
        self.generator.train()
        if cosine and self.sched_s is None:
            self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_s, max(1, steps * self.n_student))
        return train(self.step, self.batch, steps, state=self.state(), checkpoint=checkpoint, seed=seed,
                     progress=progress, desc="dfad", callback=callback)
