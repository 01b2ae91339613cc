"""Small array operations shared by explainers and metrics."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")
"""The 1000 ImageNet class names, one per line (line k = class k, torchvision's order)."""


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (index = label), from ``gag_jax/imagenet_classes.txt``."""
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


BLUR_MODES = ("constant", "symmetric", "reflect")


def _fold_index(index: jax.Array, size: int, mode: str) -> jax.Array:
    """Fold any integer index into [0, size).

    ``"symmetric"`` repeats the edge (``d c b a | a b c d | d c b a``: scipy's ``reflect``);
    ``"reflect"`` does not (``d c b | a b c d | c b a``: numpy/torch ``reflect``, scipy's ``mirror``).
    """
    if mode == "symmetric":
        period = 2 * size
        m = jnp.mod(index, period)
        return jnp.where(m < size, m, period - 1 - m)
    if mode == "reflect":
        if size == 1:
            return jnp.zeros_like(index)
        period = 2 * (size - 1)
        m = jnp.mod(index, period)
        return jnp.where(m < size, m, period - m)
    raise ValueError(f"unknown blur boundary mode {mode!r}; expected one of {BLUR_MODES}")


def gaussian_radius(sigma: float, truncate: float = 4.0) -> int:
    """Kernel half-width that ``scipy.ndimage.gaussian_filter`` uses: ``int(truncate * sigma + 0.5)``."""
    return int(truncate * float(sigma) + 0.5)


def gaussian_taps(sigma: float, radius: int, max_radius: int | None = None) -> np.ndarray:
    """Host-side float64 Gaussian kernel, scipy's ``_gaussian_kernel1d``: ``exp(-d^2 / (2 sigma^2))`` at
    ``d = -radius..radius``, normalised to sum 1 (``sigma == 0``: the unit impulse).

    Returns ``(2 * max_radius + 1,)`` taps at offsets ``-max_radius..max_radius`` (zero beyond ``radius``),
    so kernels of several radii stack into one static table.
    """
    max_radius = radius if max_radius is None else max_radius
    if radius > max_radius:
        raise ValueError(f"radius {radius} exceeds max_radius {max_radius}")
    offsets = np.arange(-max_radius, max_radius + 1, dtype=np.float64)
    if sigma == 0:
        return (offsets == 0).astype(np.float64)
    taps = np.exp(-0.5 / (float(sigma) ** 2) * offsets**2) * (np.abs(offsets) <= radius)
    return taps / taps.sum()


def blur_matrix(size: int, taps: jax.Array, mode: str = "symmetric") -> jax.Array:
    """``(size, size)`` matrix ``M`` applying the 1-D kernel ``taps`` (offsets ``-R..R``, length ``2R + 1``).

    ``M @ signal`` is the correlation of the signal with ``taps`` under the boundary ``mode``:
    ``"constant"`` drops the taps beyond the edge (zeros outside, as scipy's ``mode="constant"``),
    ``"symmetric"`` / ``"reflect"`` fold them back (see ``_fold_index``). ``taps`` may be traced.
    """
    if mode not in BLUR_MODES:
        raise ValueError(f"unknown blur boundary mode {mode!r}; expected one of {BLUR_MODES}")
    max_radius = (taps.shape[0] - 1) // 2
    offsets = jnp.arange(-max_radius, max_radius + 1)
    rows = jnp.arange(size)[:, None]
    cols = rows + offsets[None, :]
    taps = jnp.asarray(taps, jnp.float32)
    if mode == "constant":
        inside = (cols >= 0) & (cols < size)
        cols = jnp.clip(cols, 0, size - 1)
        weights = jnp.where(inside, taps[None, :], 0.0)
    else:
        cols = _fold_index(cols, size, mode)
        weights = jnp.broadcast_to(taps, cols.shape)
    matrix = jnp.zeros((size, size), jnp.float32)
    return matrix.at[jnp.broadcast_to(rows, cols.shape), cols].add(weights)


def gaussian_blur_matrix(size: int, sigma, radius, mode: str = "symmetric", *,
                         max_radius: int | None = None) -> jax.Array:
    """``(size, size)`` matrix that blurs a 1-D signal with a Gaussian of ``sigma``.

    The kernel has taps at offsets ``-radius..radius``, ``exp(-d^2 / (2 sigma^2))`` normalised to
    sum 1 over those taps (scipy's and torchvision's kernel); ``sigma == 0`` gives the identity.
    The boundary is ``mode`` (see ``blur_matrix``); with ``"constant"`` the kernel stays
    normalised over all its taps, as scipy's.

    Args:
      size: signal length (static).
      sigma: standard deviation in pixels (may be traced).
      radius: kernel half-width: a Python int, or a traced int when ``max_radius`` (static int
        bound) is given, so that one compiled program serves several kernel sizes.
      mode: one of ``BLUR_MODES``.
      max_radius: static upper bound of a traced ``radius``.

    Returns:
      ``(size, size)`` float32 matrix ``M``; the blurred signal is ``M @ signal``.
    """
    if mode not in BLUR_MODES:
        raise ValueError(f"unknown blur boundary mode {mode!r}; expected one of {BLUR_MODES}")
    if max_radius is None:
        if not isinstance(radius, (int, np.integer)) or isinstance(radius, bool) or radius < 0:
            raise ValueError(f"radius must be an int >= 0 (or pass max_radius for a traced radius); got {radius!r}")
        max_radius = int(radius)
    offsets = jnp.arange(-max_radius, max_radius + 1)
    sigma = jnp.asarray(sigma, jnp.float32)
    safe = jnp.maximum(sigma, 1e-6)
    taps = jnp.exp(-0.5 * jnp.square(offsets / safe)) * (jnp.abs(offsets) <= radius)
    taps = jnp.where(sigma > 0, taps, (offsets == 0).astype(jnp.float32))
    return blur_matrix(size, taps / taps.sum(), mode)


def blur_separable(images: jax.Array, matrix_h: jax.Array, matrix_w: jax.Array) -> jax.Array:
    """``(B, H, W, C)`` images blurred along H by ``matrix_h (H, H)`` and along W by ``matrix_w (W, W)``.

    Matmuls at HIGHEST precision; float32 out.
    """
    highest = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("ih,bhwc->biwc", matrix_h, images.astype(jnp.float32), precision=highest)
    return jnp.einsum("jw,biwc->bijc", matrix_w, rows, precision=highest)


def gaussian_blur(images: jax.Array, sigma, radius=None, mode: str = "symmetric", *, truncate: float = 4.0,
                  max_radius: int | None = None) -> jax.Array:
    """Separable Gaussian blur of ``(B, H, W, C)`` images over H and W (one 1-D blur per axis).

    Each axis is blurred by a banded ``(H, H)`` / ``(W, W)`` matrix holding the kernel (see
    ``gaussian_blur_matrix``): the same sums as a 1-D convolution with that boundary, and one
    compiled program for every ``sigma`` of a path.

    Args:
      images: ``(B, H, W, C)``.
      sigma: scalar standard deviation in pixels (may be traced when ``radius`` is given).
      radius: kernel half-width (``kernel_size = 2 * radius + 1``, e.g. 16 for 33); None takes
        scipy's ``int(truncate * sigma + 0.5)`` (needs a concrete ``sigma``); a traced int
        needs ``max_radius``.
      mode: boundary, ``"constant"`` (zeros outside: ``scipy.ndimage.gaussian_filter(mode="constant")``,
        as published BlurIG), ``"symmetric"`` (scipy's ``reflect``) or ``"reflect"`` (torchvision's
        ``GaussianBlur``, used by the insertion metric).
      truncate: kernel half-width in sigmas when ``radius`` is None (scipy's default 4.0).
      max_radius: static bound of a traced ``radius``.

    Returns:
      ``(B, H, W, C)`` float32 blurred images (matmuls at HIGHEST precision).
    """
    if radius is None:
        if isinstance(sigma, jax.core.Tracer):
            raise ValueError("a traced sigma needs an explicit radius (and max_radius if the radius is traced)")
        radius = gaussian_radius(sigma, truncate)
    _, height, width, _ = images.shape
    blur_h = gaussian_blur_matrix(height, sigma, radius, mode, max_radius=max_radius)
    blur_w = gaussian_blur_matrix(width, sigma, radius, mode, max_radius=max_radius)
    return blur_separable(images, blur_h, blur_w)
