"""The gradient seam: d logit_c / d input, plain or through Guided-Backprop activations.

A *gradient function* has the signature ``grad_fn(model_fn, inputs, labels) -> grads`` with
``inputs`` of shape ``(B, H, W, C)``, ``labels`` int ``(B,)`` and ``grads`` of the same shape and
dtype float32 as ``inputs``. It differentiates the *target logit* (pre-softmax); because each image's
logit depends only on that image, the gradient of the summed target logits gives every image's own
gradient in one backward pass.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ModelFn = Callable[[jax.Array], jax.Array]
GradientFn = Callable[[ModelFn, jax.Array, jax.Array], jax.Array]


def target_logits(model_fn: ModelFn, inputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Logit of each image's target class.

    Args:
      model_fn: ``images (B, H, W, C) -> logits (B, K)``.
      inputs: ``(B, H, W, C)`` float images.
      labels: ``(B,)`` int target classes.

    Returns:
      ``(B,)`` float32 target logits.
    """
    logits = model_fn(inputs)
    picked = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
    return picked.astype(jnp.float32)


def logit_gradient() -> GradientFn:
    """Gradient seam: ``d logit_c / d input`` of each image, float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> w = jnp.arange(12.).reshape(1, 2, 2, 3)
      >>> model_fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None]
      >>> g = logit_gradient()(model_fn, jnp.ones((2, 2, 2, 3)), jnp.zeros(2, jnp.int32))
      >>> bool(jnp.allclose(g[1], w[0]))
      True
    """

    def grad_fn(model_fn: ModelFn, inputs: jax.Array, labels: jax.Array) -> jax.Array:
        def total(x):
            return jnp.sum(target_logits(model_fn, x, labels))

        return jax.grad(total)(inputs).astype(jnp.float32)

    return grad_fn


def guided_backprop_activation(activation: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Wrap an activation so its backward pass follows Guided Backpropagation.

    Forward: ``activation(x)`` unchanged. Backward: the incoming gradient is first clipped at
    zero (only positive gradients pass) and then multiplied by the activation's own derivative.
    For ReLU this is the rule of Springenberg et al.: ``g_in = g_out * (x > 0) * (g_out > 0)``;
    ReLU6 also blocks ``x > 6``; SiLU uses its smooth derivative.

    Args:
      activation: elementwise function, e.g. ``jax.nn.relu``.

    Returns:
      An elementwise function with the same forward values, usable inside a Flax module.
    """

    @jax.custom_vjp
    def guided(x):
        return activation(x)

    def fwd(x):
        y, vjp = jax.vjp(activation, x)
        return y, vjp

    def bwd(vjp, g):
        (gx,) = vjp(jnp.maximum(g, 0).astype(g.dtype))
        return (gx,)

    guided.defvjp(fwd, bwd)
    return guided


guided_relu = guided_backprop_activation(jax.nn.relu)
guided_relu.__doc__ = "ReLU whose backward pass only lets positive gradients through (Guided Backprop)."
