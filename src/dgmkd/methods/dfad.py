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

import torch
from torch import nn

from .generator_kd import GeneratorKD

__all__ = ["logit_gap", "DFAD"]


def logit_gap(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the logits (``F.l1_loss``), DFAD's discrepancy."""
    return (t_logits - s_logits).abs().mean()


class DFAD(GeneratorKD):
    """DFAD as a :class:`~dgmkd.methods.generator_kd.GeneratorKD` game: ``n_student`` student steps
    on fresh generated batches, then one generator step maximizing the gap."""

    name = "dfad"
    generator_first = False

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *, batch: int = 128,
                 n_student: int = 5, lr_g: float = 1e-3, lr_s: float = 2e-3):
        if getattr(generator, "num_classes", 0):
            raise ValueError("DFAD's generator is unconditional: build it with num_classes=0")
        super().__init__(teacher, student, generator, batch=batch, n_student=n_student, lr_g=lr_g, lr_s=lr_s)

    def student_loss(self) -> dict:
        x = self.sample(self.batch)
        with torch.no_grad():
            t = self.teacher.logits(x)
        return {"loss": logit_gap(t, self.student.logits(x))}

    def generator_loss(self) -> dict:
        x = self.generator(self.batch)
        gap = logit_gap(self.teacher.logits(x), self.student.logits(x))
        return {"loss": -gap, "gap": gap.detach()}
