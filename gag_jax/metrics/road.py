"""ROAD: RemOve And Debias with noisy linear imputation (Rong et al., ICML 2022), batched and jitted.

The removed pixels of an image are not set to a constant (which leaks the removal mask's shape to
the model, "class information leakage") but imputed: every removed pixel becomes the weighted mean
of its 8 neighbours (weight 1/6 for the 4 edge neighbours, 1/12 for the 4 corner neighbours,
renormalised over the neighbours inside the image), removed neighbours included, so the removed
values solve one sparse linear system per image; then Gaussian noise is added to them. Weights and
noise follow the authors' ``NoisyLinearImputer`` (``tleemann/road_evaluation``,
``road/imputations.py``; noise 0.01 on images in ``[0, 1]``).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax import pixels
from gag_jax.metrics import _common as C
from gag_jax.metrics import _sorting
from gag_jax.metrics._common import ModelFn
from gag_jax.metrics.deletion_insertion import trapezoid_auc
from gag_jax.model import as_model_functions, jit_with_model

NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)
"""(row offset, column offset, weight) of the 8 neighbours in the linear imputation (sum 1)."""

ROAD_FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(1, 10))  # 0.1, ..., 0.9
_ORDERS = ("morf", "lerf")


def _stencil(u: jax.Array) -> jax.Array:
    """``sum_o w_o u[i + o]`` over the 8 neighbours of every pixel of ``u (H, W, ...)``, 0 outside."""
    h, w = u.shape[:2]
    pad = jnp.pad(u, ((1, 1), (1, 1)) + ((0, 0),) * (u.ndim - 2))
    out = jnp.zeros_like(u)
    for dy, dx, wt in NEIGHBOUR_WEIGHTS:
        out = out + wt * pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    return out


def _inside_weights(h: int, w: int) -> np.ndarray:
    """``(H, W)``: the summed weight of each pixel's neighbours that lie inside the image."""
    ones = np.pad(np.ones((h, w)), 1)
    return sum(wt * ones[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx, wt in NEIGHBOUR_WEIGHTS)


def _linear_impute(image: jax.Array, removed: jax.Array, tol: float, maxiter: int) -> jax.Array:
    """Noise-free linear imputation of one image ``(H, W, C)`` where ``removed (H, W)`` is True.

    Solves ``s_i x_i - sum_{removed j ~ i} w_ij x_j = sum_{kept j ~ i} w_ij x_j`` for the removed
    pixels ``i`` (``s_i`` = weight of ``i``'s in-image neighbours) by conjugate gradients: the
    matrix is symmetric positive definite (the weights are symmetric and every connected group of
    removed pixels touches a kept pixel, as long as some pixel is kept).
    """
    h, w, _ = image.shape
    r = removed[..., None].astype(image.dtype)
    s = jnp.asarray(_inside_weights(h, w), image.dtype)[..., None]
    rhs = r * _stencil((1 - r) * image)

    def matvec(u):
        u = r * u
        return r * (s * u - _stencil(u))

    # start from the mean of the kept pixels (per channel): CG then only removes the variation
    kept = jnp.sum((1 - r) * image, axis=(0, 1)) / jnp.maximum(jnp.sum(1 - r), 1.0)
    x0 = r * kept
    sol, _ = jax.scipy.sparse.linalg.cg(matvec, rhs, x0=x0, tol=tol, maxiter=maxiter)
    return jnp.where(r > 0, sol, image)


def noisy_linear_impute(images, removed, key, *, noise: float = 0.01, std: Sequence[float] | None = None,
                        tol: float = 1e-6, maxiter: int | None = None) -> jax.Array:
    """ROAD's noisy linear imputation of a batch: removed pixels from their neighbours, plus noise.

    Every removed pixel's value is the weighted mean of its 8 neighbours (:data:`NEIGHBOUR_WEIGHTS`
    renormalised over the neighbours inside the image; removed neighbours count with their own
    imputed values), i.e. the solution of one sparse symmetric positive definite system per image,
    solved with ``jax.scipy.sparse.linalg.cg``; kept pixels are returned unchanged. Then
    ``noise * N(0, 1) / std_c`` is added to every removed value of channel ``c``: ``noise`` is in
    pixel units of a ``[0, 1]`` image (the authors' 0.01), ``images`` are normalised with ``std``.
    Since the imputation is an average (weights summing to 1), imputing normalised or pixel values
    gives the same image; only the noise needs the scale.

    Args:
      images: ``(B, H, W, C)`` float, normalised.
      removed: ``(B, H, W)`` bool, True where a pixel is removed; every image must keep a pixel.
      key: PRNG key; image ``b`` draws its noise from ``fold_in(key, b)``.
      noise: noise standard deviation in ``[0, 1]`` pixel units (0: plain linear imputation).
      std: the per-channel standard deviation of the normalisation of ``images`` (1 or C entries);
        needed when ``noise > 0`` (no default: the model's own, e.g. ``model.std``).
      tol: relative residual at which conjugate gradients stop.
      maxiter: conjugate-gradient iteration cap (None: ``4 * (H + W)``, enough for any mask here).

    Returns:
      ``(B, H, W, C)`` float32 imputed images.
    """
    V.check_images(jnp.asarray(images))
    ishape, rshape = np.shape(images), np.shape(removed)
    if tuple(rshape) != tuple(ishape[:3]):
        raise ValueError(f"removed must have shape (B, H, W) = {tuple(ishape[:3])}; got {tuple(rshape)}")
    if not (float(noise) >= 0):
        raise ValueError(f"noise must be >= 0; got {noise!r}")
    std_t = pixels.scaling_tuple("std", std, ishape[-1])
    maxiter = 4 * (ishape[1] + ishape[2]) if maxiter is None else maxiter
    V.check_positive_int(maxiter, "maxiter")
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(ishape[0]))
    return _impute_batch(jnp.asarray(images, jnp.float32), jnp.asarray(removed, bool), keys,
                         scale=pixels.noise_scale(noise, std_t, what="ROAD's imputation noise (pixel units)"),
                         tol=float(tol), maxiter=int(maxiter))


def _noisy_impute(image, removed, key, *, scale, tol, maxiter):
    """One image: linear imputation plus ``scale * N(0, 1)`` (per channel) on the removed pixels."""
    filled = _linear_impute(image, removed, tol, maxiter)
    if scale is None:
        return filled
    eps = jax.random.normal(key, image.shape, jnp.float32)
    return jnp.where(removed[..., None], filled + jnp.asarray(scale, jnp.float32) * eps, filled)


@functools.partial(jax.jit, static_argnames=("scale", "tol", "maxiter"))
def _impute_batch(images, removed, keys, *, scale, tol, maxiter):
    return jax.vmap(functools.partial(_noisy_impute, scale=scale, tol=tol, maxiter=maxiter))(images, removed, keys)


def removal_counts(fractions: Sequence[float], n: int) -> tuple[int, ...]:
    """Pixels removed at each fraction: ``int(f * n)`` (the authors' count)."""
    return tuple(int(f * n) for f in fractions)


def removal_ranks(saliency: jax.Array) -> jax.Array:
    """``(B, H*W)`` int32 rank of every pixel, 0 = most salient; ties broken by the pixel's
    row-major index (the earlier pixel ranks first), so the order is deterministic."""
    b = saliency.shape[0]
    flat = saliency.reshape(b, -1)
    order = _sorting.argsort(-flat)
    n = flat.shape[1]
    ranks = jnp.zeros((b, n), jnp.int32)
    return ranks.at[jnp.arange(b)[:, None], order].set(jnp.arange(n, dtype=jnp.int32)[None, :])


@jit_with_model(("model_fn", "counts", "lerf", "scale", "batch_size", "tol", "maxiter"))
def _road_core(images, labels, saliency, key, *, model_fn, counts, lerf, scale, batch_size, tol, maxiter):
    B, H, W, _ = images.shape
    n = H * W
    T = len(counts)
    images = images.astype(jnp.float32)
    sal = saliency.astype(jnp.float32)
    flags = V.saliency_flags(sal)
    ranks = removal_ranks(sal)  # (B, N)
    counts_a = jnp.asarray(counts, jnp.int32)
    impute = jax.vmap(functools.partial(_noisy_impute, scale=scale, tol=tol, maxiter=maxiter))

    # items: (fraction t, image b), t-major; image b's noise at fraction t from fold_in(fold_in(key, b), t)
    b_idx = jnp.tile(jnp.arange(B), T)
    t_idx = jnp.repeat(jnp.arange(T), B)
    keys = jax.vmap(lambda b, t: jax.random.fold_in(jax.random.fold_in(key, b), t))(b_idx, t_idx)

    def make_inputs(bi, ti, ki):
        k = counts_a[ti][:, None]
        removed = (ranks[bi] >= n - k) if lerf else (ranks[bi] < k)
        return impute(images[bi], removed.reshape(-1, H, W), ki)

    probs, bad_label = C.target_probs_of_items(model_fn, make_inputs, (b_idx, t_idx, keys),
                                               labels[b_idx].astype(jnp.int32), batch_size)
    curve = probs.reshape(T, B).T
    return curve, flags, bad_label


def road(model_fn: ModelFn, images, labels, saliency, *, fractions: Sequence[float] = ROAD_FRACTIONS,
         order: str = "morf", key: jax.Array | None = None, noise: float = 0.01,
         std: Sequence[float] | None = None, copies_per_call: int | str | None = "auto", tol: float = 1e-6,
         maxiter: int | None = None) -> dict:
    """ROAD curve and AUC per image: the target probability as more and more pixels are removed
    (most relevant first, ``"morf"``, or least relevant first, ``"lerf"``) and imputed.

    For each image and fraction ``f``: rank the pixels by saliency (descending; ties by row-major
    pixel index), remove ``int(f * H * W)`` of them (the top ranks for MoRF, the bottom ranks for
    LeRF), impute them with :func:`noisy_linear_impute` and record
    ``softmax(model_fn(imputed))[label]``. The curve is over the fractions the user gives, and the AUC
    is its trapezoid over them (as Deletion / Insertion). Lower MoRF and higher LeRF AUC are better.

    ``fraction`` here is always the fraction *removed*. The authors' code names LeRF's parameter as
    the fraction kept (``remove=False``, ``th_p = 1 - f``); its curve at ``th_p`` is this curve at
    ``1 - th_p`` (up to the rounding of ``int``). Their random tie-breaking (``1e-4`` noise added to
    the map) is replaced by the deterministic row-major order.

    All ``len(fractions) * B`` imputed copies are built and scored in calls of at most
    ``copies_per_call`` copies (imputation included), as :func:`gag_jax.metrics.deletion_insertion`.

    Args:
      model_fn: ``images (b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` float, normalised with ``std`` (and any mean).
      labels: ``(B,)`` int.
      saliency: ``(B, H, W)`` float, finite (only the ranking matters).
      fractions: strictly increasing fractions removed, in ``[0, 1)`` (at least 2).
      order: ``"morf"`` or ``"lerf"``.
      key: PRNG key of the imputation noise (None: ``PRNGKey(0)``); image ``b`` at fraction ``t``
        draws from ``fold_in(fold_in(key, b), t)``.
      noise: noise standard deviation in ``[0, 1]`` pixel units (authors: 0.01; 0: none).
      std: per-channel standard deviation of the normalisation of ``images``; None: the model's
        (``gj.ModelFunctions.std``); with ``noise > 0`` one or the other is needed (ValueError).
      copies_per_call: max imputed copies per model call; ``"auto"`` = :func:`gag_jax.metrics.default_batch_size`;
        None = all at once.
      tol, maxiter: conjugate-gradient stopping rule (see :func:`noisy_linear_impute`).

    Returns:
      dict: ``"curve"`` ``(B, T)``, ``"auc"`` ``(B,)``, ``"fractions"`` ``(T,)``.

    Raises:
      ValueError: shapes (both named), NaN / inf saliency, labels outside ``[0, K)``, bad
        ``fractions`` / ``order`` / ``noise`` / ``std`` / ``copies_per_call``.
    """
    V.check_images_labels_saliency(images, labels, saliency)
    fr = V.check_fractions(fractions, high_inclusive=False)
    V.check_choice(order, "order", _ORDERS)
    if not (float(noise) >= 0):
        raise ValueError(f"noise must be >= 0; got {noise!r}")
    _, h, w, ch = np.shape(images)
    model_fn = as_model_functions(model_fn)
    what = "ROAD's imputation noise (pixel units)"
    if std is None:
        _, std = pixels.resolve(model_fn, needed=float(noise) > 0, what=what, channels=ch, keywords="std=...")
    std_t = pixels.scaling_tuple("std", std, ch)
    batch_size = C.resolve_batch_size(copies_per_call, images, "copies_per_call")
    maxiter = 4 * (h + w) if maxiter is None else maxiter
    V.check_positive_int(maxiter, "maxiter")
    key = jax.random.PRNGKey(0) if key is None else key
    curve, flags, bad_label = _road_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(saliency), key, model_fn=model_fn,
        counts=removal_counts(fr, h * w), lerf=order == "lerf", scale=pixels.noise_scale(noise, std_t, what=what),
        batch_size=batch_size, tol=float(tol), maxiter=int(maxiter))
    V.raise_on_saliency_flags(flags, allow_negative=True)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)
    return {"curve": curve, "auc": trapezoid_auc(curve, fr), "fractions": jnp.asarray(fr, jnp.float32)}
