"""Small array operations shared by explainers and metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


BLUR_MODES = ("symmetric", "reflect")


def _fold_index(index: jax.Array, size: int, mode: str) -> jax.Array:
    """Fold any integer index into [0, size).

    ``"symmetric"`` repeats the edge (``d c b a | a b c d | d c b a``: scipy's ``reflect``);
    ``"reflect"`` does not (``d c b | a b c d | c b a``: numpy/torch ``reflect``).
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


def gaussian_blur_matrix(size: int, sigma, radius: int, mode: str = "symmetric") -> jax.Array:
    """``(size, size)`` matrix that blurs a 1-D signal with a Gaussian of ``sigma``.

    The kernel has taps at offsets ``-radius..radius`` (static), ``exp(-d^2 / (2 sigma^2))``
    normalised to sum 1 (torchvision's kernel for ``kernel_size = 2 radius + 1``); the boundary
    is folded with ``mode`` (see ``_fold_index``). ``sigma`` may be traced; ``sigma == 0`` gives
    the identity.
    """
    offsets = jnp.arange(-radius, radius + 1)
    sigma = jnp.asarray(sigma, jnp.float32)
    safe = jnp.maximum(sigma, 1e-6)
    weights = jnp.exp(-0.5 * jnp.square(offsets / safe))
    weights = jnp.where(sigma > 0, weights, (offsets == 0).astype(jnp.float32))
    weights = weights / weights.sum()
    rows = jnp.arange(size)[:, None]
    cols = _fold_index(rows + offsets[None, :], size, mode)
    matrix = jnp.zeros((size, size), jnp.float32)
    return matrix.at[jnp.broadcast_to(rows, cols.shape), cols].add(jnp.broadcast_to(weights, cols.shape))


def gaussian_blur(images: jax.Array, sigma, radius: int, mode: str = "symmetric") -> jax.Array:
    """Separable Gaussian blur of ``(B, H, W, C)`` images as two matrix products.

    Args:
      images: ``(B, H, W, C)``.
      sigma: scalar standard deviation in pixels (may be traced).
      radius: static kernel half-width (``kernel_size = 2 * radius + 1``, e.g. 16 for 33).
      mode: boundary, ``"symmetric"`` (BlurIG, as scipy) or ``"reflect"`` (torchvision's
        ``GaussianBlur``, used by the insertion metric).

    Returns:
      ``(B, H, W, C)`` float32 blurred images (matmuls at HIGHEST precision).
    """
    _, height, width, _ = images.shape
    blur_h = gaussian_blur_matrix(height, sigma, radius, mode)
    blur_w = gaussian_blur_matrix(width, sigma, radius, mode)
    highest = jax.lax.Precision.HIGHEST
    rows = jnp.einsum("ih,bhwc->biwc", blur_h, images.astype(jnp.float32), precision=highest)
    return jnp.einsum("jw,biwc->bijc", blur_w, rows, precision=highest)


def to_pixels(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """Undo normalisation: ``images * std + mean`` (``(B, H, W, C)``)."""
    return images * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)


def from_pixels(pixels: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """Normalise pixel-space images: ``(pixels - mean) / std`` (``(B, H, W, C)``)."""
    return (pixels - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
