"""Shared pieces of the metrics: constants, per-image order statistics, the Gaussian blur and the
chunked "perturbed copies -> model -> target probability" evaluator (argument checks live in
:mod:`gag_jax._validation`).

Nothing here loops in Python over images or over perturbation steps: the perturbed copies of a
batch are described by a flat list of *items* (which image, which threshold, which mode) and are
built and pushed through the model chunk by chunk inside one jitted computation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax import backend, ops
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported by gag_jax.metrics)

ModelFn = Callable[[jax.Array], jax.Array]


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

def gaussian_blur(images: jax.Array, kernel_size: int, sigma: float) -> jax.Array:
    """Separable Gaussian blur of ``(B, H, W, C)`` images as torchvision's ``GaussianBlur``
    (kernel ``kernel_size``, reflect padding); float32 out. See :func:`gag_jax.ops.gaussian_blur`."""
    return ops.gaussian_blur(images, sigma, (kernel_size - 1) // 2, mode="reflect")


# ----------------------------------------------------------------------------------------------
# chunked model evaluation of perturbed copies
# ----------------------------------------------------------------------------------------------

CPU_BATCH_SIZE = backend.CPU_METRIC_COPIES
"""Perturbed copies per model call on CPU (``batch_size="auto"``); see :mod:`gag_jax.backend`."""

ACCELERATOR_BATCH_SIZE = backend.ACCELERATOR_METRIC_COPIES
"""Perturbed copies per model call on a GPU / TPU (``batch_size="auto"``); see :mod:`gag_jax.backend`."""


def default_batch_size(platform: str | None = None) -> int:
    """``batch_size="auto"`` on ``platform`` (None: the default backend): :func:`gag_jax.backend.metric_copies_per_call`."""
    return backend.metric_copies_per_call(platform)


def resolve_batch_size(batch_size, images=None, name: str = "batch_size") -> int | None:
    """``"auto"`` -> :func:`default_batch_size` where ``images`` live; ``None`` (all copies in one
    call) or a positive int as given (``name``: the argument, for the message)."""
    if isinstance(batch_size, str) and batch_size == "auto":
        return default_batch_size(backend.platform_of(images))
    return V.check_batch_size(batch_size, name)


def chunk_plan(n: int, batch_size: int | None) -> tuple[int, int, int]:
    """How ``n`` perturbed copies are split into model calls of at most ``batch_size``, with no padding.

    * ``batch_size`` is None or ``>= n``: one call of ``n``;
    * else, if ``n`` has a divisor ``d <= batch_size`` with ``d > batch_size / 2``, ``n / d`` equal
      calls of ``d`` (one compiled model shape);
    * otherwise ``n // batch_size`` calls of ``batch_size`` and one call of the ``n % batch_size``
      left over (a second compiled shape, no copy computed twice and no padding copies).

    Returns:
      ``(chunk, full_chunks, rest)`` with ``chunk * full_chunks + rest == n``.
    """
    if batch_size is None or batch_size >= n:
        return n, 1, 0
    d = max(k for k in range(1, batch_size + 1) if n % k == 0)
    if 2 * d > batch_size:
        return d, n // d, 0
    return batch_size, n // batch_size, n % batch_size


def target_probs_of_items(model_fn: ModelFn, make_inputs: Callable, items: tuple,
                          labels: jax.Array, batch_size: int | None, softmax: bool = True):
    """Softmax probability of each item's target class, the inputs built chunk by chunk.

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)`` (any float dtype; cast to float32 first).
      make_inputs: ``make_inputs(*item_chunk) -> (b, H, W, C)`` images for a chunk of items.
      items: tuple of arrays with a common leading length ``n`` (one entry per perturbed copy).
      labels: ``(n,)`` int target class of each item.
      batch_size: ``None`` = one model call on all ``n`` copies; else calls of at most
        ``batch_size`` copies as :func:`chunk_plan` splits them (full chunks in a ``jax.lax.map``,
        so memory holds one chunk of copies at a time; no padding copies).

    Returns:
      ``probs (n,)`` float32 (the target logits with ``softmax=False``) and ``bad_label`` (bool scalar:
      some label outside ``[0, K)``).
    """
    n = labels.shape[0]

    def chunk(args):
        *its, lab = args
        logits = jnp.asarray(model_fn(make_inputs(*its))).astype(jnp.float32)
        probs = jax.nn.softmax(logits, axis=-1) if softmax else logits
        k = logits.shape[-1]
        bad = jnp.any((lab < 0) | (lab >= k))
        p = jnp.take_along_axis(probs, jnp.clip(lab, 0, k - 1)[:, None], axis=1)[:, 0]
        return p, bad

    args = (*items, labels)
    size, full, rest = chunk_plan(n, batch_size)
    if full == 1 and rest == 0:
        return chunk(args)
    head = size * full
    p, bad = jax.lax.map(chunk, tuple(a[:head].reshape((full, size) + a.shape[1:]) for a in args))
    p, bad = p.reshape(-1), jnp.any(bad)
    if rest:
        p_rest, bad_rest = chunk(tuple(a[head:] for a in args))
        p, bad = jnp.concatenate([p, p_rest]), bad | bad_rest
    return p, bad
