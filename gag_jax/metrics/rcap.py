"""ReCover And Predict (RCAP), section 4.2 of the paper, eq. 5/6."""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax import pixels
from gag_jax.metrics import _common as C
from gag_jax.metrics import _sorting
from gag_jax.metrics._common import ModelFn
from gag_jax.model import as_model_functions, jit_with_model

_BASELINES = pixels.BASELINES


def rcap_percentiles(lower_bound: float = 50, interval: float = 10) -> tuple[float, ...]:
    """The percentile levels ``p_k = 100 - k * interval``, ``k = 1..j``, ``j = (100 - lower_bound) / interval``.

    Raises:
      ValueError: ``lower_bound`` outside ``[0, 100)``, ``interval <= 0``, or ``interval`` not
        dividing ``100 - lower_bound`` (no rounding is done: the partition would be ambiguous).
    """
    lb, iv = float(lower_bound), float(interval)
    if not (0 <= lb < 100):
        raise ValueError(f"lower_bound must be in [0, 100); got {lower_bound!r}")
    if not (iv > 0):
        raise ValueError(f"interval must be > 0; got {interval!r}")
    j_float = (100.0 - lb) / iv
    j = int(round(j_float))
    if j < 1 or abs(j_float - j) > 1e-9:
        raise ValueError(
            f"interval={interval!r} must divide 100 - lower_bound = {100 - lb:g} into a whole number "
            f"of partitions (j = (100 - lower_bound) / interval = {j_float:g})")
    return tuple(100.0 - k * iv for k in range(1, j + 1))


@jit_with_model(("model_fn", "percentiles", "baseline", "mean", "std", "batch_size", "blur_kernel",
                    "blur_sigma"))
def _rcap_core(images, labels, saliency, *, model_fn, percentiles, baseline, mean, std, batch_size,
               blur_kernel, blur_sigma):
    B, H, W, _ = images.shape
    j = len(percentiles)
    images = images.astype(jnp.float32)
    sal = saliency.astype(jnp.float32)
    flags = V.saliency_flags(sal)
    flat = sal.reshape(B, H * W)

    # per-image percentiles (linear interpolation, like np.percentile) and exact ">=" masks
    lo, thr, exact = C.order_stats(_sorting.sort(flat), [p / 100.0 for p in percentiles])  # (B, j)
    keep = jnp.where(exact[:, :, None], flat[:, None, :] >= lo[:, :, None],
                     flat[:, None, :] > lo[:, :, None])  # (B, j, N)
    # ratio = sum(M[keep]) / sum(M) = 1 - sum(M[~keep]) / sum(M): exactly 1 when nothing is left out
    # (constant maps), whatever the float32 summation order.
    left_out = jnp.sum(jnp.where(keep, 0.0, flat[:, None, :]), axis=-1)
    total = jnp.sum(flat, axis=-1, keepdims=True)
    # sum(M) == 0 (all-zero map): every pixel is >= its percentile (0), the partition is the whole
    # map, and the ratio is scale invariant (ratio(cM) = ratio(M)), so the all-zero map takes the
    # value of every constant map: ratio = 1. No division by zero, no NaN.
    ratios = jnp.where(total > 0, 1.0 - left_out / jnp.where(total > 0, total, 1.0), 1.0)

    # baseline in pixel space, re-normalised; recovered pixels are the original normalised values
    base = pixels.baseline(images, baseline, mean, std, blur_sigma=blur_sigma, blur_kernel=blur_kernel)

    # items: the j recovered copies of every image, k-major; built inside the chunks
    b_idx = jnp.tile(jnp.arange(B), j)
    lo_items = lo.T.reshape(-1)
    exact_items = exact.T.reshape(-1)

    def make_inputs(bi, lo_i, ex_i):
        s = sal[bi]
        m = jnp.where(ex_i[:, None, None], s >= lo_i[:, None, None], s > lo_i[:, None, None])
        return jnp.where(m[..., None], images[bi], base[bi])

    probs, bad_label = C.target_probs_of_items(model_fn, make_inputs, (b_idx, lo_items, exact_items),
                                               labels[b_idx].astype(jnp.int32), batch_size)
    probs = probs.reshape(j, B).T
    out = {"rcap": jnp.mean(ratios * probs, axis=1), "ratios": ratios, "probs": probs,
           "thresholds": thr}
    return out, flags, bad_label


def rcap(model_fn: ModelFn, images, labels, saliency, *, lower_bound: float = 50,
         interval: float = 10, baseline: str = "black", mean: Sequence[float] | None = None,
         std: Sequence[float] | None = None, copies_per_call: int | str | None = "auto",
         blur_kernel: int = 33, blur_sigma: float = 16.0) -> dict:
    """ReCover And Predict (eq. 5/6): per-image RCAP, batched and jit-compiled.

    For each image and each ``k = 1..j`` (``j = (100 - lower_bound) / interval``):

    * ``p_k = 100 - k * interval`` and ``q_k = percentile_{p_k}(M)`` over the image's ``H*W`` saliency
      values, linear interpolation (``np.percentile``'s default);
    * ``I_k`` = the original image where ``M >= q_k``, the baseline elsewhere, in *pixel* space
      (``pixel = x * std + mean``; baseline ``"black"`` = 0, ``"blur"`` = Gaussian blur of the pixel
      image with ``blur_kernel`` / ``blur_sigma`` and reflect padding, ``"mean"`` = the image's
      per-channel pixel mean), then re-normalised. Kept pixels are returned bit-exact (the
      normalised value itself), only the baseline goes pixel -> normalised;
    * ``ratio_k = sum(M[M >= q_k]) / sum(M)``, ``prob_k = softmax(model_fn(I_k))[label]``
      (logits cast to float32 first, so bfloat16 models are fine);
    * ``RCAP = (1/j) sum_k ratio_k * prob_k``.

    The ``j * B`` recovered images go through ``model_fn`` in calls of at most ``copies_per_call`` copies
    (memory for one chunk of copies; see :func:`gag_jax.metrics.default_batch_size`), or as one
    batch with ``copies_per_call=None``. The
    jitted computation is cached per (shapes, dtypes, ``model_fn``, options): calling again with
    the same shapes and the same ``model_fn`` does not re-trace. The weights of a ``gj.ModelFunctions`` are arguments of
    the compiled program, so new weights for the same model do not re-trace either.

    Degenerate maps: a constant map (every pixel equals every percentile) recovers the whole image
    at every ``k`` and gets ``ratio_k = 1``, i.e. ``RCAP = softmax(model(original))[label]``. The
    all-zero map is the ``c -> 0`` limit of the constant maps ``c``; the ratio is scale invariant, so
    it is *defined* as 1 too (the paper assumes ``sum(M) > 0``; no division by zero, no NaN). Such
    maps therefore score high: filter them out upstream if that matters.

    Args:
      model_fn: a ``gj.ModelFunctions`` (its weights are traced arguments; its input scaling is
        used unless ``mean``/``std`` are given), its ``.logits``, or a plain hashable callable
        ``images (b, H, W, C) -> logits (b, K)`` (compiled once per function object).
      images: ``(B, H, W, C)`` float, normalised with ``mean`` / ``std``.
      labels: ``(B,)`` int target classes.
      saliency: ``(B, H, W)`` float, non-negative, any scale.
      lower_bound, interval: percentile partition (paper: 50 and 10 -> p = 90, 80, 70, 60, 50).
      baseline: ``"black"`` (paper), ``"blur"`` or ``"mean"``.
      mean, std: the normalisation of ``images`` (1 or C entries each); None: the model's. The
        ``"black"`` baseline needs one or the other (ValueError otherwise); ``"blur"`` and
        ``"mean"`` commute with the scaling and do without.
      copies_per_call: max recovered copies per model call; ``"auto"`` = :func:`gag_jax.metrics.default_batch_size`
        (2 on CPU, measured); ``None`` = all at once.
      blur_kernel, blur_sigma: Gaussian of the ``"blur"`` baseline.

    Returns:
      dict of device arrays: ``"rcap"`` ``(B,)``, ``"ratios"`` ``(B, j)``, ``"probs"`` ``(B, j)``,
      ``"percentiles"`` ``(j,)`` (the levels ``p_k``), ``"thresholds"`` ``(B, j)`` (the values
      ``q_k``); column ``k-1`` belongs to ``p_k`` (90 first with the defaults).

    Raises:
      ValueError: shapes that do not match (both shapes named); ``saliency`` with NaN, inf or
        negative values; labels outside ``[0, K)``; ``lower_bound`` / ``interval`` that do not divide
        ``100 - lower_bound`` into whole partitions; unknown ``baseline``; bad ``mean`` / ``std`` /
        ``copies_per_call`` / blur options. (Value checks are skipped under an outer ``jax.jit``.)
    """
    V.check_images_labels_saliency(images, labels, saliency)
    percentiles = rcap_percentiles(lower_bound, interval)
    V.check_choice(baseline, "baseline", _BASELINES)
    channels = np.shape(images)[-1]
    model_fn = as_model_functions(model_fn)
    mean_t, std_t = pixels.resolve(model_fn, mean, std, needed=baseline == "black",
                                   what=f"RCAP (baseline {baseline!r})", channels=channels)
    batch_size = C.resolve_batch_size(copies_per_call, images, "copies_per_call")
    blur_kernel, blur_sigma = V.check_blur(blur_kernel, blur_sigma)
    out, flags, bad_label = _rcap_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(saliency), model_fn=model_fn,
        percentiles=percentiles, baseline=baseline, mean=mean_t, std=std_t, batch_size=batch_size,
        blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    V.raise_on_saliency_flags(flags, allow_negative=False)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)
    out["percentiles"] = jnp.asarray(percentiles, jnp.float32)
    return out
