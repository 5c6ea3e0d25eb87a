"""Latent maps: a student with fewer latent dimensions than the teacher, still sharing its noise.

The unified method shares the auxiliary noise ``eps`` of every latent between teacher and student
(Chen et al. 2023, §3.1), which ties the two latents to one shape. A *latent map* is a fixed,
parameter-free function from the teacher's noise at a site to the student's,
``eps_S = m(eps_T)``, chosen so that ``eps_S`` has the student's noise law. The student is then
still a DGM of the shared noise — it computes its latent from ``m(eps_T)``, i.e. it simply ignores
what the map drops — so Prop. 3.1 of Chen et al. (the surrogate loss, Eq. 4, upper-bounds the KL
between the two marginals) holds unchanged: both marginals integrate over the same law of
``eps_T``, and ``p_S(y | eps_T) = p_S(y | m(eps_T))``.

Built in:

* :func:`first` — the first ``k`` coordinates along one dimension (default: the last); :func:`select`
  — chosen coordinates (e.g. a VAE's most used ones). Valid for
  every noise law whose coordinates are independent (all built-in reparameterizers: standard
  normal, standard uniform). The latent loss (Eq. 6) is then defined coordinate by coordinate:
  student coordinate ``j`` and teacher coordinate ``j`` are driven by the same noise, so the
  student's conditional is compared with the teacher's conditional *of its first k coordinates*
  (for element-wise families: ``Normal``, ``Bernoulli``, ``Gamma`` ..., optionally inside
  ``Independent``). Local distillation (teacher forcing) feeds the student the teacher's chosen
  coordinates.
* :func:`orthonormal` — ``eps_T @ Q`` with a fixed ``d x k`` matrix of orthonormal columns
  (seeded): a standard normal stays standard normal under it, so it is valid for that law only
  (an error names the site otherwise). A student coordinate then mixes all teacher coordinates
  and has no teacher counterpart, so the site has **no latent loss term** (it is listed in
  ``Coupling.mapped``, not in ``Coupling.latents``); the surrogate loss still distills through it.

Pass them to :func:`dgmkd.couple` / :func:`dgmkd.distill` as ``latent_maps={"z": first(2)}``.

Example:
    >>> import torch, dgmkd
    >>> from torch.distributions import Independent, Normal
    >>> def vae(width, w):
    ...     def run(n):
    ...         z = dgmkd.latent("z", Independent(Normal(torch.zeros(n, width), 1.0), 1))
    ...         return dgmkd.target("x", Independent(Normal(z @ w, 0.1), 1))
    ...     return run
    >>> t, s = vae(8, torch.randn(8, 3)), vae(2, torch.randn(2, 3))
    >>> c = dgmkd.couple(t, s, 5, latent_maps={"z": dgmkd.maps.first(2)})
    >>> bool(torch.equal(c.student_trace["z"]["value"], c.teacher_trace["z"]["noise"][:, :2]))
    True
    >>> c.latents["z"].teacher.event_shape   # the teacher's first two coordinates
    torch.Size([2])
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent

__all__ = ["LatentMap", "first", "select", "orthonormal"]


class LatentMap:
    """A fixed map from the teacher's noise at a site to the student's.

    Subclasses implement :meth:`noise`; :meth:`restrict` / :meth:`restrict_value` (the teacher's
    conditional / value on the coordinates the student's noise comes from) may return ``None``,
    in which case the site has no latent loss and cannot be teacher-forced. ``laws``: the noise
    laws the map preserves (``None``: any law with independent coordinates).
    """

    laws: frozenset[str] | None = None

    def noise(self, eps: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def restrict(self, dist: Distribution) -> Distribution | None:
        return None

    def restrict_value(self, value: torch.Tensor) -> torch.Tensor | None:
        return None

    def apply(self, site: str, eps: torch.Tensor, law: str) -> torch.Tensor:
        """``noise(eps)`` after checking the law; errors name the site."""
        from .handlers import SiteMismatchError

        if self.laws is not None and law not in self.laws:
            raise SiteMismatchError(
                f"latent site {site!r}: the map {self!r} preserves {sorted(self.laws)} noise only, but the "
                f"teacher's noise there is {law}; use dgmkd.maps.first(k) for this site"
            )
        try:
            return self.noise(eps)
        except SiteMismatchError as e:
            raise SiteMismatchError(f"latent site {site!r}: {e}") from None


def _check_dim(site_eps: torch.Tensor, dim: int, k: int, what: str) -> int:
    from .handlers import SiteMismatchError

    nd = site_eps.dim()
    if not -nd <= dim < nd or (dim % nd) == 0:
        raise SiteMismatchError(f"{what}: dim={dim} is not a non-batch dimension of the teacher's noise "
                                f"(shape {tuple(site_eps.shape)})")
    if site_eps.shape[dim] < k:
        raise SiteMismatchError(f"{what}: needs at least {k} coordinates in dimension {dim} of the teacher's noise, "
                                f"which has shape {tuple(site_eps.shape)}")
    return dim % nd


class select(LatentMap):
    """Chosen coordinates (``indices``, in order) of the teacher's noise along ``dim`` (default:
    the last): student coordinate ``j`` is driven by teacher coordinate ``indices[j]``. Use it to
    give a narrow student the teacher's most used latent coordinates (e.g. a VAE's active units,
    by their KL on data).

    Example:
        >>> import torch, dgmkd
        >>> dgmkd.maps.select([3, 1]).noise(torch.arange(8.).reshape(2, 4)).tolist()
        [[3.0, 1.0], [7.0, 5.0]]
    """

    def __init__(self, indices, dim: int = -1):
        idx = [int(i) for i in indices]
        if not idx or min(idx) < 0 or len(set(idx)) != len(idx):
            raise ValueError(f"select(indices): need distinct non-negative coordinates, got {list(indices)!r}")
        self.indices, self.dim, self.k = idx, dim, len(idx)
        self._idx = torch.tensor(idx)

    def __repr__(self):
        return f"select({self.indices}" + (f", dim={self.dim})" if self.dim != -1 else ")")

    def _take(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        if self.indices == list(range(self.k)):
            return t.narrow(dim, 0, self.k)
        return t.index_select(dim, self._idx.to(t.device))

    def noise(self, eps):
        return self._take(eps, _check_dim(eps, self.dim, max(self.indices) + 1, repr(self)))

    def restrict_value(self, value):
        return self._take(value, value.dim() + self.dim if self.dim < 0 else self.dim)

    def restrict(self, dist):
        if isinstance(dist, Independent):
            base = self._restrict_elementwise(dist.base_dist)
            return None if base is None else Independent(base, dist.reinterpreted_batch_ndims, validate_args=False)
        return self._restrict_elementwise(dist)

    def _restrict_elementwise(self, d: Distribution):
        if d.event_shape != torch.Size():  # a joint over the event (MVN, Dirichlet, one-hot): no marginal here
            return None
        shape = d.batch_shape
        dim = len(shape) + self.dim if self.dim < 0 else self.dim
        names = list(d.arg_constraints)
        if "logits" in names and "probs" in names:  # one parametrization only
            names.remove("probs" if "logits" in d.__dict__ else "logits")
        kwargs = {}
        for name in names:
            v = getattr(d, name)
            if isinstance(v, torch.Tensor):
                v = self._take(v.expand(shape), dim)
            kwargs[name] = v
        try:
            return type(d)(**kwargs, validate_args=False)
        except (TypeError, ValueError):  # a constructor that does not take its arg_constraints by name
            return None


class first(select):
    """The first ``k`` coordinates of the teacher's noise along ``dim`` (default: the last).

    Example:
        >>> import torch, dgmkd
        >>> dgmkd.maps.first(2).noise(torch.arange(8.).reshape(2, 4)).tolist()
        [[0.0, 1.0], [4.0, 5.0]]
    """

    def __init__(self, k: int, dim: int = -1):
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"first(k): k must be a positive int, got {k!r}")
        super().__init__(range(k), dim)

    def __repr__(self):
        return f"first({self.k}" + (f", dim={self.dim})" if self.dim != -1 else ")")


class orthonormal(LatentMap):
    """``eps_T @ Q``: a fixed ``d x k`` matrix with orthonormal columns (from a QR of a seeded
    Gaussian), along the last dimension; standard normal noise only. The site gets no latent
    loss term (see the module docstring).

    Example:
        >>> import torch, dgmkd
        >>> m = dgmkd.maps.orthonormal(3, seed=1)
        >>> q = m.matrix(8, torch.float64)
        >>> bool(torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64)))
        True
    """

    laws = frozenset({"standard_normal"})

    def __init__(self, k: int, seed: int = 0):
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"orthonormal(k): k must be a positive int, got {k!r}")
        self.k, self.seed = k, seed
        self._cache: dict = {}

    def __repr__(self):
        return f"orthonormal({self.k}, seed={self.seed})"

    def matrix(self, d: int, dtype=torch.float32, device=None) -> torch.Tensor:
        key = (d, dtype, device)
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.seed)
            q, r = torch.linalg.qr(torch.randn(d, self.k, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r))  # a unique Q for the seed
            self._cache[key] = q.to(dtype=dtype, device=device)
        return self._cache[key]

    def noise(self, eps):
        _check_dim(eps, -1, self.k, repr(self))
        return eps @ self.matrix(eps.shape[-1], eps.dtype, eps.device)
