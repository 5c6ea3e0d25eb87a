"""The one training loop.

:func:`loop` runs any ``step_fn`` for a number of steps with a progress bar, periodic atomic
checkpoints, resume after a kill, and a guard that stops on a non-finite loss and keeps the last
good checkpoint. :func:`distill` builds the step of the unified method (Chen et al. 2023, Eq. 7)
or of local distillation on top of it; the other methods of the library build their own steps
and reuse :func:`fit` (which runs :func:`loop`).

``dgmkd.train`` is this module; the loop functions are ``dgmkd.fit``, ``dgmkd.distill`` and
``dgmkd.loop``.

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

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import distributed as ddp
from . import losses
from .coupling import couple
from .discrete_grad import MissingJumpError

__all__ = ["loop", "fit", "set_default_device", "distill", "minibatches", "NonFiniteLossError", "DivergenceWarning", "make_inputs"]


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


def check_finite(value: torch.Tensor | float, step: int, name: str = "loss", path: str | None = None,
                 explain: Callable[[], str] | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming the step when ``value`` is NaN or infinite;
    ``explain()`` (called only then) may add where the non-finite value came from."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if not math.isfinite(v):
        where = f"; the last good checkpoint is kept at {path}" if path and os.path.exists(path) else ""
        why = explain() if explain is not None else ""
        raise NonFiniteLossError(f"{name} is {v} at step {step}{': ' + why if why else ''}: training stopped{where}")


def loop(step_fn: Callable[[tuple, int], dict], inputs, steps: int, *, state: dict[str, Any] | None = None,
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100, resume: bool = True,
          seed: int | None = 0, device=None, progress: bool = True, desc: str = "train",
          callback: Callable[[int, dict], None] | None = None, data_parallel: bool = False,
          fingerprint: dict[str, Any] | None = None, log=None) -> dict[str, list]:
    """Run ``step_fn(args, step) -> metrics`` for ``steps`` steps.

    ``state`` maps names to objects with ``state_dict`` / ``load_state_dict`` (modules,
    optimizers, schedulers) that are checkpointed. With ``checkpoint`` set, a checkpoint is written
    atomically every ``checkpoint_every`` steps and at the end; with ``resume`` (default) an
    existing checkpoint there is loaded first and the run continues from its step with its RNG
    state, so a killed run resumed ends where an uninterrupted one would. Every metric is checked
    for NaN/inf (:class:`NonFiniteLossError`). Returns the history ``{"step": [...], metric: [...]}``.

    ``fingerprint`` (JSON-like: what produced the run — model shapes, method, hyperparameters, a
    hash of a teacher's weights) is stored in the checkpoint; resuming from a checkpoint whose
    fingerprint differs is a :class:`~dgmkd.checkpoint.CheckpointError` listing the differences,
    so another model, method or learning rate never silently continues (or returns) an old run.
    A checkpoint directory that cannot be written fails before the first step.

    ``progress``: a tqdm bar when stderr is a terminal, else a plain line every tenth of the run
    (a redirected log stays readable). ``log``: a ``.csv`` path gets the history written as it goes
    (one row per step, flushed every :data:`LOG_FLUSH_EVERY` steps and at the end; on resume it is
    rewritten from the checkpoint's history first); any other path is a TensorBoard log directory
    (needs the ``tensorboard`` package); a list gives several. ``device=None`` uses the process
    default (:func:`set_default_device`, which ``dgmkd run --device`` sets).

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
    device = _DEFAULT_DEVICE if device is None else device
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
    fp = _normalize(fingerprint or {})
    if path and rank == 0:
        ckpt.check_writable(path)
    if path and resume and os.path.exists(path):
        saved = ckpt.load(path)
        _check_fingerprint(path, saved.get("fingerprint"), fp)
        if int(saved["step"]) >= steps:
            warnings.warn(f"checkpoint {path!r} is of a finished run (step {int(saved['step'])} of {steps}): "
                          "nothing to train; its weights and history are returned (pass resume=False or another "
                          "checkpoint path to train again)", stacklevel=2)
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
               "rng": torch.get_rng_state(), "rng_all": rng_all, "history": history, "fingerprint": fp}
        if torch.cuda.is_available():
            obj["cuda_rng"] = torch.cuda.get_rng_state_all()
        ckpt.save(path, obj)

    growth: dict[str, Any] = {}
    bar = lines = None
    if progress and start < steps and rank == 0:
        if _is_terminal():
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=start, desc=desc, dynamic_ncols=True, leave=True)
        else:
            lines = _PlainProgress(desc, start, steps)
    writers = _open_logs(log, history) if rank == 0 else []
    try:
        for step in range(start, steps):
            args = _to_device(get_args(step), device)
            metrics = step_fn(args, step)
            row = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in metrics.items()}
            row = ddp.mean_over_ranks(row)
            for k, v in row.items():
                check_finite(v, step, k, path)
            _watch_growth(growth, row, step, desc)
            history["step"].append(step)
            for k, v in row.items():
                history.setdefault(k, []).append(v)
            if callback is not None:
                callback(step, row)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[:3]}, refresh=False)
            elif lines is not None:
                lines.update(step, row)
            for w in writers:
                w.write(step, row)
            if path and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save(step + 1)
    finally:
        if bar is not None:
            bar.close()
        for w in writers:
            w.close()
    return history


_DEFAULT_DEVICE = None
LOG_FLUSH_EVERY = 20


def set_default_device(device) -> None:
    """The device :func:`loop`, :func:`fit` and :func:`distill` use when called with ``device=None``
    (``None``: leave modules and inputs where they are). ``dgmkd run --device`` sets it."""
    global _DEFAULT_DEVICE
    _DEFAULT_DEVICE = None if device is None else torch.device(device)


def _is_terminal() -> bool:
    import sys

    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class _PlainProgress:
    """Progress as plain lines on stderr, about every tenth of the run: readable in a redirected log."""

    def __init__(self, desc, start, steps):
        import sys
        import time

        self.desc, self.steps, self.every = desc, steps, max(1, steps // 10)
        self.t0, self.start, self.clock, self.out = time.perf_counter(), start, time.perf_counter, sys.stderr

    def update(self, step, row):
        if (step + 1) % self.every and step + 1 != self.steps:
            return
        rate = (step + 1 - self.start) / max(self.clock() - self.t0, 1e-9)
        vals = "  ".join(f"{k} {v:.4g}" for k, v in list(row.items())[:3])
        print(f"{self.desc}: step {step + 1}/{self.steps}  {vals}  ({rate:.1f} steps/s)", file=self.out, flush=True)


class _CsvLog:
    def __init__(self, path, history):
        import csv

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w", newline="")
        self.w = csv.writer(self.f)
        self.keys = [k for k in history if k != "step"] or None
        self.n = 0
        if self.keys:  # a resumed run: the history so far first
            self.w.writerow(["step", *self.keys])
            for i, st in enumerate(history["step"]):
                self.w.writerow([st, *(repr(history[k][i]) if i < len(history[k]) else "" for k in self.keys)])

    def write(self, step, row):
        if self.keys is None:
            self.keys = list(row)
            self.w.writerow(["step", *self.keys])
        self.w.writerow([step, *(repr(row[k]) if k in row else "" for k in self.keys)])
        self.n += 1
        if self.n % LOG_FLUSH_EVERY == 0:
            self.f.flush()

    def close(self):
        self.f.close()


class _TensorBoardLog:
    def __init__(self, logdir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"log={str(logdir)!r} is a TensorBoard directory (not a .csv file), which needs the "
                              f"tensorboard package: pip install tensorboard ({e})") from e
        self.w = SummaryWriter(str(logdir))

    def write(self, step, row):
        for k, v in row.items():
            self.w.add_scalar(k, v, step)

    def close(self):
        self.w.close()


def _open_logs(log, history) -> list:
    if log is None:
        return []
    logs = [log] if isinstance(log, (str, os.PathLike)) else list(log)
    return [_CsvLog(p, history) if str(p).endswith(".csv") else _TensorBoardLog(p) for p in logs]


GROWTH_WARNING = 1e6  # a loss this many times larger in magnitude than its first value is reported


class DivergenceWarning(RuntimeWarning):
    """The loss grew by :data:`GROWTH_WARNING` times over its first value: finite, but diverged.
    ``dgmkd run`` records it in the run's ``status.json`` (``diverged``) and ``report.md``."""


def _watch_growth(state: dict, row: dict, step: int, desc: str = "train") -> None:
    """Warn (once) when the loss grows by :data:`GROWTH_WARNING` times over its first value: such a
    run is finite but has almost surely diverged (e.g. a far too large learning rate)."""
    v = row.get("loss")
    if v is None or state.get("warned"):
        return
    if "first" not in state:
        state["first"], state["first_step"] = abs(v), step
        return
    if abs(v) > GROWTH_WARNING * max(state["first"], 1e-12) and abs(v) > 1e3:
        state["warned"] = True
        warnings.warn(f"{desc}: the loss grew from {state['first']:.4g} at step {state['first_step']} to {v:.4g} "
                      f"at step {step}: the run has probably diverged (learning rate too large?)", DivergenceWarning,
                      stacklevel=3)


def _normalize(obj):
    """A fingerprint as plain JSON values (callables by qualified name, tuples as lists)."""
    if isinstance(obj, dict):
        return {str(k): _normalize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalize(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return repr(obj)


def _check_fingerprint(path: str, saved, now: dict) -> None:
    if saved is None or saved == now:  # checkpoints written before fingerprints existed resume as before
        return
    diffs = []
    for k in sorted(set(saved) | set(now)):
        if saved.get(k) != now.get(k):
            a, b = json.dumps(saved.get(k)), json.dumps(now.get(k))
            diffs.append(f"{k}: checkpoint {a[:200]}, now {b[:200]}")
    raise ckpt.CheckpointError(f"checkpoint {path!r} was written by a different run; refusing to resume it:\n  "
                               + "\n  ".join(diffs) + "\n(use another checkpoint path, or resume=False to start over)")


def module_fingerprint(module) -> dict:
    """Parameter and buffer names with their shapes."""
    return {n: list(t.shape) for n, t in module.state_dict().items()}


def weights_hash(module) -> str:
    """A short hash of a module's weights (a callable that is not a module: its qualified name)."""
    if isinstance(module, torch.nn.Module):
        return ckpt.checksum(module.state_dict())[:16]
    return _normalize(module)


def minibatches(*tensors: torch.Tensor, batch: int) -> Callable[[], tuple]:
    """A sampler for :func:`fit`: each call returns one minibatch of ``tensors`` (rows drawn
    uniformly with replacement, the same rows from every tensor).

    The rows come from torch's global RNG, which :func:`loop` seeds, checkpoints and restores, so
    a resumed run draws the minibatches an uninterrupted one would. Under ``torchrun`` each rank
    draws ``batch / world_size`` rows from its own stream, so the ranks together see ``batch``.

    Example:
        >>> import torch
        >>> x, y = torch.arange(10.0), torch.arange(10)
        >>> xb, yb = minibatches(x, y, batch=4)()
        >>> xb.shape, bool((xb == yb.float()).all())
        (torch.Size([4]), True)
    """
    if not tensors:
        raise ValueError("minibatches needs at least one tensor")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"minibatches: tensors have different lengths {[len(t) for t in tensors]}")
    if n == 0:
        raise ValueError("minibatches: the data is empty")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"minibatches: batch must be a positive integer, got {batch!r}")

    def draw():
        idx = torch.randint(n, (ddp.split_batch(batch) if ddp.active() else batch,), device=tensors[0].device)
        return tuple(t[idx] for t in tensors)

    return draw


def _unique_params(modules) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _average_gradients(params: list[torch.Tensor]) -> None:
    """All-reduce (mean) the gradients of ``params`` over the ranks of an active process group."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= ddp.world_size()
    i = 0
    for g in grads:
        g.copy_(flat[i:i + g.numel()].view_as(g))
        i += g.numel()


def _broadcast_parameters(modules) -> None:
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            torch.distributed.broadcast(t.data, src=0)


def fit(objective: Callable | dict[str, Callable], modules: torch.nn.Module | dict[str, torch.nn.Module], inputs,
        steps: int, *, lr: float | dict[str, float] = 1e-3,
        params: list | dict[str, list] | None = None, optimizer: str | torch.optim.Optimizer = "adam", betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0, grad_clip: float | None = None, lr_schedule: Callable[[int], float] | dict | None = None,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100, resume: bool = True,
        seed: int | None = 0, device=None, progress: bool = True, desc: str = "fit",
        callback: Callable[[int, dict], None] | None = None, sync_gradients: bool = True,
        data_parallel: bool | None = None, fingerprint: dict[str, Any] | None = None,
        explain: Callable[[], str] | None = None, log=None) -> dict[str, list]:
    """Minimize ``objective`` over the parameters of ``modules``: the one optimization loop.

    Every training loop of the library (teachers, scratch students, distillation, the method loops,
    generators, feature networks) is a call of :func:`fit`, so each gets :func:`loop`'s atomic
    checkpoints, exact resume, progress bar and non-finite guard, and runs data-parallel under
    ``torchrun``.

    ``objective(args, step)`` returns the loss (a scalar tensor) or a dict of metrics whose
    ``"loss"`` is minimized and the rest logged; ``args`` is the tuple of one step's inputs (see
    :func:`make_inputs`: a batch size, a sampler such as :func:`minibatches`, or an iterable).
    For alternating games (a generator against a student) pass a dict ``{name: objective}`` with
    ``params={name: [...]}`` (and optionally ``lr={name: ...}``, ``lr_schedule={name: ...}``): each
    step runs the objectives in order, each with its own optimizer, and logs their metrics as
    ``name.metric``; an objective that returns ``None`` takes no step this time (e.g. one generator
    step per five student steps).

    The loss is checked for NaN/inf *before* the optimizer step, so a non-finite loss never
    reaches the weights and the last checkpoint stays good. ``lr_schedule(step)`` multiplies the
    base learning rate (a pure function of the step, so resume is exact). Under ``torchrun``
    each rank draws its own inputs (seed ``seed + rank``) and the gradients are averaged over the
    ranks before each step (``sync_gradients``; pass ``False`` when the objective is already a
    ``DistributedDataParallel`` module, as in :func:`distill`), so N processes train like one with
    an N-times larger batch. ``data_parallel=False`` runs every rank replicated instead.

    The checkpoint's fingerprint (see :func:`loop`) holds the modules' parameter shapes, the
    optimizer and its hyperparameters, ``grad_clip`` and whatever ``fingerprint`` adds; resuming
    with any of them changed is an error listing what changed. ``explain()``, called only when a
    loss is non-finite, adds its cause to the error (``distill`` names the offending sites).

    Example:
        >>> import torch
        >>> from dgmkd.train import fit, minibatches
        >>> x = torch.randn(256, 3); y = x @ torch.tensor([1.0, -2.0, 0.5])
        >>> lin = torch.nn.Linear(3, 1)
        >>> hist = fit(lambda a, s: ((lin(a[0]).squeeze(-1) - a[1]) ** 2).mean(), lin,
        ...            minibatches(x, y, batch=64), steps=300, lr=0.05, progress=False)
        >>> hist["loss"][-1] < 1e-3
        True
    """
    mods = modules if isinstance(modules, dict) else {"model": modules}
    if not mods or not all(isinstance(m, torch.nn.Module) for m in mods.values()):
        raise TypeError("fit: modules must be an nn.Module or a non-empty dict of them")
    objectives = objective if isinstance(objective, dict) else {"": objective}
    if isinstance(objective, dict):
        if not isinstance(params, dict) or set(params) != set(objectives):
            raise ValueError(f"fit: with several objectives {sorted(objectives)}, params must be a dict with the "
                             "same keys")
        groups = {k: list(params[k]) for k in objectives}
    else:
        groups = {"": list(params) if params is not None else _unique_params(mods.values())}
    for k, ps in groups.items():
        if not ps:
            raise ValueError(f"fit: {'objective ' + repr(k) + ' has' if k else 'the modules have'} no trainable "
                             "parameters")
    device = _DEFAULT_DEVICE if device is None else device
    ddp.init(device)
    device = ddp.device_for(device)
    if device is not None:
        for m in mods.values():
            m.to(device)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    opts = {}
    if isinstance(optimizer, torch.optim.Optimizer):
        if len(groups) != 1:
            raise ValueError("fit: an optimizer object serves one objective; pass a name for several")
        opts[next(iter(groups))] = optimizer
    elif optimizer not in opt_cls:
        raise ValueError(f"fit: unknown optimizer {optimizer!r}; choose {', '.join(opt_cls)}")
    else:
        for k, ps in groups.items():
            rate = lr[k] if isinstance(lr, dict) else lr
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
                raise ValueError(f"fit: the learning rate must be a positive finite number, got {rate!r}")
            kw = {"lr": rate, "weight_decay": weight_decay}
            if optimizer != "sgd":
                kw["betas"] = betas
            opts[k] = opt_cls[optimizer](ps, **kw)
    base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in opts.items()}
    parallel = ddp.active() if data_parallel is None else (data_parallel and ddp.active())
    sync = sync_gradients and parallel
    if sync:
        _broadcast_parameters(mods.values())
    path = str(checkpoint) if checkpoint is not None else None
    for m in mods.values():
        m.train()

    def step_fn(args, step):
        row = {}
        for k, obj in objectives.items():
            try:
                out = obj(args, step)
            except ValueError as e:  # torch.distributions' argument check on a parameter that went bad
                if "Expected parameter" not in str(e):
                    raise
                raise NonFiniteLossError(f"at step {step}{' in objective ' + repr(k) if k else ''} a distribution "
                                         f"got an invalid parameter (NaN, inf or out of its support): {e}") from e
            if out is None:
                continue
            metrics = out if isinstance(out, dict) else {"loss": out}
            if "loss" not in metrics:
                raise KeyError(f"fit: the objective {k or ''} returned {sorted(metrics)} without a 'loss'")
            loss = metrics["loss"]
            # before the step, on every rank (averaged over ranks): a non-finite loss never reaches the weights
            value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            check_finite(ddp.mean_over_ranks({"loss": value})["loss"] if parallel else value, step,
                         f"{k}.loss" if k else "loss", path, explain)
            opt = opts[k]
            schedule = lr_schedule.get(k) if isinstance(lr_schedule, dict) else lr_schedule
            if schedule is not None:
                f = float(schedule(step))
                for g, b in zip(opt.param_groups, base_lr[k]):
                    g["lr"] = b * f
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if sync:
                _average_gradients(groups[k])
            _clip(groups[k], grad_clip)
            opt.step()
            row.update({(f"{k}.{n}" if k else n): (v.detach() if isinstance(v, torch.Tensor) else v)
                        for n, v in metrics.items()})
        return row

    state = {**mods, **{("optimizer" if not k else f"optimizer.{k}"): o for k, o in opts.items()}}
    fp = {"modules": {n: module_fingerprint(m) for n, m in mods.items()},
          "optimizers": {k: {"type": type(o).__name__,
                             "hyper": [{h: v for h, v in g.items() if h != "params"} for g in o.param_groups]}
                         for k, o in opts.items()},
          "objectives": sorted(objectives), "grad_clip": grad_clip, "seed": seed, **(fingerprint or {})}
    return loop(step_fn, inputs, steps, state=state, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                 resume=resume, seed=seed, device=device, progress=progress, desc=desc, callback=callback,
                 data_parallel=parallel, fingerprint=fp, log=log)


class _Objective(torch.nn.Module):
    """The distillation loss as a module that owns the student (and only the student).

    Its output is the loss, so DistributedDataParallel can find the student's used parameters by
    walking back from it; the teacher is held outside the module tree, so DDP neither syncs nor
    checks it.
    """

    def __init__(self, teacher, student, mode, loss_fn, latent_maps=None, discrete_grad=False,
                 optional_discrete_grad=False):
        super().__init__()
        self.optional_discrete_grad = optional_discrete_grad
        self.student = student
        self.__dict__["teacher"] = teacher  # not a submodule
        self.mode, self.loss_fn, self.latent_maps, self.discrete_grad = mode, loss_fn, latent_maps, discrete_grad

    def forward(self, *args, validate_args=None):
        mode = "shared_noise" if self.mode == "hybrid" else self.mode
        try:
            c = couple(self.teacher, self.student, *args, mode=mode, validate_args=validate_args,
                       latent_maps=self.latent_maps, discrete_grad=self.discrete_grad)
        except MissingJumpError as e:
            if not self.optional_discrete_grad:
                raise
            # the default asked for it; a user type without registered jumps trains without it
            warnings.warn(f"{e} -- the default method goes on without discrete_grad", RuntimeWarning, stacklevel=2)
            self.discrete_grad = False
            c = couple(self.teacher, self.student, *args, mode=mode, validate_args=validate_args,
                       latent_maps=self.latent_maps)
        self.__dict__["last"] = c  # kept (outside the module tree) to name the sites of a non-finite loss
        if self.mode == "hybrid":  # and a teacher-forced coupling on its own draw
            c = (c, couple(self.teacher, self.student, *args, mode="teacher_forced", validate_args=validate_args,
                           latent_maps=self.latent_maps))
        return self.loss_fn(c)


def _nonfinite_sites(c) -> list[str]:
    """``"<model> <kind> site '<name>' (<parameter>)"`` for every distribution parameter or
    deterministic value of a coupling that holds NaN or inf."""
    bad = []
    for kind, group in (("latent", c.latents), ("target", c.targets), ("deterministic", c.deterministics)):
        for name, pair in group.items():
            for who, d in (("teacher", pair.teacher), ("student", pair.student)):
                tensors = {"value": d} if isinstance(d, torch.Tensor) else {
                    k: v for k, v in vars(d).items() if isinstance(v, torch.Tensor) and not k.startswith("_")}
                base = getattr(d, "base_dist", None)
                while base is not None:  # Independent / TransformedDistribution wrappers
                    tensors.update({k: v for k, v in vars(base).items() if isinstance(v, torch.Tensor)
                                    and not k.startswith("_")})
                    base = getattr(base, "base_dist", None)
                for k, v in tensors.items():
                    if v.is_floating_point() and not torch.isfinite(v.detach()).all():
                        bad.append(f"{who} {kind} site {name!r} ({k})")
    return bad


def _cuda_devices(device) -> list:
    return [device] if device is not None and torch.device(device).type == "cuda" else []


def _clip(params, grad_clip):
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)


METHODS = ("default", "hybrid", "unified", "local")
# What ``method="default"`` runs (measured in docs/regimes.md): the hybrid objective with these
# settings; ``discrete_grad`` only acts where the models have discrete latents.
DEFAULT = {"method": "hybrid", "local_weight": "balanced", "power": 2.0, "grad_clip": 1.0, "discrete_grad": 1}


def distill(teacher: Callable, student: torch.nn.Module, inputs, method: str | Callable = "default",
            steps: int = 1000, *, lr: float = 1e-3, optimizer: torch.optim.Optimizer | None = None,
            latent_weight: float | None = None, divergence: str | Callable = "kl",
            latent_divergence: str | Callable | None = None, deterministic=None,
            grad_clip: float | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int = 100, resume: bool = True, seed: int | None = 0, device=None,
            progress: bool = True, callback: Callable[[int, dict], None] | None = None,
            find_unused_parameters: bool | None = None, log=None, latent_maps: dict | None = None,
            discrete_grad: bool | int | None = None, local_weight: float | str | None = None) -> dict[str, list]:
    """Distill ``teacher`` into ``student``; returns the loss history.

    ``method``:
        ``"default"`` (what you get without choosing) — the hybrid objective below with the
        settings in :data:`DEFAULT`, chosen on the regime benchmark (``dgmkd run regimes``) as the
        method closest to the best one across deep and shallow, narrow and wide, continuous and
        discrete models;
        ``"hybrid"`` — :func:`dgmkd.losses.hybrid`: ``local_weight * local + unified`` on two
        couplings per step (so about twice unified's cost);
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

    ``log="metrics.csv"`` writes the history as it goes (a directory path: TensorBoard; see
    :func:`loop`).

    ``latent_maps``: a student with fewer latent dimensions at some sites (see :mod:`dgmkd.maps`).

    ``discrete_grad=True``: the shared-noise losses also reach student parameters that act through
    discrete latents (:mod:`dgmkd.discrete_grad`; three extra passes without gradients per discrete
    latent site and step, or for ``k`` sites drawn per step with an int ``k``; no extra work without
    discrete latents or with ``method="local"``). ``None``: the method's own setting (off, but on
    for ``"default"``, see :data:`DEFAULT`). ``local_weight``: the hybrid objective's weight of the
    local term (``None``: 1, or the default's).
    """
    if isinstance(method, str) and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} or pass loss(coupling)")
    if latent_weight is None:  # 0.1 for the unified losses, or the default's own
        latent_weight = DEFAULT.get("latent_weight", 0.1) if method == "default" else 0.1
    optional_dg = method == "default" and discrete_grad is None
    balance_power = DEFAULT.get("power", 1.0) if method == "default" else 1.0
    if method == "default" and grad_clip is None and optimizer is None:
        grad_clip = DEFAULT.get("grad_clip")
    if method == "default":
        method = DEFAULT["method"]
        discrete_grad = DEFAULT["discrete_grad"] if discrete_grad is None else discrete_grad
    if latent_maps and optional_dg:
        discrete_grad = False  # not supported together (see couple)
        local_weight = DEFAULT["local_weight"] if local_weight is None else local_weight
    discrete_grad = False if discrete_grad is None else discrete_grad
    local_weight = "balanced" if local_weight is None else local_weight
    if local_weight != "balanced" and (isinstance(local_weight, str) or not 0 <= local_weight < math.inf):
        raise ValueError(f"local_weight={local_weight!r}: a finite number >= 0 or 'balanced'")
    if not isinstance(student, torch.nn.Module):
        raise TypeError(f"the student must be an nn.Module (its parameters are trained), got {type(student).__name__}; "
                        "for a Pyro model pass the module or a bound method of it to dgmkd.pyro.model")
    device = _DEFAULT_DEVICE if device is None else device
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
    mode = {"local": "teacher_forced", "hybrid": "hybrid"}.get(method, "shared_noise") if isinstance(method, str) \
        else "shared_noise"

    def loss_fn(c):
        if method == "unified":
            return losses.unified(c, latent_weight, divergence, latent_divergence, deterministic)
        if method == "local":
            return losses.local(c, divergence, deterministic)
        if method == "hybrid":
            return losses.hybrid(c[0], c[1], local_weight, latent_weight, divergence, latent_divergence, deterministic,
                                 power=balance_power)
        return method(c)

    objective = _Objective(teacher, student, mode, loss_fn, latent_maps, discrete_grad, optional_dg)
    distributed = ddp.active()
    runner = None if distributed else objective  # DistributedDataParallel, made at the first step
    first_step = True  # of this call (after a resume too): validate arguments, make the DDP wrapper

    def step_loss(args, step):
        nonlocal runner, first_step
        first, first_step = first_step, False
        if runner is None:
            unused = find_unused_parameters
            if unused is None:
                with torch.random.fork_rng(devices=_cuda_devices(device)):
                    unused = ddp.any_unused(objective(*args), params)
            runner = ddp.wrap(objective, find_unused_parameters=unused)
        # torch's distribution argument checks run on the first step only (see couple())
        return runner(*args, validate_args=None if first else False)

    def explain() -> str:  # called by fit's guard only when the loss is non-finite
        bad = _nonfinite_sites(objective.__dict__["last"])
        return f"non-finite parameters at {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}" if bad else ""

    return fit(step_loss, {"student": student}, inputs, steps, lr=lr, params=params,
               optimizer=optimizer if optimizer is not None else "adam", grad_clip=grad_clip,
               checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume, seed=seed, device=device,
               progress=progress, desc=f"distill[{method if isinstance(method, str) else 'custom'}]",
               callback=callback, sync_gradients=False, data_parallel=distributed, explain=explain, log=log,
               fingerprint={"method": method, "latent_weight": latent_weight, "divergence": divergence,
                            "latent_divergence": latent_divergence, "deterministic": deterministic,
                            **({"discrete_grad": discrete_grad} if discrete_grad else {}),
                            **({"local_weight": local_weight} if method == "hybrid" else {}),
                            **({"power": balance_power} if balance_power != 1.0 else {}),
                            "teacher": weights_hash(teacher),
                            "teacher_shapes": module_fingerprint(teacher) if isinstance(teacher, torch.nn.Module)
                            else None,
                            **({"latent_maps": {k: repr(v) for k, v in latent_maps.items()}} if latent_maps else {})})
