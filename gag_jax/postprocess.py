"""Saliency post-processing: channel reduction, per-image min-max, reversed "R" maps."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gag_jax._validation import check_fraction

REDUCTIONS = ("abs_sum", "sum", "max_abs")


def reduce_channels(attributions: jax.Array, how: str = "abs_sum") -> jax.Array:
    """Reduce ``(B, H, W, C)`` attributions to ``(B, H, W)``.

    Args:
      attributions: ``(B, H, W, C)`` array.
      how: ``"abs_sum"`` (default, the authors' code for every method: ``sum_c |A[..., c]|``),
        ``"sum"`` (signed sum: positive and negative evidence end up at opposite ends of [0, 1])
        or ``"max_abs"`` (``max_c |A[..., c]|``).

    Returns:
      ``(B, H, W)`` float32.
    """
    attributions = attributions.astype(jnp.float32)
    if how == "sum":
        return attributions.sum(-1)
    if how == "abs_sum":
        return jnp.abs(attributions).sum(-1)
    if how == "max_abs":
        return jnp.abs(attributions).max(-1)
    raise ValueError(f"unknown channel reduction {how!r}; expected one of {', '.join(REDUCTIONS)}")


def min_max(maps: jax.Array) -> jax.Array:
    """Per-image min-max scaling of ``(B, H, W)`` saliency maps into ``[0, 1]``.

    (Not ``gj.data.normalize``, which standardises pixels for the model.)

    A constant map becomes all zeros (never NaN). The result is clipped to [0, 1]: XLA may rewrite
    ``(m - low) / span`` as ``m / span - low / span``, whose rounding can leave -1e-8 (seen on RISE).
    """
    maps = maps.astype(jnp.float32)
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    safe = jnp.where(span > 0, span, 1.0)
    return jnp.where(span > 0, jnp.clip((maps - low) / safe, 0.0, 1.0), 0.0)


def to_saliency(attributions: jax.Array, reduce: str = "abs_sum") -> jax.Array:
    """``(B, H, W, C)`` attributions -> ``(B, H, W)`` saliency in [0, 1].

    Channel reduction (``reduce_channels``; default ``sum_c |A|``), then per-image min-max.
    """
    return min_max(reduce_channels(attributions, reduce))


def _reverse_one(saliency: jax.Array, key: jax.Array, keep: float, swap: float) -> jax.Array:
    flat = saliency.reshape(-1)
    size = flat.shape[0]
    num_keep = round(size * keep)
    num_swap = round(size * swap)
    # Rank pixels; ties are broken at random (that is what the key is for).
    jitter = jax.random.uniform(key, (size,))
    order = jnp.lexsort((jitter, flat))  # ascending by value, then jitter
    low_band = order[:num_swap]
    top_start = size - num_keep
    mid_band = order[top_start - num_swap : top_start]
    out = flat.at[low_band].set(flat[mid_band]).at[mid_band].set(flat[low_band])
    return out.reshape(saliency.shape)


def reverse(saliency: jax.Array, key: jax.Array, *, keep: float = 0.07, swap: float = 0.10) -> jax.Array:
    """Reversed "R" variant of saliency maps (paper section 4.3, Proposition 1).

    Per image: the top ``keep`` fraction of pixels keeps its values; the lowest ``swap`` fraction
    exchanges values with the band just below the kept top, i.e. the pixels ranked in
    percentiles ``[(100 - l - m), (100 - l)]``. The k-th lowest pixel of the bottom band receives
    the k-th lowest value of the upper band and vice versa, so the value distribution is unchanged
    and only the locations move. Ties are ordered at random with ``key``; the same key gives the
    same map.

    Args:
      saliency: ``(B, H, W)`` maps.
      key: PRNG key.
      keep: fraction ``l`` of top pixels kept (default 0.07).
      swap: fraction ``m`` swapped (default 0.10).

    Returns:
      ``(B, H, W)`` maps with the same multiset of values per image.

    Raises:
      ValueError: for a map that is not 3-D or fractions with ``keep + 2 * swap > 1``.
    """
    if getattr(saliency, "ndim", None) != 3:
        raise ValueError(f"saliency must have shape (B, H, W); got {getattr(saliency, 'shape', None)}")
    check_fraction(keep, "keep")
    check_fraction(swap, "swap")
    if keep + 2 * swap > 1:
        raise ValueError(f"keep + 2 * swap must be <= 1 so the bands do not overlap; got keep={keep}, swap={swap}")
    keys = jax.random.split(key, saliency.shape[0])
    return jax.vmap(lambda s, k: _reverse_one(s, k, keep, swap))(saliency, keys)
