"""Two CPU processes (gloo) under torchrun: identical students on both ranks, a result that matches
a one-process run with the same total batch to within the Monte Carlo noise, and exact resume."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from dgmkd.models import MLPDGM

SCRIPT = str(Path(__file__).parent / "scripts" / "ddp_distill.py")
BATCH, STEPS = 1024, 30
TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun(cmd, env, outputs):
    """Run ``cmd``; if it failed only by gloo's teardown abort after every file in ``outputs`` was
    written (a rare race in torch at interpreter exit, see ``dgmkd.distributed._shutdown``), run it
    once more: a second failure fails the test."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0 and TEARDOWN_ABORT in r.stderr and all(Path(o).exists() for o in outputs):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _run(out, nproc, seed, ckpt=None, steps=STEPS, env_extra=None, stderr=None):
    out.mkdir(parents=True, exist_ok=True)
    args = [str(out), str(BATCH), str(steps), str(seed)] + ([str(ckpt)] if ckpt else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if nproc == 1:
        cmd = [sys.executable, SCRIPT, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT, *args]
    r = _torchrun(cmd, env, [out / f"rank{i}.pt" for i in range(nproc)])
    if stderr is not None:
        stderr.append(r.stderr)
    return [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(nproc)]


def _initial_student():
    torch.manual_seed(0)
    MLPDGM((2, 2), hidden=32)  # the teacher is built first in the script
    return torch.cat([p.detach().flatten() for p in MLPDGM((2, 2), hidden=8).parameters()])


def test_two_processes_match_one_process_and_resume(tmp_path):
    err = []
    r0, r1 = _run(tmp_path / "ddp", 2, seed=0, stderr=err)
    assert "find_unused_parameters=True was specified" not in err[0]  # the probe found every parameter used
    assert r0["world"] == 2
    assert torch.equal(r0["params"], r1["params"])  # DDP keeps the replicas identical
    assert torch.equal(r0["loss"], r1["loss"])  # metrics are averaged over ranks
    (one_a,) = _run(tmp_path / "one_a", 1, seed=0)
    (one_b,) = _run(tmp_path / "one_b", 1, seed=1)
    noise = (one_a["params"] - one_b["params"]).norm()  # seed-to-seed spread of one process
    travel = (one_a["params"] - _initial_student()).norm()
    gap = (r0["params"] - one_a["params"]).norm()
    assert noise < 0.5 * travel  # so the comparison below is meaningful
    assert gap < 3 * noise, (float(gap), float(noise), float(travel))

    # resume under torchrun: 15 steps with a checkpoint, then continue to 30 == 30 uninterrupted
    ck = tmp_path / "ck.pt"
    _run(tmp_path / "part", 2, seed=0, ckpt=ck, steps=15)
    saved = torch.load(ck, weights_only=True)
    assert saved["step"] == 15
    assert saved["rng_all"].shape[0] == 2 and not torch.equal(saved["rng_all"][0], saved["rng_all"][1])
    q0, q1 = _run(tmp_path / "rest", 2, seed=0, ckpt=ck, steps=STEPS)
    assert torch.equal(q0["params"], r0["params"]) and torch.equal(q1["params"], r0["params"])


def test_an_experiment_runs_under_torchrun(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dgmkd.cli",
           "run", "demo", "--quiet", "--force", "--set", "steps=20", "--set", "eval_samples=100", "--out", str(out)]  # --force: a retry replaces the run
    r = _torchrun(cmd, {**os.environ, "OMP_NUM_THREADS": "1"}, [out / "report.md"])
    assert r.stdout.count("writing to") == 1  # rank 0 alone reports and writes
    assert (out / "report.md").exists() and (out / "config.json").exists()


def test_a_student_with_an_unused_parameter_trains_under_torchrun(tmp_path):
    # the first-step probe must see the parameter no loss reaches and let DDP look for it; with
    # find_unused_parameters=False DDP would stop at the second step
    r0, r1 = _run(tmp_path / "unused", 2, seed=0, steps=5, env_extra={"DGMKD_TEST_UNUSED": "1"})
    assert torch.equal(r0["params"], r1["params"]) and torch.isfinite(r0["loss"]).all()


def test_any_unused_finds_parameters_without_gradient():
    from dgmkd.distributed import any_unused

    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    assert any_unused((a * 2).sum(), [a, b])
    assert not any_unused((a * b).sum(), [a, b])


def test_fit_is_data_parallel_under_torchrun(tmp_path):
    """Two ranks, each on half of the data, with gradients averaged by fit(): the same weights on
    both ranks (rank 0's initialization is broadcast even when the ranks start apart) and the same
    result as one process on all the data."""
    script = str(Path(__file__).parent / "scripts" / "ddp_fit.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, nproc, *extra):
        out.mkdir()
        cmd = ([sys.executable, script] if nproc == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script])
        _torchrun(cmd + [str(out), "40", *extra], env, [out / f"rank{i}.pt" for i in range(nproc)])
        return [torch.load(out / f"rank{i}.pt", weights_only=True) for i in range(nproc)]

    (one,) = run(tmp_path / "one", 1)
    a, b = run(tmp_path / "two", 2, "apart")
    assert a["world"] == 2 and torch.equal(a["params"], b["params"])
    assert torch.allclose(a["params"], one["params"], atol=1e-5), (a["params"], one["params"])
    assert one["loss"][-1] < 0.2 * one["loss"][0]
