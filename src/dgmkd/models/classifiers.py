"""Small ResNet-style image classifiers written as DGMs with one target site.

A classifier ``p(y|x)`` is a DGM with no latents, one target ``y ~ Categorical(logits=f(x))`` and
inputs ``x`` (Chen et al. 2023, §3.5: vanilla KD is the surrogate loss of such a model). Outside
any handler ``model(x)`` samples a label; under :func:`dgmkd.couple` the ``"y"`` site pairs the
teacher's and the student's predictive distributions, so ``dgmkd.losses.surrogate`` on the
coupling is the KD loss. ``logits(x)`` and ``features(x)`` are plain functions for training with
labels and for methods that need the penultimate activations (DAFL) or raw logits (DFAD).

The architecture follows the ResNet basic block (He et al. 2016) scaled down for 8x8 inputs (the
embedded digits); it works unchanged on 28x28 MNIST or 32x32 CIFAR-10 (global average pooling).
:func:`teacher_net` and :func:`student_net` are the default pair of the AVKD experiment: same
depth, half the width, about 4x fewer parameters (as ResNet-34 -> ResNet-18 is a smaller
network of the same family in Tang & Lin's Table 1).

Example:
    >>> import torch, dgmkd
    >>> t, s = teacher_net(5), student_net(5)
    >>> round(num_params(t) / num_params(s), 1) > 3.5
    True
    >>> x = torch.rand(4, 1, 8, 8)
    >>> c = dgmkd.couple(t.eval(), s.eval(), x)
    >>> list(c.targets), float(dgmkd.losses.surrogate(c).detach()) >= 0
    (['y'], True)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical

from ..sites import target
from ..saving import buildable

__all__ = ["BasicBlock", "ResNetClassifier", "teacher_net", "student_net", "num_params", "accuracy"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; a 1x1 projection when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


@buildable
class ResNetClassifier(nn.Module):
    """Stem conv, one stage of ``blocks`` basic blocks per entry of ``widths`` (stride 2 between
    stages), global average pooling, linear head. ``forward(x)`` is the DGM: it returns the
    target site ``"y"``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32),
                 blocks: int = 2):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)
        self.feature_dim = c

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, feature_dim)`` (after global average pooling)."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor, return_features: bool = False):
        f = self.features(x)
        out = self.head(f)
        return (out, f) if return_features else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return target("y", Categorical(logits=self.logits(x)))


@buildable
def teacher_net(num_classes: int = 10, in_channels: int = 1) -> ResNetClassifier:
    """The default teacher: widths (16, 32), two basic blocks per stage (~42k parameters)."""
    return ResNetClassifier(num_classes, in_channels, widths=(16, 32), blocks=2)


@buildable
def student_net(num_classes: int = 10, in_channels: int = 1) -> ResNetClassifier:
    """The default student: the teacher's depth at half its width (~4x fewer parameters)."""
    return ResNetClassifier(num_classes, in_channels, widths=(8, 16), blocks=2)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def accuracy(model: ResNetClassifier, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy of ``model.logits`` on ``(x, y)`` in eval mode (the mode is restored)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model.logits(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
    model.train(was)
    return correct / max(1, len(x))
