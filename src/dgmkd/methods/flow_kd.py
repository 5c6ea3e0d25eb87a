"""Normalizing-flow distillation (Walton et al., "Distilling Normalizing Flows"): LKD, ILKD, SKD.

The loss of their Eq. (15) is ``L = l0 * NLL_s(x) + l1 * (I)LKD(t, s, x) + l2 * SKD(t, s, z)``:

* LKD (Eq. 12): ``d(t(x), s(x))`` — the final latents on data;
* ILKD (Eq. 13): ``sum_i d(t_i(x), s_i(x))`` over matched intermediate states (and the final
  latent, "just another intermediate step");
* SKD (Eq. 14): ``d(t.from_noise(z), s.from_noise(z))`` for prior samples ``z ~ N(0, T^2 I)``.

In the unified vocabulary (Chen et al. 2023, §3) a flow is a DGM with one noise and a
degenerate target. :class:`FlowSites` writes a flow that way:

* on data ``x`` each matched state and the final latent are **deterministic sites**
  (``state/<j>``, ``z``), so ILKD and LKD are the *latent loss* on deterministic sites with the
  L1 distance: ``losses.latent(c, "l1", sites=...)``;
* for generation the prior draw is a **latent site** ``prior ~ N(0, T^2 I)`` whose auxiliary
  noise ``eps`` is shared between teacher and student by :func:`dgmkd.couple`, and the generated
  sample ``t.from_noise(T eps)`` is a **target** with a point-mass distribution (:class:`dgmkd.Delta`), so
  SKD is the *surrogate loss* with the L1 distance: ``losses.surrogate(c, "l1")``. For a
  multi-scale Glow the flat latent holds every split latent, so all of them are shared (the
  reference code shares only the top one).

Reductions follow :mod:`dgmkd.divergences`: the distance is summed over a site's dimensions and
averaged over the batch (the NLL is summed over dimensions too, so the weights compare like with
like; the paper's ``L1Loss`` averages over elements — a difference of a factor ``D`` per site in
the effective weights).

Example:
    >>> import torch, dgmkd
    >>> from dgmkd.models.flows import maf
    >>> t, s = maf(4, steps=4, hidden=8), maf(4, steps=2, hidden=8)
    >>> state_map(t, s)           # teacher step -> student step (the last steps are the latent z)
    [(1, 0)]
    >>> c = couple(t, s, torch.randn(8, 4), n_prior=8)
    >>> sorted(c.deterministics), list(c.latents), list(c.targets)
    (['state/0', 'z'], ['prior'], ['x_synth'])
    >>> loss, parts = flow_kd_loss(c, WEIGHTS["skd"])
    >>> sorted(parts)
    ['ilkd', 'lkd', 'nll', 'skd']
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Independent, Normal

from .. import losses
from ..coupling import Coupling
from ..coupling import couple as _couple
from ..delta import Delta
from ..models.autoregressive import standard_normal_log_prob
from ..sites import deterministic, latent, target
from ..train import fit as _fit
from ..train import minibatches

__all__ = ["WEIGHTS", "state_map", "FlowSites", "couple", "flow_kd_loss", "fit", "evaluate_nll",
           "lkd_sites", "ilkd_sites", "distill_flow", "as_flow"]

# (l0, l1, l2) of Eq. (15). The paper's text gives LKD = 1/0/0, which would make the LKD student
# the plain student; we give LKD the ILKD row's distillation weight (see docs/flow_kd.md).
WEIGHTS: dict[str, tuple[float, float, float]] = {
    "student": (1.0, 0.0, 0.0),
    "lkd": (0.9, 0.1, 0.0),
    "ilkd": (0.9, 0.1, 0.0),
    "skd": (0.85, 0.075, 0.075),
}
# which sites the l1 term reads: LKD the final latent only, ILKD and SKD the matched states too
L1_TERM = {"student": None, "lkd": "lkd", "ilkd": "ilkd", "skd": "ilkd"}


def state_map(teacher, student, every: int | None = None) -> list[tuple[int, int]]:
    """Pairs ``(teacher_step, student_step)`` of global step indices to match in ILKD.

    Level by level (``step_groups()``), student step ``j`` of a level is matched to teacher step
    ``(j + 1) * k - 1`` of the same level with ``k = every`` or ``K_teacher // K_student``, so each
    level's output is matched. The overall last step (whose output is the final latent ``z``,
    matched separately) is left out.
    """
    tg, sg = teacher.step_groups(), student.step_groups()
    if len(tg) != len(sg):
        raise ValueError(f"teacher has {len(tg)} levels, student {len(sg)}: ILKD needs the same levels")
    pairs, t0, s0 = [], 0, 0
    for kt, ks in zip(tg, sg):
        k = every or max(1, kt // ks)
        for j in range(ks):
            ti = min((j + 1) * k - 1, kt - 1)
            if j == ks - 1:
                ti = kt - 1  # each level's output
            pairs.append((t0 + ti, s0 + j))
        t0, s0 = t0 + kt, s0 + ks
    last = (t0 - 1, s0 - 1)
    return [p for p in pairs if p != last]


class FlowSites(nn.Module):
    """A flow written with dgmkd sites (see the module docstring).

    ``forward(x=None, n_prior=0, temperature=1.0)`` returns ``{"log_prob": (N,)}`` when ``x`` is
    given (and emits ``state/<j>`` for the chosen steps ``steps[j]`` and ``z``), and, when
    ``n_prior > 0``, emits ``prior`` and ``x_synth`` and returns ``{"x_synth": ...}`` too.
    """

    def __init__(self, flow: nn.Module, steps: Sequence[int] = ()):
        super().__init__()
        self.flow = flow
        self.steps = list(steps)

    def forward(self, x: torch.Tensor | None = None, n_prior: int = 0, temperature: float = 1.0) -> dict:
        out = {}
        if x is not None:
            z, ladj, states = self.flow.forward_states(x)
            for j, i in enumerate(self.steps):
                deterministic(f"state/{j}", states[i])
            deterministic("z", z)
            out["log_prob"] = standard_normal_log_prob(z) + ladj
        if n_prior:
            p = next(self.flow.parameters())
            loc = torch.zeros(n_prior, self.flow.dim, device=p.device, dtype=p.dtype)
            zp = latent("prior", Independent(Normal(loc, temperature), 1))
            xs = self.flow.from_noise(zp)
            target("x_synth", Delta(xs, event_dim=xs.dim() - 1))
            out["x_synth"] = xs
        return out


def couple(teacher, student, x=None, n_prior: int = 0, temperature: float = 1.0,
           pairs: Sequence[tuple[int, int]] | None = None) -> Coupling:
    """Run ``teacher`` and ``student`` flows coupled: on data ``x`` (matched states by
    :func:`state_map` unless ``pairs`` given) and on ``n_prior`` shared prior draws."""
    pairs = state_map(teacher, student) if pairs is None else list(pairs)
    t = teacher if isinstance(teacher, FlowSites) else FlowSites(teacher, [a for a, _ in pairs])
    s = student if isinstance(student, FlowSites) else FlowSites(student, [b for _, b in pairs])
    return _couple(t, s, x, n_prior, temperature)


def lkd_sites(c: Coupling) -> list[str]:
    return ["z"]


def ilkd_sites(c: Coupling) -> list[str]:
    return list(c.deterministics)


def flow_kd_loss(c: Coupling, weights: tuple[float, float, float], l1_term: str = "ilkd",
                 divergence: str | Callable = "l1") -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (15) from a coupling: ``l0 * NLL_s + l1 * (I)LKD + l2 * SKD``; also returns the parts.

    ``l1_term``: ``"lkd"`` (final latent only) or ``"ilkd"`` (all matched states and ``z``).
    """
    l0, l1, l2 = weights
    parts: dict[str, torch.Tensor] = {}
    loss = torch.zeros(())
    if c.student_output.get("log_prob") is not None:
        parts["nll"] = -c.student_output["log_prob"].mean()
        loss = loss + l0 * parts["nll"]
    if c.deterministics:
        parts["lkd"] = losses.latent(c, divergence, sites=lkd_sites(c))
        parts["ilkd"] = losses.latent(c, divergence, sites=ilkd_sites(c))
        if l1:
            loss = loss + l1 * parts[l1_term]
    if c.targets:
        parts["skd"] = losses.surrogate(c, divergence, sites=["x_synth"])
        if l2:
            loss = loss + l2 * parts["skd"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def evaluate_nll(flow: nn.Module, x: torch.Tensor, batch: int = 2048) -> float:
    """Mean negative log-likelihood (nats per example) of ``x``."""
    was = flow.training
    flow.eval()
    try:
        tot = sum(float(-flow.log_prob(x[i:i + batch]).sum()) for i in range(0, len(x), batch))
    finally:
        flow.train(was)
    return tot / len(x)


def fit(flow: nn.Module, x_train: torch.Tensor, steps: int, *, teacher: nn.Module | None = None,
        method: str = "student", weights: tuple[float, float, float] | None = None, batch: int = 256,
        prior_batch: int = 128, temperature: float = 1.0, lr: float = 1e-3, weight_decay: float = 1e-6,
        warmup: int = 0, grad_clip: float | None = 10.0, x_val: torch.Tensor | None = None,
        eval_every: int = 100, pairs=None, seed: int = 0, progress: bool = False,
        checkpoint=None, desc: str = "flow", log=None, device=None) -> dict:
    """Train ``flow`` by its NLL (no ``teacher``) or by Eq. (15) with ``method`` in
    ``student`` / ``lkd`` / ``ilkd`` / ``skd`` (weights from :data:`WEIGHTS` unless given), through
    :func:`dgmkd.train.fit`: AdamW, linear learning-rate warm-up over ``warmup`` steps, gradient-norm
    clipping, minibatches of ``x_train`` (:func:`dgmkd.train.minibatches`). With ``x_val`` the
    parameters with the best validation NLL (checked every ``eval_every`` steps) are restored at
    the end. Returns the history plus ``best_val`` and ``best_step``."""
    weights = weights or WEIGHTS[method]
    l1_term = L1_TERM.get(method) or "ilkd"
    distil = teacher is not None and method != "student"
    if distil:
        teacher.eval()
        pairs = state_map(teacher, flow) if pairs is None else pairs
        t_sites = FlowSites(teacher, [a for a, _ in pairs])
        s_sites = FlowSites(flow, [b for _, b in pairs])
    n_prior = prior_batch if distil and weights[2] else 0

    def objective(args, step):
        (x,) = args
        if distil:
            loss, parts = flow_kd_loss(_couple(t_sites, s_sites, x, n_prior, temperature), weights, l1_term)
            return {"loss": loss, **parts}
        return -flow.log_prob(x).mean()

    best = {"val": math.inf, "state": None, "step": -1}

    def validate(step, row):
        if x_val is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            v = evaluate_nll(flow, x_val)
            if v < best["val"]:
                best.update(val=v, state=copy.deepcopy(flow.state_dict()), step=step + 1)

    hist = _fit(objective, flow, minibatches(x_train, batch=min(batch, len(x_train))), steps, lr=lr,
                optimizer="adamw", weight_decay=weight_decay, grad_clip=grad_clip,
                lr_schedule=(lambda s: min(1.0, (s + 1) / warmup)) if warmup else None,
                checkpoint=checkpoint, seed=seed, progress=progress, desc=desc, callback=validate, log=log,
                device=device)
    if best["state"] is not None:
        flow.load_state_dict(best["state"])
    hist["best_val"] = best["val"]
    hist["best_step"] = best["step"]
    return hist


def as_flow(flow) -> nn.Module:
    """``flow`` as a flow with states (:class:`~dgmkd.models.flows.FlowBase`): the library's flows
    (``maf``, ``realnvp``, ``Glow``) as they are, a zuko flow (``zuko.flows.MAF``, ``NSF``,
    ``RealNVP``, ... — unconditional, with zuko's standard-normal base) wrapped in
    :class:`~dgmkd.models.flows.ZukoFlow`, which shares its parameters (training the wrapper trains
    ``flow``)."""
    from ..models.flows import FlowBase, ZukoFlow

    if isinstance(flow, FlowBase):
        return flow
    try:
        import zuko
    except ImportError:  # pragma: no cover - zuko is a dependency
        zuko = None
    if zuko is not None and isinstance(flow, zuko.flows.Flow):
        base = flow.base()
        if not isinstance(base, torch.distributions.Distribution) or len(base.event_shape) != 1:
            raise TypeError("distill_flow: a zuko flow needs an unconditional base with a flat event (its "
                            "flow() takes no context)")
        loc, scale = base.mean, base.stddev
        if not (torch.allclose(loc, torch.zeros_like(loc)) and torch.allclose(scale, torch.ones_like(scale))):
            raise ValueError("distill_flow: the zuko flow's base is not a standard normal; the flow KD losses "
                             "(Walton et al.) assume one")
        return ZukoFlow(flow)
    raise TypeError(f"distill_flow: expected a zuko flow or a dgmkd flow (maf, realnvp, Glow), got "
                    f"{type(flow).__name__}")


def distill_flow(teacher, student, data: torch.Tensor, method: str = "ilkd", steps: int = 1000, *,
                 weights: tuple[float, float, float] | None = None, batch: int = 256, prior_batch: int = 128,
                 temperature: float = 1.0, lr: float = 1e-3, weight_decay: float = 1e-6, warmup: int = 0,
                 grad_clip: float | None = 10.0, val: torch.Tensor | None = None, eval_every: int = 100,
                 seed: int = 0, progress: bool = True, checkpoint=None, log=None, device=None) -> dict:
    """Distill a normalizing flow ``teacher`` into ``student`` on ``data`` (Walton et al.,
    "Distilling Normalizing Flows", Eq. 15): ``l0 * NLL_s(x) + l1 * (I)LKD + l2 * SKD``.

    ``teacher`` / ``student``: zuko flows (any unconditional ``zuko.flows.Flow``: MAF, NSF,
    RealNVP, ...) or the library's flows (``dgmkd.models.flows.maf``, ``realnvp``, ``Glow``; a
    teacher and a student Glow need the same levels). ``method``:

    * ``"lkd"`` — the final latents agree on data (Eq. 12);
    * ``"ilkd"`` — the intermediate states agree too, teacher step ``(j+1)k-1`` against student
      step ``j`` (:func:`state_map`; Eq. 13);
    * ``"skd"`` — ILKD plus the generated samples agree from shared prior draws
      ``z ~ N(0, temperature^2 I)`` (Eq. 14).

    ``weights=(l0, l1, l2)`` overrides :data:`WEIGHTS`. The student is trained in place through
    :func:`dgmkd.train.fit` (AdamW, warm-up, clipping, checkpoints, ``log=`` as in
    :func:`dgmkd.distill`); with ``val`` the student with the best validation NLL is kept. Returns
    the history (``loss``, ``nll``, ``lkd``, ``ilkd``, ``skd`` per step, plus ``best_val``).

    Example:
        >>> import torch, zuko, dgmkd
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(512, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
        >>> teacher = zuko.flows.NSF(2, transforms=2, hidden_features=[16])
        >>> student = zuko.flows.MAF(2, transforms=1, hidden_features=[8])
        >>> h = dgmkd.distill_flow(teacher, student, x, method="skd", steps=20, progress=False)
        >>> sorted(k for k in h if k in ("nll", "lkd", "ilkd", "skd"))
        ['ilkd', 'lkd', 'nll', 'skd']
    """
    if method not in ("lkd", "ilkd", "skd"):
        raise ValueError(f"distill_flow: unknown method {method!r}; choose 'lkd', 'ilkd' or 'skd'")
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or len(data) == 0:
        raise TypeError("distill_flow: data must be a non-empty tensor of examples (N, D) or (N, C, H, W)")
    t, s = as_flow(teacher), as_flow(student)
    if t.dim is not None and s.dim is not None and t.dim != s.dim:
        raise ValueError(f"distill_flow: the teacher has {t.dim} dimensions, the student {s.dim}")
    from ..train import _DEFAULT_DEVICE

    device = _DEFAULT_DEVICE if device is None else device
    if device is not None:
        t.to(device)
        val = val.to(device) if val is not None else None
    return fit(s, data, steps, teacher=t, method=method, weights=weights, batch=batch, prior_batch=prior_batch,
               temperature=temperature, lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
               x_val=val, eval_every=eval_every, seed=seed, progress=progress, checkpoint=checkpoint,
               desc=f"distill_flow[{method}]", log=log, device=device)
