"""Reproduced experiments, one module each, run with ``dgmkd run NAME``.

Each module only composes models, methods and metrics on the shared harness
(:mod:`dgmkd.harness`: named seed streams, summaries with one spread convention, tables, image
grids, checked run files) and the one optimization loop (:func:`dgmkd.train.fit`). It defines

* ``DESCRIPTION``: one line for ``dgmkd list``;
* ``Config``: a dataclass holding every default, with ``validate()`` raising a
  :class:`~dgmkd.config.ConfigError` that names the key (``seeds`` is always a tuple of seeds);
* ``QUICK``: overrides for the small ``--quick`` form; ``TEST``: further overrides that make the
  quick form test-sized (the registry test in ``tests/test_experiments.py`` runs it);
* ``run(cfg, out) -> dict``: trains and evaluates, writing its data files (CSV/JSON) to ``out``;
* ``report(out) -> str``: rebuilds ``report.md`` and the plots from those files alone, byte for
  byte what ``run`` wrote, so ``dgmkd report RUN_DIR`` works for every experiment.

Nothing in a run directory is typed by hand.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module; modules are imported only when used so `dgmkd list` stays fast
EXPERIMENTS: dict[str, str] = {
    "demo": "dgmkd.experiments.demo",
    "hm-compress": "dgmkd.experiments.hm_compress",
    "vrnn-compress": "dgmkd.experiments.vrnn_compress",
    "hvae-compress": "dgmkd.experiments.hvae_compress",
    "toy-chain": "dgmkd.experiments.toy_chain",
    "density-distill": "dgmkd.experiments.density_distill",
    "flow-kd": "dgmkd.experiments.flow_kd",
    "avkd": "dgmkd.experiments.avkd",
    "continual": "dgmkd.experiments.continual",
    "regimes": "dgmkd.experiments.regimes",
}


def get(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(EXPERIMENTS))} "
                       "(see `dgmkd list`)")
    return importlib.import_module(EXPERIMENTS[name])


def describe() -> list[tuple[str, str]]:
    return [(n, get(n).DESCRIPTION) for n in EXPERIMENTS]
