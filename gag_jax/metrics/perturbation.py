"""Deprecated name of :mod:`gag_jax.metrics.deletion_insertion` (kept for this release)."""
import warnings

from gag_jax.metrics.deletion_insertion import *  # noqa: F403
from gag_jax.metrics.deletion_insertion import deletion_insertion, trapezoid_auc  # noqa: F401

warnings.warn("gag_jax.metrics.perturbation is now gag_jax.metrics.deletion_insertion", DeprecationWarning,
              stacklevel=2)
