"""Models written with dgmkd sites. They know nothing of distillation: outside handlers each is a
plain sampler."""

from .chain import ResidualChain
from .mlp_dgm import MLPDGM

__all__ = ["MLPDGM", "ResidualChain"]
from .toy_chain import BinomialStudentChain, BinomialTeacherChain, GaussianStudentChain, GaussianTeacherChain

__all__ += ["GaussianTeacherChain", "GaussianStudentChain", "BinomialTeacherChain", "BinomialStudentChain"]
from .helmholtz import HelmholtzMachine, HelmholtzRecognition

__all__ += ["HelmholtzMachine", "HelmholtzRecognition"]
from .vrnn import VRNN

__all__ += ["VRNN"]
