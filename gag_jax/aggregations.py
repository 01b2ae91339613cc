"""The aggregation seam: combine n interpreted gradient signals into one attribution.

Two forms:

* streaming (``Aggregation`` named tuples, used by the explainers): ``init`` a float32 state,
  ``update`` it with a chunk of ``c`` signals at a time, ``finalize``. Memory does not depend
  on ``n``. Running variance uses Chan et al.'s pairwise merge of (count, mean, M2), which is
  numerically stable.
* the stacked reference ``guided`` (eq. 2-5, ``gj.aggregations.guided``) taking all ``n``
  gradients ``(n, B, H, W, C)`` at once: simple to read, used to check the streaming form.

``update(state, interpreted, raw, weights)`` receives the chunk's interpreted signals and the
raw (signed) signals, both ``(c, B, H, W, C)``, and ``weights (c,)`` in {0, 1} masking padded
samples of the last chunk.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gag_jax._validation import check_fraction

GUIDE_AXES = ("channel", "image")


class Aggregation(NamedTuple):
    """Streaming aggregation over modifications (see module docstring).

    ``min_samples``: the fewest modifications it is defined for (2 for a variance); ``chain`` checks it.
    """

    init: Callable[[tuple[int, ...]], Any]
    update: Callable[[Any, jax.Array, jax.Array, jax.Array], Any]
    finalize: Callable[[Any], jax.Array]
    min_samples: int = 1


class RunningMoments(NamedTuple):
    """Count, mean and sum of squared deviations (M2) of a stream, float32."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def moments_init(shape: tuple[int, ...]) -> RunningMoments:
    """Empty running moments for samples of ``shape``."""
    zeros = jnp.zeros(shape, jnp.float32)
    return RunningMoments(jnp.zeros((), jnp.float32), zeros, zeros)


def moments_update(state: RunningMoments, chunk: jax.Array, weights: jax.Array) -> RunningMoments:
    """Merge a chunk ``(c, *shape)`` with weights ``(c,)`` in {0,1} into the running moments (Chan)."""
    chunk = chunk.astype(jnp.float32)
    w = weights.astype(jnp.float32).reshape((-1,) + (1,) * (chunk.ndim - 1))
    n_b = weights.astype(jnp.float32).sum()
    mean_b = (w * chunk).sum(0) / jnp.maximum(n_b, 1.0)
    m2_b = (w * jnp.square(chunk - mean_b)).sum(0)
    n_a = state.count
    n_ab = n_a + n_b
    safe_n = jnp.maximum(n_ab, 1.0)
    delta = mean_b - state.mean
    mean = state.mean + delta * (n_b / safe_n)
    m2 = state.m2 + m2_b + jnp.square(delta) * (n_a * n_b / safe_n)
    return RunningMoments(n_ab, mean, m2)


def moments_variance(state: RunningMoments, ddof: int = 1) -> jax.Array:
    """Variance of the stream from its moments (unbiased with ``ddof=1``)."""
    return state.m2 / jnp.maximum(state.count - ddof, 1.0)


def variance_guide(variance: jax.Array, percentile: float, guide_axes: str = "channel") -> jax.Array:
    """Variance guide G of eq. 4: ``where(V >= quantile_p(V), 1, V)``.

    Args:
      variance: ``(B, H, W, C)`` per-feature variance over the modifications.
      percentile: p in [0, 1); p = 0 gives ``G = 1`` (no guide).
      guide_axes: ``"channel"`` (one threshold per image and channel, over H x W: the authors'
        code) or ``"image"`` (one threshold per image, over H x W x C).

    Returns:
      ``(B, H, W, C)`` float32 guide.
    """
    if guide_axes not in GUIDE_AXES:
        raise ValueError(f"unknown guide_axes {guide_axes!r}; expected one of {GUIDE_AXES}")
    if percentile == 0:
        return jnp.ones_like(variance, jnp.float32)
    axes = (1, 2) if guide_axes == "channel" else (1, 2, 3)
    threshold = jnp.quantile(variance, percentile, axis=axes, keepdims=True, method="linear")
    return jnp.where(variance >= threshold, 1.0, variance).astype(jnp.float32)


# ---------------------------------------------------------------- streaming factories


def total() -> Aggregation:
    """Sum of the interpreted signals (path methods, whose signals carry their path weights)."""

    def update(state, interpreted, raw, weights):
        w = weights.reshape((-1,) + (1,) * (interpreted.ndim - 1))
        return state + (w * interpreted.astype(jnp.float32)).sum(0)

    return Aggregation(lambda shape: jnp.zeros(shape, jnp.float32), update, lambda s: s)


def mean() -> Aggregation:
    """Mean of the interpreted signals (SmoothGrad)."""

    def update(state, interpreted, raw, weights):
        return moments_update(state, interpreted, weights)

    return Aggregation(moments_init, update, lambda s: s.mean)


def variance(ddof: int = 1) -> Aggregation:
    """Variance of the interpreted signals over the modifications (VarGrad), ``ddof=1`` by default."""

    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"ddof must be an int >= 0; got {ddof!r}")

    def update(state, interpreted, raw, weights):
        return moments_update(state, interpreted, weights)

    return Aggregation(moments_init, update, lambda s: moments_variance(s, ddof), ddof + 1)


class _GuidedState(NamedTuple):
    total: jax.Array
    moments: RunningMoments


def guide(percentile: float = 0.85, guide_axes: str = "channel") -> Aggregation:
    """Variance-guided sum (eq. 2-5): ``sum_i interp(g_i) * G`` with G from the variance of the raw signals.

    The variance is the unbiased (ddof=1) variance over modifications of the *signed* signals;
    with the absolute interpretation this is Guided AbsoluteGrad.
    """
    check_fraction(percentile, "percentile")
    if guide_axes not in GUIDE_AXES:
        raise ValueError(f"unknown guide_axes {guide_axes!r}; expected one of {GUIDE_AXES}")

    def init(shape):
        return _GuidedState(jnp.zeros(shape, jnp.float32), moments_init(shape))

    def update(state, interpreted, raw, weights):
        w = weights.reshape((-1,) + (1,) * (interpreted.ndim - 1))
        summed = state.total + (w * interpreted.astype(jnp.float32)).sum(0)
        return _GuidedState(summed, moments_update(state.moments, raw, weights))

    def finalize(state):
        guide_values = variance_guide(moments_variance(state.moments, 1), percentile, guide_axes)
        return state.total * guide_values

    return Aggregation(init, update, finalize, 2 if percentile > 0 else 1)


# ---------------------------------------------------------------- stacked reference forms


def _check_stacked(grads) -> None:
    if getattr(grads, "ndim", None) != 5:
        raise ValueError(f"grads must have shape (n, B, H, W, C); got {getattr(grads, 'shape', None)}")


def guided(
    grads: jax.Array,
    percentile: float = 0.85,
    *,
    guide_axes: str = "channel",
    interpretation: Callable[[jax.Array], jax.Array] = jnp.abs,
) -> jax.Array:
    """Guided AbsoluteGrad aggregation (eq. 2-5) on stacked gradients.

    ``M = sum_i |g_i|``, ``V = var_i(g_i)`` (ddof=1, signed), ``G = where(V >= q_p(V), 1, V)``,
    result ``M * G``. Percentile p = 0 gives plain AbsoluteGrad (``G = 1``).

    Args:
      grads: ``(n, B, H, W, C)`` gradients at the n modifications (n >= 2 when p > 0).
      percentile: p in [0, 1).
      guide_axes: ``"channel"`` or ``"image"`` (see ``variance_guide``).
      interpretation: elementwise function applied before the sum (``abs`` by default).

    Returns:
      ``(B, H, W, C)`` float32 attributions (not normalised).

    Examples:
      >>> import jax
      >>> g = jax.random.normal(jax.random.PRNGKey(0), (20, 1, 8, 8, 3))
      >>> guided(g, 0.85).shape
      (1, 8, 8, 3)
    """
    _check_stacked(grads)
    check_fraction(percentile, "percentile")
    grads = grads.astype(jnp.float32)
    magnitude = interpretation(grads).sum(0)
    var = jnp.var(grads, axis=0, ddof=1)
    return magnitude * variance_guide(var, percentile, guide_axes)
