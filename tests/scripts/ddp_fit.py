"""Run by tests/test_distributed.py, under torchrun or alone: train.fit on this rank's shard of a
regression data set (full-batch per shard, so two ranks with averaged gradients equal one process
on all the data) and save the result."""

import sys

import torch

from dgmkd import distributed
from dgmkd.train import fit


def main():
    out, steps = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -1.0, 2.0, 0.5]) + 0.1 * torch.randn(64, generator=g)
    torch.manual_seed(1 + distributed.rank() if len(sys.argv) > 3 else 1)  # a different init per rank on request
    model = torch.nn.Linear(4, 1)
    distributed.init()
    w, r = distributed.world_size(), distributed.rank()
    shard = (x[r::w], y[r::w])
    hist = fit(lambda a, s: ((model(a[0]).squeeze(-1) - a[1]) ** 2).mean(), model, lambda: shard, steps,
               lr=0.05, optimizer="sgd", progress=False)
    torch.save({"params": torch.cat([p.detach().flatten() for p in model.parameters()]),
                "loss": torch.tensor(hist["loss"]), "world": w}, f"{out}/rank{r}.pt")


if __name__ == "__main__":
    main()
