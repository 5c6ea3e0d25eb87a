"""The linear-Gaussian sampler ``x = mu + R z`` of Huang et al.'s §3.2 and §4.1.1.

Huang et al., "Probability distillation: a caveat and alternatives" (UAI 2019), §3.2: "we take both
``p_T`` and ``p_S`` to be multivariate Gaussian distributions, with the sampling process defined as
``x <- mu + R z`` where ``mu in R^T``, ``R in R^{TxT}`` and ``z ~ N(0, I)``"; the teacher has
``R`` with i.i.d. standard-normal entries and ``mu = 2``, both fixed. ``p(x) = N(mu, R R^T)``.
The encoding map (their ``T: x -> z``) is ``R^{-1} (x - mu)`` and the density comes from the
change of variables, ``log p(x) = log N(R^{-1}(x - mu)) - log|det R|`` (Eq. 4), which is how the
paper trains the student. Every distillation loss has a closed form here, which the tests use.

Example:
    >>> import torch
    >>> from dgmkd.models.linear_gaussian import LinearGaussian
    >>> t = LinearGaussian.random(3, loc=2.0, generator=torch.Generator().manual_seed(0))
    >>> x = t.sample(4)
    >>> bool(torch.allclose(t.log_prob(x), t.distribution().log_prob(x), atol=1e-4))
    True
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from .autoregressive import InvertibleSampler
from ..saving import buildable

__all__ = ["LinearGaussian"]


@buildable
class LinearGaussian(InvertibleSampler):
    """``x = loc + R z`` with ``z ~ N(0, I)``; trainable (a student) unless ``trainable=False``.

    Defaults: ``loc = 0``, ``R = I`` (a standard-normal student, the reference point of Prop. 1).
    """

    def __init__(self, dim: int, loc: torch.Tensor | float | None = None, matrix: torch.Tensor | None = None,
                 trainable: bool = True):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        loc_t = torch.zeros(self.dim) if loc is None else torch.as_tensor(loc, dtype=torch.float32).expand(self.dim).clone()
        mat = torch.eye(self.dim) if matrix is None else torch.as_tensor(matrix, dtype=torch.float32).clone()
        if mat.shape != (self.dim, self.dim):
            raise ValueError(f"matrix must have shape ({self.dim}, {self.dim}), got {tuple(mat.shape)}")
        if trainable:
            self.loc, self.matrix = nn.Parameter(loc_t), nn.Parameter(mat)
        else:
            self.register_buffer("loc", loc_t)
            self.register_buffer("matrix", mat)

    @classmethod
    def random(cls, dim: int, loc: float = 2.0, generator: torch.Generator | None = None,
               trainable: bool = False) -> "LinearGaussian":
        """The teacher of §3.2: ``R_ij ~ N(0, 1)`` i.i.d., ``mu = loc * 1`` (``loc = 2``), fixed."""
        return cls(dim, loc, torch.randn(dim, dim, generator=generator), trainable=trainable)

    def from_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z, "z")
        logdet = torch.linalg.slogdet(self.matrix).logabsdet
        return self.loc + z @ self.matrix.T, logdet.expand(z.shape[0])

    def to_noise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, "x")
        z = torch.linalg.solve(self.matrix, (x - self.loc).T).T
        return z, (-torch.linalg.slogdet(self.matrix).logabsdet).expand(x.shape[0])

    def covariance(self) -> torch.Tensor:
        return self.matrix @ self.matrix.T

    def distribution(self) -> MultivariateNormal:
        """``N(loc, R R^T)`` as a torch distribution (closed-form KLs via ``kl_divergence``).

        The Cholesky factor is computed in float64: ``R R^T`` of a random ``R`` is ill-conditioned
        for large ``dim`` (its smallest eigenvalue tends to 0, §3.1) and fails in float32. For
        accurate KLs call this on a ``.double()`` copy.
        """
        cov = self.covariance()
        tril = torch.linalg.cholesky(cov.double()).to(cov.dtype)
        return MultivariateNormal(self.loc, scale_tril=tril)
