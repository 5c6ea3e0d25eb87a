"""Data-parallel scaling of dgmkd.distill on CPU processes (gloo).

Runs the same distillation (MLP DGM, 5 latent layers of width 64, per-process batch fixed) with 1
and with 2 processes under torchrun, one after the other, and reports steps/second of each and

    ddp_efficiency=<2-process throughput / (2 x 1-process throughput)>

where throughput is samples/second (so 1.0 is perfect weak scaling). On a 2-core machine the two
processes also compete for memory bandwidth with each other.

    python benchmarks/ddp_scaling.py [--steps 200] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKER = r"""
import json, sys, time, torch, dgmkd
from dgmkd import distributed
from dgmkd.models import MLPDGM
steps, per_rank, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
torch.manual_seed(0)
t, s = MLPDGM((64,) * 5, hidden=256, out_dim=16), MLPDGM((64,) * 5, hidden=64, out_dim=16)
distributed.init()
world = distributed.world_size()
dgmkd.distill(t, s, per_rank * world, steps=10, progress=False)  # warm-up
t0 = time.perf_counter()
dgmkd.distill(t, s, per_rank * world, steps=steps, progress=False)
dt = time.perf_counter() - t0
if distributed.is_main():
    json.dump({"world": world, "seconds": dt, "steps": steps, "samples": steps * per_rank * world}, open(out, "w"))
"""


def run(nproc, steps, batch):
    with tempfile.TemporaryDirectory() as d:
        script, out = os.path.join(d, "w.py"), os.path.join(d, "out.json")
        open(script, "w").write(WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, script] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script]
        subprocess.run(cmd + [str(steps), str(batch), out], check=True, env=env)
        return json.load(open(out))


def main():
    ap = argparse.ArgumentParser(description="DDP scaling of dgmkd.distill on CPU")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256, help="per-process batch")
    a = ap.parse_args()
    r1, r2 = run(1, a.steps, a.batch), run(2, a.steps, a.batch)
    for r in (r1, r2):
        print(f"{r['world']} process(es): {r['steps'] / r['seconds']:.1f} steps/s, "
              f"{r['samples'] / r['seconds']:.0f} samples/s")
    eff = (r2["samples"] / r2["seconds"]) / (2 * r1["samples"] / r1["seconds"])
    print(f"ddp_efficiency={eff:.3f}")


if __name__ == "__main__":
    main()
