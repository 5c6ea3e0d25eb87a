"""Distillation methods built on the core: each composes sites, couplings and losses with its own
objectives, and trains through :func:`dgmkd.train.fit`. Import the submodules directly:

* ``dgmkd.methods.flow_kd``: normalizing-flow distillation (LKD, ILKD, SKD; Walton et al.);
* ``dgmkd.methods.density``: probability density distillation and its alternatives (Huang et al.);
* ``dgmkd.methods.generator_kd``: data-free classifier KD with a learned input generator, the base
  of ``avkd`` (AVKD/VKD; Tang & Lin), ``dafl`` (Chen et al. 2019) and ``dfad`` (Fang et al. 2019);
* ``dgmkd.methods.continual``: KD-based VAE continual learning (unified, local, LGM- and
  CURL-style replay).
"""
