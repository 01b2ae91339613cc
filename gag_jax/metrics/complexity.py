"""Map-only metrics: sparseness (Gini index, Chalasani et al. 2020) and complexity (entropy,
Bhatt et al. 2020) of each saliency map. No model, no mask: how concentrated a map is."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gag_jax import _validation as V


def _flat_abs(saliency: jax.Array) -> jax.Array:
    return jnp.abs(saliency.astype(jnp.float32)).reshape(saliency.shape[0], -1)


@jax.jit
def _sparseness_core(saliency):
    a = jnp.sort(_flat_abs(saliency), axis=1)
    n = a.shape[1]
    k = jnp.arange(1, n + 1, dtype=jnp.float32)
    total = jnp.sum(a, axis=1)
    gini = jnp.sum((2.0 * k - n - 1.0) * a, axis=1) / (n * jnp.where(total > 0, total, 1.0))
    return jnp.where(total > 0, gini, 0.0), jnp.any(~jnp.isfinite(saliency))


@jax.jit
def _complexity_core(saliency):
    a = _flat_abs(saliency)
    n = a.shape[1]
    total = jnp.sum(a, axis=1, keepdims=True)
    p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / n)
    return jnp.sum(jax.scipy.special.entr(p), axis=1), jnp.any(~jnp.isfinite(saliency))


def _map_only(core, saliency):
    V.check_saliency(saliency)
    values, bad = core(jnp.asarray(saliency))
    V.raise_if(bad, "saliency contains NaN or inf; a saliency map must be finite")
    return values


def sparseness(saliency) -> jax.Array:
    """Gini index of each map's absolute values (Chalasani et al., ICML 2020); higher = sparser.

    With ``a_1 <= ... <= a_n`` the sorted ``|M|`` over the ``n = H*W`` pixels,
    ``G = sum_k (2k - n - 1) a_k / (n sum_k a_k)``: 0 for a constant map, ``(n - 1) / n`` when one
    pixel holds everything. An all-zero map is the limit of the constant maps: 0 (no division by
    zero; Quantus instead adds ``1e-7`` to every value).

    Args:
      saliency: ``(B, H, W)`` float, finite (signed maps are taken in absolute value).

    Returns:
      ``(B,)`` float32.

    Raises:
      ValueError: ``saliency`` not ``(B, H, W)``, or not finite.
    """
    return _map_only(_sparseness_core, saliency)


def complexity(saliency) -> jax.Array:
    """Entropy of each normalised map (Bhatt et al., IJCAI 2020); lower = simpler.

    ``p = |M| / sum |M|`` over the ``n = H*W`` pixels, ``H = -sum_i p_i ln p_i`` (natural log,
    ``0 ln 0 = 0``): 0 when one pixel holds everything, ``ln n`` for a constant map. An all-zero map
    is the limit of the constant maps: ``ln n``.

    Args:
      saliency: ``(B, H, W)`` float, finite (signed maps are taken in absolute value).

    Returns:
      ``(B,)`` float32 (nats).

    Raises:
      ValueError: ``saliency`` not ``(B, H, W)``, or not finite.
    """
    return _map_only(_complexity_core, saliency)


