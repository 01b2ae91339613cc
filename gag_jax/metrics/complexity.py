"""Map-only metrics: sparseness (Gini index, Chalasani et al. 2020), complexity (entropy,
Bhatt et al. 2020) and effective complexity (Nguyen & Martinez 2020) of each saliency map. No model,
no mask: how concentrated a map is. Also the attribution preprocessing Quantus applies before its
metrics (:func:`preprocess_attributions`), shared with the localisation and axiomatic metrics."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax.metrics import _sorting


def _flat_abs(saliency: jax.Array) -> jax.Array:
    return jnp.abs(saliency.astype(jnp.float32)).reshape(saliency.shape[0], -1)


@jax.jit
def _sparseness_core(saliency):
    a = _sorting.sort(_flat_abs(saliency))
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




# ----------------------------------------------------------------------------------------------
# Quantus's attribution preprocessing, per image
# ----------------------------------------------------------------------------------------------

def preprocess_attributions(maps: jax.Array, abs: bool, normalise: bool) -> jax.Array:  # noqa: A002
    """Quantus 0.6's preprocessing of the attributions, per image: ``a / max|a|`` (``normalise``, its
    default ``normalise_by_max``) and then ``|a|`` (``abs``), in that order (``Metric.general_preprocess``).

    Difference from Quantus: Quantus divides by the maximum over the *whole* batch it is given
    (``normalise_by_max`` without ``normalise_axes``), so an image's value depends on its batch; here
    every map is divided by its own ``max|a|`` (Quantus's result for a batch of one image, or with
    ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}``). An all-zero map stays all zero.

    Args:
      maps: ``(B, H, W)`` float (any float dtype; float32 out).

    Returns:
      ``(B, H * W)`` float32.
    """
    a = maps.astype(jnp.float32).reshape(maps.shape[0], -1)
    if normalise:
        peak = jnp.max(jnp.abs(a), axis=1, keepdims=True)
        a = jnp.where(peak > 0, a / jnp.where(peak > 0, peak, 1.0), a)
    if abs:
        a = jnp.abs(a)
    return a


def check_metric_maps(images, labels, maps, masks=None, *, needs_masks: bool = False, what: str = "metric") -> None:
    """Shapes of a map metric's inputs (no data read): maps ``(B, H, W)``; images ``(B, H, W, C)`` and
    labels ``(B,)`` when given (the engine passes them; the map-only metrics do not read them); masks
    ``(B, H, W)`` when given or needed.

    Raises:
      ValueError: a shape that does not match (both named), or masks missing where needed.
    """
    V.check_saliency(maps)
    if images is not None:
        V.check_images_labels_saliency(images, labels if labels is not None else np.zeros(np.shape(images)[:1],
                                                                                         np.int32), maps)
    if masks is None:
        if needs_masks:
            raise ValueError(f"{what} needs ground-truth masks: pass masks=(B, H, W) (non-zero = the object)")
        return
    V.check_maps(maps, masks)


@functools.partial(jax.jit, static_argnames=("eps", "abs", "normalise"))
def _effective_complexity_core(maps, *, eps, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    count = jnp.sum(a > eps, axis=1).astype(jnp.float32)
    return count, jnp.any(~jnp.isfinite(maps))


def effective_complexity(model, images, labels, maps, *, key=None, masks=None, eps: float = 1e-5,
                         abs: bool = True, normalise: bool = True) -> dict:  # noqa: A002
    """Effective complexity (Nguyen & Martinez 2020), Quantus 0.6's ``EffectiveComplexity``: the number
    of pixels whose attribution exceeds ``eps``; lower = simpler.

    ``a = |M / max|M||`` (Quantus's defaults ``normalise=True``, ``abs=True``; see
    :func:`preprocess_attributions`), ``EC = #{i : a_i > eps}`` over the ``H*W`` pixels. ``eps``
    is therefore relative to each map's peak.

    The metric reads only the maps: ``model``, ``images``, ``labels``, ``key`` and ``masks`` are
    accepted so that every metric is called the same way (``images`` / ``labels`` are shape-checked
    when given; pass None otherwise). Quantus counts over the map as given, ``(B, 1, H, W)`` for a
    channel-summed map: the same ``H*W`` pixels.

    Difference from Quantus: each map is normalised by its own maximum, Quantus by the maximum of the
    batch it is given (an image's count would depend on its batch).

    Args:
      maps: ``(B, H, W)`` float, finite (signed maps allowed).
      eps: threshold on the preprocessed attribution.
      abs, normalise: Quantus's preprocessing switches.

    Returns:
      ``{"effective_complexity": (B,) float32}`` (a count of pixels).

    Raises:
      ValueError: shapes (see :func:`check_metric_maps`), non-finite maps, ``eps`` not a finite number.
    """
    check_metric_maps(images, labels, maps, masks, what="effective_complexity")
    if isinstance(eps, bool) or not np.isfinite(float(eps)):
        raise ValueError(f"eps must be a finite number; got {eps!r}")
    count, bad = _effective_complexity_core(jnp.asarray(maps), eps=float(eps), abs=bool(abs),
                                            normalise=bool(normalise))
    V.raise_if(bad, "maps contain NaN or inf; a saliency map must be finite")
    return {"effective_complexity": count}
