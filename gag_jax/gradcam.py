"""Grad-CAM (Selvaraju et al. 2017): on a model split into ``features`` and ``head``, or on any
named layer of a Flax (linen or NNX) model, as Captum's ``LayerGradCam(layer)``."""
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
        return _picked(head_fn(a), labels)

    grads = jax.grad(total)(activations)
    return _cam(activations, grads, images.shape)


def _picked(logits, labels):
    return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1).astype(jnp.float32).sum()


def _cam(activations, grads, image_shape):
    """``relu(sum_k mean_{h,w}(grads_k) A_k)`` resized bilinearly to the images: ``(B, H, W, 1)``."""
    grads = grads.astype(jnp.float32)
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = jax.nn.relu((weights * activations.astype(jnp.float32)).sum(-1))
    batch, height, width, _ = image_shape
    upsampled = jax.image.resize(cam, (batch, height, width), method="bilinear")
    return upsampled[..., None]


def layer_gradcam(model, images: jax.Array, labels: jax.Array, layer: str) -> jax.Array:
    """Grad-CAM on the output of the submodule ``layer`` of a Flax model (no ``features``/``head`` needed).

    The activations ``A`` are the layer's output in the model's own forward pass; their gradient is
    taken by adding a zero ``delta`` to that output and differentiating the logit with respect to it.

    Args:
      model: a ``gj.ModelFunctions`` built by ``from_module`` (linen: the submodule path, e.g.
        ``"layer4"`` or ``"blocks_15"``) or ``from_nnx`` (the attribute path, e.g. ``"conv2"``).
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int.
      layer: the layer's path, ``/``-separated.

    Returns:
      ``(B, H, W, 1)`` float32 non-negative maps (not normalised).

    Raises:
      ValueError: no such layer (the layers are listed), a model without layers (a plain callable),
        or a layer whose output is not ``(B, h, w, D)``.
    """
    shape = jax.eval_shape(lambda x: model.layer_output(x, layer)[1], images)
    if len(shape.shape) != 4 or shape.shape[0] != images.shape[0]:
        raise ValueError(f"Grad-CAM needs a convolutional layer with output (B, h, w, D); layer {layer!r} "
                         f"gives shape {tuple(shape.shape)}")

    def total(delta):
        logits, activations = model.layer_output(images, layer, delta)
        return _picked(logits, labels), activations

    grads, activations = jax.grad(total, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return _cam(activations, grads, images.shape)
