"""The interpretation seam: what each gradient sample contributes before aggregation.

An interpretation is an elementwise function ``signals (..., H, W, C) -> (..., H, W, C)`` applied to
each modification's gradient signal (for path methods the signal already carries the path
weight, e.g. ``w_i * (x - baseline) * grad`` for IG).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Interpretation = Callable[[jax.Array], jax.Array]


def raw() -> Interpretation:
    """Signals unchanged (signed gradients)."""
    return lambda g: g


def positive() -> Interpretation:
    """``max(g, 0)``: Table 3's "+" variant."""
    return lambda g: jnp.maximum(g, 0)


def negative() -> Interpretation:
    """``min(g, 0)``: Table 3's "-" variant (map values are <= 0 before normalisation)."""
    return lambda g: jnp.minimum(g, 0)


def absolute() -> Interpretation:
    """``|g|``: gradient magnitude, Table 3's "A" variant and the core of AbsoluteGrad."""
    return jnp.abs


def square() -> Interpretation:
    """``g ** 2``: squared gradients."""
    return jnp.square


_BY_NAME = {"raw": raw, "positive": positive, "negative": negative, "absolute": absolute, "square": square}
NAMES = tuple(_BY_NAME)


def by_name(name: str) -> Interpretation:
    """Interpretation from its name: one of ``raw, positive, negative, absolute, square``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown interpretation {name!r}; expected one of {', '.join(NAMES)}")
    return _BY_NAME[name]()
