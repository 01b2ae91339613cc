"""Shared pieces of the metrics: constants, argument checks, per-image order statistics, the
Gaussian blur and the chunked "perturbed copies -> model -> target probability" evaluator.

Nothing here loops in Python over images or over perturbation steps: the perturbed copies of a
batch are described by a flat list of *items* (which image, which threshold, which mode) and are
built and pushed through the model chunk by chunk inside one jitted computation.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import ops
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported by gag_jax.metrics)

ModelFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# argument checks (shapes only: static, cheap, done before tracing)
# ----------------------------------------------------------------------------------------------

def check_images_labels_saliency(images, labels, saliency=None) -> None:
    """Raise ``ValueError`` unless images ``(B,H,W,C)``, labels ``(B,)`` ints and (if given)
    saliency ``(B,H,W)``."""
    ishape, lshape = np.shape(images), np.shape(labels)
    if len(ishape) != 4:
        raise ValueError(f"images must be NHWC (B, H, W, C); got shape {ishape}")
    sshape = None if saliency is None else np.shape(saliency)
    if sshape is not None and (len(sshape) != 3 or tuple(sshape) != tuple(ishape[:3])):
        raise ValueError(
            f"saliency must have shape (B, H, W) = {tuple(ishape[:3])} to match images {tuple(ishape)}; "
            f"got saliency shape {tuple(sshape)}")
    if tuple(lshape) != (ishape[0],):
        raise ValueError(f"labels must have shape (B,) = ({ishape[0]},) to match images {tuple(ishape)}; "
                         f"got labels shape {tuple(lshape)}")
    ldtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not np.issubdtype(ldtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {ldtype}")


def check_batch_size(batch_size) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    return int(batch_size)


def as_channel_tuple(name: str, value: Sequence[float], channels: int) -> tuple[float, ...]:
    """``mean`` / ``std`` as a hashable tuple with 1 or ``channels`` entries."""
    try:
        tup = tuple(float(v) for v in np.ravel(np.asarray(value, dtype=np.float64)))
    except (TypeError, ValueError) as err:  # pragma: no cover - defensive
        raise ValueError(f"{name} must be a sequence of floats; got {value!r}") from err
    if len(tup) not in (1, channels):
        raise ValueError(f"{name} must have 1 or C={channels} entries; got {len(tup)}: {tup}")
    if name == "std" and any(not (s > 0) for s in tup):
        raise ValueError(f"std entries must be > 0; got {tup}")
    return tup


def raise_if(flag, message: str) -> None:
    """Raise ``ValueError(message)`` if the (device) boolean ``flag`` is true.

    Skipped when ``flag`` is abstract (the metric was called under an outer ``jax.jit``), since a
    traced value cannot be inspected; the checks then become the caller's responsibility.
    """
    if isinstance(flag, jax.core.Tracer):
        return
    if bool(flag):
        raise ValueError(message)


def saliency_flags(saliency: jax.Array) -> jax.Array:
    """``[any NaN, any ±inf, any negative]`` of a saliency batch, as a bool ``(3,)`` array."""
    return jnp.stack([jnp.any(jnp.isnan(saliency)), jnp.any(jnp.isinf(saliency)),
                      jnp.any(saliency < 0)])


def raise_on_saliency_flags(flags, *, allow_negative: bool) -> None:
    if isinstance(flags, jax.core.Tracer):
        return
    nan, inf, neg = (bool(v) for v in np.asarray(flags))
    if nan:
        raise ValueError("saliency contains NaN; a saliency map must be finite")
    if inf:
        raise ValueError("saliency contains inf; a saliency map must be finite")
    if neg and not allow_negative:
        raise ValueError("saliency contains negative values; RCAP needs a non-negative map "
                         "(the saliency ratio sum(M[M >= q]) / sum(M) is meaningless otherwise)")


# ----------------------------------------------------------------------------------------------
# per-image order statistics (exact, rank based)
# ----------------------------------------------------------------------------------------------

def lerp_positions(levels: Sequence[float], n: int):
    """Static positions of the quantile ``levels`` (in [0, 1]) in a sorted array of length ``n``.

    numpy's default ("linear", method 7) quantile of level ``q`` is
    ``a + (b - a) * t`` with ``pos = q * (n - 1)``, ``a = x[floor(pos)]``, ``b = x[floor(pos) + 1]``,
    ``t = pos - floor(pos)``. Returns ``lo`` (int, (L,)), ``hi`` (int, (L,)) and ``t`` (float64, (L,)).
    """
    pos = np.asarray(levels, dtype=np.float64) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    lo = np.clip(lo, 0, n - 1)
    t = pos - lo
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, t


def order_stats(flat_sorted: jax.Array, levels: Sequence[float]):
    """Per-image linear-interpolation quantiles and the rank information needed for exact masks.

    Args:
      flat_sorted: ``(B, N)`` each row sorted ascending.
      levels: static quantile levels in ``[0, 1]``, length ``L``.

    Returns:
      ``lo (B, L)`` = ``x[floor(pos)]``, ``value (B, L)`` = the interpolated quantile (as
      ``np.quantile``), and ``exact (B, L)`` bool = the quantile *equals* ``lo`` in exact
      arithmetic (``t == 0`` or ``x[floor(pos)] == x[floor(pos) + 1]``).

    Why ``lo`` and ``exact`` rather than comparing with ``value``: a quantile lies between two
    adjacent order statistics ``a <= q <= b`` and no map value lies strictly between them, so
    ``M >= q`` is exactly ``M >= a`` when ``q == a`` and ``M > a`` otherwise, and ``M > q`` is
    always ``M > a`` (``t < 1``). These masks are therefore free of the float rounding of
    ``a + (b - a) t`` (which can, for nearly tied maps, land on ``a`` and flip a whole tie group).
    """
    n = flat_sorted.shape[-1]
    lo_i, hi_i, t = lerp_positions(levels, n)
    a = flat_sorted[:, lo_i]
    b = flat_sorted[:, hi_i]
    t32 = jnp.asarray(t, dtype=flat_sorted.dtype)[None, :]
    diff = b - a
    value = jnp.where(t32 >= 0.5, b - diff * (1 - t32), a + diff * t32)  # numpy's _lerp
    exact = (jnp.asarray(t == 0)[None, :]) | (a == b)
    return a, value, exact


# ----------------------------------------------------------------------------------------------
# Gaussian blur as two small matrix products (reflect padding, torchvision kernel)
# ----------------------------------------------------------------------------------------------

def check_blur(blur_kernel, blur_sigma) -> tuple[int, float]:
    if isinstance(blur_kernel, bool) or not isinstance(blur_kernel, (int, np.integer)) \
            or blur_kernel < 1 or blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd int; got {blur_kernel!r}")
    if not (float(blur_sigma) > 0):
        raise ValueError(f"blur_sigma must be > 0; got {blur_sigma!r}")
    return int(blur_kernel), float(blur_sigma)


def gaussian_blur(images: jax.Array, kernel_size: int, sigma: float) -> jax.Array:
    """Separable Gaussian blur of ``(B, H, W, C)`` images as torchvision's ``GaussianBlur``
    (kernel ``kernel_size``, reflect padding); float32 out. See :func:`gag_jax.ops.gaussian_blur`."""
    return ops.gaussian_blur(images, sigma, (kernel_size - 1) // 2, mode="reflect")


# ----------------------------------------------------------------------------------------------
# chunked model evaluation of perturbed copies
# ----------------------------------------------------------------------------------------------

def target_probs_of_items(model_fn: ModelFn, make_inputs: Callable, items: tuple,
                          labels: jax.Array, batch_size: int | None):
    """Softmax probability of each item's target class, the inputs built chunk by chunk.

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)`` (any float dtype; cast to float32 first).
      make_inputs: ``make_inputs(*item_chunk) -> (b, H, W, C)`` images for a chunk of items.
      items: tuple of arrays with a common leading length ``n`` (one entry per perturbed copy).
      labels: ``(n,)`` int target class of each item.
      batch_size: ``None`` = one model call on all ``n`` copies; else ``ceil(n / batch_size)``
        calls of ``batch_size`` copies in a ``jax.lax.map`` (the last chunk padded with copies of
        item 0 and the padding dropped), so memory holds one chunk of copies at a time.

    Returns:
      ``probs (n,)`` float32 and ``bad_label`` (bool scalar: some label outside ``[0, K)``).
    """
    n = labels.shape[0]

    def chunk(args):
        *its, lab = args
        logits = jnp.asarray(model_fn(make_inputs(*its))).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1)
        k = logits.shape[-1]
        bad = jnp.any((lab < 0) | (lab >= k))
        p = jnp.take_along_axis(probs, jnp.clip(lab, 0, k - 1)[:, None], axis=1)[:, 0]
        return p, bad

    args = (*items, labels)
    if batch_size is None or batch_size >= n:
        return chunk(args)
    n_chunks = math.ceil(n / batch_size)
    pad = n_chunks * batch_size - n

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)], axis=0)
        return a.reshape((n_chunks, batch_size) + a.shape[1:])

    p, bad = jax.lax.map(chunk, tuple(split(a) for a in args))
    return p.reshape(-1)[:n], jnp.any(bad)
