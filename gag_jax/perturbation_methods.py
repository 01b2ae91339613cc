"""Perturbation attribution methods: occlusion, RISE and XRAI.

Each is an attribution function ``fn(model_fn, images (B, H, W, C), labels (B,), key, **options)
-> (B, H, W, 1)`` raw (signed, un-normalised) maps, one value per pixel. ``gj.explain("occlusion" |
"rise" | "xrai", ...)`` runs them and min-max normalises to ``(B, H, W)``.

Occlusion and RISE are pure and jit-able: the perturbed copies of the whole batch go through the
model ``chunk_size`` perturbations at a time (``chunk_size * B`` images per model call) inside a
``jax.lax.scan``, so memory is bounded by ``chunk_size``, never by the number of perturbations.
XRAI segments on the host (scikit-image's Felzenszwalb, numpy) and so is not jit-able; its base
attribution is any ``gj.explain`` method (default Integrated Gradients).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import pixels
from gag_jax._validation import check_positive_int
from gag_jax._validation import check_choice
from gag_jax.modifications import check_number, is_key_batch

BASELINES = pixels.BASELINES
OUTPUTS = ("logit", "prob")

# XRAI's segmentation as the reference (PAIR-code/saliency saliency/core/xrai.py)
XRAI_SCALES = (50, 100, 150, 250, 500, 1200)
XRAI_SIGMA = 0.8
XRAI_MIN_SIZE = 150
XRAI_SEGMENT_SIZE = 224
XRAI_DILATION = 5
XRAI_MIN_PIXEL_DIFF = 50


# ---------------------------------------------------------------------------------------------
# shared pieces


def target_scores(model_fn: Callable, images: jax.Array, labels: jax.Array, output: str = "logit") -> jax.Array:
    """``(N,)`` float32 target-class logits (``output="logit"``) or softmax probabilities (``"prob"``)."""
    logits = jnp.asarray(model_fn(images)).astype(jnp.float32)
    if output == "prob":
        logits = jax.nn.softmax(logits, axis=-1)
    return jnp.take_along_axis(logits, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints; got {value!r}")
    for v in pair:
        check_positive_int(v, name)
    return int(pair[0]), int(pair[1])


def _check_images(images) -> None:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must have shape (B, H, W, C); got {getattr(images, 'shape', None)}")


def _chunked_sum(num_items: int, chunk_size: int | None, contribution: Callable, init: jax.Array) -> jax.Array:
    """``sum_{i < num_items} contribution(i, valid)`` over chunks of ``chunk_size`` item indices.

    ``contribution(indices (chunk,), valid (chunk,) float) -> array like init``; the padded
    indices of the last chunk repeat item ``num_items - 1`` with ``valid = 0``.
    """
    chunk = num_items if chunk_size is None else min(int(chunk_size), num_items)
    num_chunks = math.ceil(num_items / chunk)

    def body(carry, _):
        total, chunk_index = carry
        indices = chunk_index * chunk + jnp.arange(chunk)
        valid = (indices < num_items).astype(jnp.float32)
        total = total + contribution(jnp.minimum(indices, num_items - 1), valid)
        return (total, chunk_index + 1), None

    (total, _), _ = jax.lax.scan(body, (init, jnp.int32(0)), None, length=num_chunks)
    return total


# ---------------------------------------------------------------------------------------------
# occlusion


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Start offsets of a sliding window along one axis: ``0, stride, ...``, plus ``size - window``
    when the strides stop short of the far edge, so every pixel is covered when ``stride <= window``."""
    if window > size:
        raise ValueError(f"window {window} is larger than the image side {size}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return np.asarray(starts, np.int32)


def occlusion_positions(size: tuple[int, int], window, stride) -> np.ndarray:
    """``(P, 2)`` top-left corners ``(y, x)`` of the occlusion windows on an image of ``size`` (H, W):
    :func:`window_starts` along each axis; ``window``/``stride`` an int or an ``(h, w)`` pair. The
    occlusion map costs ``P + 1`` model calls per image."""
    (window_h, window_w), (stride_h, stride_w) = _pair(window, "window"), _pair(stride, "stride")
    ys, xs = window_starts(size[0], window_h, stride_h), window_starts(size[1], window_w, stride_w)
    return np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def occlusion(model_fn: Callable, images: jax.Array, labels: jax.Array, key: jax.Array | None = None, *,
              window=32, stride=16, baseline: str = "black", output: str = "logit", chunk_size: int | None = 16,
              mean=None, std=None) -> jax.Array:
    """Occlusion (Zeiler & Fergus 2014): the drop of the target score when a window is removed.

    A ``window`` slides over the image with ``stride``; for each position k the window (all
    channels) is replaced by the ``baseline`` and ``d_k = s(x) - s(x with window k removed)``;
    a pixel's attribution is the mean of ``d_k`` over the windows that cover it (0 where none does).
    ``s`` is the target logit by default (``output="logit"``: for a linear model the map is then
    exactly ``sum_window w * (x - baseline)``, averaged over the covering windows), or the softmax
    probability (``output="prob"``).

    Args:
      model_fn: ``images -> logits (N, K)``.
      images: ``(B, H, W, C)`` normalised images.
      labels: ``(B,)`` int targets.
      key: unused (occlusion is deterministic); accepted for the common signature.
      window: int or ``(h, w)`` window size in pixels (32).
      stride: int or ``(h, w)`` step between windows (16); a last window is added flush with the
        far edge.
      baseline: ``"black"`` (zero in pixel space), ``"blur"`` or ``"mean"`` (see :func:`gag_jax.pixels.baseline`).
      output: ``"logit"`` or ``"prob"``.
      chunk_size: window positions per model call (each call sees ``chunk_size * B`` images);
        None: all positions at once.
      mean, std: the model's normalisation (for the baseline).

    Returns:
      ``(B, H, W, 1)`` float32 signed attributions.
    """
    _check_images(images)
    window_h, window_w = _pair(window, "window")
    check_choice(baseline, "baseline", BASELINES)
    check_choice(output, "output", OUTPUTS)
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    images = images.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    batch, height, width, channels = images.shape
    starts = occlusion_positions((height, width), window, stride)  # (P, 2), static
    coverage = np.zeros((height, width), np.float32)
    for y, x in starts:
        coverage[y:y + window_h, x:x + window_w] += 1
    base = pixels.baseline(images, baseline, mean, std)
    reference = target_scores(model_fn, images, labels, output)  # (B,)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    starts_j = jnp.asarray(starts)

    def contribution(indices, valid):
        y, x = starts_j[indices, 0][:, None, None], starts_j[indices, 1][:, None, None]
        inside = (rows >= y) & (rows < y + window_h) & (cols >= x) & (cols < x + window_w)  # (k, H, W)
        occluded = jnp.where(inside[:, None, :, :, None], base[None], images[None])  # (k, B, H, W, C)
        k = indices.shape[0]
        scores = target_scores(model_fn, occluded.reshape(k * batch, height, width, channels),
                               jnp.tile(labels, k), output).reshape(k, batch)
        drops = (reference[None] - scores) * valid[:, None]
        return jnp.einsum("kb,khw->bhw", drops, inside.astype(jnp.float32))

    total = _chunked_sum(len(starts), chunk_size, contribution, jnp.zeros((batch, height, width), jnp.float32))
    safe = np.maximum(coverage, 1.0)
    return jnp.where(coverage > 0, total / safe, 0.0)[..., None]


# ---------------------------------------------------------------------------------------------
# RISE


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` bilinear upsampling matrix (half-pixel centres, edges clamped)."""
    source = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0, size_in - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = source - low
    matrix = np.zeros((size_out, size_in), np.float64)
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), high), frac)
    return matrix


def rise_masks(key: jax.Array, indices: jax.Array, size: tuple[int, int], cells: int = 7,
               p_keep: float = 0.5) -> jax.Array:
    """RISE masks ``(len(indices), H, W)`` in [0, 1] (Petsiuk et al. 2018).

    Mask i: a ``cells x cells`` grid of independent Bernoulli(``p_keep``) cells drawn from
    ``fold_in(key, i)``, upsampled bilinearly (``bilinear_matrix``) to ``(cells + 1) * ceil(H / cells)``
    by ``(cells + 1) * ceil(W / cells)``, then cropped to ``H x W`` at a random shift in
    ``[0, cell)`` along each axis. Mask i is the same whatever the chunking.
    """
    height, width = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    up_h = jnp.asarray(bilinear_matrix(cells, (cells + 1) * cell_h), jnp.float32)
    up_w = jnp.asarray(bilinear_matrix(cells, (cells + 1) * cell_w), jnp.float32)

    def one(i):
        k_grid, k_y, k_x = jax.random.split(jax.random.fold_in(key, i), 3)
        grid = jax.random.bernoulli(k_grid, p_keep, (cells, cells)).astype(jnp.float32)
        dy = jax.random.randint(k_y, (), 0, cell_h)
        dx = jax.random.randint(k_x, (), 0, cell_w)
        rows = jax.lax.dynamic_slice(up_h, (dy, 0), (height, cells))
        cols = jax.lax.dynamic_slice(up_w, (dx, 0), (width, cells))
        return jnp.einsum("hi,ij,wj->hw", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)

    return jax.vmap(one)(indices)


def rise(model_fn: Callable, images: jax.Array, labels: jax.Array, key: jax.Array, *, n: int = 4000,
         cells: int = 7, p_keep: float = 0.5, baseline: str = "mean", chunk_size: int | None = 32,
         mean=None, std=None) -> jax.Array:
    """RISE (Petsiuk et al. 2018): ``saliency = sum_i p_i * M_i / (n * p_keep)``.

    ``M_i`` are random smooth masks (see ``rise_masks``), ``p_i`` the softmax probability of the
    target for the masked image ``baseline + M_i * (x - baseline)``. The paper multiplies the
    normalised input by the mask, i.e. ``baseline="mean"``-like zero in normalised space; here
    the baseline is a named choice (default ``"mean"``: each image's mean colour).

    Args:
      model_fn: ``images -> logits (N, K)``.
      images: ``(B, H, W, C)`` normalised images.
      labels: ``(B,)`` int targets.
      key: PRNG key: one key (the same n masks for every image, as the paper) or a batch of
        ``B`` keys (each image its own masks, independent of its batch).
      n: number of masks (4000 in the paper for ImageNet).
      cells: mask grid size s (7).
      p_keep: probability that a grid cell is kept, in (0, 1] (0.5).
      baseline: ``"black"``, ``"blur"`` or ``"mean"``.
      chunk_size: masks per model call (each call sees ``chunk_size * B`` images); None: all n.
      mean, std: the model's normalisation (for the baseline).

    Returns:
      ``(B, H, W, 1)`` float32 saliency (about the target probability, not normalised).
    """
    _check_images(images)
    check_positive_int(n, "n")
    check_positive_int(cells, "cells")
    check_number(p_keep, "p_keep", low=0.0, high=1.0, low_open=True)
    check_choice(baseline, "baseline", BASELINES)
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")
    if key is None:
        raise ValueError("rise draws random masks: pass key=jax.random.PRNGKey(...)")
    images = images.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    batch, height, width, channels = images.shape
    if min(height, width) < cells:
        raise ValueError(f"cells ({cells}) must not exceed the image side ({height}x{width})")
    per_image = is_key_batch(key)
    if per_image and key.shape[0] != batch:
        raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for {batch} images")
    base = pixels.baseline(images, baseline, mean, std)

    def contribution(indices, valid):
        if per_image:  # (k, B, H, W)
            masks = jax.vmap(lambda kb: rise_masks(kb, indices, (height, width), cells, p_keep), out_axes=1)(key)
        else:  # (k, 1, H, W), shared by the batch
            masks = rise_masks(key, indices, (height, width), cells, p_keep)[:, None]
        masked = base[None] + masks[..., None] * (images - base)[None]  # (k, B, H, W, C)
        k = indices.shape[0]
        probs = target_scores(model_fn, masked.reshape(k * batch, height, width, channels),
                              jnp.tile(labels, k), "prob").reshape(k, batch)
        return jnp.einsum("kb,kbhw->bhw", probs * valid[:, None], jnp.broadcast_to(masks, (k, batch, height, width)))

    total = _chunked_sum(n, chunk_size, contribution, jnp.zeros((batch, height, width), jnp.float32))
    return (total / (n * p_keep))[..., None]


# ---------------------------------------------------------------------------------------------
# XRAI


def _require_skimage():
    try:
        import skimage  # noqa: F401
    except ImportError as error:  # pragma: no cover - skimage is in the test and demo extras
        raise ValueError("xrai segments images with scikit-image: pip install scikit-image "
                         "(or pip install -e '.[demo]' in a source checkout)") from error


def xrai_segments(image: np.ndarray, *, scales=XRAI_SCALES, sigma: float = XRAI_SIGMA,
                  min_size: int = XRAI_MIN_SIZE, segment_size: int | None = XRAI_SEGMENT_SIZE,
                  dilation: int = XRAI_DILATION) -> np.ndarray:
    """Over-segment one image at several scales, as the XRAI reference: ``(M, H, W)`` bool masks.

    The image ``(H, W, C)`` is min-max scaled to [-1, 1], resized to ``segment_size`` square
    (cubic, anti-aliased; None keeps its size), segmented with Felzenszwalb's algorithm
    (``skimage.segmentation.felzenszwalb``) at each of ``scales`` (``sigma``, ``min_size``), the
    labels resized back (nearest), every segment of every scale becomes a mask, and each mask is
    dilated by a disk of radius ``dilation`` (0: none).
    """
    _require_skimage()
    from skimage.morphology import dilation as dilate
    from skimage.morphology import disk
    from skimage.segmentation import felzenszwalb
    from skimage.transform import resize

    image = np.asarray(image, np.float64)
    height, width = image.shape[:2]
    low, high = image.min(), image.max()
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    scaled = scaled * 2.0 - 1.0
    if segment_size is not None:
        scaled = resize(scaled, (segment_size, segment_size), order=3, mode="constant", preserve_range=True,
                        anti_aliasing=True)
    masks = []
    for scale in scales:
        labels = felzenszwalb(scaled, scale=scale, sigma=sigma, min_size=min_size)
        if segment_size is not None:
            labels = resize(labels, (height, width), order=0, preserve_range=True, mode="constant",
                            anti_aliasing=False).astype(np.int64)
        masks.extend(labels == value for value in range(labels.min(), labels.max() + 1))
    if dilation:
        footprint = disk(dilation)
        masks = [dilate(mask, footprint) for mask in masks]
    return np.stack(masks).astype(bool)


def xrai_regions(attribution: np.ndarray, masks: np.ndarray, *, min_pixel_diff: int = XRAI_MIN_PIXEL_DIFF,
                 area_threshold: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
    """XRAI's greedy region ranking (the reference's full algorithm) for one image.

    Repeatedly adds the mask whose not-yet-covered pixels have the highest mean attribution
    (the gain density), skipping masks that add fewer than ``min_pixel_diff`` new pixels, until
    no mask is left (or the covered area exceeds ``area_threshold``); each added region's pixels
    get its gain, pixels no mask reached get the mean attribution over them.

    Args:
      attribution: ``(H, W)`` per-pixel attribution.
      masks: ``(M, H, W)`` bool candidate segments.
      min_pixel_diff: smallest number of new pixels a mask must add.
      area_threshold: stop once this fraction of the image is covered (1.0: all masks).

    Returns:
      ``(map (H, W) float64, regions)``: ``regions`` lists the added pixel sets ``(H, W)`` bool
      in the order they were added (most important first).
    """
    attribution = np.asarray(attribution, np.float64)
    height, width = attribution.shape
    flat_attr = attribution.reshape(-1)
    flat_masks = np.asarray(masks, bool).reshape(len(masks), -1)
    as_float = flat_masks.astype(np.float64)
    remaining = np.ones(len(flat_masks), bool)
    covered = np.zeros(height * width, bool)
    out = np.full(height * width, -np.inf)
    regions = []
    while covered.mean() <= area_threshold:
        free = (~covered).astype(np.float64)
        new_counts = as_float @ free
        remaining &= new_counts >= min_pixel_diff
        if not remaining.any():
            break
        gains = np.where(remaining, (as_float @ (free * flat_attr)) / np.maximum(new_counts, 1.0), -np.inf)
        best = int(np.argmax(gains))  # first of equal gains, as the reference's strict ">"
        added = flat_masks[best] & ~covered
        out[added] = gains[best]
        regions.append(added.reshape(height, width))
        covered |= flat_masks[best]
        remaining[best] = False
    untouched = np.isinf(out)
    if untouched.any():
        out[untouched] = flat_attr[untouched].mean()
    return out.reshape(height, width), regions


def xrai(model_fn, images: jax.Array, labels: jax.Array, key: jax.Array | None = None, *, base: Callable,
         scales=XRAI_SCALES, sigma: float = XRAI_SIGMA,
         min_size: int = XRAI_MIN_SIZE, segment_size: int | None = XRAI_SEGMENT_SIZE, dilation: int = XRAI_DILATION,
         min_pixel_diff: int = XRAI_MIN_PIXEL_DIFF, area_threshold: float = 1.0, mean=None,
         std=None) -> jax.Array:
    """XRAI (Kapishnikov et al. 2019): segments ranked by the attribution gain of a base method.

    1. Base attribution ``(B, H, W, C)`` = ``base(model_fn, images, labels, key)`` (``gj.explain("xrai",
       ..., base="ig")`` builds it from a gradient method: IG from the image's minimum and from its
       maximum, averaged, as the reference). Channels are reduced by their maximum.
    2. Segments: ``xrai_segments`` of each image in pixel space (de-normalised with ``mean``/``std``).
    3. ``xrai_regions``: greedy ranking by gain density; the map holds each region's gain.

    Runs on the host (the segmentation is numpy / scikit-image); not jit-able.

    Args:
      model_fn: ``images -> logits`` or ``gj.ModelFunctions`` (passed to ``gj.explain``).
      images: ``(B, H, W, C)`` normalised images.
      labels: ``(B,)`` int targets.
      key: PRNG key for a stochastic base method.
      base: the base attribution function ``base(model_fn, images, labels, key) -> (B, H, W, C)``,
        e.g. ``gj.explainer_fn("ig", postprocess=False)``.
      scales, sigma, min_size, segment_size, dilation: segmentation (see ``xrai_segments``).
      min_pixel_diff, area_threshold: ranking (see ``xrai_regions``).
      mean, std: the model's input scaling (segments are found on the pixels); ``gj.explain`` reads
        them from a ``gj.ModelFunctions``.

    Returns:
      ``(B, H, W, 1)`` float32 XRAI maps (region gains).
    """
    _check_images(images)
    check_positive_int(min_size, "min_size")
    check_number(sigma, "sigma", low=0.0)
    check_number(area_threshold, "area_threshold", low=0.0, high=1.0)
    if not isinstance(min_pixel_diff, (int, np.integer)) or min_pixel_diff < 0:
        raise ValueError(f"min_pixel_diff must be an int >= 0; got {min_pixel_diff!r}")
    if not isinstance(dilation, (int, np.integer)) or dilation < 0:
        raise ValueError(f"dilation must be an int >= 0; got {dilation!r}")
    if segment_size is not None:
        check_positive_int(segment_size, "segment_size")
    if not scales:
        raise ValueError("scales must list at least one Felzenszwalb scale")
    if not callable(base):
        raise ValueError(f"xrai's base must be an attribution function base(model, images, labels, key); got {base!r} "
                         "(gj.explain('xrai', ..., base='ig') takes a method name)")
    _require_skimage()
    mean, std = pixels.require(mean, std, what="xrai (segments the image)", channels=images.shape[-1])
    attribution = np.asarray(base(model_fn, images, labels, key), np.float64).max(axis=-1)  # (B, H, W)
    image_pixels = np.asarray(pixels.to_pixels(jnp.asarray(images, jnp.float32), mean, std))
    maps = []
    for image, attr in zip(image_pixels, attribution):
        masks = xrai_segments(image, scales=scales, sigma=sigma, min_size=min_size, segment_size=segment_size,
                              dilation=dilation)
        maps.append(xrai_regions(attr, masks, min_pixel_diff=min_pixel_diff, area_threshold=area_threshold)[0])
    return jnp.asarray(np.stack(maps), jnp.float32)[..., None]

