"""The metrics' sorts: ``sort``, ``argsort``, ``top_k_indices`` and ``average_ranks`` along the last axis, in numpy on
CPU (through ``jax.pure_callback``; XLA:CPU's comparator sort is ~25x slower, see
:func:`gag_jax.backend.host_sort`) and in XLA elsewhere, with the same results (stable order, ties to
the lower index). Not differentiable: the metrics sort data (maps, random draws), not parameters."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax.backend import host_sort


def _on_host(fn, shape_dtype, *args):
    return jax.pure_callback(fn, shape_dtype, *args, vmap_method="expand_dims")


def sort(x: jax.Array) -> jax.Array:
    """``jnp.sort(x, axis=-1)``; on CPU computed by numpy (``gag_jax.backend.host_sort``: ~25x faster
    there), the same values. Not differentiable (the metrics sort data, not parameters).

    Args:
      x: ``(..., n)`` real array.

    Returns:
      ``(..., n)``, each row ascending.
    """
    if not host_sort():
        return jnp.sort(x, axis=-1)
    return _on_host(lambda a: np.sort(np.asarray(a), axis=-1), jax.ShapeDtypeStruct(x.shape, x.dtype), x)


def argsort(x: jax.Array) -> jax.Array:
    """``jnp.argsort(x, axis=-1, stable=True)`` as int32 (equal values keep their order); on CPU by
    numpy's stable sort (``gag_jax.backend.host_sort``).

    Args:
      x: ``(..., n)`` real array.

    Returns:
      ``(..., n)`` int32 indices that sort each row ascending.
    """
    if not host_sort():
        return jnp.argsort(x, axis=-1, stable=True).astype(jnp.int32)
    return _on_host(lambda a: np.argsort(np.asarray(a), axis=-1, kind="stable").astype(np.int32),
                    jax.ShapeDtypeStruct(x.shape, jnp.int32), x)


def _top_k_rows(a: np.ndarray, k: int) -> np.ndarray:
    """numpy ``lax.top_k(a, k)[1]``: the k largest of each row, largest first, ties to the lower index."""
    rows = a.reshape(-1, a.shape[-1])
    n = rows.shape[1]
    kth = np.partition(rows, n - k, axis=1)[:, n - k]  # the k-th largest value of each row
    out = np.empty((rows.shape[0], k), np.int32)
    for r, (row, v) in enumerate(zip(rows, kth)):
        above = np.flatnonzero(row > v)
        chosen = np.concatenate([above, np.flatnonzero(row == v)[:k - above.size]])
        out[r] = chosen[np.lexsort((chosen, -row[chosen]))]  # by value descending, then index
    return out.reshape(a.shape[:-1] + (k,))


def top_k_indices(x: jax.Array, k: int) -> jax.Array:
    """``jax.lax.top_k(x, k)[1]``: int32 indices of each row's ``k`` largest values, largest first, ties
    to the lower index; on CPU by numpy's partition (``gag_jax.backend.host_sort``).

    Args:
      x: ``(..., n)`` real array; k: ``1 <= k <= n``.

    Returns:
      ``(..., k)`` int32.
    """
    if not host_sort():
        return jax.lax.top_k(x, k)[1].astype(jnp.int32)
    return _on_host(lambda a: _top_k_rows(np.asarray(a), int(k)),
                    jax.ShapeDtypeStruct(x.shape[:-1] + (k,), jnp.int32), x)


def average_ranks(x: jax.Array) -> jax.Array:
    """1-based ranks of each row of ``x (B, S)``, ties given their average rank (``scipy.stats.rankdata``):
    the ranks behind the Spearman correlations of the faithfulness and randomisation metrics.

    Returns:
      ``(B, S)`` float32.
    """
    s = sort(x)
    left = jax.vmap(lambda row, v: jnp.searchsorted(row, v, side="left"))(s, x)
    right = jax.vmap(lambda row, v: jnp.searchsorted(row, v, side="right"))(s, x)
    return (left + right + 1).astype(jnp.float32) * 0.5
