"""Feature KD (FitNets, Romero et al. 2015) as the latent loss on deterministic sites (Chen et al.
2023, Eq. 8, §3.5), with a learned adapter because the student's features are narrower.

Features are point-mass latents; the p-Wasserstein distance between point masses is the distance
between them, so ``losses.latent(c, "l2")`` is the FitNets loss ||h_T - A(h_S)||^2. The adapter
``A`` belongs to the student and is only used for the loss.

    python examples/feature_kd.py [--steps 300]
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import Categorical

import dgmkd


class Net(nn.Module):
    def __init__(self, hidden, teacher_width=None):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)
        self.adapter = nn.Linear(hidden, teacher_width) if teacher_width else None

    def forward(self, x):
        h = self.body(x)
        dgmkd.deterministic("h", self.adapter(h) if self.adapter is not None else h)
        return dgmkd.target("y", Categorical(logits=self.head(h)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--feature-weight", type=float, default=0.1)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    teacher, student = Net(128), Net(16, teacher_width=128)
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(a.steps):
        loss = nn.functional.cross_entropy(teacher.head(teacher.body(x[:1400])), y[:1400])
        opt.zero_grad(); loss.backward(); opt.step()
    batches = [(x[i:i + 128],) for i in range(0, 1400, 128)]
    hist = dgmkd.distill(teacher, student, batches, steps=a.steps, lr=1e-2, progress=False,
                         latent_weight=a.feature_weight, latent_divergence="l2")
    acc = (student.head(student.body(x[1400:])).argmax(-1) == y[1400:]).float().mean().item()
    print(f"KD + FitNets loss {hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}; student test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
