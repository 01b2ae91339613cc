"""Grad-CAM (Selvaraju et al. 2017): on a model split into ``features`` and ``head``, or on any
named layer of a Flax (linen or NNX) model, as Captum's ``LayerGradCam(layer)``; on a transformer's
token layer ``(B, T, D)`` with the prefix tokens dropped and the patches laid on their grid (what
pytorch-grad-cam's ``reshape_transform`` does)."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gag_jax.attention import (_plan, default_token_layer, model_grid, patch_grid, prefix_tokens_of, token_layers,
                               tokens_to_grid, upsample)
from gag_jax.model import _LinenTap, _NnxTap


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


def _grid_cam(activations, grads):
    """``relu(sum_k mean_{h,w}(grads_k) A_k)`` on the activations' grid: ``(B, h, w)`` float32."""
    weights = grads.astype(jnp.float32).mean(axis=(1, 2), keepdims=True)
    return jax.nn.relu((weights * activations.astype(jnp.float32)).sum(-1))


def _cam(activations, grads, image_shape):
    """``relu(sum_k mean_{h,w}(grads_k) A_k)`` resized bilinearly to the images: ``(B, H, W, 1)``."""
    return upsample(_grid_cam(activations, grads), image_shape)


def _layer_grads(model, images, labels, layer, shape):
    def total(delta):
        logits, activations = model.layer_output(images, layer, delta)
        return _picked(logits, labels), activations

    return jax.grad(total, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))


def _working_layers(model, images, prefix_tokens, grid) -> tuple[list[str], dict]:
    """Layers Grad-CAM can use, in forward order: convolutional ``(B, h, w, D)`` ones and token
    ones (:func:`gag_jax.attention.token_layers`); ``{path: why not}`` for token layers refused."""
    tokens, reasons = token_layers(model, images, prefix_tokens, grid)
    plan = _plan(model, images)
    attention = {path for _, path, *_ in plan.events}
    working = [path for path, shape in plan.layers if path in tokens or (
        len(shape) == 4 and shape[0] == images.shape[0] and path not in attention)]
    return list(dict.fromkeys(working)), reasons


def _named(layers) -> str:
    return ", ".join(repr(n) for n in layers[:40]) + (" ..." if len(layers) > 40 else "") if layers else "none"


def layer_gradcam(model, images: jax.Array, labels: jax.Array, layer: str, prefix_tokens: int | None = None,
                  grid: tuple[int, int] | None = None, *, cam_grid: bool = False) -> jax.Array:
    """Grad-CAM on the output of the submodule ``layer`` of a Flax model (no ``features``/``head`` needed).

    The activations ``A`` are the layer's output in the model's own forward pass; their gradient is
    taken by adding a zero ``delta`` to that output and differentiating the logit with respect to it.

    A layer with token output ``(B, T, D)`` (a vision transformer) first loses its ``prefix_tokens``
    (CLS, registers) and the rest is laid row-major on the patch grid ``(h, w)`` (what
    pytorch-grad-cam's ``reshape_transform`` does by hand); then the usual Grad-CAM. In a ViT that
    reads its CLS token, layers computed after the last attention (the last block's ``attn``,
    ``norm2``, ``mlp``, the final ``norm``) get zero gradient on the patch tokens: they are refused,
    naming the layers that work (the last block's ``norm1`` is the usual choice).

    Args:
      model: a ``gj.ModelFunctions`` built by ``from_module`` (linen: the submodule path, e.g.
        ``"layer4"`` or ``"blocks_15"``) or ``from_nnx`` (the attribute path, e.g. ``"conv2"``).
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int.
      layer: the layer's path, ``/``-separated.
      prefix_tokens: token layers: tokens ahead of the patches (None: the model's
        ``num_prefix_tokens``, else 1).
      grid: token layers: the patch grid ``(h, w)`` (None: the model's ``grid_size``, else inferred from the image's aspect ratio).
      cam_grid: return the map on the layer's grid ``(B, h, w)`` before upsampling (for checks).

    Returns:
      ``(B, H, W, 1)`` float32 non-negative maps (not normalised).

    Raises:
      ValueError: no such layer (the layers are listed), a model without layers (a plain callable),
        or a layer that cannot work: an output neither ``(B, h, w, D)`` nor ``(B, T, D)``, or token
        output without patch gradient (the layers that work are listed).
    """
    shape = jax.eval_shape(lambda x: model.layer_output(x, layer)[1], images)
    rank = len(shape.shape)
    if rank == 4 and shape.shape[0] == images.shape[0]:
        grads, activations = _layer_grads(model, images, labels, layer, shape)
    else:
        prefix = prefix_tokens_of(model, prefix_tokens)
        working, reasons = _working_layers(model, images, prefix, grid)
        if rank != 3 or shape.shape[0] != images.shape[0]:
            raise ValueError(f"Grad-CAM needs a layer with output (B, h, w, D) or tokens (B, T, D); layer {layer!r} "
                             f"gives shape {tuple(shape.shape)}. Layers that work: {_named(working)}")
        if layer not in working:
            why = reasons.get(layer, f"its {shape.shape[1]} tokens less {prefix} prefix tokens lie on no patch grid")
            raise ValueError(f"Grad-CAM cannot use layer {layer!r}: {why}. Layers that work: {_named(working)}")
        hw = patch_grid(shape.shape[1] - prefix, images.shape[1:3], grid, model_grid(model))
        grads, activations = _layer_grads(model, images, labels, layer, shape)
        grads, activations = tokens_to_grid(grads, prefix, hw), tokens_to_grid(activations, prefix, hw)
    return _grid_cam(activations, grads) if cam_grid else _cam(activations, grads, images.shape)


def model_gradcam(model, images: jax.Array, labels: jax.Array, layer: str | None = None,
                  prefix_tokens: int | None = None, grid: tuple[int, int] | None = None) -> jax.Array:
    """Grad-CAM ``(B, H, W, 1)`` on ``layer`` (:func:`layer_gradcam`), else on the model's
    ``features``/``head`` split, else, for a vision transformer with timm's layout
    (``blocks_{i}/norm1``; NNX ``blocks/{i}/norm1``), on the last block's ``norm1``.

    Raises:
      ValueError: no layer given and none of these applies (the layers that work are named).
    """
    if layer is not None:
        return layer_gradcam(model, images, labels, layer, prefix_tokens, grid)
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if features is not None and head is not None:
        return gradcam(features, head, images, labels)
    message = ("method 'gradcam' needs a layer: pass layer='<submodule path>' for a Flax linen or NNX model "
               "(gj.ModelFunctions.from_module / from_nnx), or a model split into 'features' and 'head' functions "
               "(models.model_functions(module, variables))")
    if not isinstance(model._statics.tap, (_LinenTap, _NnxTap)):
        raise ValueError(message)
    prefix = prefix_tokens_of(model, prefix_tokens)
    working, _ = _working_layers(model, images, prefix, grid)
    default = default_token_layer(model, working)
    if default is None:
        raise ValueError(f"{message}. Layers that work: {_named(working)}")
    return layer_gradcam(model, images, labels, default, prefix, grid)
