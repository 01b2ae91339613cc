"""Grad-CAM (Selvaraju et al. 2017) on a model split into ``features`` and ``head``."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def gradcam(
    features_fn: Callable[[jax.Array], jax.Array],
    head_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
) -> jax.Array:
    """Grad-CAM maps at input resolution.

    ``A = features_fn(images)`` (the last conv block, ``(B, h, w, K)``); the weights
    ``alpha_k = mean_{h,w} d logit_c / d A_k``; the map ``relu(sum_k alpha_k A_k)`` is resized
    bilinearly to ``(H, W)``.

    Args:
      features_fn: ``images (B, H, W, C) -> activations (B, h, w, K)``.
      head_fn: ``activations -> logits (B, num_classes)``.
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int.

    Returns:
      ``(B, H, W, 1)`` float32 non-negative maps (not normalised).
    """
    activations = features_fn(images)

    def total(a):
        logits = head_fn(a)
        picked = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)
        return picked.astype(jnp.float32).sum()

    grads = jax.grad(total)(activations).astype(jnp.float32)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = jax.nn.relu((weights * activations.astype(jnp.float32)).sum(-1))
    batch, height, width, _ = images.shape
    upsampled = jax.image.resize(cam, (batch, height, width), method="bilinear")
    return upsampled[..., None]
