"""Localisation metrics of Quantus 0.6 with ground-truth masks: attribution localisation (Kohlbrenner et
al. 2020), top-k intersection (Theiner et al. 2021), relevance rank accuracy and relevance mass accuracy
(Arras et al. 2022) and the ROC AUC of the map against the mask (Fawcett 2006).

Every function has the engine's signature ``fn(model, images, labels, maps, *, masks=None, key=None,
**options) -> {name: (B,)}``; they read only ``maps`` and ``masks`` (``model``, ``images``, ``labels`` and
``key`` are accepted so that every metric is called the same way; ``images`` / ``labels`` are
shape-checked when given, pass None otherwise). One jit-compiled program per metric, shape and
options; nothing loops over images.

Shared conventions (those of Quantus 0.6, with the differences named):

* ``masks`` ``(B, H, W)``: non-zero = the object (Quantus's ``s_batch.astype(bool)``).
* Preprocessing of the map: ``normalise`` divides it by its ``max|a|``, then ``abs`` takes ``|a|``
  (:func:`gag_jax.metrics.complexity.preprocess_attributions`); each metric keeps Quantus's defaults.
  Quantus normalises by the maximum of the whole batch it is given; here each map by its own
  (only :func:`attribution_localisation`'s ``1e-9`` can see the difference).
* An empty mask gives NaN, as in Quantus (the score is undefined; average with ``nanmean``).
* Ranks (top-k, rank accuracy) sort by decreasing attribution; ties are broken by the pixel's
  row-major index (a stable sort). Quantus uses numpy's default ``argsort`` (introsort, not stable),
  whose order among equal values is unspecified; scores differ only when a tie straddles the cut.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax.metrics import _sorting
from gag_jax.metrics.complexity import check_metric_maps, preprocess_attributions

_NON_FINITE = "maps contain NaN or inf; a saliency map must be finite"


def _flat_masks(masks: jax.Array) -> jax.Array:
    return (masks != 0).reshape(masks.shape[0], -1)


def _run(core, name, images, labels, maps, masks, **static):
    check_metric_maps(images, labels, maps, masks, needs_masks=True, what=name)
    values, bad = core(jnp.asarray(maps), jnp.asarray(masks), **static)
    V.raise_if(bad, _NON_FINITE)
    return {name: values}


def _descending_order(a: jax.Array) -> jax.Array:
    """Pixel indices by decreasing value, ties by index (``-0.0`` and ``0.0`` are one value)."""
    key = -jnp.where(a == 0, 0.0, a)
    return _sorting.argsort(key)


# ----------------------------------------------------------------------------------------------
# attribution localisation (Kohlbrenner et al. 2020)
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("weighted", "positive_attributions", "abs", "normalise"))
def _attribution_localisation_core(maps, masks, *, weighted, positive_attributions, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    if positive_attributions:
        a = jnp.clip(a, 0.0, None)
    s = _flat_masks(masks)
    area = jnp.sum(s, axis=1)
    inside = jnp.sum(jnp.where(s, a, 0.0), axis=1)
    total = jnp.sum(a, axis=1)
    ratio = inside / (total + 1e-9)
    ratio = jnp.where((area == 0) | (ratio > 1), jnp.nan, ratio)
    if weighted:
        ratio = ratio * area.astype(jnp.float32) / s.shape[1]
    return ratio, jnp.any(~jnp.isfinite(maps))


def attribution_localisation(model, images, labels, maps, *, masks=None, key=None, weighted: bool = False,
                             positive_attributions: bool = False, abs: bool = True,  # noqa: A002
                             normalise: bool = True) -> dict:
    """Attribution localisation (Kohlbrenner et al. 2020), Quantus 0.6's ``AttributionLocalisation``:
    the share of the attribution that falls inside the mask; higher is better.

    ``a = |M / max|M||`` (defaults ``normalise=True``, ``abs=True``; ``positive_attributions`` then
    clips at 0), ``r = sum_{i in G} a_i / (sum_i a_i + 1e-9)``; ``weighted`` multiplies by the mask's
    area fraction ``|G| / (H W)``. NaN for an empty mask and where ``r > 1`` (possible only with
    negative attributions, ``abs=False``), as in Quantus.

    Differences from Quantus: the weighted variant's area fraction is ``|G| / (H W)``, as Quantus's
    per-instance code had it; 0.6.0's batched code divides by ``x_batch[2:].size``, a slice of the
    batch rather than the image's size (0 for batches of one or two images). Quantus's ``max_size``
    only prints a warning and is not an option here. Per-image normalisation (module docstring).

    Args:
      maps: ``(B, H, W)`` float, finite. masks: ``(B, H, W)``, non-zero = the object.
      weighted, positive_attributions, abs, normalise: Quantus's options (and defaults).

    Returns:
      ``{"attribution_localisation": (B,) float32}``.

    Raises:
      ValueError: shapes (masks missing or not the maps' shape, images / labels not matching), non-finite maps.
    """
    return _run(_attribution_localisation_core, "attribution_localisation", images, labels, maps, masks,
                weighted=bool(weighted), positive_attributions=bool(positive_attributions), abs=bool(abs),
                normalise=bool(normalise))


# ----------------------------------------------------------------------------------------------
# top-k intersection (Theiner et al. 2021)
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("k", "concept_influence", "abs", "normalise"))
def _top_k_core(maps, masks, *, k, concept_influence, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    s = _flat_masks(masks)
    area = jnp.sum(s, axis=1)
    top = _descending_order(a)[:, :k]
    tki = jnp.mean(jnp.take_along_axis(s, top, axis=1).astype(jnp.float32), axis=1)
    if concept_influence:
        tki = tki * s.shape[1] / area
    return jnp.where(area == 0, jnp.nan, tki), jnp.any(~jnp.isfinite(maps))


def top_k_intersection(model, images, labels, maps, *, masks=None, key=None, k: int = 1000,
                       concept_influence: bool = False, abs: bool = False,  # noqa: A002
                       normalise: bool = True) -> dict:
    """Top-k intersection (Theiner et al. 2021), Quantus 0.6's ``TopKIntersection``: the fraction of the
    ``k`` highest-attributed pixels that lie in the mask; higher is better.

    ``tki = |top_k(a) ∩ G| / k`` with ``a`` preprocessed as Quantus does by default (``normalise=True``,
    ``abs=False``: a signed map is ranked by its signed values); ``concept_influence`` multiplies by
    ``H W / |G|``. NaN for an empty mask. Ties at the k-th value: the lower row-major index first
    (module docstring).

    Args:
      maps: ``(B, H, W)`` float, finite. masks: ``(B, H, W)``, non-zero = the object.
      k: pixels counted, ``1 <= k <= H W`` (Quantus: 1000, and it also refuses ``k = H W``).
      concept_influence, abs, normalise: Quantus's options (and defaults).

    Returns:
      ``{"top_k_intersection": (B,) float32}``.

    Raises:
      ValueError: shapes (as :func:`attribution_localisation`), ``k`` not an int in ``[1, H W]``
        (with the default ``k=1000``, images smaller than 32 x 32 need a smaller ``k``), non-finite maps.
    """
    V.check_saliency(maps)
    n = int(np.prod(np.shape(maps)[1:]))
    V.check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k={k} exceeds the {n} pixels of a {tuple(np.shape(maps)[1:])} map; pass a smaller k")
    return _run(_top_k_core, "top_k_intersection", images, labels, maps, masks, k=int(k),
                concept_influence=bool(concept_influence), abs=bool(abs), normalise=bool(normalise))


# ----------------------------------------------------------------------------------------------
# relevance rank accuracy and relevance mass accuracy (Arras et al. 2022)
# ----------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("abs", "normalise"))
def _rank_accuracy_core(maps, masks, *, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    s = _flat_masks(masks)
    area = jnp.sum(s, axis=1)
    in_mask = jnp.take_along_axis(s, _descending_order(a), axis=1)
    top = jnp.arange(s.shape[1])[None, :] < area[:, None]
    hits = jnp.sum(in_mask & top, axis=1)
    return jnp.where(area == 0, jnp.nan, hits / jnp.maximum(area, 1)).astype(jnp.float32), \
        jnp.any(~jnp.isfinite(maps))


def relevance_rank_accuracy(model, images, labels, maps, *, masks=None, key=None, abs: bool = False,  # noqa: A002
                            normalise: bool = True) -> dict:
    """Relevance rank accuracy (Arras et al. 2022), Quantus 0.6's ``RelevanceRankAccuracy``: of the
    ``K = |G|`` highest-attributed pixels, the fraction inside the mask ``G``; higher is better.

    Ranks of ``a`` preprocessed as Quantus does by default (``normalise=True``, ``abs=False``); ties at
    the ``K``-th value: the lower row-major index first (module docstring). NaN for an empty mask.

    Args:
      maps: ``(B, H, W)`` float, finite. masks: ``(B, H, W)``, non-zero = the object.
      abs, normalise: Quantus's options (and defaults).

    Returns:
      ``{"relevance_rank_accuracy": (B,) float32}``.

    Raises:
      ValueError: shapes (as :func:`attribution_localisation`), non-finite maps.
    """
    return _run(_rank_accuracy_core, "relevance_rank_accuracy", images, labels, maps, masks, abs=bool(abs),
                normalise=bool(normalise))


@functools.partial(jax.jit, static_argnames=("abs", "normalise"))
def _mass_accuracy_core(maps, masks, *, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    s = _flat_masks(masks)
    within = jnp.sum(jnp.where(s, a, 0.0), axis=1)
    ratio = within / jnp.sum(a, axis=1)
    return jnp.where(jnp.sum(s, axis=1) == 0, jnp.nan, ratio), jnp.any(~jnp.isfinite(maps))


def relevance_mass_accuracy(model, images, labels, maps, *, masks=None, key=None, abs: bool = False,  # noqa: A002
                            normalise: bool = True) -> dict:
    """Relevance mass accuracy (Arras et al. 2022), Quantus 0.6's ``RelevanceMassAccuracy``: the share of
    the attribution's sum that lies inside the mask, ``sum_{i in G} a_i / sum_i a_i``; higher is better.

    ``a`` preprocessed as Quantus does by default (``normalise=True``, ``abs=False``: a signed map's
    negative part counts negatively). NaN for an empty mask; a map summing to 0 divides by 0 (NaN or
    inf), as in Quantus.

    Args:
      maps: ``(B, H, W)`` float, finite. masks: ``(B, H, W)``, non-zero = the object.
      abs, normalise: Quantus's options (and defaults).

    Returns:
      ``{"relevance_mass_accuracy": (B,) float32}``.

    Raises:
      ValueError: shapes (as :func:`attribution_localisation`), non-finite maps.
    """
    return _run(_mass_accuracy_core, "relevance_mass_accuracy", images, labels, maps, masks, abs=bool(abs),
                normalise=bool(normalise))


# ----------------------------------------------------------------------------------------------
# ROC AUC of the map against the mask (Fawcett 2006)
# ----------------------------------------------------------------------------------------------

def roc_auc(scores: jax.Array, positive: jax.Array) -> jax.Array:
    """Exact ROC AUC of each row, ties counted one half (sklearn's ``roc_auc_score``), batched.

    ``AUC = U / (P N)`` with the Mann-Whitney ``U = sum_{i positive} (#neg < s_i + #neg == s_i / 2)``.
    The negatives of a row are sorted (positives moved to ``+inf``) and every positive finds its two
    counts by binary search; ``2U`` is summed in int32 over blocks small enough not to overflow, so
    the only rounding is the final division. NaN where a row has no positive or no negative
    (sklearn's ``roc_curve`` gives NaN there too).

    Args:
      scores: ``(B, N)`` float, finite. positive: ``(B, N)`` bool.

    Returns:
      ``(B,)`` float32.
    """
    b, n = scores.shape
    n_pos = jnp.sum(positive, axis=1)
    n_neg = n - n_pos
    negatives = _sorting.sort(jnp.where(positive, jnp.inf, scores))
    below = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(negatives, scores)
    upto = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(negatives, scores)
    twice = jnp.where(positive, below + upto, 0).astype(jnp.int32)  # 2 #neg< + #neg==, at most 2n
    block = max(1, min(n, (2 ** 31 - 1) // (2 * n)))
    blocks = -(-n // block)
    twice = jnp.pad(twice, ((0, 0), (0, blocks * block - n))).reshape(b, blocks, block)
    partial = jnp.sum(twice, axis=2).astype(jnp.float32)  # exact int32 sums
    denom = 2.0 * n_pos.astype(jnp.float32) * n_neg.astype(jnp.float32)
    auc = jnp.sum(partial / jnp.where(denom > 0, denom, 1.0)[:, None], axis=1)
    return jnp.where((n_pos == 0) | (n_neg == 0), jnp.nan, auc)


@functools.partial(jax.jit, static_argnames=("abs", "normalise"))
def _auc_core(maps, masks, *, abs, normalise):  # noqa: A002
    a = preprocess_attributions(maps, abs, normalise)
    return roc_auc(a, _flat_masks(masks)), jnp.any(~jnp.isfinite(maps))


def localisation_auc(model, images, labels, maps, *, masks=None, key=None, abs: bool = False,  # noqa: A002
                     normalise: bool = True) -> dict:
    """ROC AUC of the map as a pixel classifier of the mask (Fawcett 2006), Quantus 0.6's ``AUC``;
    higher is better (1: every object pixel outranks every background pixel; 0.5: chance).

    Exact, ties counted one half, as sklearn's ``roc_auc_score`` (and Quantus's ``roc_curve`` +
    ``auc``, equal in exact arithmetic): rank based, batched (:func:`roc_auc`). ``a`` preprocessed as
    Quantus does by default (``normalise=True``, ``abs=False``; neither changes the ranks). NaN for an
    empty mask and for a mask covering the whole image (no negatives), as in Quantus.

    Args:
      maps: ``(B, H, W)`` float, finite. masks: ``(B, H, W)``, non-zero = the object.
      abs, normalise: Quantus's options (and defaults).

    Returns:
      ``{"localisation_auc": (B,) float32}``.

    Raises:
      ValueError: shapes (as :func:`attribution_localisation`), non-finite maps.
    """
    return _run(_auc_core, "localisation_auc", images, labels, maps, masks, abs=bool(abs), normalise=bool(normalise))
