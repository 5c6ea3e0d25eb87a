"""GAN distillation (Chen et al. 2023, Eq. 9, §3.5): a generator is a DGM with one latent noise,
deterministic intermediate features and a point-mass output.

With distances as divergences the unified loss is output distillation ||G_T(z) - G_S(z)||^2 plus
feature distillation at the intermediate sites, on the same z. The teacher generator is fitted to
two moons by moment matching (MMD), then distilled into a narrower generator without
data. Writes a PNG of data, teacher and student samples.

    python examples/gan_distill.py [--steps 800] [--out gan_distill.png]
"""

import argparse
import math

import torch
from torch import nn
from torch.distributions import Independent, Normal

import dgmkd
from dgmkd.metrics import mmd2


class Generator(nn.Module):
    """z -> h1 -> h2 -> x; a narrower student maps its features to the teacher's width with
    adapters (used only by the loss, as in FitNets)."""

    def __init__(self, hidden, zdim=4, teacher_width=None):
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(zdim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2)
        self.zdim = zdim
        w = teacher_width
        self.a1, self.a2 = (nn.Linear(hidden, w), nn.Linear(hidden, w)) if w else (nn.Identity(), nn.Identity())

    def forward(self, n):
        z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, self.zdim), 1.0), 1))
        h1 = torch.relu(self.l1(z))
        dgmkd.deterministic("h1", self.a1(h1))
        h2 = torch.relu(self.l2(h1))
        dgmkd.deterministic("h2", self.a2(h2))
        return dgmkd.target("x", dgmkd.Delta(self.out(h2), event_dim=1))


def moons(n):
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05)
    return torch.tensor(x, dtype=torch.float32)


SCALES = (0.05, 0.1, 0.2, 0.5, 1.0)  # kernel bandwidths (x median distance) fine enough for thin moons


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default="gan_distill.png")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher, student = Generator(128), Generator(24, teacher_width=128)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(a.steps):  # fit the teacher by MMD to the moons
        loss = mmd2(teacher(256), moons(256), SCALES)
        opt.zero_grad(); loss.backward(); opt.step()
    hist = dgmkd.distill(teacher, student, 256, steps=a.steps, lr=3e-3, progress=False,
                         divergence="l2", latent_divergence="l2", latent_weight=0.01)
    with torch.no_grad():
        data, xt, xs = moons(1000), teacher(1000), student(1000)
    print(f"distillation loss {hist['loss'][0]:.3f} -> {hist['loss'][-1]:.4f}; "
          f"MMD^2 to data: teacher {float(mmd2(xt, data, SCALES)):.4f}, student {float(mmd2(xs, data, SCALES)):.4f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 3), sharex=True, sharey=True)
    for ax, pts, title in zip(axes, (data, xt, xs), ("data", "teacher (hidden 128)", "student (hidden 24)")):
        ax.scatter(pts[:, 0], pts[:, 1], s=2)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"samples plotted in {a.out}")


if __name__ == "__main__":
    main()
