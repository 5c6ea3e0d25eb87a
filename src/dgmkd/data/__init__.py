"""Datasets: embedded offline defaults and readers for files users bring (nothing downloads at run time)."""
