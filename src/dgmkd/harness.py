"""The harness every experiment stands on: seeds, sweeps, summaries, tables, image grids, run files.

An experiment (a module of :mod:`dgmkd.experiments`) composes models, methods and metrics; what
is common to all of them lives here, once:

* **Seed streams.** Every random draw of an experiment is seeded by :func:`seed` from the run's
  base seed and a *name* for what is drawn (``seed(s, "student-init", width)``, ``seed(s, "eval")``):
  a stable hash of the names, so two streams never collide by an accident of offsets, adding a
  stream changes no other, and the same names give the same numbers on every machine.
  :func:`manual_seed` seeds torch's global RNG from a stream, :func:`generator` makes a
  ``torch.Generator`` for one.
* **Sweeps.** :func:`sweep` runs a function over the product of named axes (seeds x sizes x
  methods, ...) and collects one row per point.
* **Summaries.** :func:`summarize` reduces rows over seeds with the one spread convention of the
  library, :data:`SPREAD`: the mean and the *sample* standard deviation (``ddof=1``) over seeds;
  a single seed has no spread and shows none. :func:`fmt` prints ``mean ± sd`` by that convention.
* **Writers.** :func:`table` (Markdown), :func:`image_grid` (PNG of a batch of images),
  :func:`write_csv` / :func:`write_json` / :func:`write_text` (atomic: a kill never leaves a torn
  file) and the matching readers :func:`read_csv` / :func:`read_json`, which check what they read
  and name the file and row of anything malformed, so a report is never rebuilt from damaged data.

Example:
    >>> from dgmkd import harness
    >>> rows = harness.sweep(lambda seed, method: {"err": seed + (method == "b")},
    ...                      seed=(0, 1, 2), method=("a", "b"), log=None)
    >>> s = harness.summarize(rows, by=("method",), metrics=("err",))
    >>> [(r["method"], r["err_mean"], r["err_sd"], r["n"]) for r in s]
    [('a', 1.0, 1.0, 3), ('b', 2.0, 1.0, 3)]
    >>> harness.fmt(s[0]["err_mean"], s[0]["err_sd"], s[0]["n"])
    '1.000 ± 1.000'
    >>> harness.seed(0, "student") == harness.seed(0, "student") != harness.seed(1, "student")
    True
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .checkpoint import atomic_path

__all__ = ["SPREAD", "DISTILL_METHODS", "distill_method", "seed", "manual_seed", "generator", "sweep", "summarize", "fmt", "table", "image_grid",
           "write_csv", "write_json", "write_text", "read_csv", "read_json", "load_config", "ReportDataError",
           "save_figure", "pyplot", "cell", "save_models"]

SPREAD = "mean ± sample standard deviation (ddof=1) over seeds; one seed: no spread shown"


class ReportDataError(ValueError):
    """A run directory's data file is missing, empty or malformed: the report is not rebuilt."""


# ----------------------------------------------------------------------------------------- seeds
DISTILL_METHODS = ("default", "unified", "unified-l<weight>", "unified-kl", "local")


def distill_method(name: str, latent_weight: float = 0.1, latent_divergence: str | None = None) -> dict:
    """The :func:`dgmkd.distill` arguments of an experiment's method name, the one vocabulary of
    every experiment's rows: ``"unified"`` (Eq. 7 of Chen et al. 2023 with the experiment's latent
    weight and divergence: the paper's setting), ``"unified-l0"`` (the surrogate of Eq. 4 alone),
    ``"unified-kl"`` (a KL latent term), ``"local"`` and ``"default"`` (what
    ``dgmkd.distill`` does when no method is given, with its own settings).

    >>> distill_method("unified-l0", 0.5)
    {'method': 'unified', 'latent_weight': 0.0}
    """
    if name == "default":
        return {"method": "default"}
    if name == "local":
        return {"method": "local"}
    if name == "unified":
        return {"method": "unified", "latent_weight": latent_weight,
                **({"latent_divergence": latent_divergence} if latent_divergence else {})}
    if name.startswith("unified-l"):
        try:
            w = float(name[len("unified-l"):])
        except ValueError:
            w = -1.0
        if not 0 <= w < float("inf"):
            raise ValueError(f"method {name!r}: write unified-l<weight> with a latent weight >= 0, e.g. unified-l0.1")
        return {"method": "unified", "latent_weight": w, **({"latent_divergence": "kl"} if w else {})}
    if name == "unified-kl":
        return {"method": "unified", "latent_weight": latent_weight, "latent_divergence": "kl"}
    raise ValueError(f"unknown distillation method {name!r}; choose from {', '.join(DISTILL_METHODS)}")


def seed(*names: Any) -> int:
    """The seed of the stream named ``names`` (ints, strings, floats): a stable 31-bit hash.

    By convention the first name is the run's base seed (``cfg.seed`` or a seed of ``cfg.seeds``)
    and the rest say what the stream draws, e.g. ``seed(s, "teacher")``, ``seed(s, "init", width)``.
    """
    key = json.dumps([n if isinstance(n, (int, float, str)) or n is None else repr(n) for n in names])
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % (2 ** 31 - 1)


def manual_seed(*names: Any) -> int:
    """Seed torch's global RNG with the stream ``names``; returns the seed."""
    s = seed(*names)
    torch.manual_seed(s)
    return s


def generator(*names: Any) -> torch.Generator:
    """A ``torch.Generator`` seeded with the stream ``names`` (for draws that must not move the
    global RNG, e.g. a fixed data split)."""
    return torch.Generator().manual_seed(seed(*names))


# ----------------------------------------------------------------------------------------- sweeps
def sweep(fn: Callable[..., dict], *, log: Callable[[dict], None] | None = print, **axes: Sequence) -> list[dict]:
    """Call ``fn(**point)`` for every point of the product of ``axes`` (in the order given, the last
    axis fastest); each row is ``{**point, **fn(**point)}``. ``log`` sees every row as it lands."""
    names = list(axes)
    rows = []
    for values in itertools.product(*(tuple(axes[n]) for n in names)):
        point = dict(zip(names, values))
        row = {**point, **fn(**point)}
        rows.append(row)
        if log is not None:
            log(row)
    return rows


# ----------------------------------------------------------------------------------------- summaries
def _stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return (math.nan,) * 4
    sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
    return float(v.mean()), sd, float(v.min()), float(v.max())


def summarize(rows: Iterable[dict], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Group ``rows`` by the keys ``by`` (first-seen order) and reduce each metric over the group:
    ``<metric>_mean``, ``<metric>_sd`` (ddof=1; NaN for one row), ``<metric>_min``, ``<metric>_max``,
    and ``n`` (the group's size). Metrics a group lacks are left out."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        s = dict(zip(by, key))
        s["n"] = len(rs)
        for m in metrics:
            vals = [r[m] for r in rs if m in r and r[m] is not None and r[m] != ""]
            if vals:
                s[f"{m}_mean"], s[f"{m}_sd"], s[f"{m}_min"], s[f"{m}_max"] = _stats(vals)
        out.append(s)
    return out


def _num(v: float, digits: int | None) -> str:
    if digits is not None:
        return f"{v:.{digits}f}"
    a = abs(v)
    if a == 0 or 1e-3 <= a < 100:
        return f"{v:.3f}" if a < 10 else f"{v:.2f}"
    return f"{v:.1f}" if a >= 100 else f"{v:.3g}"


def fmt(mean: float, sd: float | None = None, n: int = 1, digits: int | None = None) -> str:
    """``mean ± sd`` by :data:`SPREAD` (just ``mean`` for one seed or no spread); ``digits``
    decimals, or a width chosen from the magnitude."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n < 2 or sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return _num(mean, digits)
    return f"{_num(mean, digits)} ± {_num(sd, digits if digits is not None else _digits_of(mean))}"


def _digits_of(mean: float) -> int:
    a = abs(mean)
    return 3 if a < 10 else (2 if a < 100 else 1)


def cell(summary_row: dict, metric: str, digits: int | None = None) -> str:
    """``fmt`` of one metric of a :func:`summarize` row."""
    if f"{metric}_mean" not in summary_row:
        return "—"
    return fmt(summary_row[f"{metric}_mean"], summary_row.get(f"{metric}_sd"), summary_row.get("n", 1), digits)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> list[str]:
    """A Markdown table: ``header`` and one list of cells per row (``None`` prints as "—")."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(f"{'---' if not align else align[i]}|"
                                                             for i in range(len(header)))]
    for r in rows:
        cells = ["—" if c is None else str(c) for c in r]
        if len(cells) != len(header):
            raise ValueError(f"table: a row has {len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------------------- figures
def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib's ``pyplot`` on the non-interactive Agg backend (runs write PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_grid(images: torch.Tensor | dict[str, torch.Tensor], path: str | Path, n: int = 8,
               title: str = "") -> Path:
    """A PNG of the first ``n x n`` images of an ``(N, C, H, W)`` batch in [0, 1] (a grey line
    between images), or, given ``{name: batch}``, one such panel per name side by side."""
    plt = pyplot()
    panels = images if isinstance(images, dict) else {title: images}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
    for ax, (name, x) in zip(axes[0], panels.items()):
        x = x.detach().float().cpu()
        if x.dim() != 4:
            raise ValueError(f"image_grid: expected (N, C, H, W) images, got shape {tuple(x.shape)}")
        k = min(n, int(math.isqrt(len(x))))
        x = torch.nn.functional.pad(x[: k * k].clamp(0, 1), (0, 1, 0, 1), value=0.5)
        c, h, w = x.shape[1:]
        g = x.reshape(k, k, c, h, w).permute(0, 3, 1, 4, 2).reshape(k * h, k * w, c).numpy()
        ax.imshow(g[..., 0] if c == 1 else g, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if isinstance(images, dict) and title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------- run files
def _atomic_write(path: Path, text: str) -> Path:
    with atomic_path(path, readable=True) as tmp, open(tmp, "w", newline="") as f:  # results are for everyone to read
        f.write(text)
    return Path(path)


def save_models(out: str | Path, models: dict[str, torch.nn.Module]) -> list[Path]:
    """Save trained models as ``out/models/<role>.safetensors`` (:func:`dgmkd.save`: weights plus how
    the library built them), so ``dgmkd.load(out / "models" / "<role>.safetensors")`` gives each back.

    Roles name what the model is: ``teacher``, ``student-<method>-s<seed>`` (plus the size where a
    run has several, e.g. ``student-unified-h16-s0``)."""
    from .saving import save

    paths = []
    for role, m in models.items():
        if not isinstance(role, str) or not role or not all(ch.isalnum() or ch in "._-" for ch in role):
            raise ValueError(f"save_models: a role must be a non-empty name of letters, digits, '.', '_' or '-', "
                             f"got {role!r}")
        paths.append(save(m, Path(out) / "models" / f"{role}.safetensors"))
    return paths


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically."""
    return _atomic_write(Path(path), text)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return _atomic_write(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts; the header is the union of their keys in first-seen order) atomically.
    Floats are written with ``repr`` precision, so :func:`read_csv` gets the same numbers back."""
    import io

    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return _atomic_write(Path(path), buf.getvalue())


def _parse(v: str) -> Any:
    if v == "":
        return None
    if v in ("True", "False"):
        return v == "True"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv`, numbers parsed back to ``int`` / ``float`` and empty
    cells to ``None``. Raises :class:`ReportDataError` naming the file (and row) when it is missing,
    not text, has no data rows, a row of the wrong length, or lacks a ``required`` column."""
    path = Path(path)
    if not path.is_file():
        raise ReportDataError(f"{str(path)!r} is missing: the run did not finish writing its results")
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ReportDataError(f"{str(path)!r} is not a text CSV file ({e.reason} at byte {e.start})") from None
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise ReportDataError(f"{str(path)!r} is empty") from None
    missing = [k for k in required if k not in header]
    if missing:
        raise ReportDataError(f"{str(path)!r} lacks the column(s) {missing}; it has {header}")
    rows = []
    for i, cells in enumerate(reader, start=2):
        if len(cells) != len(header):
            raise ReportDataError(f"{str(path)!r} line {i}: {len(cells)} cells for {len(header)} columns")
        rows.append({k: _parse(v) for k, v in zip(header, cells)})
    if not rows:
        raise ReportDataError(f"{str(path)!r} has a header but no rows: the run wrote no results")
    return rows


def read_json(path: str | Path) -> Any:
    """Read a JSON file; :class:`ReportDataError` naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ReportDataError(f"{str(path)!r} is missing")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportDataError(f"{str(path)!r} is malformed: {e}") from None


def load_config(out: str | Path, config_cls: type):
    """The config a run directory was made with (its ``config.json``), as ``config_cls``."""
    from .config import override

    raw = read_json(Path(out) / "config.json")
    if not isinstance(raw, dict):
        raise ReportDataError(f"{str(Path(out) / 'config.json')!r} is not a JSON object")
    raw = {k: v for k, v in raw.items() if k != "experiment"}
    return override(config_cls(), raw)
