"""Distilling a model written in Pyro (dgmkd.pyro): a mixture-like DGM with a continuous latent
``z``, a binary latent ``b`` and an observed output ``x``, distilled data-free into a narrower one.

    python examples/pyro_model.py [--steps 300]
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import dgmkd
import dgmkd.pyro


class PyroDGM(nn.Module):
    """Parameters live on the module, not in Pyro's global parameter store (see dgmkd.pyro)."""

    def __init__(self, hidden):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.mean = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, n):
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(n, 1), 1.0).to_event(1))
            b = pyro.sample("b", dist.Bernoulli(logits=self.gate(z).squeeze(-1)))
            loc = self.mean(torch.cat([z, b.unsqueeze(-1)], -1))
            return pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    teacher = dgmkd.pyro.model(PyroDGM(64), targets=["x"])
    student = dgmkd.pyro.model(PyroDGM(8), targets=["x"])
    hist = dgmkd.distill(teacher, student, 256, steps=a.steps, lr=1e-2, progress=False)
    print(f"unified loss (surrogate + 0.1 x latent, the latent term reaches the gate of b): "
          f"{hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}")


if __name__ == "__main__":
    main()
