"""Distillation methods, one module each; importing this package fills the registry."""
from algorithms import cvdd, datadam, dm, herding, infer, kcenter, mtt, ncfm, random  # noqa: F401  (registration)
from algorithms.base import ALGORITHMS, AlgoConfig, Algorithm, Context

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "Context"]
