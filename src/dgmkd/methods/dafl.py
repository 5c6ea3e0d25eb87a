"""DAFL — Data-Free Learning of student networks (Chen et al., ICCV 2019), a baseline of AVKD.

An unconditional generator ``x = G(z)`` is trained against the frozen teacher alone (no prior
data, no discriminator) to produce inputs the teacher classifies confidently, with strong
features and balanced classes::

    L_G = w_oh * CE(t(x), argmax t(x))  -  w_a * mean|f_T(x)|  +  w_ie * sum_k pbar_k log10 pbar_k

(one-hot, activation and information-entropy losses; ``pbar`` is the batch-mean teacher
softmax; ``log10`` as in the authors' code). The student is distilled by KD on the same batch
(``losses.surrogate`` of the coupled classifiers). Default weights are the authors' MNIST
settings (``oh=1, a=0.1, ie=5``).

Example:
    >>> import torch
    >>> from dgmkd.models.classifiers import teacher_net, student_net
    >>> from dgmkd.methods.avkd import Generator
    >>> _ = torch.manual_seed(0)
    >>> m = DAFL(teacher_net(3), student_net(3), Generator(0), batch=16)
    >>> sorted(k for k in m.fit(2, progress=False) if k != "step")
    ['g_act', 'g_ie', 'g_loss', 'g_oh', 's_kd']
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..train import train
from .avkd import kd_update

__all__ = ["dafl_losses", "DAFL"]


def dafl_losses(t_logits: torch.Tensor, t_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three generator losses of DAFL (each to be minimized): ``oh``, ``act``, ``ie``."""
    oh = F.cross_entropy(t_logits, t_logits.argmax(-1))
    act = -t_features.abs().mean()
    p = F.softmax(t_logits, -1).mean(0)
    ie = (p * torch.log10(p.clamp_min(1e-12))).sum()
    return {"oh": oh, "act": act, "ie": ie}


class DAFL:
    """DAFL as a step function for :func:`dgmkd.train`: one generator step, then ``n_student`` KD
    steps of the student on the generated batch (the authors use 1)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *, batch: int = 128,
                 n_student: int = 1, lr_g: float = 1e-3, lr_s: float = 2e-3, w_oh: float = 1.0, w_a: float = 0.1,
                 w_ie: float = 5.0, temperature: float = 1.0):
        if getattr(generator, "num_classes", 0):
            raise ValueError("DAFL's generator is unconditional: build it with num_classes=0")
        self.teacher, self.student, self.generator = teacher, student, generator
        self.batch, self.n_student = batch, n_student
        self.w = {"oh": w_oh, "act": w_a, "ie": w_ie}
        self.temperature = temperature
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

    def step(self, args, step: int) -> dict:
        x = self.generator(self.batch)
        t, f = self.teacher.logits(x, return_features=True)
        terms = dafl_losses(t, f)
        loss = sum(self.w[k] * v for k, v in terms.items())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        kd = 0.0
        for _ in range(self.n_student):
            kd += kd_update(self.teacher, self.student, x.detach(), self.opt_s, self.temperature)
            if self.sched_s is not None:
                self.sched_s.step()
        return {"g_loss": loss.detach(), "g_oh": terms["oh"].detach(), "g_act": terms["act"].detach(),
                "g_ie": terms["ie"].detach(), "s_kd": kd / max(1, self.n_student)}

    def fit(self, steps: int, *, checkpoint: str | os.PathLike | None = None, seed: int | None = 0,
            progress: bool = True, callback=None, cosine: bool = True) -> dict[str, list]:
        self.student.train()
        self.generator.train()
        if cosine and self.sched_s is None:
            self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_s, max(1, steps * self.n_student))
        return train(self.step, self.batch, steps, state=self.state(), checkpoint=checkpoint, seed=seed,
                     progress=progress, desc="dafl", callback=callback)
