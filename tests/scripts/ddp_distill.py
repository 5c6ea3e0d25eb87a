"""Run by tests/test_distributed.py, under torchrun or alone: distill and save this rank's student."""

import os
import sys

import torch

import dgmkd
from dgmkd import distributed
from dgmkd.models import MLPDGM

def main():
    out, batch, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ckpt = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same initial models on every rank
    teacher, student = MLPDGM((2, 2), hidden=32), MLPDGM((2, 2), hidden=8)
    if os.environ.get("DGMKD_TEST_UNUSED"):  # a parameter no loss reaches: DDP must be told to look for it
        student.unused = torch.nn.Linear(2, 2)
    hist = dgmkd.distill(teacher, student, batch, steps=steps, lr=1e-2, seed=seed, progress=False, checkpoint=ckpt,
                         checkpoint_every=5)
    torch.save({"params": torch.cat([p.detach().flatten() for p in student.parameters()]),
                "loss": torch.tensor(hist["loss"]), "world": distributed.world_size()},
               f"{out}/rank{distributed.rank()}.pt")


if __name__ == "__main__":
    main()
