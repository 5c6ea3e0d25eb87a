"""Distillation methods built on the core: each composes sites, couplings and losses with its own
objectives, and trains through :func:`dgmkd.train.fit`. Import the submodules directly:

* ``dgmkd.methods.flow_kd``: normalizing-flow distillation (LKD, ILKD, SKD; Walton et al.);
* ``dgmkd.methods.density``: probability density distillation and its alternatives (Huang et al.);
* ``dgmkd.methods.avkd``, ``dafl``, ``dfad``: data-free classifier distillation with an input
  generator (Tang & Lin; Chen et al. 2019; Fang et al. 2019);
* ``dgmkd.methods.continual``: KD-based VAE continual learning (unified, local, LGM- and
  CURL-style replay).
"""
