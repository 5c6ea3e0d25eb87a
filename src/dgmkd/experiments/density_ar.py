"""The autoregressive parts of ``dgmkd run density-distill``: digits (Huang et al. §4.1.2–4.1.3)
and MNIST-1D sequences (the analogue of their WaveNet setting).

A Gaussian-conditional autoregressive teacher — MADE conditionals on the 8x8 digits (or, with
``img_dataset=mnist``, the embedded 28x28 MNIST digits: 784 dimensions, 256 grey levels), dequantized
and logit-transformed as in §4.1.2, or the causal convolutions of ``CausalConvAutoregressive`` on
MNIST-1D — is fitted by maximum likelihood and distilled into IAF students by each loss of
``img_losses``; ``x_recon_noise`` adds noise to the codes ``T(x)`` (§4.1.3) and ``oracle`` is
x-reconstruction on a pool of teacher samples (oracle prediction, since ``T(T^-1(z)) = z``). Each
model's sample is scored by the teacher's log-likelihood, the Fréchet distance to an independent
teacher sample and to the data, and on digits in the features of the digits classifier with its
class histogram (mode collapse).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from .. import harness
from ..data.digits import dequantize
from ..methods import density
from ..metrics.frechet import frechet_distance, frechet_features
from ..models.autoregressive import CausalConvAutoregressive, GaussianAutoregressive
from ..models.iaf import IAF
from ..train import fit, minibatches

STUDENT_LOSSES = ("reverse_kl", "z_recon", "x_recon", "x_recon_noise", "oracle")
IMAGES = {"digits": (8, 17), "mnist": (28, 256)}  # image data set -> (side, grey levels)


def _image(cfg) -> tuple[str, int, int]:
    """``(data set, side, grey levels)`` of the image part (configs without ``img_dataset``: digits)."""
    ds = getattr(cfg, "img_dataset", "digits")
    return (ds, *IMAGES[ds])


def logit_transform(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """``logit(alpha + (1 - 2 alpha) u)`` of dequantized pixels ``u`` in [0, 1) (§4.1.2)."""
    return torch.logit(alpha + (1 - 2 * alpha) * u)


def to_pixels(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Inverse of :func:`logit_transform`, clamped to [0, 1]."""
    return ((torch.sigmoid(y) - alpha) / (1 - 2 * alpha)).clamp(0, 1)


def _setup(cfg, part: str):
    """A part's train and held-out rows, ``encode(x, generator)`` to the teacher's space, ``view(y)``
    back to pixels or signal values, and the teacher."""
    if part == "digits":
        from ..data import embedded_split

        a, (ds, _, levels) = cfg.img_alpha, _image(cfg)
        tr, te = (embedded_split(ds, s)[0].flatten(1) for s in ("train", "test"))
        return (tr, te, lambda x, g=None: logit_transform(dequantize(x, levels, g), a), lambda y: to_pixels(y, a),
                GaussianAutoregressive(tr.shape[1], hidden=cfg.img_teacher_hidden))
    from ..data.mnist1d import load_mnist1d

    d = load_mnist1d(num_samples=cfg.seq_samples)
    tr, te = d["x"][..., 0], d["x_test"][..., 0]
    return (tr, te, lambda x, g=None: x, lambda y: y,
            CausalConvAutoregressive(tr.shape[1], channels=cfg.seq_teacher_channels, layers=cfg.seq_teacher_layers))


def _sizes(cfg, part: str) -> tuple[int, int, int, int]:
    """Student steps, teacher steps, oracle pool and evaluation sample size of a part."""
    if part == "digits":
        return cfg.img_steps, cfg.img_teacher_steps, cfg.img_oracle_pool, cfg.eval_samples
    return cfg.seq_steps, cfg.seq_teacher_steps, cfg.seq_oracle_pool, cfg.seq_eval_samples


def _nll(cfg, teacher, y: torch.Tensor, part: str) -> float:
    """The teacher's NLL per dimension: nats (sequences); bits of the intensities ``L u`` (images with
    ``L`` grey levels: 17 on the digits, 256 on MNIST)."""
    with torch.no_grad():
        lp = teacher.log_prob(y)
    if part == "sequences":
        return float(-lp.mean() / y.shape[1])
    p = torch.sigmoid(y)
    lp = lp + (math.log(1 - 2 * cfg.img_alpha) - math.log(float(_image(cfg)[2])) - torch.log(p) - torch.log1p(-p)).sum(-1)
    return float(-lp.mean() / (y.shape[1] * math.log(2)))


def distill_student(cfg, name: str, teacher, data: torch.Tensor, encode, pool: torch.Tensor, steps: int,
                    seed: int, desc: str):
    """A fresh IAF student trained by loss ``name`` (:data:`STUDENT_LOSSES`); ``data`` (raw rows,
    ``encode``-d per minibatch) feeds x-reconstruction, ``pool`` (teacher samples) oracle prediction."""
    if name not in STUDENT_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(STUDENT_LOSSES)}")
    harness.manual_seed(seed, desc, "student-init")
    student = IAF(teacher.dim, layers=cfg.img_student_layers, hidden=cfg.img_student_hidden)
    noise = cfg.noise_std_img if name == "x_recon_noise" else 0.0
    obj = density.objective("x_recon" if name in ("x_recon_noise", "oracle") else name, teacher, student,
                            distance=cfg.distance, noise_std=noise)
    draw = minibatches(pool if name == "oracle" else data, batch=cfg.img_batch)
    inputs = draw if name == "oracle" else (lambda: encode(draw()[0])) if "x_recon" in name else cfg.img_batch
    h = fit(obj, student, inputs, steps, lr=cfg.img_lr, grad_clip=cfg.img_grad_clip,
            seed=harness.seed(seed, desc, "student-fit"), progress=cfg.progress, desc=f"{desc} {name}")
    return student.eval(), h


def run_part(cfg, out: Path, part: str, seed: int) -> None:
    """Fit the part's teacher, distil every student; write ``<part>_{results,history}.csv``, ``<part>_teacher.json``."""
    harness.manual_seed(seed, part, "teacher-init")
    (tr, te, encode, view, teacher), (steps, t_steps, pool_n, n) = _setup(cfg, part), _sizes(cfg, part)
    th = fit(lambda a, i: -teacher.log_prob(encode(a[0])).mean(), teacher, minibatches(tr, batch=cfg.img_batch),
             t_steps, lr=cfg.img_teacher_lr, grad_clip=100.0, seed=harness.seed(seed, part, "teacher-fit"),
             progress=cfg.progress, desc=f"{part} teacher")
    teacher.eval().requires_grad_(False)
    harness.save_models(out, {f"teacher-{part}": teacher})
    harness.write_json(out / f"{part}_teacher.json", {
        **{k: _nll(cfg, teacher, encode(x, harness.generator(seed, part, "dequantize", k)), part)
           for k, x in (("train", tr), ("heldout", te))}, "train_rows": len(tr),
        **({"feature_accuracy": _accuracy(_image(cfg)[0])} if part == "digits" and _image(cfg)[0] != "digits" else {})})
    harness.manual_seed(seed, part, "teacher-samples")
    ref, (own, seconds) = teacher.sample(n), _timed(teacher, n)
    pool = teacher.sample(pool_n)
    data = view(encode(torch.cat([tr, te]), harness.generator(seed, part, "dequantize", "all")))
    cnn = _cnn_metrics(view(ref), data, _image(cfg)[0]) if part == "digits" and cfg.img_cnn_metrics else None

    def row(model, xs, secs, final_loss):
        with torch.no_grad():
            ll = teacher.log_prob(xs)
        v = view(xs)
        return {"model": model, "teacher_loglik_mean": float(ll.mean()), "teacher_loglik_std": float(ll.std()),
                "fd_to_teacher": frechet_features(v, view(ref)), "fd_to_data": frechet_features(v, data),
                **(cnn(v) if cnn else {}), "final_loss": final_loss, "sample_seconds": secs}

    rows = [row("teacher", own, seconds, None)]
    shown = {"data": data[:64], "teacher": view(own)[:64]}
    hists = {"teacher": th}
    for name in cfg.img_losses:
        student, hists[name] = distill_student(cfg, name, teacher, tr, encode, pool, steps, seed, part)
        harness.save_models(out, {f"student-{name}-{part}-s{seed}": student})
        harness.manual_seed(seed, part, "student-samples")
        xs, seconds = _timed(student, n)
        rows.append(row(name, xs, seconds, float(np.mean(hists[name]["loss"][-50:]))))
        shown[name] = view(xs)[:64]
    harness.write_csv(out / f"{part}_results.csv", rows)
    harness.write_csv(out / f"{part}_history.csv", [{"model": m, "step": i, "value": v} for m, h in hists.items()
                                                     for i, v in zip(h["step"], h["loss"]) if i % 10 == 0])
    if part == "digits":
        side = _image(cfg)[1]
        harness.image_grid({k: v.view(-1, 1, side, side) for k, v in shown.items()}, out / "digits_samples.png")
    else:
        _plot_signals(shown, out / "sequences_samples.png")


def _accuracy(dataset: str) -> float | None:
    from ..feature_net import embedded_feature_net, feature_accuracy

    embedded_feature_net(dataset)  # trained and cached on first use
    return feature_accuracy(dataset)


@torch.no_grad()
def _timed(model, n: int):
    t0 = time.perf_counter()
    return model.sample(n), time.perf_counter() - t0


def _cnn_metrics(ref_pixels, data_pixels, dataset: str = "digits"):
    """Fréchet distance in the data set's classifier's 64-d features to the teacher's reference sample
    and to the data, and the class histogram of a sample (the share of the most frequent predicted
    class; the number of classes holding >= 5 %)."""
    from ..feature_net import embedded_feature_net

    net, (side, lv) = embedded_feature_net(dataset), IMAGES[dataset]
    # (k + v) / L -> k / (L - 1): dequantized values back onto the data's grey levels
    images = lambda u: ((lv * u - 0.5) / (lv - 1)).clamp(0, 1).view(-1, 1, side, side)  # noqa: E731
    ref, data = images(ref_pixels), images(data_pixels)

    @torch.no_grad()
    def metrics(pix) -> dict:
        x = images(pix)
        share = torch.bincount(net.logits(x).argmax(1), minlength=10).float() / len(x)
        return {"fd_cnn_to_teacher": float(frechet_distance(ref, x, net)),
                "fd_cnn_to_data": float(frechet_distance(data, x, net)),
                "top_class_frac": float(share.max()), "classes_ge_5pct": int((share >= 0.05).sum())}
    return metrics


def _plot_signals(curves: dict[str, torch.Tensor], path: Path):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(2.4 * len(curves), 2.6), sharey=True, squeeze=False)
    for ax, (name, xs) in zip(axes[0], curves.items()):
        for i, x in enumerate(xs[:6]):
            ax.plot(x.numpy() + 4 * i, lw=1)
        ax.set(yticks=[])
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    harness.save_figure(fig, path)


def report_part(cfg, out: Path, part: str) -> list[str]:
    """The part's section of ``report.md``, from its run files."""
    rows = harness.read_csv(out / f"{part}_results.csv", required=("model", "fd_to_teacher", "teacher_loglik_mean"))
    t = harness.read_json(out / f"{part}_teacher.json")
    by, cnn = {r["model"]: r for r in rows}, "fd_cnn_to_teacher" in rows[0]
    steps, _, pool, n = _sizes(cfg, part)
    students = (f"Students: IAF, {cfg.img_student_layers} layers, hidden {list(cfg.img_student_hidden)}, Adam "
                f"{cfg.img_lr}, {cfg.distance}, {steps} steps; oracle pool {pool} teacher samples; {n} samples per model.")
    if part == "digits":
        ds, side, lv = _image(cfg)
        acc = f", held-out accuracy {t['feature_accuracy']:.3f}" if t.get("feature_accuracy") else ""
        lines = [("## Digits" if ds == "digits" else "## MNIST (28x28)")
                 + ": MADE autoregressive teacher distilled into IAF students (§4.1.2–4.1.3)", "",
                 f"Teacher: MADE hidden {list(cfg.img_teacher_hidden)}, {cfg.img_teacher_steps} maximum-likelihood "
                 f"steps on {t['train_rows']} training digits; bits/dim (intensity units 0..{lv}): train "
                 f"{t['train']:.3f}, test {t['heldout']:.3f}. {students}", "",
                 f"FD pixels: Fréchet distance of Gaussians fitted to the {side * side} pixel values in [0, 1]. FD CNN: "
                 f"the same in the 64-d features of the project's {ds} classifier (`dgmkd.metrics.features`{acc}; not "
                 "an Inception FID). top class: share of samples in the classifier's most frequent class; classes: "
                 "classes holding >= 5 % of the samples. Sample grids: `digits_samples.png`.", ""]
        head = ["FD pixels → teacher", "FD pixels → data", *(["FD CNN → teacher", "FD CNN → data"] if cnn else [])]
    else:
        lines = ["## Sequences: WaveNet-style teacher on MNIST-1D distilled into IAF students", "",
                 f"Teacher: causal convolutions, {cfg.seq_teacher_channels} channels, {cfg.seq_teacher_layers} gated "
                 f"dilated blocks, {cfg.seq_teacher_steps} maximum-likelihood steps on {t['train_rows']} signals; nats "
                 f"per step (standardized signal): train {t['train']:.3f}, test {t['heldout']:.3f}. {students}", "",
                 "FD: Fréchet distance of Gaussians fitted to the 40-d signals. Samples: `sequences_samples.png`.", ""]
        head = ["FD → teacher", "FD → data"]
    keys = ["fd_to_teacher", "fd_to_data"] + (["fd_cnn_to_teacher", "fd_cnn_to_data"] if cnn else [])
    lines += harness.table(
        ["model", "teacher log-lik of samples: mean (sd)", *head, *(["top class", "classes"] if cnn else []),
         "final loss", "sampling s"],
        [[r["model"], f"{r['teacher_loglik_mean']:.1f} ({r['teacher_loglik_std']:.1f})",
          *(harness.fmt(r[k]) for k in keys), *([f"{r['top_class_frac']:.2f}", r["classes_ge_5pct"]] if cnn else []),
          harness.fmt(r["final_loss"]), f"{r['sample_seconds']:.3f}"] for r in rows])
    lines += ["", "The teacher's row compares two independent teacher samples (the noise floor). One seed: "
              "differences of a few times the noise floor are not resolved.", ""]
    ev, ins = [m for m in ("reverse_kl", "z_recon") if m in by], [m for m in ("x_recon", "oracle") if m in by]
    if ev and ins:
        k = keys[2] if cnn else keys[0]
        best_ev, worst_in = min(by[m][k] for m in ev), max(by[m][k] for m in ins)
        lines += [f"Huang et al. find that the evaluative losses (reverse KL, z-reconstruction) collapse onto few "
                  f"modes while the instructive ones (x-reconstruction, oracle) cover the teacher. Here the closest "
                  f"evaluative student is at {head[keys.index(k)][:-10]} {harness.fmt(best_ev)} from the teacher's "
                  f"samples, the farthest instructive one at {harness.fmt(worst_in)}: the ordering "
                  + ("holds." if best_ev > worst_in else "does not hold.")
                  + (" Top-class share: " + ", ".join(f"{m} {by[m]['top_class_frac']:.2f}" for m in ev + ins)
                     + f" (teacher {by['teacher']['top_class_frac']:.2f})." if cnn else "")]
    return lines + [""]
