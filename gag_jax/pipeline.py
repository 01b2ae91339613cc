"""Composition of the four seams: modification -> gradient -> interpretation -> aggregation.

``chain(...)`` returns an ``Explainer``: a pure function
``explainer(model_fn, images, labels, key) -> attributions (B, H, W, C)`` (raw, not normalised)
that ``jax.jit``, ``jax.vmap`` and sharding compose with.

The n samples are processed in a ``jax.lax.scan`` over chunks of ``chunk_size`` samples; each
chunk is a ``jax.vmap`` over its samples (and the whole batch), and its signals are folded
into the aggregation's streaming state. Peak memory therefore grows with ``chunk_size``,
never with n. Sample i is the same whatever the chunking (noise is keyed by i).

Several targets per image (``labels`` ``(B, K)``, or a target function ``target(logits) -> (B, K)``;
see :func:`gag_jax.gradients.target_values`) give ``(B, K, H, W, C)`` from the same program: the
modified inputs and their forward passes are shared, one backward pass runs per target (the gradient
seam's ``vmap`` over one-hot cotangents), and the streaming state holds ``B * K`` attributions. Each
target's attribution equals the single-target run's with the same key, to float rounding (a
variance guide's percentile threshold may then flip a pixel where two variances nearly tie). The
adaptive Guided IG path follows its target's gradient, so it runs one path per target.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gag_jax import aggregations as aggregations_lib
from gag_jax import backend
from gag_jax import gradients as gradients_lib
from gag_jax import interpretations as interpretations_lib
from gag_jax import modifications as modifications_lib


@dataclasses.dataclass(frozen=True)
class Explainer:
    """The four seams of one gradient method plus the chunk size of the sample stream.

    Call it as ``explainer(model_fn, images, labels, key)``; to jit it, mark the model static:
    ``jax.jit(explainer, static_argnums=0)`` or ``jax.jit(functools.partial(explainer, model_fn))``.
    """

    modification: modifications_lib.Modification
    gradient: gradients_lib.GradientFn
    interpretation: interpretations_lib.Interpretation
    aggregation: aggregations_lib.Aggregation
    chunk_size: int | None = None

    def __call__(self, model_fn, images, labels, key, *, platform: str | None = None):
        """Attributions ``(B, H, W, C)`` float32 for ``images (B, H, W, C)`` and ``labels (B,)``;
        ``(B, K, H, W, C)`` for ``labels (B, K)`` or a target function (see :func:`run`)."""
        return run(self, model_fn, images, labels, key, platform=platform)


def chain(
    modification: modifications_lib.Modification,
    gradient: gradients_lib.GradientFn,
    interpretation: interpretations_lib.Interpretation,
    aggregation: aggregations_lib.Aggregation,
    *,
    chunk_size: int | None = None,
) -> Explainer:
    """Compose the four seams into an explainer (like ``optax.chain``).

    Args:
      modification: e.g. ``modifications.gaussian_noise(20, 0.15)``.
      gradient: e.g. ``gradients.logit_gradient()``.
      interpretation: e.g. ``interpretations.absolute()``.
      aggregation: e.g. ``aggregations.guide(0.85)``.
      chunk_size: samples per vmapped chunk (None: :func:`default_chunk_size`: all n at once, except
        on CPU). Results do not depend on it beyond float rounding; memory grows with it.

    Returns:
      An ``Explainer``; call it as ``explainer(model_fn, images, labels, key)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from gag_jax import modifications, gradients, interpretations, aggregations
      >>> gag = chain(modifications.gaussian_noise(8, 0.15), gradients.logit_gradient(),
      ...             interpretations.absolute(), aggregations.guide(0.85), chunk_size=4)
      >>> model_fn = lambda x: jnp.stack([jnp.sum(x ** 2, axis=(1, 2, 3)), jnp.sum(x, axis=(1, 2, 3))], -1)
      >>> gag(model_fn, jnp.ones((2, 4, 4, 3)), jnp.zeros(2, jnp.int32), jax.random.PRNGKey(0)).shape
      (2, 4, 4, 3)
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
    if modification.num_samples < aggregation.min_samples:
        raise ValueError(f"this aggregation needs n >= {aggregation.min_samples} gradient samples (a variance "
                         f"does); the modification has n = {modification.num_samples}")
    return Explainer(modification, gradient, interpretation, aggregation, chunk_size)


CPU_IMAGES_PER_CALL = backend.CPU_IMAGES_PER_CALL  # re-exported; the policy lives in gag_jax.backend


def default_chunk_size(n: int, batch: int, backend_name: str | None = None) -> int:
    """Samples per vmapped chunk when ``chunk_size`` is None: :func:`gag_jax.backend.sample_chunk`."""
    return backend.sample_chunk(n, batch, backend_name)


def run(explainer: Explainer, model_fn: Callable, images: jax.Array, labels: jax.Array, key: jax.Array, *,
        platform: str | None = None) -> jax.Array:
    """Run an explainer (see ``Explainer``); returns ``(B, H, W, C)`` float32 attributions.

    ``labels``: int ``(B,)``; int ``(B, K)`` (K targets per image: ``(B, K, H, W, C)``, one forward
    pass per modified input, one backward pass per target); or a hashable target function
    ``target(logits) -> (B,) | (B, K)`` (a module-level function or a ``functools.partial``).

    ``platform`` (``"cpu"``, ``"gpu"`` ...; None: the default backend) picks ``chunk_size=None``'s
    samples per call (:func:`gag_jax.backend.sample_chunk`); ``gj.explain`` passes where the images live.
    """
    return run_sweep(explainer, [(explainer.interpretation, explainer.aggregation)], model_fn, images, labels, key,
                     platform=platform)[0]


def shares_sweep(a: Explainer, b: Explainer) -> bool:
    """Whether two explainers draw the same samples and gradients (so one sweep serves both): equal
    modification signatures (not None), the same gradient seam and the same chunk size."""
    return (a.modification.signature is not None and a.modification.signature == b.modification.signature
            and a.gradient is b.gradient and a.chunk_size == b.chunk_size)


def run_sweep(explainer: Explainer, readings, model_fn: Callable, images: jax.Array, labels: jax.Array,
              key: jax.Array, *, platform: str | None = None) -> list[jax.Array]:
    """One sweep (the explainer's modification and gradient over the batch), read several ways.

    A *reading* is an ``(interpretation, aggregation)`` pair. One ``lax.scan`` over the samples
    feeds every reading's streaming state at once (memory O(1) in n, as :func:`run`), so the
    readings cost one sweep of model gradients; each result equals :func:`run` of the explainer
    with that reading's interpretation and aggregation, for the same key.

    Args:
      explainer: gives the modification, the gradient seam and the chunk size.
      readings: sequence of ``(interpretation, aggregation)``.
      model_fn, images, labels, key, platform: as :func:`run` (``labels`` ``(B, K)`` or a target
        function returning ``(B, K)``: K targets per image, see the module docstring).

    Returns:
      One ``(B, H, W, C)`` (K targets: ``(B, K, H, W, C)``) float32 attribution per reading, in order.

    Raises:
      ValueError: an aggregation that needs more samples than the modification draws.
    """
    modification, gradient, chunk_size = explainer.modification, explainer.gradient, explainer.chunk_size
    readings = list(readings)
    for _, aggregation in readings:
        if modification.num_samples < aggregation.min_samples:
            raise ValueError(f"this aggregation needs n >= {aggregation.min_samples} gradient samples (a variance "
                             f"does); the modification has n = {modification.num_samples}")
    images = images.astype(jnp.float32)
    targets = gradients_lib.num_targets(model_fn, images, labels)  # None: one target per image; else K
    if not callable(labels):
        labels = labels.astype(jnp.int32)
    if targets is not None and modification.step is not None:
        # an adaptive path (Guided IG) follows the gradient of its target: one path per target
        per_target = [run_sweep(explainer, readings, model_fn, images, gradients_lib.target_column(labels, k), key,
                                platform=platform) for k in range(targets)]
        return [jnp.stack([maps[r] for maps in per_target], axis=1) for r in range(len(readings))]
    state = modification.prepare(images, key)
    batch = images.shape[0]
    # several targets: the aggregation state holds B * K attributions (image-major), one per (image, target)
    state_shape = images.shape if targets is None else (batch * targets,) + images.shape[1:]
    agg_states = tuple(aggregation.init(state_shape) for _, aggregation in readings)
    n = modification.num_samples

    def grad_at(inputs):
        return gradient(model_fn, inputs, labels)

    def update_all(agg_states, signals, weights):
        return tuple(aggregation.update(s, interpret(signals), signals, weights)
                     for s, (interpret, aggregation) in zip(agg_states, readings))

    def finalize_all(agg_states):
        results = [aggregation.finalize(s) for s, (_, aggregation) in zip(agg_states, readings)]
        if targets is None:
            return results
        return [r.reshape((batch, targets) + images.shape[1:]) for r in results]

    if modification.step is not None:  # adaptive path: sequential over samples
        def body(carry, _):
            mod_state, agg_states, i = carry
            mod_state, signal = modification.step(mod_state, i, grad_at)
            signal = signal[None]
            agg_states = update_all(agg_states, signal, jnp.ones((1,), jnp.float32))
            return (mod_state, agg_states, i + 1), None

        # the step index is carried, not scanned over, so no buffer grows with n
        (_, agg_states, _), _ = jax.lax.scan(body, (state, agg_states, jnp.int32(0)), None, length=n)
        return finalize_all(agg_states)

    chunk = backend.sample_chunk(n, images.shape[0], platform) if chunk_size is None else min(chunk_size, n)
    num_chunks = math.ceil(n / chunk)

    def signal_of(i):
        index = jnp.minimum(i, n - 1)  # padded samples of the last chunk recompute sample n-1, masked out
        inputs, scale = modification.sample(state, index)
        grads = grad_at(inputs)
        if targets is None:
            return (scale * grads).astype(jnp.float32)
        # (B, K, H, W, C): the sample's factor is the image's, the same for each of its targets
        scale = jnp.expand_dims(jnp.broadcast_to(scale, inputs.shape), 1)
        return (scale * grads).astype(jnp.float32).reshape(state_shape)

    def body(carry, _):
        agg_states, chunk_index = carry
        indices = chunk_index * chunk + jnp.arange(chunk)
        signals = jax.vmap(signal_of)(indices)
        weights = (indices < n).astype(jnp.float32)
        return (update_all(agg_states, signals, weights), chunk_index + 1), None

    (agg_states, _), _ = jax.lax.scan(body, (agg_states, jnp.int32(0)), None, length=num_chunks)
    return finalize_all(agg_states)


def per_target(fn: Callable[[jax.Array], jax.Array], attributions: jax.Array) -> jax.Array:
    """``fn`` of ``(B, H, W, C)`` attributions applied to each target of ``(B, K, H, W, C)`` ones (as
    a batch of ``B * K`` maps: a per-image step such as min-max stays per (image, target)); returns
    ``(B, K, ...)``. Attributions with one target per image (4-D) go to ``fn`` as they are."""
    if attributions.ndim != 5:
        return fn(attributions)
    batch, targets = attributions.shape[:2]
    out = fn(attributions.reshape((batch * targets,) + attributions.shape[2:]))
    return out.reshape((batch, targets) + out.shape[1:])
