"""Deletion / Insertion AUC (RISE-style, as the paper computed them)."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax.metrics import _common as C
from gag_jax.metrics import _sorting
from gag_jax.metrics._common import ModelFn
from gag_jax.model import jit_with_model

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(10))  # 0, 0.1, ..., 0.9


def trapezoid_auc(curves: jax.Array, fractions: Sequence[float]) -> jax.Array:
    """``sum_i (f_{i+1} - f_i) (y_i + y_{i+1}) / 2`` along the last axis of ``curves (..., T)``."""
    dx = jnp.asarray(np.diff(np.asarray(fractions, np.float64)), jnp.float32)
    return jnp.sum(dx * (curves[..., 1:] + curves[..., :-1]) * 0.5, axis=-1)


@jit_with_model(("model_fn", "fractions", "batch_size", "blur_kernel", "blur_sigma"))
def _deletion_insertion_core(images, labels, saliency, *, model_fn, fractions, batch_size,
                             blur_kernel, blur_sigma):
    B, H, W, _ = images.shape
    T = len(fractions)
    images = images.astype(jnp.float32)
    sal = saliency.astype(jnp.float32)
    flags = V.saliency_flags(sal)
    flat = sal.reshape(B, H * W)
    # "most salient fraction f" = pixels strictly above the (1 - f) quantile; M > q  <=>  M > lo
    lo, thr, _ = C.order_stats(_sorting.sort(flat), [1.0 - f for f in fractions])  # (B, T)
    blurred = C.gaussian_blur(images, blur_kernel, blur_sigma)

    # items (mode, t, b), mode 0 = deletion, 1 = insertion
    b_idx = jnp.tile(jnp.arange(B), 2 * T)
    lo_items = jnp.tile(lo.T.reshape(-1), 2)
    is_del = jnp.repeat(jnp.asarray([True, False]), T * B)

    def make_inputs(bi, lo_i, dl):
        m = (sal[bi] > lo_i[:, None, None])[..., None]
        x = images[bi]
        dl = dl[:, None, None, None]
        # deletion: salient -> 0 (normalised space), rest original;
        # insertion: salient -> original, rest blurred
        return jnp.where(m, jnp.where(dl, 0.0, x), jnp.where(dl, x, blurred[bi]))

    probs, bad_label = C.target_probs_of_items(model_fn, make_inputs, (b_idx, lo_items, is_del),
                                               labels[b_idx].astype(jnp.int32), batch_size)
    probs = probs.reshape(2, T, B).transpose(0, 2, 1)
    dcurve, icurve = probs[0], probs[1]
    out = {"dauc": trapezoid_auc(dcurve, fractions), "iauc": trapezoid_auc(icurve, fractions),
           "deletion_curve": dcurve, "insertion_curve": icurve, "thresholds": thr}
    return out, flags, bad_label


def deletion_insertion(model_fn: ModelFn, images, labels, saliency, *, fractions=None,
                       blur_sigma: float = 16.0, blur_kernel: int = 33,
                       copies_per_call: int | str | None = "auto") -> dict:
    """Deletion and Insertion curves and their AUCs, batched and jit-compiled.

    For each image and fraction ``f_t`` (default ``0, 0.1, ..., 0.9``):

    * ``q_t = quantile_{1 - f_t}(M)`` per image (linear interpolation, as ``np.quantile``); the
      "most salient ``f_t``" pixels are those with ``M > q_t`` (strictly; ``f = 0`` selects none);
    * deletion image: those pixels set to 0 in normalised space (the channel mean), others original;
    * insertion image: those pixels original, others from the Gaussian-blurred image (kernel
      ``blur_kernel``, ``blur_sigma``, reflect padding, torchvision's kernel; applied to the
      normalised image, which equals blurring in pixel space since the blur is linear and sums to 1);
    * curve point = ``softmax(model_fn(image))[label]`` (float32 logits);
    * AUC = trapezoid over the fractions, ``sum_t (f_{t+1} - f_t)(y_t + y_{t+1}) / 2`` (so with the
      default fractions the x-axis spans 0.9, as in the paper's tables).

    The ``2 * T * B`` perturbed images go through the model in calls of at most ``copies_per_call``
    copies (see :func:`gag_jax.metrics.default_batch_size`), or as one batch with ``None``.
    Cached per (shapes, ``model_fn``, options); see :func:`gag_jax.metrics.rcap` on re-tracing.

    Args:
      model_fn: ``images (b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` float, normalised.
      labels: ``(B,)`` int.
      saliency: ``(B, H, W)`` float, finite (only the ranking matters).
      fractions: increasing fractions in ``[0, 1]``, at least 2; ``None`` = ``0, 0.1, ..., 0.9``.
      blur_sigma, blur_kernel: insertion's starting image (``blur_kernel`` odd).
      copies_per_call: max perturbed copies per model call; ``"auto"`` = :func:`gag_jax.metrics.default_batch_size`
        (2 on CPU, measured); ``None`` = all at once.

    Returns:
      dict: ``"dauc"`` ``(B,)``, ``"iauc"`` ``(B,)``, ``"deletion_curve"`` ``(B, T)``,
      ``"insertion_curve"`` ``(B, T)``, ``"fractions"`` ``(T,)``, ``"thresholds"`` ``(B, T)``.

    Raises:
      ValueError: shape mismatches (both shapes named), NaN / inf in ``saliency``, labels outside
        ``[0, K)``, bad ``fractions`` / blur / ``copies_per_call``.
    """
    V.check_images_labels_saliency(images, labels, saliency)
    fr = DEFAULT_FRACTIONS if fractions is None else V.check_fractions(fractions)
    blur_kernel, blur_sigma = V.check_blur(blur_kernel, blur_sigma)
    batch_size = C.resolve_batch_size(copies_per_call, images, "copies_per_call")
    out, flags, bad_label = _deletion_insertion_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(saliency), model_fn=model_fn,
        fractions=fr, batch_size=batch_size, blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    V.raise_on_saliency_flags(flags, allow_negative=True)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)
    out["fractions"] = jnp.asarray(fr, jnp.float32)
    return out
