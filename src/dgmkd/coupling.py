"""Coupled execution of a teacher and a student: the record every distillation loss reads.

:func:`couple` runs the teacher (without gradients) with fresh auxiliary noise at every latent,
then runs the student against the teacher's trace (see :class:`dgmkd.handlers.replay`), and pairs
the two models' distributions site by site.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Normal
    >>> class Chain(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.f = torch.nn.Linear(1, 1)
    ...     def forward(self, n):
    ...         z = dgmkd.latent("z", Normal(torch.zeros(n, 1), 1.0))
    ...         return dgmkd.target("y", Normal(self.f(z), 0.1))
    >>> c = dgmkd.couple(Chain(), Chain(), 8)
    >>> list(c.latents), list(c.targets)
    (['z'], ['y'])
    >>> c.targets["y"].value.shape   # the teacher's sample
    torch.Size([8, 1])
    >>> float(dgmkd.losses.unified(c)) >= 0
    True
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.distributions import Distribution

from .handlers import SiteMismatchError, draw_noise, replay, trace

__all__ = ["couple", "Coupling", "SitePair"]


@dataclass
class SitePair:
    """One site of a coupled run.

    ``teacher`` / ``student``: the two distributions (for deterministic sites: the two values the
    models computed); ``value``: the teacher's value (what teacher forcing substitutes);
    ``noise``: the shared auxiliary noise of a latent (``None`` otherwise).

    At a site with a latent map (:mod:`dgmkd.maps`) ``teacher`` and ``value`` are restricted to the
    coordinates the student's noise comes from, ``noise`` is the student's (mapped) noise and
    ``map`` the map.
    """

    name: str
    kind: str
    teacher: Any
    student: Any
    value: torch.Tensor
    noise: torch.Tensor | None = None
    map: Any = None


@dataclass
class Coupling:
    """The result of :func:`couple`: per-kind ordered mappings ``name -> SitePair`` (execution
    order of the teacher), the two raw traces and the two models' return values.

    ``mapped``: latents under a map with no teacher counterpart of the student's coordinates
    (:func:`dgmkd.maps.orthonormal`); they have no latent loss term, so they are kept out of
    ``latents`` (their ``teacher`` is the full teacher distribution)."""

    mode: str
    latents: dict[str, SitePair] = field(default_factory=dict)
    mapped: dict[str, SitePair] = field(default_factory=dict)
    targets: dict[str, SitePair] = field(default_factory=dict)
    deterministics: dict[str, SitePair] = field(default_factory=dict)
    teacher_trace: dict[str, dict] = field(default_factory=dict, repr=False)
    student_trace: dict[str, dict] = field(default_factory=dict, repr=False)
    teacher_output: Any = field(default=None, repr=False)
    student_output: Any = field(default=None, repr=False)
    probes: Any = field(default=None, repr=False)  # discrete_grad.Probes, or None

    def sites(self) -> dict[str, SitePair]:
        """All paired sites, in the teacher's execution order."""
        return {n: self._by_kind(m["kind"]).get(n) or self.mapped[n] for n, m in self.teacher_trace.items()}

    def _by_kind(self, kind):
        return {"latent": self.latents, "target": self.targets, "deterministic": self.deterministics}[kind]


@contextmanager
def validation(flag: bool):
    """Set torch.distributions' default argument validation for the duration of a block."""
    old = Distribution._validate_args
    Distribution.set_default_validate_args(flag)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)


def couple(teacher: Callable, student: Callable, *args, mode: str = "shared_noise",
           validate_args: bool | None = None, teacher_grad: bool = False,
           latent_maps: dict | None = None, discrete_grad: bool | int = False, **kwargs) -> Coupling:
    """Run ``teacher`` and ``student`` on the same ``*args, **kwargs`` with coupled randomness.

    ``mode="shared_noise"`` — the unified method (Chen et al. 2023, Eq. 4–7): both models compute
    each latent from the same auxiliary noise, each along its own path (its own parents); the
    student's targets take the teacher's sampled values.

    ``mode="teacher_forced"`` — local distillation: every site of the student takes the teacher's
    value, so each student conditional is evaluated at the teacher's parents.

    The teacher runs under ``torch.no_grad()``; the student keeps its graph, so losses built from
    the result backpropagate into the student only. ``teacher_grad=True`` keeps the teacher's graph
    too, for objectives that differentiate *through* the teacher with respect to its inputs — an
    input generator that maximizes the teacher/student disagreement (AVKD's adversarial term,
    DFAD). Freeze the teacher's parameters (``requires_grad_(False)``) to keep them out of it.

    The teacher's targets are drawn when something first reads them (the student, a later site, a
    Monte Carlo divergence, the caller; :func:`dgmkd.handlers.deferred_sample`): a closed-form
    divergence never reads them, so they are never drawn for it.

    ``validate_args``: torch.distributions' argument checks (positive scales, probabilities in
    [0, 1], ...) cost a device synchronization per distribution, which on small models is a
    large share of a training step. ``None`` keeps torch's global setting; ``False`` turns the
    checks off while the two models run (:func:`dgmkd.distill` does so after validating its first
    step, and its NaN guard still stops a run whose loss goes bad).

    ``latent_maps`` (site name -> :class:`dgmkd.maps.LatentMap`): a student with fewer latent
    dimensions than the teacher at those sites; its noise there is a fixed map of the teacher's
    (``dgmkd.maps.first(k)``, ``dgmkd.maps.orthonormal(k)``), so it is still a DGM of the shared
    noise and Prop. 3.1 holds. See :mod:`dgmkd.maps` for the latent loss at such a site.

    ``discrete_grad=True`` (shared noise): the surrogate and latent losses computed from this
    coupling also get an unbiased gradient for student parameters that act through discrete
    latents, by boundary terms at the jumps of the quantile coupling (:mod:`dgmkd.discrete_grad`):
    three extra forward passes without gradients per discrete latent site, made when the first
    loss is computed. An int ``k`` probes only ``k`` discrete sites per call (drawn, reweighted):
    cheaper, noisier. No extra work without discrete latents, or with ``mode="teacher_forced"``.
    A discrete type registered without its jumps raises an error naming the site.
    """
    if mode not in ("shared_noise", "teacher_forced"):
        raise ValueError(f"unknown coupling mode {mode!r}; choose 'shared_noise' or 'teacher_forced'")
    if latent_maps and discrete_grad not in (False, None):
        raise ValueError("discrete_grad together with latent_maps is not supported: the boundary probes re-run "
                         "both models on the teacher's full noise; use one or the other")
    if validate_args is None:
        validate_args = Distribution._validate_args
    with validation(validate_args):
        with (nullcontext() if teacher_grad else torch.no_grad()), trace() as tt, draw_noise(defer_targets=True):
            t_out = teacher(*args, **kwargs)
        if latent_maps:
            _check_maps(latent_maps, tt.sites)
        rp = replay(tt.sites, mode, latent_maps)
        with trace() as st, rp:
            s_out = student(*args, **kwargs)
    rp.check_complete()
    c = _pair(mode, tt.sites, st.sites, t_out, s_out, latent_maps)
    if discrete_grad is not False and discrete_grad is not None:
        from .discrete_grad import Probes, discrete_sites, sites_per_step

        k = sites_per_step(discrete_grad)
        names = discrete_sites(c) if mode == "shared_noise" else []
        if names:
            c.probes = Probes(c, teacher, student, args, kwargs, names, k)
    return c


def _pair(mode: str, tsites: dict, ssites: dict, t_out, s_out, latent_maps: dict | None = None) -> Coupling:
    """The :class:`Coupling` of two traces (the teacher's order)."""
    c = Coupling(mode, teacher_trace=tsites, student_trace=ssites, teacher_output=t_out, student_output=s_out)
    groups = {"latent": c.latents, "target": c.targets, "deterministic": c.deterministics}
    for name, tm in tsites.items():
        sm = ssites[name]
        lmap = latent_maps.get(name) if latent_maps else None
        if lmap is None:
            groups[tm["kind"]][name] = SitePair(name, tm["kind"], tm["fn"], sm["fn"], tm["value"], tm["noise"])
            continue
        restricted = lmap.restrict(tm["fn"])
        if restricted is None:
            c.mapped[name] = SitePair(name, "latent", tm["fn"], sm["fn"], tm["value"], sm["noise"], lmap)
        else:
            c.latents[name] = SitePair(name, "latent", restricted, sm["fn"], lmap.restrict_value(tm["value"]),
                                       sm["noise"], lmap)
    return c


def _check_maps(latent_maps: dict, sites: dict) -> None:
    from .maps import LatentMap

    if not isinstance(latent_maps, dict):
        raise TypeError(f"latent_maps must be a dict site name -> dgmkd.maps map, got {type(latent_maps).__name__}")
    for name, m in latent_maps.items():
        if not isinstance(m, LatentMap):
            raise TypeError(f"latent_maps[{name!r}] must be a dgmkd.maps map (first(k), orthonormal(k)), got {m!r}")
        if name not in sites or sites[name]["kind"] != "latent":
            latents = [n for n, msg in sites.items() if msg["kind"] == "latent"]
            raise SiteMismatchError(f"latent_maps names site {name!r}, which is not a latent of the teacher; "
                                    f"its latents: {latents}")
