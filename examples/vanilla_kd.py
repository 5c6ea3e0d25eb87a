"""Vanilla KD (Hinton et al. 2015) as the unified method with no latents (Chen et al. 2023, §3.5).

A classifier is a DGM with one target ``y ~ Categorical(logits=f(x))`` and inputs ``x``. With no
latent there is no noise to share, and the surrogate loss with KL *is* the KD loss; a
``temperature`` softens both distributions and scales the loss by T**2.

    python examples/vanilla_kd.py [--steps 400] [--temperature 4]
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import Categorical

import dgmkd


class Classifier(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return dgmkd.target("y", Categorical(logits=self.net(x)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--temperature", type=float, default=4.0)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    xtr, ytr, xte, yte = x[:1400], y[:1400], x[1400:], y[1400:]
    teacher, student = Classifier(256), Classifier(16)
    opt = torch.optim.Adam(teacher.net.parameters(), 1e-2)
    for _ in range(a.steps):  # the teacher, trained on labels
        loss = nn.functional.cross_entropy(teacher.net(xtr), ytr)
        opt.zero_grad(); loss.backward(); opt.step()
    batches = [(xtr[i:i + 128],) for i in range(0, len(xtr), 128)]  # KD on the inputs, no labels
    dgmkd.distill(teacher, student, batches, steps=a.steps, lr=1e-2, progress=False,
                  method=lambda c: dgmkd.losses.surrogate(c, temperature=a.temperature))
    acc = lambda m: (m.net(xte).argmax(-1) == yte).float().mean().item()  # noqa: E731
    print(f"test accuracy: teacher {acc(teacher):.3f}, student (KD at T={a.temperature:g}) {acc(student):.3f}")


if __name__ == "__main__":
    main()
