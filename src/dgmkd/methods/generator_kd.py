"""Data-free classifier distillation with a learned input generator: the part AVKD, DAFL and DFAD
share.

A generator ``x = G(eps)`` (or ``G(y, eps)``) supplies the inputs a frozen teacher and a student
classifier never saw. Every such method alternates *generator steps* (its own objective: see
:mod:`dgmkd.methods.avkd`, :mod:`~dgmkd.methods.dafl`, :mod:`~dgmkd.methods.dfad`) with
``n_student`` *student steps* on generated inputs. :class:`GeneratorKD` runs that game through
:func:`dgmkd.train.fit` (``{"generator": ..., "student": ...}``, one optimizer each): one fit step
is one student update, and the generator (and any other player, e.g. a discriminator) steps once
every ``n_student`` of them, before the students (``generator_first``) or after. A subclass says
only what differs: :meth:`~GeneratorKD.generator_loss`, :meth:`~GeneratorKD.student_loss` and
any extra players.

The student's default loss is vanilla KD on the generated batch, which in :mod:`dgmkd` is the
surrogate loss of the coupled classifiers: :func:`kd_loss`.

Example:
    >>> import torch
    >>> from dgmkd.models.classifiers import teacher_net, student_net
    >>> class Noise(GeneratorKD):          # a do-nothing generator objective: KD on G's samples
    ...     def generator_loss(self):
    ...         return {"loss": self.generator(self.batch).mean()}
    >>> _ = torch.manual_seed(0)
    >>> h = Noise(teacher_net(3), student_net(3), Generator(0), batch=8, n_student=2).fit(2, progress=False)
    >>> len(h["student.loss"]), len(h["generator.loss"])   # 2 iterations = 4 student, 2 generator steps
    (4, 2)
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Independent, Normal

from ..coupling import couple
from ..losses import surrogate
from ..sites import deterministic, latent
from ..train import fit

__all__ = ["Generator", "GeneratorKD", "kd_loss", "generated_inputs", "cosine"]


class Generator(nn.Module):
    """``x = G(y, eps)``: noise (and the one-hot label when ``num_classes > 0``) -> image in [0, 1].

    A DGM: ``forward(y)`` (labels, conditional) or ``forward(n)`` (unconditional, ``num_classes=0``)
    draws the latent site ``"eps" ~ N(0, I)`` and returns the deterministic site ``"x"``.
    Architecture after the DAFL/DFAD generators (linear, then upsampling convolutions with batch
    norm), sized for ``out_shape`` with spatial side divisible by 4.
    """

    def __init__(self, num_classes: int = 10, noise_dim: int = 32, out_shape: tuple[int, int, int] = (1, 8, 8),
                 hidden: int = 64):
        super().__init__()
        self.num_classes, self.noise_dim, self.out_shape = num_classes, noise_dim, tuple(out_shape)
        c, h, w = self.out_shape
        self.init = (h // 4, w // 4)
        self.fc = nn.Linear(noise_dim + num_classes, hidden * self.init[0] * self.init[1])
        self.net = nn.Sequential(
            nn.BatchNorm2d(hidden), nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden, 3, 1, 1), nn.BatchNorm2d(hidden), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(hidden, hidden // 2, 3, 1, 1), nn.BatchNorm2d(hidden // 2), nn.LeakyReLU(0.2),
            nn.Conv2d(hidden // 2, c, 3, 1, 1))
        self.hidden = hidden

    def decode(self, eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = eps if not self.num_classes else torch.cat([eps, F.one_hot(y, self.num_classes).float()], 1)
        h = self.fc(h).view(len(eps), self.hidden, *self.init)
        return torch.sigmoid(self.net(h))

    def forward(self, y_or_n) -> torch.Tensor:
        y = y_or_n if isinstance(y_or_n, torch.Tensor) else None
        n = len(y) if y is not None else int(y_or_n)
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs labels y, not a batch size")
        dev = self.fc.weight.device
        eps = latent("eps", Independent(Normal(torch.zeros(n, self.noise_dim, device=dev), 1.0), 1))
        return deterministic("x", self.decode(eps, y))


def kd_loss(teacher, student, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Vanilla KD on inputs ``x``: the surrogate loss of the coupled classifiers,
    ``losses.surrogate(couple(teacher, student, x))`` (Chen et al. 2023, §3.5)."""
    return surrogate(couple(teacher, student, x, validate_args=False), temperature=temperature)


def cosine(steps: int) -> Callable[[int], float]:
    """The cosine learning-rate factor ``(1 + cos(pi * step / steps)) / 2`` for ``fit``."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))


def _labels(n: int, num_classes: int, device=None) -> torch.Tensor:
    return torch.randint(0, num_classes, (n,), device=device)


def generated_inputs(generator: nn.Module, batch: int, num_classes: int | None = None) -> Callable[[], torch.Tensor]:
    """An ``inputs=`` callable for :func:`dgmkd.distill` / :func:`dgmkd.train.fit`: each call returns
    a fresh batch ``G(y, eps)`` (``y ~ Uniform`` for a conditional generator), without gradient."""
    k = getattr(generator, "num_classes", 0) if num_classes is None else num_classes

    @torch.no_grad()
    def supply():
        dev = next(generator.parameters()).device
        return generator(_labels(batch, k, dev)) if k else generator(batch)

    return supply


class GeneratorKD:
    """The generator-vs-student game, run by :func:`dgmkd.train.fit` (module docstring).

    Subclasses define :meth:`generator_loss` (a dict of metrics with ``"loss"``) and may override
    :meth:`student_loss` (default: :func:`kd_loss` on a fresh generated batch), :meth:`players`
    (extra ``{name: (objective, module, lr)}`` stepped with the generator, e.g. a discriminator),
    ``generator_first`` and ``betas`` (Adam's, for every player). The teacher is frozen.
    """

    name = "generator-kd"
    generator_first = True
    betas: tuple[float, float] = (0.9, 0.999)

    def __init__(self, teacher: nn.Module, student: nn.Module, generator: nn.Module, *, batch: int = 128,
                 n_student: int = 1, lr_g: float = 1e-3, lr_s: float = 2e-3, temperature: float = 1.0,
                 num_classes: int | None = None):
        if n_student < 1:
            raise ValueError(f"n_student must be >= 1, got {n_student}")
        self.teacher, self.student, self.generator = teacher, student, generator
        self.batch, self.n_student, self.lr_g, self.lr_s, self.temperature = batch, n_student, lr_g, lr_s, temperature
        self.num_classes = num_classes or getattr(generator, "num_classes", 0)
        teacher.eval()
        teacher.requires_grad_(False)

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` generated inputs (labels uniform unless ``y`` given, for a conditional generator),
        without gradient."""
        with torch.no_grad():
            if not self.num_classes:
                return self.generator(n)
            return self.generator(_labels(n, self.num_classes) if y is None else y)

    def generator_loss(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def student_loss(self) -> dict:
        return {"loss": kd_loss(self.teacher, self.student, self.sample(self.batch), self.temperature)}

    def players(self) -> dict[str, tuple[Callable[[], dict], nn.Module, float]]:
        """Players stepped once per iteration besides the student: ``{name: (loss, module, lr)}``,
        in order."""
        return {"generator": (self.generator_loss, self.generator, self.lr_g)}

    def fit(self, steps: int, *, checkpoint: str | os.PathLike | None = None, seed: int | None = 0,
            progress: bool = True, callback=None, cosine_lr: bool = True) -> dict[str, list]:
        """Run ``steps`` iterations (``steps * n_student`` student updates) through
        :func:`dgmkd.train.fit`; the student's learning rate follows a cosine decay over the run
        (``cosine_lr``). Returns the history (``generator.loss``, ``student.loss``, ...)."""
        n, total = self.n_student, steps * self.n_student
        turn = 0 if self.generator_first else n - 1

        def every_nth(loss):
            return lambda args, k: loss() if k % n == turn else None

        players = self.players()
        objectives = {name: every_nth(loss) for name, (loss, _, _) in players.items()}
        student = {"student": lambda args, k: self.student_loss()}
        objectives = {**objectives, **student} if self.generator_first else {**student, **objectives}
        modules = {name: m for name, (_, m, _) in players.items()}
        modules["student"] = self.student
        lr = {name: rate for name, (_, _, rate) in players.items()}
        lr["student"] = self.lr_s
        return fit(objectives, modules, self.batch, total, lr=lr, betas=self.betas,
                   params={k: list(m.parameters()) for k, m in modules.items()},
                   lr_schedule={"student": cosine(total)} if cosine_lr else None,
                   checkpoint=checkpoint, seed=seed, progress=progress, desc=self.name, callback=callback)
