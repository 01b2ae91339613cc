"""Ground-truth-mask metrics (Log-Cosh Dice loss, MAE, pointing game) and confident-sample selection."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gag_jax import _validation as V
from gag_jax.metrics import _common as C
from gag_jax.metrics._common import ModelFn
from gag_jax.model import jit_with_model


def _map_metric(core, saliency, masks, option):
    """Check the maps, run a jitted ``core(saliency, masks, option) -> (values, any_non_finite)``."""
    V.check_maps(saliency, masks)
    values, bad = core(jnp.asarray(saliency), jnp.asarray(masks), option)
    V.raise_if(bad, "saliency contains NaN or inf; a saliency map must be finite")
    return values


@functools.partial(jax.jit, static_argnames=("smooth",))
def _log_cosh_dice_core(saliency, masks, smooth):
    s = saliency.astype(jnp.float32).reshape(saliency.shape[0], -1)
    m = masks.astype(jnp.float32).reshape(masks.shape[0], -1)
    dice = (2.0 * jnp.sum(s * m, axis=1) + smooth) / (jnp.sum(s, axis=1) + jnp.sum(m, axis=1) + smooth)
    x = jnp.abs(1.0 - dice)
    # log(cosh(x)) = x + log1p(exp(-2x)) - log 2, stable for any x >= 0
    loss = x + jnp.log1p(jnp.exp(-2.0 * x)) - jnp.log(2.0)
    return loss, jnp.any(~jnp.isfinite(s))


def log_cosh_dice(saliency, masks, smooth: float = 1.0):
    """Log-Cosh Dice loss per image (lower is better).

    ``dice = (2 sum(S * G) + smooth) / (sum(S) + sum(G) + smooth)`` over the ``H*W`` pixels of each
    image, ``loss = log(cosh(1 - dice))`` (the authors' ``log((e^x + e^-x) / 2)``, computed stably).

    Args:
      saliency: ``(B, H, W)`` float (explainer maps are in ``[0, 1]``).
      masks: ``(B, H, W)`` ground truth in ``{0, 1}`` (bool or numeric).
      smooth: additive smoothing (1 in the paper's code).

    Returns:
      ``(B,)`` float32.

    Raises:
      ValueError: ``masks`` shape differs from ``saliency`` shape (both named); NaN / inf in
        ``saliency``.
    """
    return _map_metric(_log_cosh_dice_core, saliency, masks, float(smooth))


@functools.partial(jax.jit, static_argnames=("sqrt",))
def _mae_core(saliency, masks, sqrt):
    s = saliency.astype(jnp.float32)
    err = jnp.mean(jnp.abs(s - masks.astype(jnp.float32)), axis=(1, 2))
    if sqrt:
        err = jnp.sqrt(err)
    return err, jnp.any(~jnp.isfinite(s))


def mae(saliency, masks, *, sqrt: bool = False):
    """Mean absolute error between saliency and ground-truth mask, per image (lower is better).

    ``MAE = mean_{h,w} |S - G|``; ``sqrt=True`` returns ``sqrt(MAE)``, the number the authors' code
    reports.

    Args:
      saliency: ``(B, H, W)`` float in ``[0, 1]``.
      masks: ``(B, H, W)`` in ``{0, 1}``.
      sqrt: authors' variant.

    Returns:
      ``(B,)`` float32.

    Raises:
      ValueError: ``masks`` shape differs from ``saliency`` shape (both named); NaN / inf in
        ``saliency``.
    """
    return _map_metric(_mae_core, saliency, masks, bool(sqrt))


@functools.partial(jax.jit, static_argnames=("tolerance",))
def _pointing_game_core(saliency, masks, tolerance):
    b, h, w = saliency.shape
    s = saliency.astype(jnp.float32).reshape(b, -1)
    peak = jnp.argmax(s, axis=1)  # the first maximum in row-major order
    py, px = (peak // w)[:, None, None], (peak % w)[:, None, None]
    d2 = (jnp.arange(h)[None, :, None] - py) ** 2 + (jnp.arange(w)[None, None, :] - px) ** 2
    accept = (d2 < tolerance ** 2) | (d2 == 0)
    hit = jnp.any(accept & (masks != 0), axis=(1, 2))
    return hit.astype(jnp.float32), jnp.any(~jnp.isfinite(s))


def pointing_game(saliency, masks, *, tolerance: float = 15):
    """Pointing game (Zhang et al., ECCV 2016): 1.0 if the map's maximum falls on the object, else 0.0.

    The point is the map's maximum; with ties, the first maximum in row-major order (``np.argmax``,
    ``torch.argmax``, as TorchRay's benchmark takes it). It *hits* when some mask pixel lies at
    Euclidean distance ``< tolerance`` pixels from it (TorchRay's ``PointingGame``, 15 pixels in the
    paper and in TorchRay) or is the point itself (so ``tolerance=0`` asks for the point to be on
    the mask). An empty mask is a miss. The dataset score is the mean over images (hits / total).

    Args:
      saliency: ``(B, H, W)`` float, finite.
      masks: ``(B, H, W)`` ground truth; non-zero pixels are the object (bool or numeric).
      tolerance: non-negative acceptance radius in pixels.

    Returns:
      ``(B,)`` float32 of 1.0 (hit) / 0.0 (miss).

    Raises:
      ValueError: ``masks`` shape differs from ``saliency`` shape (both named); NaN / inf in
        ``saliency``; negative ``tolerance``.
    """
    if isinstance(tolerance, bool) or not (float(tolerance) >= 0):
        raise ValueError(f"tolerance must be a non-negative number of pixels; got {tolerance!r}")
    return _map_metric(_pointing_game_core, saliency, masks, float(tolerance))


@jit_with_model(("model_fn", "batch_size"))
def _target_probs_core(images, labels, *, model_fn, batch_size):
    images = images.astype(jnp.float32)
    return C.target_probs_of_items(model_fn, lambda bi: images[bi], (jnp.arange(images.shape[0]),),
                                   labels.astype(jnp.int32), batch_size)


def target_probs(model_fn: ModelFn, images, labels, *, batch_size: int | str | None = None):
    """``softmax(model_fn(images))[label]`` per image, float32 ``(B,)`` (logits cast to float32).

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` normalised; labels: ``(B,)`` int.
      batch_size: max images per model call (``None`` = all; ``"auto"`` as the perturbation metrics).

    Raises:
      ValueError: images not ``(B, H, W, C)``, labels not ``(B,)`` ints or outside ``[0, K)``.
    """
    V.check_images_labels_saliency(images, labels)
    probs, bad = _target_probs_core(jnp.asarray(images), jnp.asarray(labels), model_fn=model_fn,
                                    batch_size=C.resolve_batch_size(batch_size, images))
    V.raise_if(bad, V.LABEL_RANGE_MESSAGE)
    return probs


def select_confident(model_fn: ModelFn, images, labels, threshold: float = 0.9, *,
                     batch_size: int | None = None):
    """Which images the model classifies confidently: ``softmax(model_fn(x))[label] > threshold``.

    The paper evaluates only images with over 90% confidence on the ground-truth class.

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` normalised; labels: ``(B,)`` int.
      threshold: strict lower bound on the target probability.
      batch_size: max images per model call (``None`` = all).

    Returns:
      bool ``(B,)`` device array.

    Raises:
      ValueError: as :func:`target_probs`.
    """
    return target_probs(model_fn, images, labels, batch_size=batch_size) > threshold
