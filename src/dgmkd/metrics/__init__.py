"""Evaluation metrics (sample-based distances between teacher and student)."""

from .mmd import mmd2

__all__ = ["mmd2"]
