"""The one training loop.

:func:`train` runs any ``step_fn`` for a number of steps with a progress bar, periodic atomic
checkpoints, resume after a kill, and a guard that stops on a non-finite loss and keeps the last
good checkpoint. :func:`distill` builds the step of the unified method (Chen et al. 2023, Eq. 7)
or of local distillation on top of it; the other methods of the library build their own steps
and reuse :func:`train`.

Example (data-free: the inputs are a batch size):
    >>> import torch, dgmkd
    >>> from torch.distributions import Normal
    >>> class M(torch.nn.Module):
    ...     def __init__(self, h):
    ...         super().__init__()
    ...         self.f = torch.nn.Sequential(torch.nn.Linear(1, h), torch.nn.Tanh(), torch.nn.Linear(h, 1))
    ...     def forward(self, n):
    ...         z = dgmkd.latent("z", Normal(torch.zeros(n, 1), 1.0))
    ...         return dgmkd.target("y", Normal(self.f(z), 0.1))
    >>> _ = torch.manual_seed(0)
    >>> hist = dgmkd.distill(M(32), M(4), inputs=64, steps=50, lr=1e-2, progress=False)
    >>> hist["loss"][-1] < hist["loss"][0]
    True
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import distributed as ddp
from . import losses
from .coupling import couple

__all__ = ["train", "distill", "NonFiniteLossError", "make_inputs"]


class NonFiniteLossError(FloatingPointError):
    """A loss or metric became NaN or infinite; the run stopped and kept its last checkpoint."""


def make_inputs(inputs) -> Callable[[int], tuple]:
    """Normalize ``inputs`` to a function ``step -> args``.

    * an ``int``: a data-free batch size, passed as the single argument every step;
    * a callable with no arguments: called once per step; a non-tuple result is one argument;
    * any other iterable: consumed in order and restarted when exhausted (one pass = one epoch);
      on resume the items already consumed are skipped, so deterministic iterables resume exactly.
    """
    if isinstance(inputs, bool):
        raise TypeError("inputs must be a batch size, a callable or an iterable of argument tuples, got a bool")
    if isinstance(inputs, int):
        if inputs <= 0:
            raise ValueError(f"batch size must be positive, got {inputs}")
        return lambda step: (inputs,)
    if callable(inputs) and not hasattr(inputs, "__iter__"):
        def from_callable(step):
            a = inputs()
            return a if isinstance(a, tuple) else (a,)
        return from_callable
    if not hasattr(inputs, "__iter__"):
        raise TypeError(f"inputs must be a batch size, a callable or an iterable, got {type(inputs).__name__}")

    state = {"it": None, "pos": None}

    def restart():
        return iter(inputs)

    def position(step):
        """An iterator positioned after ``step`` items (restarting at the end of each epoch)."""
        it, done, epoch_len = restart(), 0, None
        while done < step:
            try:
                next(it)
                done += 1
            except StopIteration:
                if done == 0:
                    raise ValueError("inputs is an empty iterable") from None
                epoch_len = epoch_len or done
                it = restart()
                for _ in range((step - done) % epoch_len):
                    next(it)
                done = step
        return it

    def from_iterable(step):
        if state["pos"] != step:  # first call or resume
            state["it"] = position(step)
        try:
            a = next(state["it"])
        except StopIteration:
            state["it"] = restart()
            try:
                a = next(state["it"])
            except StopIteration:
                raise ValueError("inputs is an empty iterable") from None
        state["pos"] = step + 1
        return a if isinstance(a, tuple) else (a,)

    return from_iterable


def _to_device(args: tuple, device) -> tuple:
    if device is None:
        return args
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def check_finite(value: torch.Tensor | float, step: int, name: str = "loss", path: str | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the step when ``value`` is NaN or infinite."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        where = f"; the last good checkpoint is kept at {path}" if path and os.path.exists(path) else ""
        raise NonFiniteLossError(f"{name} is {v} at step {step}: training stopped{where}")


def train(step_fn: Callable[[tuple, int], dict], inputs, steps: int, *, state: dict[str, Any] | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100, resume: bool = True,
          seed: int | None = 0, device=None, progress: bool = True, desc: str = "train",
          callback: Callable[[int, dict], None] | None = None, data_parallel: bool = False) -> dict[str, list]:
    """Run ``step_fn(args, step) -> metrics`` for ``steps`` steps.

    ``state`` maps names to objects with ``state_dict`` / ``load_state_dict`` (modules,
    optimizers, schedulers) that are checkpointed. With ``checkpoint`` set, a checkpoint is written
    atomically every ``checkpoint_every`` steps and at the end; with ``resume`` (default) an
    existing checkpoint there is loaded first and the run continues from its step with its RNG
    state, so a killed run resumed ends where an uninterrupted one would. Every metric is checked
    for NaN/inf (:class:`NonFiniteLossError`). Returns the history ``{"step": [...], metric: [...]}``.

    Under ``torchrun`` (see :mod:`dgmkd.distributed`) rank 0 alone writes checkpoints, which
    hold every rank's RNG state, and metrics are averaged over ranks. With ``data_parallel=True``
    (the step synchronizes gradients itself, e.g. through :func:`dgmkd.distributed.wrap`, as
    :func:`distill` does) each rank is seeded with ``seed + rank`` and a batch-size ``inputs`` is
    split over the ranks. With the default ``False`` every rank runs the same computation from the
    same seed (*replicated*): correct for any step function, but not faster.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    state = state or {}
    ddp.init(device)
    device = ddp.device_for(device)
    world, rank = ddp.world_size(), ddp.rank()
    seed_offset = rank if data_parallel else 0
    if data_parallel and isinstance(inputs, int) and not isinstance(inputs, bool) and world > 1:
        inputs = ddp.split_batch(inputs)
    get_args = make_inputs(inputs)
    history: dict[str, list] = {"step": []}
    start = 0
    path = str(checkpoint) if checkpoint is not None else None
    if path and resume and os.path.exists(path):
        saved = ckpt.load(path)
        missing = set(state) - set(saved.get("state", {}))
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path!r} has no state for {sorted(missing)}; "
                                       f"it holds {sorted(saved.get('state', {}))}")
        for name, obj in state.items():
            obj.load_state_dict(saved["state"][name])
        rng_all = saved.get("rng_all")
        if rng_all is not None and rng_all.shape[0] == world:
            torch.set_rng_state(rng_all[rank].clone())
        elif world == 1:
            torch.set_rng_state(saved["rng"])
        else:  # resumed on a different number of processes: continue with fresh per-rank noise
            torch.manual_seed((seed or 0) + 1000 * int(saved["step"]) + seed_offset)
        if torch.cuda.is_available() and "cuda_rng" in saved:
            torch.cuda.set_rng_state_all(list(saved["cuda_rng"]))
        history = {k: list(v) for k, v in saved["history"].items()}
        start = int(saved["step"])
    elif seed is not None:
        torch.manual_seed(seed + seed_offset)

    def save(step):
        if not path:
            return
        rng_all = ddp.gather_rng()  # a collective: every rank takes part, rank 0 writes
        if rank != 0:
            return
        obj = {"step": step, "state": {n: o.state_dict() for n, o in state.items()},
               "rng": torch.get_rng_state(), "rng_all": rng_all, "history": history}
        if torch.cuda.is_available():
            obj["cuda_rng"] = torch.cuda.get_rng_state_all()
        ckpt.save(path, obj)

    bar = None
    if progress and start < steps and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=desc, dynamic_ncols=True, leave=True)
    try:
        for step in range(start, steps):
            args = _to_device(get_args(step), device)
            metrics = step_fn(args, step)
            row = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()}
            row = ddp.mean_over_ranks(row)
            for k, v in row.items():
                check_finite(v, step, k, path)
            history["step"].append(step)
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if callback is not None:
                callback(step, row)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[:3]}, refresh=False)
            if path and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save(step + 1)
    finally:
        if bar is not None:
            bar.close()
    return history


class _Objective(torch.nn.Module):
    """The distillation loss as a module that owns the student (and only the student).

    Its output is the loss, so DistributedDataParallel can find the student's used parameters by
    walking back from it; the teacher is held outside the module tree, so DDP neither syncs nor
    checks it.
    """

    def __init__(self, teacher, student, mode, loss_fn):
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher  # not a submodule
        self.mode, self.loss_fn = mode, loss_fn

    def forward(self, *args, validate_args=None):
        return self.loss_fn(couple(self.teacher, self.student, *args, mode=self.mode, validate_args=validate_args))


def _cuda_devices(device) -> list:
    return [device] if device is not None and torch.device(device).type == "cuda" else []


def _clip(params, grad_clip):
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)


def distill(teacher: Callable, student: torch.nn.Module, inputs, method: str | Callable = "unified",
            steps: int = 1000, *, lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None,
            latent_weight: float = 0.1, divergence: str | Callable = "kl",
            latent_divergence: str | Callable | None = None, deterministic=None,
            grad_clip: float | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int = 100, resume: bool = True, seed: int | None = 0, device=None,
            progress: bool = True, callback: Callable[[int, dict], None] | None = None,
            find_unused_parameters: bool | None = None) -> dict[str, list]:
    """Distill ``teacher`` into ``student``; returns the loss history.

    ``method``:
        ``"unified"`` — Eq. (7) of Chen et al. 2023 on a shared-noise coupling:
        ``surrogate(divergence) + latent_weight * latent(latent_divergence or divergence)``;
        ``"local"`` — local distillation on a teacher-forced coupling; or a callable
        ``loss(coupling) -> scalar`` (the coupling is made in shared-noise mode).
    ``inputs``: a batch size (data-free models called as ``model(n)``), a callable producing the
    arguments of one step, or an iterable of argument tuples (see :func:`make_inputs`).
    The teacher is put in eval mode and run without gradients; the optimizer defaults to Adam with
    ``lr`` over the student's parameters.

    Under ``torchrun`` the loss module is wrapped in DistributedDataParallel at the first step.
    ``find_unused_parameters=None`` probes that step (with the RNG state restored afterwards, so
    the run's noise stream is unchanged) and lets DDP look for unused parameters only if some
    student parameter got no gradient on some rank; pass ``True`` if which parameters are used
    changes from step to step.
    """
    if isinstance(method, str) and method not in ("unified", "local"):
        raise ValueError(f"unknown method {method!r}; choose 'unified', 'local' or pass loss(coupling)")
    ddp.init(device)
    device = ddp.device_for(device)
    if device is not None:
        if isinstance(teacher, torch.nn.Module):
            teacher.to(device)
        student.to(device)
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params and optimizer is None:
        raise ValueError("the student has no trainable parameters")
    opt = optimizer or torch.optim.Adam(params, lr=lr)
    mode = "teacher_forced" if method == "local" else "shared_noise"

    def loss_fn(c):
        if method == "unified":
            return losses.unified(c, latent_weight, divergence, latent_divergence, deterministic)
        if method == "local":
            return losses.local(c, divergence, deterministic)
        return method(c)

    objective = _Objective(teacher, student, mode, loss_fn)
    distributed = ddp.active()
    runner = None if distributed else objective  # DistributedDataParallel, made at the first step

    first_step = True  # of this call (after a resume too): validate arguments, make the DDP wrapper

    def step_fn(args, step):
        nonlocal runner, first_step
        first, first_step = first_step, False
        if runner is None:
            unused = find_unused_parameters
            if unused is None:
                with torch.random.fork_rng(devices=_cuda_devices(device)):
                    unused = ddp.any_unused(objective(*args), params)
            runner = ddp.wrap(objective, find_unused_parameters=unused)
        # torch's distribution argument checks run on the first step only (see couple())
        loss = runner(*args, validate_args=None if first else False)
        if not distributed:  # under DDP the rank-averaged loss is checked after the step, on every rank
            check_finite(loss, step, "loss", str(checkpoint) if checkpoint else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _clip(params, grad_clip)
        opt.step()
        return {"loss": loss.detach()}

    return train(step_fn, inputs, steps, state={"student": student, "optimizer": opt}, checkpoint=checkpoint,
                 checkpoint_every=checkpoint_every, resume=resume, seed=seed, device=device, progress=progress,
                 desc=f"distill[{method if isinstance(method, str) else 'custom'}]", callback=callback,
                 data_parallel=distributed)
