"""Digits part of ``dgmkd run density-distill`` (Huang et al., UAI 2019, §4.1.2–4.1.3, Fig. 4–5).

A Gaussian-conditional autoregressive teacher (MADE conditionals — the masked, fully-connected
analogue of their PixelCNN++ with "a single Gaussian conditional") is fitted by maximum likelihood
to scikit-learn's bundled 8x8 digits, dequantized with uniform noise and logit-transformed as in
§4.1.2. It is then distilled into IAF students (one parallel pass to sample) by each loss:

* ``reverse_kl`` — Eq. (2);
* ``z_recon`` — ``d(z, T(S(z)))``;
* ``x_recon`` — ``d(x, S(T(x)))`` on the (dequantized) training digits;
* ``x_recon_noise`` — the same with Gaussian noise (std ``noise_std``) added to the encodings
  ``T(x)`` (§4.1.3; their "N(0, 0.5)");
* ``oracle`` — ``d(T^-1(z), S(z))``. Its targets come from a pool of teacher samples drawn once
  (the "dataset of T^-1(z) samples" of §4): since ``T(T^-1(z)) = z`` exactly, x-reconstruction on
  that pool *is* oracle prediction, so the pool is fed to :func:`~dgmkd.methods.density.x_reconstruction`.

Evaluation on 1000 samples each: the teacher log-likelihood of student samples (mode collapse /
concentration raises it above the teacher's own samples'), and the Fréchet distance between
student and teacher samples in pixel space and in the feature space of the project's cached
digits classifier (:mod:`dgmkd.metrics.features`), and that classifier's class histogram of the
samples (the share of the most frequent class exposes mode collapse).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..methods import density
from ..models.autoregressive import GaussianAutoregressive
from ..models.iaf import IAF
from ..train import train

STUDENT_LOSSES = ("reverse_kl", "z_recon", "x_recon", "x_recon_noise", "oracle")


def load_digits_tensor() -> torch.Tensor:
    """The 1797 8x8 digits of scikit-learn (integer intensities 0..16), shape (1797, 64)."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32)


def dequantize_logit(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Uniform dequantization of 17 intensity levels to (0, 1), then ``logit(alpha + (1-2 alpha) u)``
    (the preprocessing of §4.1.2; ``alpha`` keeps the logit finite)."""
    u = (x + torch.rand_like(x)) / 17.0
    p = alpha + (1 - 2 * alpha) * u
    return torch.log(p) - torch.log1p(-p)


def to_pixels(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Inverse of :func:`dequantize_logit` (without the noise), clamped to [0, 1]."""
    return ((torch.sigmoid(y) - alpha) / (1 - 2 * alpha)).clamp(0, 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sample sets (rows = samples)."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # sqrt(S1 S2) via the symmetric form sqrt(sqrt(S1) S2 sqrt(S1)) (same trace, stable)
    w, v = linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    w2 = linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(w2, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _batches(data: torch.Tensor, batch: int, alpha: float):
    def draw():
        idx = torch.randint(len(data), (batch,))
        return dequantize_logit(data[idx], alpha)
    return draw


def fit_teacher(cfg, teacher, sampler, steps: int, lr: float, desc: str) -> dict:
    """Maximum likelihood (one parallel density pass per batch) through :func:`dgmkd.train`; the
    teacher is frozen afterwards."""
    opt = torch.optim.Adam(teacher.parameters(), lr=lr)

    def teacher_step(args, step):
        (x,) = args
        nll = -teacher.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        nll.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 100.0)
        opt.step()
        return {"nll": nll.detach()}

    h = train(teacher_step, sampler, steps, state={"teacher": teacher, "optimizer": opt}, seed=cfg.seed,
              progress=cfg.progress, desc=desc)
    teacher.eval().requires_grad_(False)
    return h


def distill_student(cfg, name: str, teacher, data_sampler, pool: torch.Tensor, desc: str, steps: int | None = None):
    """Train a fresh IAF student by loss ``name`` (one of :data:`STUDENT_LOSSES`) with
    :func:`dgmkd.methods.density.make_step` and :func:`dgmkd.train`. ``data_sampler()`` draws a data
    batch (x-reconstruction); ``pool`` holds teacher samples (oracle prediction); ``steps``
    defaults to ``cfg.img_steps``."""
    if name not in STUDENT_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(STUDENT_LOSSES)}")
    torch.manual_seed(cfg.seed + 1)
    student = IAF(teacher.dim, layers=cfg.img_student_layers, hidden=cfg.img_student_hidden)
    sopt = torch.optim.Adam(student.parameters(), lr=cfg.img_lr)
    base = {"x_recon_noise": "x_recon", "oracle": "x_recon"}.get(name, name)
    noise = cfg.noise_std_img if name == "x_recon_noise" else 0.0
    step_fn = density.make_step(base, teacher, student, sopt, distance=cfg.distance, noise_std=noise,
                                grad_clip=cfg.img_grad_clip)
    if name in ("x_recon", "x_recon_noise"):
        inputs = data_sampler
    elif name == "oracle":
        inputs = lambda: pool[torch.randint(len(pool), (cfg.img_batch,))]  # noqa: E731
    else:
        inputs = cfg.img_batch
    h = train(step_fn, inputs, cfg.img_steps if steps is None else steps, state={"student": student, "optimizer": sopt},
              seed=cfg.seed,
              progress=cfg.progress, desc=desc)
    return student.eval(), h


def run_digits(cfg, out: Path) -> dict:
    out = Path(out)
    torch.manual_seed(cfg.seed)
    data = load_digits_tensor()
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = len(data) // 6
    val, tr = data[perm[:n_val]], data[perm[n_val:]]
    dim = data.shape[1]
    alpha = cfg.img_alpha

    # ---------------------------------------------------------------- teacher: MLE
    teacher = GaussianAutoregressive(dim, hidden=cfg.img_teacher_hidden)
    print(f"digits: fitting the autoregressive teacher ({cfg.img_teacher_steps} steps)")
    th = fit_teacher(cfg, teacher, _batches(tr, cfg.img_batch, alpha), cfg.img_teacher_steps, cfg.img_teacher_lr,
                     "digits teacher")

    def bits_per_dim(x_int):
        # log-likelihood of the dequantized logit data mapped back to [0, 17) intensity units:
        # log p(u) = log p(y) + log|dy/du|, y = logit(alpha + (1 - 2 alpha) u / 17)
        torch.manual_seed(cfg.seed + 3)
        y = dequantize_logit(x_int, alpha)
        p = torch.sigmoid(y)
        log_jac = (math.log(1 - 2 * alpha) - math.log(17.0) - torch.log(p) - torch.log1p(-p)).sum(-1)
        with torch.no_grad():
            lp = teacher.log_prob(y) + log_jac
        return float(-lp.mean() / (dim * math.log(2)))

    bpd_train, bpd_val = bits_per_dim(tr), bits_per_dim(val)
    print(f"  teacher bits/dim (intensity units 0..17): train {bpd_train:.3f}  val {bpd_val:.3f}")

    n_eval = cfg.eval_samples
    torch.manual_seed(cfg.seed + 5)
    with torch.no_grad():
        x_ref = teacher.sample(n_eval)  # the reference sample every model is compared with
        t0 = time.perf_counter()
        x_teacher = teacher.sample(n_eval)  # the teacher's own row: an independent sample, same size
        t_teacher = time.perf_counter() - t0
        ll_teacher = teacher.log_prob(x_teacher)
        pool = teacher.sample(cfg.img_oracle_pool)  # the oracle's (z, T^-1(z)) data set, z = T(x)
    pix_ref = to_pixels(x_ref, alpha).numpy()
    pix_teacher = to_pixels(x_teacher, alpha).numpy()
    torch.manual_seed(cfg.seed + 6)
    pix_data = to_pixels(dequantize_logit(data, alpha), alpha).numpy()
    metrics = _FeatureMetrics(pix_ref, pix_data) if cfg.img_cnn_metrics else None

    def row(model, pix, ll, final_loss, seconds):
        r = {"model": model, "teacher_loglik_mean": float(ll.mean()), "teacher_loglik_std": float(ll.std()),
             "fd_pixels_to_teacher": frechet_distance(pix, pix_ref), "fd_pixels_to_data": frechet_distance(pix, pix_data),
             "final_loss": final_loss, "sample_seconds": seconds}
        if metrics is not None:
            r.update(metrics(pix))
        return r

    results = [row("teacher", pix_teacher, ll_teacher, float("nan"), t_teacher)]
    grids = {"data": pix_data[:64], "teacher": pix_teacher[:64]}
    hist_rows = [{"model": "teacher", "step": s, "value": v} for s, v in zip(th["step"], th["nll"]) if s % 10 == 0]

    # ---------------------------------------------------------------- students
    for name in cfg.img_losses:
        print(f"digits: distilling with {name} ({cfg.img_steps} steps)")
        student, h = distill_student(cfg, name, teacher, _batches(tr, cfg.img_batch, alpha), pool, f"digits {name}")
        hist_rows += [{"model": name, "step": s, "value": v} for s, v in zip(h["step"], h["loss"]) if s % 10 == 0]
        student.eval()
        torch.manual_seed(cfg.seed + 5)
        with torch.no_grad():
            t0 = time.perf_counter()
            xs = student.sample(n_eval)
            t_s = time.perf_counter() - t0
            ll = teacher.log_prob(xs)
        pix = to_pixels(xs, alpha).numpy()
        grids[name] = pix[:64]
        results.append(row(name, pix, ll, float(np.mean(h["loss"][-50:])), t_s))
        r = results[-1]
        cnn = (f"  FD(CNN) {r['fd_cnn_to_teacher']:.2f}  top-class {r['top_class_frac']:.2f}"
               if metrics is not None else "")
        print(f"  {name:14s} FD(pixels) to teacher {r['fd_pixels_to_teacher']:.3f}{cnn}  "
              f"teacher loglik {r['teacher_loglik_mean']:.1f} (teacher's own {results[0]['teacher_loglik_mean']:.1f})")

    rundir.write_csv(out / "digits_results.csv", results)
    rundir.write_csv(out / "digits_history.csv", hist_rows)
    _grid_png(grids, out / "digits_samples.png")
    return {"results": results, "bpd_train": bpd_train, "bpd_val": bpd_val}


def pixels_to_images(pix: np.ndarray) -> torch.Tensor:
    """Map dequantized pixels ``u in [0, 1]`` (intensity ``~ 17 u - 1/2``) to the ``v / 16`` scale of
    :func:`dgmkd.data.digits.load_digits`, shaped ``(N, 1, 8, 8)`` for the digits-CNN."""
    t = torch.as_tensor(pix, dtype=torch.float32)
    return ((17 * t - 0.5) / 16).clamp(0, 1).view(-1, 1, 8, 8)


class _FeatureMetrics:
    """Digits-CNN metrics (:mod:`dgmkd.metrics.features`, the project's cached classifier): Fréchet
    distance in its 64-d feature space to the teacher's reference samples and to the data, and the
    class histogram of the samples (mode collapse: the share of the most frequent predicted class,
    the number of classes holding >= 5 % of the samples)."""

    def __init__(self, pix_ref, pix_data):
        from ..feature_net import digits_feature_net

        self.net = digits_feature_net()
        self.ref, self.data = pixels_to_images(pix_ref), pixels_to_images(pix_data)

    def __call__(self, pix) -> dict:
        from ..metrics.frechet import frechet_distance as fd

        imgs = pixels_to_images(pix)
        with torch.no_grad():
            counts = torch.bincount(self.net.logits(imgs).argmax(1), minlength=10).float() / len(imgs)
        return {"fd_cnn_to_teacher": float(fd(self.ref, imgs, self.net)),
                "fd_cnn_to_data": float(fd(self.data, imgs, self.net)),
                "top_class_frac": float(counts.max()), "classes_ge_5pct": int((counts >= 0.05).sum())}


def _grid_png(grids: dict[str, np.ndarray], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(grids), figsize=(2.3 * len(grids), 2.6))
    for ax, (name, imgs) in zip(np.atleast_1d(axes), grids.items()):
        n = int(math.sqrt(len(imgs)))
        tile = imgs[: n * n].reshape(n, n, 8, 8).transpose(0, 2, 1, 3).reshape(8 * n, 8 * n)
        ax.imshow(tile, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def digits_report(summary: dict, cfg) -> list[str]:
    lines = ["", "## Digits: autoregressive (MADE) teacher distilled into an IAF student (§4.1.2–4.1.3)", "",
             f"teacher: MADE hidden {cfg.img_teacher_hidden}, {cfg.img_teacher_steps} MLE steps; bits/dim (intensity "
             f"units): train {summary['bpd_train']:.3f}, val {summary['bpd_val']:.3f}. Students: IAF "
             f"{cfg.img_student_layers} layers, hidden {cfg.img_student_hidden}, {cfg.img_steps} steps, Adam "
             f"{cfg.img_lr}, {cfg.distance}; noise std for x_recon_noise {cfg.noise_std_img}.", "",
             "FD (pixels) = Fréchet distance of Gaussians fitted to the 64 pixel values in [0, 1]; FD (digits-CNN) "
             "= Fréchet distance in the 64-d features of the project's cached digits classifier "
             "(`dgmkd.metrics.features`), not an Inception FID. 'to teacher' compares with a reference sample of "
             "the teacher; the teacher's own row uses an independent sample of the same size (the noise floor). "
             "top class = share of samples in the most frequent predicted digit class; classes = number of "
             "classes with >= 5 % of the samples (mode collapse shows there).", "",
             "| model | teacher log-lik of samples (mean±sd) | FD pixels → teacher | FD pixels → data | "
             "FD digits-CNN → teacher | FD digits-CNN → data | top class | classes | final loss | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["results"]:
        cnn = (f"{r['fd_cnn_to_teacher']:.2f} | {r['fd_cnn_to_data']:.2f} | {r['top_class_frac']:.2f} | "
               f"{r['classes_ge_5pct']}" if "fd_cnn_to_teacher" in r else "– | – | – | –")
        lines.append(f"| {r['model']} | {r['teacher_loglik_mean']:.1f}±{r['teacher_loglik_std']:.1f} | "
                     f"{r['fd_pixels_to_teacher']:.3f} | {r['fd_pixels_to_data']:.3f} | {cnn} | {r['final_loss']:.3f} | "
                     f"{r['sample_seconds']:.3f} |")
    lines += ["", "Sample grids: `digits_samples.png`."]
    return lines
