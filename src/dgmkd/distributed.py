"""Multi-process training with DistributedDataParallel (``torchrun``), used by :mod:`dgmkd.train`.

Under ``torchrun --nproc_per_node N`` every process runs the same script. The loop then

* initializes the process group from the environment (gloo on CPU, nccl on CUDA);
* wraps the student (not the teacher, which has no gradients) in ``DistributedDataParallel``;
* seeds each rank differently (``seed + rank``): the auxiliary noise is shared between teacher and
  student *within* a rank and independent *across* ranks, so N ranks see N independent batches;
* splits a data-free batch size evenly over the ranks (the total batch is what the user asked for),
  and leaves data to a ``DistributedSampler`` (:func:`loader`);
* averages the logged metrics over ranks; rank 0 alone writes checkpoints (with every rank's RNG
  state, so a resumed run continues every rank's noise stream).

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) all of this is a no-op.
"""

from __future__ import annotations

import atexit
import gc
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init", "active", "rank", "world_size", "is_main", "device_for", "wrap", "mean_over_ranks",
           "split_batch", "gather_rng", "loader", "barrier", "any_unused"]


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str | torch.device | None = None) -> bool:
    """Join the process group described by torchrun's environment; returns whether one is active."""
    if dist.is_available() and dist.is_initialized():
        return active()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = device is not None and torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    atexit.register(_shutdown)
    return active()


def _shutdown() -> None:
    """Destroy the process group :func:`init` created, at interpreter exit. Left alive, its
    communication threads can outlive the interpreter and abort the process ("terminate called
    without an active exception", exit code -6), which torchrun reports as a failed run though
    the work was done. Measured on this 2-core CPU machine with gloo: 6 aborts in 52 two-process
    runs (benchmarks/ddp_scaling.py and tests/scripts/ddp_distill.py) without this handler or
    with ``destroy_process_group`` alone, 0 in 56 with the collection first; a rare abort remained
    under heavy load (1 in a CI run), hence the barrier: no rank closes its connections while a
    peer still uses them."""
    if dist.is_available() and dist.is_initialized():
        try:  # every rank reaches the teardown before any rank closes its connections
            dist.barrier()
        except Exception:  # a peer already gone: tear down what is left
            pass
        gc.collect()  # DistributedDataParallel objects sit in reference cycles: free them (and their threads) first
        dist.destroy_process_group()


def device_for(device: str | torch.device | None) -> torch.device | None:
    """One device per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(module: torch.nn.Module, find_unused_parameters: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when a group is active, else ``module``.

    Wrap a module whose ``forward`` returns the *loss* (as :func:`dgmkd.distill` does): a
    student's own output is no guide, since its target values are the teacher's samples and the
    loss reaches its parameters through the distributions recorded at its sites. With the loss as
    the output, DDP's ``find_unused_parameters`` walks back from it and finds exactly the
    parameters that get gradients (not, e.g., a gate in front of a discrete latent when the latent
    weight is 0). That walk costs a traversal of the graph every step; :func:`dgmkd.distill`
    turns it off when a probe of its first step finds every parameter used on every rank
    (:func:`any_unused`).
    """
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(module.parameters()).device
    return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=find_unused_parameters)


def any_unused(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """Whether some of ``params`` get no gradient from ``loss`` on *any* rank (an all-reduced
    flag, so every rank wraps its module the same way)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flag = torch.tensor([float(any(g is None for g in grads))])
    if active():
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def split_batch(n: int) -> int:
    """The per-rank share of a total batch ``n`` (an error if it does not divide evenly)."""
    w = world_size()
    if n % w:
        raise ValueError(f"batch size {n} does not divide evenly over {w} processes")
    return n // w


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    if not active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t = (t / world_size()).cpu()
    return {k: float(v) for k, v in zip(keys, t)}


def gather_rng() -> torch.Tensor:
    """Every rank's CPU RNG state, stacked (world, L); on one process, shape (1, L)."""
    state = torch.get_rng_state()
    if not active():
        return state.unsqueeze(0)
    out = [torch.empty_like(state) for _ in range(world_size())]
    if dist.get_backend() == "nccl":
        gathered = [o.cuda() for o in out]
        dist.all_gather(gathered, state.cuda())
        out = [g.cpu() for g in gathered]
    else:
        dist.all_gather(out, state)
    return torch.stack(out)


def barrier() -> None:
    if active():
        dist.barrier()


def loader(dataset, batch_size: int, shuffle: bool = True, seed: int = 0, **kwargs) -> Any:
    """A ``DataLoader`` over this rank's shard (``DistributedSampler``) with the per-rank share of
    ``batch_size``; a plain shuffled loader on one process."""
    from torch.utils.data import DataLoader, DistributedSampler

    if not active():
        g = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g, **kwargs)
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=split_batch(batch_size), sampler=sampler, **kwargs)
