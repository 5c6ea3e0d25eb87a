"""Normalizing-flow distillation (Walton et al., "Distilling Normalizing Flows"): Tables 1, 2, 4, 6.

Tabular part (Table 1 / Table 2 analogue): on offline data sets (Old Faithful, wine, breast
cancer, 8x8 patches of scikit-learn's sample photographs with the BSDS300 protocol) a teacher flow
(MAF: 6 steps, hidden 32; tabular Glow: 6 steps, hidden 64) is trained by maximum likelihood; then
students (MAF: 3 steps, hidden 32; Glow: 3 steps, hidden 32) are trained from the same
initialization per seed as a plain student (NLL only), and with LKD, ILKD and SKD (Eq. 15 with the
paper's weights, L1 distance), and evaluated by test log-likelihood (nats), mean ± std over seeds.
Inference time per batch and parameter counts, teacher vs student.

Image part (Table 4 / Table 6 analogue): a multi-scale Glow (2 levels) on the embedded 8x8 digits,
dequantized; teacher vs plain and ILKD students (fewer steps, fewer hidden units): test bits/dim,
Fréchet distance in the digits-CNN feature space (*not* Inception FID) of samples at temperature
0.7 and 1.0, sample grids, and FD of norm-preserving latent interpolations (Eq. 16) at the two
temperatures.

Models, losses and their mapping to the unified losses: :mod:`dgmkd.methods.flow_kd`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import rundir
from ..methods.flow_kd import WEIGHTS, evaluate_nll, fit
from ..models.flows import Glow, maf, slerp_norm
from ..train import NonFiniteLossError

DESCRIPTION = "flow distillation (Walton et al.): LKD/ILKD/SKD students of MAF and Glow, tabular + digits"


@dataclass
class Config:
    datasets: tuple[str, ...] = ("faithful", "wine", "breast_cancer", "patches")
    archs: tuple[str, ...] = ("maf", "glow")
    methods: tuple[str, ...] = ("student", "lkd", "ilkd", "skd")
    seeds: int = 3
    # (steps, hidden) of teacher and student per architecture (paper Table 3; Glow: see docs)
    maf_teacher: tuple[int, int] = (6, 32)
    maf_student: tuple[int, int] = (3, 32)
    glow_teacher: tuple[int, int] = (6, 64)
    glow_student: tuple[int, int] = (3, 32)
    teacher_steps: int = 1000
    student_steps: int = 500
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 50
    grad_clip: float = 10.0
    eval_every: int = 50
    prior_batch: int = 128
    skd_temperature: float = 1.0
    skip: tuple[str, ...] = ("maf:patches:skd",)  # arch:dataset:method combinations not run (cost, see docs)
    patches: dict[str, int] = field(default_factory=lambda: {"n_train": 10000, "n_val": 1000, "n_test": 5000})
    speed_batch: int = 1000
    speed_repeats: int = 20
    # image part
    images: bool = True
    image_levels: int = 2
    image_teacher: tuple[int, int] = (8, 64)
    image_student: tuple[int, int] = (2, 32)
    image_teacher_steps: int = 1500
    image_student_steps: int = 800
    image_batch: int = 64
    image_lr: float = 1e-3
    image_seeds: int = 1
    image_samples: int = 1000
    seed: int = 0
    progress: bool = True


QUICK = {"datasets": ("faithful", "wine"), "seeds": 1, "teacher_steps": 150, "student_steps": 60,
         "eval_every": 30, "speed_repeats": 3, "image_teacher_steps": 80, "image_student_steps": 40,
         "image_teacher": (4, 32), "image_student": (2, 16), "image_samples": 300, "progress": False}


def _make(arch: str, dim: int, steps_hidden):
    k, h = steps_hidden
    if arch == "maf":
        return maf(dim, steps=k, hidden=h)
    if arch == "glow":
        return Glow((dim, 1, 1), levels=1, steps=k, hidden=h, squeeze=False)
    raise ValueError(f"unknown architecture {arch!r}")


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def time_ms(fn, x, repeats: int) -> tuple[float, float]:
    fn(x)  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        ts.append((time.perf_counter() - t0) * 1e3)
    ts = torch.tensor(ts)
    return float(ts.median()), float(ts.std()) if len(ts) > 1 else 0.0


def _data(name, cfg):
    from ..data.tabular import load_tabular

    return load_tabular(name, **(dict(cfg.patches) if name == "patches" else {}))


def run(cfg: Config, out: Path) -> dict:
    torch.set_num_threads(1)
    rows, speed, timing = [], [], {}
    t_start = time.time()
    for ds in cfg.datasets:
        tr, va, te = _data(ds, cfg)
        dim = tr.shape[1]
        for arch in cfg.archs:
            tcfg, scfg = getattr(cfg, f"{arch}_teacher"), getattr(cfg, f"{arch}_student")
            t0 = time.time()
            torch.manual_seed(cfg.seed)
            teacher = _make(arch, dim, tcfg)
            fit(teacher, tr, cfg.teacher_steps, batch=cfg.batch, lr=cfg.lr, warmup=cfg.warmup,
                grad_clip=cfg.grad_clip, x_val=va, eval_every=cfg.eval_every, seed=cfg.seed,
                progress=cfg.progress, desc=f"{ds}/{arch}/teacher")
            teacher.eval()
            rows.append({"dataset": ds, "arch": arch, "model": "teacher", "seed": cfg.seed, "dim": dim,
                         "test_ll": -evaluate_nll(teacher, te), "val_ll": -evaluate_nll(teacher, va),
                         "params": n_params(teacher), "status": "ok"})
            print(f"{ds}/{arch}: teacher test LL {rows[-1]['test_ll']:.3f}", flush=True)
            for seed in range(cfg.seeds):
                for method in cfg.methods:
                    if f"{arch}:{ds}:{method}" in cfg.skip:
                        rows.append({"dataset": ds, "arch": arch, "model": method, "seed": seed, "dim": dim,
                                     "test_ll": float("nan"), "val_ll": float("nan"), "status": "skipped"})
                        continue
                    torch.manual_seed(1000 + seed)
                    student = _make(arch, dim, scfg)
                    status = "ok"
                    try:
                        fit(student, tr, cfg.student_steps, teacher=teacher, method=method, batch=cfg.batch,
                            lr=cfg.lr, warmup=cfg.warmup, grad_clip=cfg.grad_clip, x_val=va,
                            eval_every=cfg.eval_every, prior_batch=cfg.prior_batch,
                            temperature=cfg.skd_temperature, seed=1000 + seed, progress=cfg.progress,
                            desc=f"{ds}/{arch}/{method}/s{seed}")
                    except (NonFiniteLossError, ValueError) as e:  # SKD can diverge (the paper's MAF SKD row);
                        # ValueError: torch's first-step argument check found a non-finite teacher sample
                        status = f"diverged: {str(e).splitlines()[0][:200]}"
                    ll = -evaluate_nll(student, te)
                    if not math.isfinite(ll):
                        status = "non-finite test LL"
                    rows.append({"dataset": ds, "arch": arch, "model": method, "seed": seed, "dim": dim,
                                 "test_ll": ll, "val_ll": -evaluate_nll(student, va), "params": n_params(student),
                                 "status": status})
                    print(f"{ds}/{arch}/{method}/seed {seed}: test LL {ll:.3f} ({status})", flush=True)
                rundir.write_csv(out / "tabular.csv", rows)
            # Table 2: density evaluation time per batch
            xb = te[:cfg.speed_batch]
            if len(xb) < cfg.speed_batch:
                xb = te[torch.randint(len(te), (cfg.speed_batch,), generator=torch.Generator().manual_seed(0))]
            student = _make(arch, dim, scfg).eval()
            tm, ts = time_ms(teacher.log_prob, xb, cfg.speed_repeats)
            sm, ss = time_ms(student.log_prob, xb, cfg.speed_repeats)
            speed.append({"dataset": ds, "arch": arch, "teacher_ms": tm, "teacher_ms_std": ts, "student_ms": sm,
                          "student_ms_std": ss, "teacher_kparams": n_params(teacher) / 1e3,
                          "student_kparams": n_params(student) / 1e3, "speedup": tm / sm})
            rundir.write_csv(out / "speed.csv", speed)
            timing[f"{ds}/{arch}"] = time.time() - t0
    if cfg.images:
        t0 = time.time()
        run_images(cfg, out)
        timing["images"] = time.time() - t0
    timing["total"] = time.time() - t_start
    rundir.write_json(out / "timing.json", timing)
    text = report(out)
    return {"report": text, "timing": timing}


# ---------------------------------------------------------------- images (Glow on digits)

N_BINS = 17  # digits take the values k/16, k = 0..16


def dequantize(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Digits in {0, 1/16, ..., 1} -> continuous in [-0.5, 0.5): ``(k + u) / 17 - 0.5``."""
    k = torch.round(x * 16)
    return (k + torch.rand(x.shape, generator=gen)) / N_BINS - 0.5


def to_image(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.5).clamp(0, 1)


def bits_per_dim(flow, x_deq: torch.Tensor) -> float:
    d = x_deq[0].numel()
    return (evaluate_nll(flow, x_deq) + d * math.log(N_BINS)) / (d * math.log(2))


@torch.no_grad()
def interpolations(flow, x: torch.Tensor, n: int, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Decoded norm-preserving interpolations (Eq. 16) between random pairs of encoded images,
    at alpha in {0.25, 0.5, 0.75}, latents scaled by ``temperature``."""
    out = []
    per = max(1, n // 3)
    i = torch.randint(len(x), (per,), generator=gen)
    j = torch.randint(len(x), (per,), generator=gen)
    zu, zv = flow.transform(x[i]), flow.transform(x[j])
    for a in (0.25, 0.5, 0.75):
        out.append(flow.inverse(temperature * slerp_norm(zu, zv, a)))
    return to_image(torch.cat(out))


def _finite(x: torch.Tensor) -> torch.Tensor:
    return x[torch.isfinite(x.flatten(1)).all(1)]


def run_images(cfg: Config, out: Path) -> None:
    from ..data.digits import digits_split
    from ..feature_net import digits_feature_net
    from ..metrics import frechet_distance

    xtr, _ = digits_split("train")
    xte, _ = digits_split("test")
    g = torch.Generator().manual_seed(cfg.seed)
    te_deq = dequantize(xte, g)
    n_val = 150
    va_deq, tr_all = dequantize(xtr[:n_val], g), xtr[n_val:]
    net = digits_feature_net()
    real = xte

    rows, samples = [], {}

    def train_glow(model, steps, teacher=None, method="student", seed=0, desc=""):
        x_deq = dequantize(tr_all, torch.Generator().manual_seed(seed + 99))
        return fit(model, x_deq, steps, teacher=teacher, method=method, batch=cfg.image_batch, lr=cfg.image_lr,
                   warmup=cfg.warmup, grad_clip=cfg.grad_clip, x_val=va_deq, eval_every=cfg.eval_every,
                   seed=seed, progress=cfg.progress, desc=desc)

    def evaluate(model, name, seed):
        gen = torch.Generator().manual_seed(123)
        r = {"model": name, "seed": seed, "test_bpd": bits_per_dim(model, te_deq), "params": n_params(model)}
        for T in (1.0, 0.7):
            torch.manual_seed(1234)
            s = _finite(to_image(model.sample(cfg.image_samples, temperature=T)))
            r[f"nonfinite_T{T}"] = cfg.image_samples - len(s)  # samples with inf/nan pixels, left out of FD
            r[f"fd_T{T}"] = float(frechet_distance(real, s, net))
            si = interpolations(model, te_deq, cfg.image_samples, T, gen)
            r[f"nonfinite_interp_T{T}"] = len(si) - len(_finite(si))
            r[f"fd_interp_T{T}"] = float(frechet_distance(real, _finite(si), net))
            if T == 0.7 and seed == 0:
                samples[name] = s[:64]
        tm, _ = time_ms(model.log_prob, te_deq, cfg.speed_repeats)
        r["ms_per_batch"] = tm
        return r

    torch.manual_seed(cfg.seed)
    k, h = cfg.image_teacher
    teacher = Glow((1, 8, 8), levels=cfg.image_levels, steps=k, hidden=h)
    train_glow(teacher, cfg.image_teacher_steps, seed=cfg.seed, desc="digits/teacher")
    teacher.eval()
    rows.append(evaluate(teacher, "teacher", cfg.seed))
    print(f"digits/glow teacher: {rows[-1]}", flush=True)
    for seed in range(cfg.image_seeds):
        for method in ("student", "ilkd"):
            torch.manual_seed(2000 + seed)
            k, h = cfg.image_student
            s = Glow((1, 8, 8), levels=cfg.image_levels, steps=k, hidden=h)
            try:
                train_glow(s, cfg.image_student_steps, teacher=teacher, method=method, seed=2000 + seed,
                           desc=f"digits/{method}/s{seed}")
                status = "ok"
            except (NonFiniteLossError, ValueError) as e:
                status = f"diverged: {str(e).splitlines()[0][:200]}"
            s.eval()
            rows.append({**evaluate(s, method, seed), "status": status})
            print(f"digits/glow {method} seed {seed}: {rows[-1]}", flush=True)
        rundir.write_csv(out / "images.csv", rows)
    rundir.write_csv(out / "images.csv", rows)
    real_grid = xte[:64]
    _grid({"data": real_grid, **samples}, out / "samples_T0.7.png")


def _grid(named: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(named), figsize=(3 * len(named), 3.2))
    for ax, (name, imgs) in zip(axes, named.items()):
        n = int(math.sqrt(len(imgs)))
        g = imgs[:n * n, 0].reshape(n, n, 8, 8).permute(0, 2, 1, 3).reshape(n * 8, n * 8)
        ax.imshow(g.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- report


def _read_csv(path: Path):
    import csv

    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def _mean_std(vals):
    t = torch.tensor(vals, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(t) > 1 else 0.0


def report(out: Path) -> str:
    """(Re)build ``report.md`` from ``tabular.csv``, ``speed.csv``, ``images.csv``, ``timing.json``."""
    out = Path(out)
    tab = _read_csv(out / "tabular.csv")
    lines = ["# Flow distillation (Walton et al.): LKD / ILKD / SKD", ""]
    cfg_path = out / "config.json"
    if cfg_path.exists():
        lines += [f"Config: `{cfg_path.name}` in this run directory.", ""]
    if tab:
        dss = list(dict.fromkeys(r["dataset"] for r in tab))
        archs = list(dict.fromkeys(r["arch"] for r in tab))
        lines += ["## Table 1 analogue: test log-likelihood (nats, higher is better), mean ± std over seeds", "",
                  "| arch | model | " + " | ".join(dss) + " |", "|---|---|" + "---|" * len(dss)]
        wins = {}
        for arch in archs:
            means = {}
            for model in ("student", "lkd", "ilkd", "skd", "teacher"):
                cells = []
                for ds in dss:
                    rs = [r for r in tab if r["arch"] == arch and r["model"] == model and r["dataset"] == ds]
                    ok = [float(r["test_ll"]) for r in rs if r["status"] == "ok" and math.isfinite(float(r["test_ll"]))]
                    bad = len(rs) - len(ok)
                    if not rs:
                        cells.append("")
                    elif not ok:
                        cells.append("— (" + rs[0]["status"].split(":")[0] + ")")
                    else:
                        m, s = _mean_std(ok)
                        if not bad:  # a method with failed seeds is not compared on its surviving ones
                            means[(model, ds)] = (m, s)
                        cells.append(f"{m:.3f} ± {s:.3f}" + (f" ({bad} of {len(rs)} failed)" if bad else ""))
                if any(cells):
                    lines.append(f"| {arch} | {model} | " + " | ".join(cells) + " |")
            for ds in dss:
                if ("student", ds) in means:
                    cands = [(means[(m, ds)][0], m) for m in ("lkd", "ilkd", "skd") if (m, ds) in means]
                    if not cands:
                        continue
                    bm, bname = max(cands)
                    gap = bm - means[("student", ds)][0]
                    per_seed = {r["seed"]: float(r["test_ll"]) for r in tab if r["arch"] == arch and r["dataset"] == ds
                                and r["model"] == "student"}
                    paired = [float(r["test_ll"]) - per_seed[r["seed"]] for r in tab if r["arch"] == arch
                              and r["dataset"] == ds and r["model"] == bname and r["seed"] in per_seed]
                    wins[(arch, ds)] = (gap > 0, bname, gap, bool(paired) and all(d > 0 for d in paired))
        lines += ["", "Some distilled student beats the plain student (mean test LL over seeds; methods with a "
                  "failed seed are left out; 'every seed' = better than the plain student of the same seed, "
                  "which starts from the same initialization, in every seed):", ""]
        for arch in archs:
            w = [(ds, wins[(arch, ds)]) for ds in dss if (arch, ds) in wins]
            n = sum(1 for _, v in w if v[0])
            nc = sum(1 for _, v in w if v[0] and v[3])
            lines.append(f"- {arch}: {n} of {len(w)} data sets, {nc} in every seed (" + ", ".join(
                f"{ds}: " + (f"yes, {m} {g:+.3f}" + (" every seed" if c else " not every seed") if b else f"no ({m} {g:+.3f})")
                for ds, (b, m, g, c) in w) + ")")
        fails = [r for r in tab if r["status"] not in ("ok", "skipped")]
        skipped = sorted({f"{r['arch']}/{r['dataset']}/{r['model']}" for r in tab if r["status"] == "skipped"})
        if fails:
            lines += ["", "Runs that failed (reported, not hidden):", ""]
            lines += [f"- {r['arch']}/{r['dataset']}/{r['model']}/seed {r['seed']}: {r['status'][:160]}" for r in fails]
        if skipped:
            lines += ["", "Not run (configured `skip`): " + ", ".join(skipped)]
    sp = _read_csv(out / "speed.csv")
    if sp:
        lines += ["", "## Table 2 analogue: density evaluation time per batch and parameters", "",
                  "| data set | arch | teacher ms | student ms | speed-up | teacher K params | student K params |",
                  "|---|---|---|---|---|---|---|"]
        for r in sp:
            lines.append(f"| {r['dataset']} | {r['arch']} | {float(r['teacher_ms']):.2f} ± {float(r['teacher_ms_std']):.2f} | "
                         f"{float(r['student_ms']):.2f} ± {float(r['student_ms_std']):.2f} | {float(r['speedup']):.2f}x | "
                         f"{float(r['teacher_kparams']):.1f} | {float(r['student_kparams']):.1f} |")
        lines.append("")
        lines.append("Times: median of repeated `log_prob` calls on one batch, one thread, on a shared machine.")
    im = _read_csv(out / "images.csv")
    if im:
        lines += ["", "## Table 4 / 6 analogue: Glow on 8x8 digits", "",
                  "FD = Fréchet distance in the feature space of the cached digits CNN (not Inception FID), "
                  "against the held-out digits.", "",
                  "| model | params | test bits/dim | FD samples T=1.0 | FD samples T=0.7 | FD interp T=1.0 | FD interp T=0.7 | ms/batch |",
                  "|---|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in im):
            rs = [r for r in im if r["model"] == model]

            def ms(key):
                m, s = _mean_std([float(r[key]) for r in rs])
                return f"{m:.3f}" + (f" ± {s:.3f}" if len(rs) > 1 else "")
            lines.append(f"| {model} | {rs[0]['params']} | {ms('test_bpd')} | {ms('fd_T1.0')} | {ms('fd_T0.7')} | "
                         f"{ms('fd_interp_T1.0')} | {ms('fd_interp_T0.7')} | {ms('ms_per_batch')} |")
        nf = [f"{r['model']}/seed {r['seed']}: " + ", ".join(f"{k} {r[k]}" for k in r if k.startswith("nonfinite") and r[k] not in ("0", ""))
              for r in im if any(k.startswith("nonfinite") and r[k] not in ("0", "") for k in r)]
        if nf:
            lines += ["", f"Samples with non-finite pixels (out of {{n}} per cell), left out of the FD: ".replace(
                "{n}", "the configured image_samples") + "; ".join(nf)]
        if (out / "samples_T0.7.png").exists():
            lines += ["", "![samples at T=0.7](samples_T0.7.png)"]
    tj = out / "timing.json"
    if tj.exists():
        t = json.loads(tj.read_text())
        lines += ["", f"Wall-clock: {t.get('total', float('nan')) / 60:.1f} min in total (" +
                  ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total") + ")."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
