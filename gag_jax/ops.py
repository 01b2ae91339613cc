"""Small array operations shared by explainers and metrics."""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _reflect_index(index: jax.Array, size: int) -> jax.Array:
    """Fold any integer index into [0, size) by symmetric reflection (``d c b a | a b c d | d c b a``)."""
    period = 2 * size
    m = jnp.mod(index, period)
    return jnp.where(m < size, m, period - 1 - m)


def gaussian_blur_matrix(size: int, sigma: jax.Array, radius: int) -> jax.Array:
    """``(size, size)`` matrix that blurs a 1-D signal with a Gaussian of ``sigma``, reflect boundary.

    ``radius`` (static) bounds the kernel: offsets ``-radius..radius``. ``sigma`` may be traced;
    ``sigma == 0`` gives the identity.
    """
    offsets = jnp.arange(-radius, radius + 1)
    sigma = jnp.asarray(sigma, jnp.float32)
    safe = jnp.maximum(sigma, 1e-6)
    weights = jnp.exp(-0.5 * jnp.square(offsets / safe))
    weights = jnp.where(sigma > 0, weights, (offsets == 0).astype(jnp.float32))
    weights = weights / weights.sum()
    rows = jnp.arange(size)[:, None]
    cols = _reflect_index(rows + offsets[None, :], size)
    matrix = jnp.zeros((size, size), jnp.float32)
    return matrix.at[jnp.broadcast_to(rows, cols.shape), cols].add(jnp.broadcast_to(weights, cols.shape))


def gaussian_blur(images: jax.Array, sigma, radius: int) -> jax.Array:
    """Separable Gaussian blur of ``(B, H, W, C)`` images with symmetric-reflect boundaries.

    Args:
      images: ``(B, H, W, C)``.
      sigma: scalar standard deviation in pixels (may be traced).
      radius: static kernel half-width (a kernel of ``2 * radius + 1`` taps, e.g. 16 for 33).

    Returns:
      ``(B, H, W, C)`` float32 blurred images.
    """
    _, height, width, _ = images.shape
    blur_h = gaussian_blur_matrix(height, sigma, radius)
    blur_w = gaussian_blur_matrix(width, sigma, radius)
    return jnp.einsum("ih,bhwc,jw->bijc", blur_h, images.astype(jnp.float32), blur_w)


def to_pixels(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """Undo normalisation: ``images * std + mean`` (``(B, H, W, C)``)."""
    return images * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)


def from_pixels(pixels: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """Normalise pixel-space images: ``(pixels - mean) / std`` (``(B, H, W, C)``)."""
    return (pixels - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
