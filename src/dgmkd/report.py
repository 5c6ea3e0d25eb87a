"""Rebuild and compare run directories (``dgmkd report RUN_DIR...``).

Every run directory holds ``config.json`` (the resolved config, with the experiment's name).
For each run, the experiment module's ``report(run_dir)`` (every experiment has one) rebuilds
``report.md`` and the plots from the run's own CSV/JSON files, read through the checked readers of
:mod:`dgmkd.harness`: a missing, empty or malformed file stops the rebuild with an error naming it,
before anything is written, so a good report is never replaced by one built from damaged data.
Then the runs are put side by side: the config keys that differ between them, and each run's
report.

The warnings a run raised (kept in its ``status.json`` by ``dgmkd run``) end its ``report.md``, and
a run whose loss diverged says so there first (:func:`annotate`), in the report ``dgmkd run`` writes
and in every rebuild alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import experiments, harness, rundir

__all__ = ["rebuild", "compare", "annotate"]

WARNINGS_HEADING = "## Warnings raised during the run"


def _config(run: Path) -> dict:
    path = run / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{str(run)!r} is not a run directory (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is malformed: {e}") from e
    if "experiment" not in cfg:
        raise ValueError(f"{str(path)!r} does not name its experiment")
    return cfg


def rebuild(run: str | Path) -> str:
    """Rebuild one run's ``report.md`` (and plots) from its data; return the report text."""
    run = Path(run)
    cfg = _config(run)
    mod = experiments.get(cfg["experiment"])
    if not hasattr(mod, "report"):
        raise ValueError(f"experiment {cfg['experiment']!r} cannot rebuild its report")
    mod.report(run)
    return annotate(run)


def annotate(run: str | Path) -> str:
    """End ``run``'s ``report.md`` with the warnings its ``status.json`` holds (a diverged loss
    first, as a plain statement that the numbers above are not results); return the report text.
    Idempotent, and a no-op for a run without warnings (or without ``status.json``)."""
    path = Path(run) / "report.md"
    text = path.read_text()
    base = text.split(f"\n{WARNINGS_HEADING}\n")[0]
    st = rundir.status(run) or {}
    notes = [str(n) for n in st.get("warnings") or []]
    if not notes:
        return harness.write_text(path, base).read_text() if base != text else text
    lines = [base.rstrip("\n"), "", WARNINGS_HEADING, ""]
    div = [n.split(": ", 1)[1] for n in rundir.diverged(notes)]
    if div:
        lines += [f"**The run diverged** in {len(div)} training loop(s); the numbers above come from diverged "
                  "models and are not results (a smaller learning rate usually cures it):", ""]
        lines += [f"- {n}" for n in div] + [""]
    rest = [n for n in notes if not n.startswith("DivergenceWarning")]
    if rest:
        lines += [f"- {n}" for n in rest] + [""]
    return harness.write_text(path, "\n".join(lines)).read_text()


def compare(runs: list[str | Path], out: str | Path | None = None) -> str:
    """Markdown: the config keys that differ between ``runs``, then each run's rebuilt report.

    When every run is of one experiment whose module has ``compare(runs, out)`` (e.g. the
    continual experiment's trade-off over ``r``), its cross-run table comes first; plots it makes
    go to the folder of ``out`` (the comparison file), or are not made without one.
    """
    runs = [Path(r) for r in runs]
    cfgs = [_config(r) for r in runs]
    reports = [rebuild(r) for r in runs]
    names = {c["experiment"] for c in cfgs}
    cross = []
    if len(runs) > 1 and len(names) == 1:
        mod = experiments.get(names.pop())
        if hasattr(mod, "compare"):
            cross = [mod.compare(runs, None if out is None else Path(out).parent).strip(), ""]
    keys = sorted({k for c in cfgs for k in c})
    differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in cfgs}) > 1]
    lines = [f"# Comparison of {len(runs)} run(s)", "", *cross]
    if len(runs) > 1:
        if differ:
            lines += ["| key | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
            lines += [f"| {k} | " + " | ".join(str(c.get(k, "—")) for c in cfgs) + " |" for k in differ]
        else:
            lines.append("The configs are identical.")
        lines.append("")
    for r, text in zip(runs, reports):
        lines += [f"## {r}", "", text.strip().replace("\n# ", "\n### "), ""]
    return "\n".join(lines)
