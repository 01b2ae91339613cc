"""The modification seam gamma_i, i = 1..n: where the gradients are taken.

A ``Modification`` tells the explainer how many samples it has and how to produce sample i:

* ``prepare(images, key) -> state``: per-batch precomputation (noise scale, baseline ...).
* ``sample(state, i) -> (inputs, scale)``: the i-th modified inputs ``(B, H, W, C)`` and the
  factor that turns the gradient at those inputs into the sample's signal
  (``signal = scale * grad``; 1 for noise, ``w_i * (x - baseline)`` on an IG path, the blur
  derivative on a BlurIG path). ``i`` is a traced int32 scalar, so samples can be drawn in
  any chunking: sample i is the same whatever the chunk size.

The Guided IG path is adaptive (each step depends on the previous gradient), so it has a
``step`` function instead; see ``guided_ig_path``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gag_jax import ops
from gag_jax._validation import check_fraction, check_positive_int

NOISE_RANGES = ("image", "batch")
PATH_RULES = ("riemann_right", "riemann_left", "riemann_middle", "trapezoid")


class Modification(NamedTuple):
    """A family of n input modifications (see module docstring).

    Attributes:
      num_samples: n.
      prepare: ``(images (B,H,W,C), key) -> state``.
      sample: ``(state, i) -> (inputs (B,H,W,C), scale broadcastable to (B,H,W,C))``; None for
        adaptive paths.
      step: adaptive paths only: ``(state, i, grad_fn) -> (state, signal (B,H,W,C))`` where
        ``grad_fn(inputs) -> grads``.
    """

    num_samples: int
    prepare: Callable[[jax.Array, jax.Array], Any]
    sample: Optional[Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]] = None
    step: Optional[Callable] = None


def identity() -> Modification:
    """The unmodified input, once (Vanilla Gradient, Guided Backprop)."""
    return Modification(1, lambda images, key: images, lambda x, i: (x, jnp.ones((), jnp.float32)))


def noise_scale(images: jax.Array, noise_level: float, noise_range: str = "image") -> jax.Array:
    """Standard deviation of the SmoothGrad noise, ``noise_level * (max - min)``.

    Args:
      images: ``(B, H, W, C)``.
      noise_level: fraction of the value range (0.15 in the paper).
      noise_range: ``"image"`` (range of each image) or ``"batch"`` (range of the whole batch,
        as the authors' code does).

    Returns:
      ``(B, 1, 1, 1)`` float32 standard deviations.
    """
    if noise_range == "image":
        span = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    elif noise_range == "batch":
        span = jnp.broadcast_to(images.max() - images.min(), images.shape[:1])
    else:
        raise ValueError(f"unknown noise_range {noise_range!r}; expected one of {NOISE_RANGES}")
    return (noise_level * span).astype(jnp.float32).reshape(-1, 1, 1, 1)


def is_key_batch(key) -> bool:
    """True for a batch of PRNG keys (typed keys of rank 1, or raw uint32 keys of shape (B, 2))."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


def gaussian_noise(num_samples: int = 20, noise_level: float = 0.15, noise_range: str = "image") -> Modification:
    """SmoothGrad modifications ``x + N(0, sigma^2)``, ``sigma = noise_level * (max - min)``.

    Sample i draws its noise from ``fold_in(key, i)``, so a map does not depend on the chunk size.
    ``key`` is one PRNG key for the batch, or a batch of keys (one per image, leading axis B):
    then image b's noise comes from ``fold_in(key[b], i)`` alone, so its map does not depend on
    which other images share its batch (e.g. ``keys = vmap(fold_in, (None, 0))(key, dataset_index)``).
    """
    check_positive_int(num_samples, "n")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0; got {noise_level}")
    if noise_range not in NOISE_RANGES:
        raise ValueError(f"unknown noise_range {noise_range!r}; expected one of {NOISE_RANGES}")

    def prepare(images, key):
        return images.astype(jnp.float32), noise_scale(images, noise_level, noise_range), key

    def sample(state, i):
        images, sigma, key = state
        if is_key_batch(key):
            draw = lambda k: jax.random.normal(jax.random.fold_in(k, i), images.shape[1:], jnp.float32)  # noqa: E731
            noise = jax.vmap(draw)(key)
        else:
            noise = jax.random.normal(jax.random.fold_in(key, i), images.shape, jnp.float32)
        return images + sigma * noise, jnp.ones((), jnp.float32)

    return Modification(num_samples, prepare, sample)


def make_baseline(images: jax.Array, baseline, mean=ops.IMAGENET_MEAN, std=ops.IMAGENET_STD) -> jax.Array:
    """Baseline images ``(B, H, W, C)`` in normalised space.

    ``baseline``: ``"black"`` (zero in pixel space, i.e. ``-mean / std``), ``"zero"`` (zero in
    normalised space), or a float (constant in normalised space).
    """
    if isinstance(baseline, str):
        if baseline == "black":
            return jnp.broadcast_to(ops.from_pixels(jnp.zeros((3,), jnp.float32), mean, std), images.shape)
        if baseline == "zero":
            return jnp.zeros_like(images, jnp.float32)
        raise ValueError(f"unknown baseline {baseline!r}; expected 'black', 'zero' or a number")
    return jnp.full(images.shape, baseline, jnp.float32)


def path_alphas(num_samples: int, rule: str = "riemann_right") -> tuple[jax.Array, jax.Array]:
    """Positions ``alpha_i`` on [0, 1] and quadrature weights ``w_i`` (summing to 1) for n samples."""
    n = num_samples
    if rule == "riemann_right":
        return jnp.arange(1, n + 1) / n, jnp.full((n,), 1.0 / n)
    if rule == "riemann_left":
        return jnp.arange(n) / n, jnp.full((n,), 1.0 / n)
    if rule == "riemann_middle":
        return (jnp.arange(n) + 0.5) / n, jnp.full((n,), 1.0 / n)
    if rule == "trapezoid":
        if n < 2:
            raise ValueError("the trapezoid rule needs n >= 2")
        weights = jnp.full((n,), 1.0 / (n - 1)).at[0].set(0.5 / (n - 1)).at[-1].set(0.5 / (n - 1))
        return jnp.linspace(0.0, 1.0, n), weights
    raise ValueError(f"unknown path rule {rule!r}; expected one of {PATH_RULES}")


def straight_path(
    num_samples: int = 20,
    baseline="black",
    rule: str = "riemann_right",
    mean=ops.IMAGENET_MEAN,
    std=ops.IMAGENET_STD,
) -> Modification:
    """Integrated Gradients path ``b + alpha_i (x - b)`` with signal ``w_i (x - b) grad``.

    Summed over i this is the Riemann/trapezoid approximation of IG, so the attributions sum
    to about ``f(x) - f(b)`` (completeness).
    """
    check_positive_int(num_samples, "n")
    alphas, weights = path_alphas(num_samples, rule)

    def prepare(images, key):
        images = images.astype(jnp.float32)
        return images, make_baseline(images, baseline, mean, std)

    def sample(state, i):
        images, base = state
        diff = images - base
        return base + alphas[i] * diff, weights[i] * diff

    return Modification(num_samples, prepare, sample)


def blur_path(num_samples: int = 20, max_sigma: float = 50.0, grad_step: float = 0.01, sqrt: bool = False) -> Modification:
    """BlurIG path (Xu et al. 2020): from a blurred image (sigma = max_sigma) to the input.

    Step i takes the gradient at ``blur(x, sigma_i)``, ``sigma_i = i * max_sigma / n`` (or its
    square-root schedule), and its signal is
    ``-(sigma_{i+1} - sigma_i) * (blur(x, sigma_i + grad_step) - blur(x, sigma_i)) / grad_step * grad``,
    as in the authors' reference implementation. Boundaries are reflected.
    """
    check_positive_int(num_samples, "n")
    if max_sigma <= 0:
        raise ValueError(f"max_sigma must be > 0; got {max_sigma}")
    steps = jnp.arange(num_samples + 1, dtype=jnp.float32)
    sigmas = jnp.sqrt(steps * max_sigma / num_samples) if sqrt else steps * max_sigma / num_samples
    radius = int(4 * (max_sigma + grad_step)) + 1

    def prepare(images, key):
        return images.astype(jnp.float32)

    def sample(images, i):
        sigma = sigmas[i]
        blurred = ops.gaussian_blur(images, sigma, radius)
        ahead = ops.gaussian_blur(images, sigma + grad_step, radius)
        scale = -(sigmas[i + 1] - sigma) * (ahead - blurred) / grad_step
        return blurred, scale

    return Modification(num_samples, prepare, sample)


def _guided_ig_move(x, x_input, x_base, grad, step, num_steps, fraction, max_dist, max_iterations):
    """One Guided IG step for one image (Kapishnikov et al. 2021, the published algorithm)."""
    eps = 1e-6
    diff = x_input - x_base
    l1_total = jnp.abs(diff).sum()
    alpha = (step + 1.0) / num_steps
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    x_min = x_base + diff * alpha_min
    x_max = x_base + diff * alpha_max
    l1_target = l1_total * (1.0 - alpha)
    safe_diff = jnp.where(diff != 0, diff, 1.0)

    def cond(carry):
        _, gamma, done, it = carry
        return (~done) & (gamma > 1.0) & (it < max_iterations)

    def body(carry):
        x, _, _, it = carry
        x_alpha = jnp.where(diff != 0, (x - x_base) / safe_diff, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.abs(x - x_input).sum()
        reached = jnp.abs(l1_current - l1_target) <= eps * jnp.maximum(l1_total, 1.0)
        blocked = x == x_max
        magnitude = jnp.where(blocked, jnp.inf, jnp.abs(grad))
        threshold = jnp.quantile(magnitude.reshape(-1), fraction, method="lower")
        selected = (magnitude <= threshold) & ~blocked
        l1_selected = (jnp.abs(x - x_max) * selected).sum()
        gamma = jnp.where(l1_selected > 0, (l1_current - l1_target) / jnp.where(l1_selected > 0, l1_selected, 1.0), jnp.inf)
        moved_full = jnp.where(selected, x_max, x)
        moved_part = jnp.where(selected, x + (x_max - x) * gamma, x)
        x_new = jnp.where(gamma > 1.0, moved_full, moved_part)
        x_new = jnp.where(reached, x, x_new)
        gamma = jnp.where(reached, 0.0, gamma)
        return x_new, gamma, reached, it + 1

    x_final, _, _, _ = jax.lax.while_loop(cond, body, (x, jnp.inf, jnp.array(False), 0))
    return x_final


def guided_ig_path(
    num_samples: int = 20,
    baseline="black",
    fraction: float = 0.25,
    max_dist: float = 0.02,
    mean=ops.IMAGENET_MEAN,
    std=ops.IMAGENET_STD,
) -> Modification:
    """Guided IG adaptive path (Kapishnikov et al. 2021).

    Starting at the baseline, each of the n steps takes the gradient at the current point and
    then moves the ``fraction`` of not-yet-finished features with the smallest gradient
    magnitude towards the input, until the L1 distance to the input has shrunk by 1/n of the
    total; features are kept within ``max_dist`` (in alpha) of the straight path. The step's
    signal is ``(x_new - x_old) * grad`` so the signals sum to the attribution, which satisfies
    completeness like IG.
    """
    check_positive_int(num_samples, "n")
    check_fraction(fraction, "fraction", high_inclusive=True)
    max_iterations = int(4.0 / max(fraction, 1e-3)) + 16

    def prepare(images, key):
        images = images.astype(jnp.float32)
        base = make_baseline(images, baseline, mean, std)
        return images, base, base

    def step(state, i, grad_fn):
        images, base, current = state
        grads = grad_fn(current)
        move = jax.vmap(
            lambda x, xi, xb, g: _guided_ig_move(x, xi, xb, g, i, num_samples, fraction, max_dist, max_iterations)
        )
        moved = move(current, images, base, grads)
        return (images, base, moved), (moved - current) * grads

    return Modification(num_samples, prepare, None, step)
