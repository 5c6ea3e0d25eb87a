"""DAFL — Data-Free Learning of student networks (Chen et al., ICCV 2019), a baseline of AVKD.

An unconditional generator ``x = G(z)`` is trained against the frozen teacher alone (no prior
data, no discriminator) to produce inputs the teacher classifies confidently, with strong
features and balanced classes::

    L_G = w_oh * CE(t(x), argmax t(x))  -  w_a * mean|f_T(x)|  +  w_ie * sum_k pbar_k log10 pbar_k

(one-hot, activation and information-entropy losses; ``pbar`` is the batch-mean teacher
softmax; ``log10`` as in the authors' code). The student is distilled by KD on the same batch
(``losses.surrogate`` of the coupled classifiers, :func:`~dgmkd.methods.generator_kd.kd_loss`). Default weights are the authors' MNIST
settings (``oh=1, a=0.1, ie=5``).

Example:
    >>> import torch
    >>> from dgmkd.models.classifiers import teacher_net, student_net
    >>> from dgmkd.methods.avkd import Generator
    >>> _ = torch.manual_seed(0)
    >>> m = DAFL(teacher_net(3), student_net(3), Generator(0), batch=16)
    >>> sorted(k for k in m.fit(2, progress=False) if k != "step")
    ['generator.act', 'generator.ie', 'generator.loss', 'generator.oh', 'student.loss']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generator_kd import GeneratorKD, kd_loss

__all__ = ["dafl_losses", "DAFL"]


def dafl_losses(t_logits: torch.Tensor, t_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three generator losses of DAFL (each to be minimized): ``oh``, ``act``, ``ie``."""
    oh = F.cross_entropy(t_logits, t_logits.argmax(-1))
    act = -t_features.abs().mean()
    p = F.softmax(t_logits, -1).mean(0)
    ie = (p * torch.log10(p.clamp_min(1e-12))).sum()
    return {"oh": oh, "act": act, "ie": ie}


class DAFL(GeneratorKD):
    """DAFL as a :class:`~dgmkd.methods.generator_kd.GeneratorKD` game: one generator step, then
    ``n_student`` KD steps of the student on the generated batch (the authors use 1)."""

    name = "dafl"

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *, batch: int = 128,
                 n_student: int = 1, lr_g: float = 1e-3, lr_s: float = 2e-3, w_oh: float = 1.0, w_a: float = 0.1,
                 w_ie: float = 5.0, temperature: float = 1.0):
        if getattr(generator, "num_classes", 0):
            raise ValueError("DAFL's generator is unconditional: build it with num_classes=0")
        super().__init__(teacher, student, generator, batch=batch, n_student=n_student, lr_g=lr_g, lr_s=lr_s,
                         temperature=temperature)
        self.w = {"oh": w_oh, "act": w_a, "ie": w_ie}
        self._x = None

    def generator_loss(self) -> dict:
        x = self.generator(self.batch)
        self._x = x.detach()
        terms = dafl_losses(*self.teacher.logits(x, return_features=True))
        return {"loss": sum(self.w[k] * v for k, v in terms.items()), **{k: v.detach() for k, v in terms.items()}}

    def student_loss(self) -> dict:
        return {"loss": kd_loss(self.teacher, self.student, self._x, self.temperature)}
