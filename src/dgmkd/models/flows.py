"""Normalizing flows that expose their intermediate states: zuko MAF / RealNVP wrappers and a
multi-scale Glow written here.

Every flow here maps data ``x`` to a latent ``z`` with a standard-normal prior and offers

* ``forward_states(x) -> (z, ladj, states)``: the flat latent ``(N, D)``, the log-determinant of
  the Jacobian ``log|det dz/dx|`` ``(N,)`` and the list of intermediate states, one per flow step
  (the output of step ``i``), in order;
* ``to_noise(x)``: the latent ``z = f(x)`` alone; ``from_noise(z)``: the generator
  ``x = f^{-1}(z)`` (maps are named by the direction they go, as in the whole library);
* ``log_prob(x)``, ``sample(n, temperature)``;
* ``step_groups()``: the number of steps per level (one level for MAF / RealNVP / tabular Glow), so
  that a distillation method can match a teacher's steps to a student's (Walton et al., §3.2).

States are obtained by walking the composed transform step by step (zuko's
``ComposedTransform.transforms``; the Glow's own levels), not by hooks. The models know nothing of
distillation; :mod:`dgmkd.methods.flow_kd` names their states as sites.

Glow (Kingma & Dhariwal, 2018): each step is ActNorm (data-dependent initialization), an
invertible 1x1 convolution with LU parameterization, and an affine coupling
``y_b = (x_b + t(x_a)) * sigmoid(s(x_a) + 2)``; a level squeezes ``2x2`` space into channels, runs
its steps and splits half of the channels off as a latent (all levels but the last). Deviation
from the original: the split latents have a standard-normal prior (no learned conditional prior),
so every latent piece is standard normal and a teacher and a student with the same levels can
share all of them. With ``squeeze=False`` and input shape ``(D, 1, 1)`` it is the tabular Glow
(a 1x1 convolution is then a learned invertible linear map).

Example:
    >>> import torch
    >>> from dgmkd.models.flows import Glow, maf
    >>> f = maf(3, steps=2, hidden=8)
    >>> x = torch.randn(4, 3)
    >>> z, ladj, states = f.forward_states(x)
    >>> len(states), torch.allclose(f.from_noise(z), x, atol=1e-4)
    (2, True)
    >>> g = Glow((1, 8, 8), levels=2, steps=2, hidden=8)
    >>> g.log_prob(torch.rand(5, 1, 8, 8) - 0.5).shape
    torch.Size([5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autoregressive import standard_normal_log_prob
from ..saving import buildable

__all__ = ["FlowBase", "ZukoFlow", "maf", "realnvp", "Glow", "ActNorm", "InvConv1x1", "AffineCoupling",
           "squeeze", "unsqueeze", "slerp_norm"]


class FlowBase(nn.Module):
    """Shared methods; subclasses define ``dim``, ``forward_states``, ``from_noise``, ``step_groups``."""

    dim: int

    def forward(self, x):
        return self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, ladj, _ = self.forward_states(x)
        return standard_normal_log_prob(z) + ladj

    def to_noise(self, x: torch.Tensor) -> torch.Tensor:
        """``z = f(x)``, the flat latent."""
        return self.forward_states(x)[0]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        p = next(self.parameters())
        return self.from_noise(temperature * torch.randn(n, self.dim, device=p.device, dtype=p.dtype))


# ---------------------------------------------------------------- zuko MAF / RealNVP


class ZukoFlow(FlowBase):
    """A zuko flow (``zuko.flows.MAF``, ``RealNVP``, ...) whose intermediate states are read by
    walking ``flow().transform.transforms`` (a ``ComposedTransform``) one step at a time.

    The prior is a standard normal (zuko's default base); ``log_prob`` equals zuko's own.
    """

    def __init__(self, flow):
        super().__init__()
        self.flow = flow
        self.dim = int(flow.base().event_shape[0]) if hasattr(flow.base(), "event_shape") else None

    def _steps(self):
        t = self.flow().transform
        return list(getattr(t, "transforms", [t]))

    def step_groups(self) -> list[int]:
        return [len(self.flow.transform.transforms)]

    def forward_states(self, x):
        states, ladj = [], x.new_zeros(x.shape[0])
        for t in self._steps():
            x, l = t.call_and_ladj(x)
            ladj = ladj + l
            states.append(x)
        return x, ladj, states

    def from_noise(self, z):
        for t in reversed(self._steps()):
            z = t.inv(z)
        return z


@buildable
def maf(features: int, steps: int = 5, hidden: int = 32, layers: int = 2) -> ZukoFlow:
    """Masked autoregressive flow (Papamakarios et al. 2017), zuko's ``MAF`` with ``steps``
    autoregressive transforms (reversed orders alternate) of ``layers`` hidden layers of ``hidden``
    units. Sampling inverts each transform by ``features`` sequential passes."""
    import zuko

    return ZukoFlow(zuko.flows.MAF(features, transforms=steps, hidden_features=[hidden] * layers))


@buildable
def realnvp(features: int, steps: int = 5, hidden: int = 32, layers: int = 2) -> ZukoFlow:
    """RealNVP (Dinh et al. 2017), zuko's ``RealNVP``: affine couplings with alternating masks."""
    import zuko

    return ZukoFlow(zuko.flows.RealNVP(features, transforms=steps, hidden_features=[hidden] * layers))


# ---------------------------------------------------------------- Glow


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, 4C, H/2, W/2)``: each 2x2 block of pixels becomes 4 channels."""
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze`."""
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + b) * exp(s)``, initialized from the first batch so that the
    output has zero mean and unit variance per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _init(self, x):
        m = x.mean(dim=(0, 2, 3), keepdim=True)
        s = x.std(dim=(0, 2, 3), keepdim=True) if x.shape[0] * x.shape[2] * x.shape[3] > 1 else torch.ones_like(m)
        self.loc.copy_(-m)
        self.logs.copy_(-torch.log(s.clamp_min(1e-3)))
        self.initialized.fill_(1)

    def forward(self, x):
        if not self.initialized and self.training:
            self._init(x)
        hw = x.shape[2] * x.shape[3]
        return (x + self.loc) * self.logs.exp(), hw * self.logs.sum().expand(x.shape[0])

    def inverse(self, y):
        return y * (-self.logs).exp() - self.loc


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution ``W = P L (U + diag(sign * exp(log_s)))`` with fixed permutation
    ``P``, unit lower-triangular ``L`` and upper-triangular ``U``; ``log|det W| = sum(log_s)``."""

    def __init__(self, channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, l, u = torch.linalg.lu(w)
        s = torch.diagonal(u)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lmask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.l = nn.Parameter(l)
        self.u = nn.Parameter(torch.triu(u, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self):
        l = self.l * self.lmask + self.eye
        u = self.u * self.lmask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.p @ l @ u

    def forward(self, x):
        w = self.weight()
        hw = x.shape[2] * x.shape[3]
        return F.conv2d(x, w[:, :, None, None]), hw * self.log_s.sum().expand(x.shape[0])

    def inverse(self, y):
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class AffineCoupling(nn.Module):
    """``y_a = x_a``, ``y_b = (x_b + t(x_a)) * sigmoid(s(x_a) + 2)`` (Glow's coupling); the last
    layer of the network is zero-initialized so that the step starts as the identity (up to the
    ``sigmoid(2)`` scale)."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.ca = channels // 2
        cb = channels - self.ca
        pad = kernel // 2
        self.net = nn.Sequential(
            nn.Conv2d(self.ca, hidden, kernel, padding=pad), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, 2 * cb, kernel, padding=pad),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _params(self, xa):
        h = self.net(xa)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x):
        xa, xb = x[:, :self.ca], x[:, self.ca:]
        shift, scale = self._params(xa)
        yb = (xb + shift) * scale
        return torch.cat([xa, yb], 1), scale.log().flatten(1).sum(1)

    def inverse(self, y):
        ya, yb = y[:, :self.ca], y[:, self.ca:]
        shift, scale = self._params(ya)
        return torch.cat([ya, yb / scale - shift], 1)


class GlowStep(nn.Module):
    """ActNorm -> invertible 1x1 convolution -> affine coupling."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvConv1x1(channels), AffineCoupling(channels, hidden, kernel)])

    def forward(self, x):
        ladj = 0.0
        for layer in self.layers:
            x, l = layer(x)
            ladj = ladj + l
        return x, ladj

    def inverse(self, y):
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


@buildable
class Glow(FlowBase):
    """Multi-scale Glow on inputs of shape ``(C, H, W)``.

    ``levels`` levels of ``steps`` steps each (``steps`` may be a list, one count per level);
    with ``squeeze=True`` each level begins with a 2x2 squeeze; every level but the last splits half
    of its channels off as a latent. The flat latent ``z`` of :meth:`forward_states` concatenates
    the split latents in order and then the last level's output, each flattened.
    Tabular data: ``Glow((D, 1, 1), levels=1, steps=K, hidden=h, squeeze=False)``; inputs may be
    ``(N, D)`` (reshaped; states and samples are then ``(N, D)`` too). ``kernel`` defaults to 3 for images and 1 when ``H = W = 1``.
    """

    def __init__(self, in_shape, levels: int = 2, steps=4, hidden: int = 64, squeeze: bool = True,
                 kernel: int | None = None):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = (c, h, w)
        steps = [steps] * levels if isinstance(steps, int) else list(steps)
        if len(steps) != levels:
            raise ValueError(f"steps has {len(steps)} entries for {levels} levels")
        self.do_squeeze = squeeze
        kernel = kernel if kernel is not None else (1 if h == w == 1 else 3)
        self.levels = nn.ModuleList()
        self.z_shapes = []
        for lvl in range(levels):
            if squeeze:
                if h % 2 or w % 2:
                    raise ValueError(f"cannot squeeze a {h}x{w} image at level {lvl}")
                c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList([GlowStep(c, hidden, kernel) for _ in range(steps[lvl])]))
            if lvl < levels - 1:
                zc = c // 2
                self.z_shapes.append((zc, h, w))
                c = c - zc
        self.z_shapes.append((c, h, w))
        self.dim = sum(a * b * d for a, b, d in self.z_shapes)

    def step_groups(self) -> list[int]:
        return [len(lv) for lv in self.levels]

    def _as_image(self, x):
        return x.view(x.shape[0], *self.in_shape) if x.dim() == 2 else x

    def forward_states(self, x):
        flat_input = self.in_shape[1:] == (1, 1)
        h = self._as_image(x)
        ladj = h.new_zeros(h.shape[0])
        states, zs = [], []
        for lvl, steps in enumerate(self.levels):
            if self.do_squeeze:
                h = squeeze(h)
            for step in steps:
                h, l = step(h)
                ladj = ladj + l
                states.append(h.flatten(1) if flat_input else h)
            if lvl < len(self.levels) - 1:
                zc = self.z_shapes[lvl][0]
                zs.append(h[:, :zc])
                h = h[:, zc:]
        zs.append(h)
        return torch.cat([z.flatten(1) for z in zs], 1), ladj, states

    def from_noise(self, z):
        pieces, i = [], 0
        for s in self.z_shapes:
            k = s[0] * s[1] * s[2]
            pieces.append(z[:, i:i + k].reshape(z.shape[0], *s))
            i += k
        h = pieces[-1]
        for lvl in range(len(self.levels) - 1, -1, -1):
            if lvl < len(self.levels) - 1:
                h = torch.cat([pieces[lvl], h], 1)
            for step in reversed(self.levels[lvl]):
                h = step.inverse(h)
            if self.do_squeeze:
                h = unsqueeze(h)
        return h.flatten(1) if self.in_shape[1:] == (1, 1) else h


def slerp_norm(zu: torch.Tensor, zv: torch.Tensor, alpha: float) -> torch.Tensor:
    """Norm-preserving interpolation of latents (Walton et al., Eq. 16):
    ``((1-a) zu + a zv) * ((1-a)|zu| + a|zv|) / |(1-a) zu + a zv|``, norms over non-batch dims."""
    m = (1 - alpha) * zu + alpha * zv
    nu, nv = zu.flatten(1).norm(dim=1), zv.flatten(1).norm(dim=1)
    nm = m.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = ((1 - alpha) * nu + alpha * nv) / nm
    return m * scale.view(-1, *([1] * (m.dim() - 1)))
