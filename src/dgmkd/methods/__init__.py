"""Distillation methods built on the core: each composes sites, couplings and losses with its own
objectives (see DESIGN.md §1). Import the submodules directly, e.g. ``dgmkd.methods.density``."""
