"""Distillation methods built on the core: each composes sites, couplings and losses with its own
objectives (see DESIGN.md §1). Import the submodules directly, e.g. ``dgmkd.methods.density``.
``dgmkd.methods.flow_kd``: normalizing-flow distillation (LKD, ILKD, SKD; Walton et al.).
``dgmkd.methods.generator_kd``: data-free classifier KD with a learned generator, the base of
``avkd`` (AVKD/VKD), ``dafl`` and ``dfad``.
``dgmkd.methods.continual``: KD-based VAE continual learning (unified, local, LGM- and CURL-style replay)."""
