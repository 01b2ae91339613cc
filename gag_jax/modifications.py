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

Every factory checks its options once, when it is called, and raises ``ValueError`` naming the
option and its valid values; nothing is re-checked inside the traced functions.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import ops, pixels
from gag_jax._validation import check_choice, check_positive_int

NOISE_RANGES = ("image", "batch")
PATH_RULES = ("riemann_right", "riemann_left", "riemann_middle", "trapezoid", "linspace")
BASELINES = ("black", "zero", "min", "max")


class Modification(NamedTuple):
    """A family of n input modifications (see module docstring).

    Attributes:
      num_samples: n.
      prepare: ``(images (B,H,W,C), key) -> state``.
      sample: ``(state, i) -> (inputs (B,H,W,C), scale broadcastable to (B,H,W,C))``; None for
        adaptive paths.
      step: adaptive paths only: ``(state, i, grad_fn) -> (state, signal (B,H,W,C))`` where
        ``grad_fn(inputs) -> grads``.
      random: whether ``prepare`` draws random numbers from its key (then ``gj.explain`` needs one).
      signature: ``(factory name, *its arguments)``: equal signatures make equal sample streams for
        the same images, model and key, so ``gj.explain_many`` runs them once (None: never shared).
    """

    num_samples: int
    prepare: Callable[[jax.Array, jax.Array], Any]
    sample: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]] | None = None
    step: Callable | None = None
    random: bool = False
    signature: tuple | None = None


# ---------------------------------------------------------------------------------------------
# option checks (host side, once per factory call)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(value, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite real number in the given range.

    The message names the option and the valid range, e.g. ``max_sigma must be a finite number
    > 0; got -1``.
    """
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    wanted = f"a finite number{' ' + ' and '.join(parts) if parts else ''}"
    if not _is_number(value):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {wanted}; got {value!r}")


def check_baseline(baseline) -> None:
    """Raise ValueError unless ``baseline`` is one of ``BASELINES`` or a finite number."""
    if isinstance(baseline, str):
        check_choice(baseline, "baseline", BASELINES)
    elif not _is_number(baseline):
        raise ValueError(f"baseline must be one of {', '.join(map(repr, BASELINES))} or a finite number; "
                         f"got {baseline!r}")


def _check_num_samples(num_samples) -> None:
    check_positive_int(num_samples, "n")


def _check_bool(value, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")


# ---------------------------------------------------------------------------------------------
# noise


def _signature(*parts) -> tuple | None:
    """A hashable ``(factory, *arguments)`` (arrays and sequences as tuples); None if not hashable."""
    def plain(value):
        if isinstance(value, (list, tuple, np.ndarray)) or hasattr(value, "tolist"):
            return tuple(np.ravel(np.asarray(value)).tolist())
        return value
    parts = tuple(plain(p) for p in parts)
    try:
        hash(parts)
    except TypeError:
        return None
    return parts


def identity() -> Modification:
    """The unmodified input, once (Vanilla Gradient, Guided Backprop)."""
    return Modification(1, lambda images, key: images, lambda x, i: (x, jnp.ones((), jnp.float32)),
                        signature=("identity",))


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
        check_choice(noise_range, "noise_range", NOISE_RANGES)
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

    Raises:
      ValueError: ``n`` not a positive int, ``noise_level`` not a finite number >= 0,
        ``noise_range`` not ``"image"`` / ``"batch"``.
    """
    _check_num_samples(num_samples)
    check_number(noise_level, "noise_level", low=0.0)
    check_choice(noise_range, "noise_range", NOISE_RANGES)

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

    return Modification(num_samples, prepare, sample, random=True,
                        signature=_signature("gaussian_noise", num_samples, noise_level, noise_range))


# ---------------------------------------------------------------------------------------------
# straight-line paths (Integrated Gradients)


def _check_black_scaling(baseline, mean, std) -> None:
    """A ``"black"`` baseline needs the scaling (:func:`gag_jax.pixels.require`); checked when the
    modification is built (``gj.explain`` fills ``mean``/``std`` from the model first)."""
    if isinstance(baseline, str) and baseline == "black":
        pixels.require(mean, std, what="baseline 'black'")


def make_baseline(images: jax.Array, baseline, mean=None, std=None) -> jax.Array:
    """Baseline images ``(B, H, W, C)`` in normalised space.

    ``baseline``: ``"black"`` (zero in pixel space, i.e. ``-mean / std``: needs ``mean``/``std``), ``"zero"`` (zero in
    normalised space), ``"min"`` / ``"max"`` (each image's own minimum / maximum value everywhere,
    XRAI's two baselines), or a float (constant in normalised space).
    """
    check_baseline(baseline)
    _check_black_scaling(baseline, mean, std)
    if isinstance(baseline, str):
        if baseline == "black":
            return pixels.black(images, mean, std)
        if baseline == "zero":
            return jnp.zeros_like(images, jnp.float32)
        reduce = jnp.min if baseline == "min" else jnp.max
        return jnp.broadcast_to(reduce(images, axis=(1, 2, 3), keepdims=True), images.shape).astype(jnp.float32)
    return jnp.full(images.shape, baseline, jnp.float32)


def path_alphas(num_samples: int, rule: str = "riemann_right") -> tuple[jax.Array, jax.Array]:
    """Positions ``alpha_i`` on [0, 1] and quadrature weights ``w_i`` (summing to 1) for n samples.

    Rules: ``"riemann_right"`` (``i/n``, i = 1..n), ``"riemann_left"`` (``i/n``, i = 0..n-1),
    ``"riemann_middle"``, ``"trapezoid"`` (``linspace(0, 1, n)`` with half weights at the ends)
    and ``"linspace"`` (``linspace(0, 1, n)``, every weight ``1/n``: the grid and mean of the
    reference Integrated Gradients in PAIR-code/saliency).
    """
    _check_num_samples(num_samples)
    check_choice(rule, "rule", PATH_RULES)
    n = num_samples
    if rule == "riemann_right":
        return jnp.arange(1, n + 1) / n, jnp.full((n,), 1.0 / n)
    if rule == "riemann_left":
        return jnp.arange(n) / n, jnp.full((n,), 1.0 / n)
    if rule == "riemann_middle":
        return (jnp.arange(n) + 0.5) / n, jnp.full((n,), 1.0 / n)
    if rule == "linspace":
        return jnp.linspace(0.0, 1.0, n), jnp.full((n,), 1.0 / n)
    if n < 2:
        raise ValueError("the trapezoid rule needs n >= 2")
    weights = jnp.full((n,), 1.0 / (n - 1)).at[0].set(0.5 / (n - 1)).at[-1].set(0.5 / (n - 1))
    return jnp.linspace(0.0, 1.0, n), weights


def straight_path(
    num_samples: int = 20,
    baseline="black",
    rule: str = "riemann_right",
    mean=None,
    std=None,
) -> Modification:
    """Integrated Gradients path ``b + alpha_i (x - b)`` with signal ``w_i (x - b) grad``.

    Summed over i this is the Riemann/trapezoid approximation of IG, so the attributions sum
    to about ``f(x) - f(b)`` (completeness). ``rule`` picks ``alpha_i, w_i`` (see ``path_alphas``).

    ``mean``/``std``: the model's input scaling (pixels in [0, 1]), needed by ``baseline="black"``.

    Raises:
      ValueError: ``n`` not a positive int, unknown ``rule`` or ``baseline``, black without scaling.
    """
    check_baseline(baseline)
    _check_black_scaling(baseline, mean, std)
    alphas, weights = path_alphas(num_samples, rule)

    def prepare(images, key):
        images = images.astype(jnp.float32)
        return images, make_baseline(images, baseline, mean, std)

    def sample(state, i):
        images, base = state
        diff = images - base
        return base + alphas[i] * diff, weights[i] * diff

    return Modification(num_samples, prepare, sample,
                        signature=_signature("straight_path", num_samples, baseline, rule, mean, std))


# ---------------------------------------------------------------------------------------------
# BlurIG


def blur_sigmas(num_samples: int, max_sigma: float, sqrt: bool = False) -> np.ndarray:
    """The n + 1 sigmas of the BlurIG path, ``i * max_sigma / n`` (or their square roots), i = 0..n.

    Computed on the host in float64 as the reference does; static for a given ``(n, max_sigma)``.
    """
    steps = np.arange(num_samples + 1, dtype=np.float64)
    sigmas = steps * float(max_sigma) / float(num_samples)
    return np.sqrt(sigmas) if sqrt else sigmas


def blur_path(num_samples: int = 20, max_sigma: float = 50.0, grad_step: float = 0.01, sqrt: bool = False,
              mode: str = "constant", radius: int | None = None) -> Modification:
    """BlurIG path (Xu et al. 2020), as published (PAIR-code/saliency ``saliency/core/blur_ig.py``).

    With ``sigma_i = i * max_sigma / n`` (``sqrt=True``: ``sqrt(i * max_sigma / n)``), i = 0..n,
    step i = 0..n-1 takes the gradient at ``blur(x, sigma_i)`` (``blur(x, 0) = x``) and its signal is
    ``-(sigma_{i+1} - sigma_i) * (blur(x, sigma_i + grad_step) - blur(x, sigma_i)) / grad_step * grad``;
    the attribution is the sum over steps (the reference's ``steps`` is ``n``).

    The blur is the reference's ``scipy.ndimage.gaussian_filter(x, [s, s, 0], mode="constant")``
    on the model's input: zeros beyond the image edge, and a kernel of half-width
    ``int(4 * s + 0.5)`` for each sigma s (scipy's ``truncate=4``). The sigmas, and so every
    kernel size, are static; each step blurs H and W separately with banded matrices (see
    ``ops.gaussian_blur``).

    Args:
      num_samples: n, the number of path steps (gradients).
      max_sigma: blur of the path's start, in pixels (> 0; the reference's default is 50).
      grad_step: finite-difference step of the blur derivative in sigma (> 0; 0.01).
      sqrt: square-root sigma schedule (the reference's ``sqrt`` option).
      mode: boundary of the blur: ``"constant"`` (published), ``"symmetric"`` (scipy's
        ``reflect``) or ``"reflect"``.
      radius: None (published: each sigma's own scipy radius) or a fixed kernel half-width for
        every sigma (int >= 0).

    Raises:
      ValueError: an option outside its range (named, with the valid values).
    """
    _check_num_samples(num_samples)
    check_number(max_sigma, "max_sigma", low=0.0, low_open=True)
    check_number(grad_step, "grad_step", low=0.0, low_open=True)
    _check_bool(sqrt, "sqrt")
    check_choice(mode, "mode", ops.BLUR_MODES)
    if radius is not None and (not isinstance(radius, (int, np.integer)) or isinstance(radius, bool) or radius < 0):
        raise ValueError(f"radius must be None (scipy's per-sigma radius) or an int >= 0; got {radius!r}")
    sigmas = blur_sigmas(num_samples, max_sigma, sqrt)
    here, ahead = sigmas[:-1], sigmas[:-1] + grad_step
    if radius is None:
        radius_here = [ops.gaussian_radius(s) for s in here]
        radius_ahead = [ops.gaussian_radius(s) for s in ahead]
    else:
        radius_here = radius_ahead = [int(radius)] * num_samples
    max_radius = max(radius_here + radius_ahead)
    # static float64 kernels of every step; the finite difference of the blur is taken on the
    # kernels in float64 (blur(s + g) - blur(s) without the float32 cancellation)
    taps_here = np.stack([ops.gaussian_taps(s, r, max_radius) for s, r in zip(here, radius_here)])
    taps_ahead = np.stack([ops.gaussian_taps(s, r, max_radius) for s, r in zip(ahead, radius_ahead)])
    table = np.stack([taps_here, taps_ahead, taps_ahead - taps_here], axis=1).astype(np.float32)  # (n, 3, 2R+1)
    scales = (-np.diff(sigmas) / grad_step).astype(np.float32)

    def prepare(images, key):
        return images.astype(jnp.float32)

    def sample(images, i):
        _, height, width, _ = images.shape
        here_taps, ahead_taps, delta_taps = jnp.asarray(table)[i]
        here_h, delta_h = ops.blur_matrix(height, here_taps, mode), ops.blur_matrix(height, delta_taps, mode)
        here_w, ahead_w = ops.blur_matrix(width, here_taps, mode), ops.blur_matrix(width, ahead_taps, mode)
        delta_w = ops.blur_matrix(width, delta_taps, mode)
        highest = jax.lax.Precision.HIGHEST
        rows = jnp.einsum("ih,bhwc->biwc", here_h, images, precision=highest)
        blurred = jnp.einsum("jw,biwc->bijc", here_w, rows, precision=highest)
        # H'XW'^T - HXW^T = (H' - H) X W'^T + H X (W' - W)^T
        delta = (ops.blur_separable(images, delta_h, ahead_w)
                 + jnp.einsum("jw,biwc->bijc", delta_w, rows, precision=highest))
        return blurred, jnp.asarray(scales)[i] * delta

    return Modification(num_samples, prepare, sample,
                        signature=_signature("blur_path", num_samples, max_sigma, grad_step, sqrt, mode, radius))


# ---------------------------------------------------------------------------------------------
# Guided IG

GUIDED_IG_EPSILON = 1e-9  # the reference's math.isclose(rel_tol=1e-9, abs_tol=1e-9)


def guided_ig_max_iterations(fraction: float) -> int:
    """Cap on the inner iterations of one Guided IG step (never reached; see ``guided_ig_path``).

    Each inner iteration either ends the step or moves every selected feature (at least a
    ``fraction`` of all features) to its bound, so a step needs at most ``ceil(1 / fraction) + 2``.
    """
    return 16 * math.ceil(1.0 / fraction) + 256


def _guided_ig_move(x, x_input, x_base, grad, alpha, max_dist, fraction, max_iterations):
    """One Guided IG step for one image; returns ``(x_new, capped)``.

    Follows the published inner loop: repeat {pull lagging features up to ``x_min``; stop if the
    L1 distance to the input is close to the target; select the ``fraction`` of not-yet-bounded
    features with the smallest ``|grad|``; move them to ``x_max`` if that is not enough
    (gamma > 1), else by the fraction gamma of the way} until gamma <= 1.
    """
    dtype = x.dtype
    diff = x_input - x_base
    l1_total = jnp.abs(diff).sum()
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    x_min = x_base + diff * alpha_min
    # at alpha 1 the bound is the input itself (x_base + diff * 1 may differ from it by rounding)
    x_max = jnp.where(alpha_max >= 1.0, x_input, x_base + diff * alpha_max)
    l1_target = l1_total * (1.0 - alpha)
    nonzero = diff != 0
    safe_diff = jnp.where(nonzero, diff, 1.0)
    magnitude = jnp.abs(grad).reshape(-1)

    def cond(carry):
        _, gamma, stop, it = carry
        return (~stop) & (gamma > 1.0) & (it < max_iterations)

    def body(carry):
        x, _, _, it = carry
        x_alpha = jnp.where(nonzero, (x - x_base) / safe_diff, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.abs(x - x_input).sum()
        gap = jnp.abs(l1_target - l1_current)
        close = gap <= jnp.maximum(GUIDED_IG_EPSILON * jnp.maximum(jnp.abs(l1_target), jnp.abs(l1_current)),
                                   GUIDED_IG_EPSILON)
        bounded = (x == x_max).reshape(-1)
        ranked = jnp.where(bounded, jnp.inf, magnitude)
        threshold = jnp.quantile(ranked, fraction, method="lower")
        selected = ((ranked <= threshold) & ~bounded).reshape(x.shape)
        l1_selected = (jnp.abs(x - x_max) * selected).sum()
        # nothing left to move: x is a fixed point of the loop, which is where it ends
        stuck = l1_selected <= 0
        gamma = jnp.where(stuck, jnp.inf, (l1_current - l1_target) / jnp.where(stuck, 1.0, l1_selected))
        towards = x + (x_max - x) * jnp.clip(gamma, 0.0, 1.0)
        x_new = jnp.where(selected, jnp.where(gamma > 1.0, x_max, towards), x)
        stop = close | stuck
        return jnp.where(stop, x, x_new).astype(dtype), jnp.where(stop, 0.0, gamma), stop, it + 1

    start = (x, jnp.asarray(jnp.inf, dtype), jnp.array(False), jnp.int32(0))
    x_final, gamma, stop, it = jax.lax.while_loop(cond, body, start)
    capped = (~stop) & (gamma > 1.0) & (it >= max_iterations)
    return x_final, capped


def _raise_if_capped(capped, step, max_iterations):
    if bool(np.any(capped)):
        raise RuntimeError(
            f"Guided IG: the inner loop of step {int(step)} did not reach its L1 target within "
            f"{int(max_iterations)} iterations; the input may contain NaN/inf gradients")


def guided_ig_path(
    num_samples: int = 20,
    baseline="black",
    fraction: float = 0.25,
    max_dist: float = 0.02,
    mean=None,
    std=None,
) -> Modification:
    """Guided IG adaptive path (Kapishnikov et al. 2021), as PAIR-code/saliency ``guided_ig.py``.

    Starting at the baseline, step i (alpha = (i + 1) / n) takes the gradient at the current
    point and then repeatedly moves the ``fraction`` of not-yet-bounded features with the
    smallest gradient magnitude towards the input, until the L1 distance to the input equals
    ``(1 - alpha)`` of the total (the reference's tolerance, ``math.isclose`` with 1e-9);
    features stay within ``max_dist`` (in alpha) of the straight path. The step's signal is
    ``(x_new - x_old) * grad`` so the signals sum to the attribution (completeness, with the
    left-point error O(1/n) of the published algorithm).

    The computation is float32 (the reference: float64). Differences to the reference, both
    where it would fail: a loop with nothing left to move stops (the reference would spin), and
    a gamma below 0 from rounding moves nothing (the reference asserts). The inner loop is
    bounded by ``guided_ig_max_iterations(fraction)``; reaching it raises ``RuntimeError`` from
    inside the compiled program (a host callback), so ``gj.explain`` stays jit-able.

    Args:
      num_samples: n steps (gradients).
      baseline: see ``make_baseline``.
      fraction: share of features moved per inner iteration, in (0, 1].
      max_dist: largest deviation from the straight path, in alpha, in [0, 1] (0 is IG).
      mean, std: the model's input scaling (pixels in [0, 1]), needed by ``baseline="black"``.

    Raises:
      ValueError: an option outside its range (named, with the valid values), black without scaling.
    """
    _check_num_samples(num_samples)
    check_baseline(baseline)
    _check_black_scaling(baseline, mean, std)
    check_number(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    check_number(max_dist, "max_dist", low=0.0, high=1.0)
    max_iterations = guided_ig_max_iterations(fraction)

    def prepare(images, key):
        images = images.astype(jnp.float32)
        base = make_baseline(images, baseline, mean, std)
        return images, base, base

    def step(state, i, grad_fn):
        images, base, current = state
        grads = grad_fn(current)
        alpha = (i + 1.0) / num_samples
        move = jax.vmap(
            lambda x, xi, xb, g: _guided_ig_move(x, xi, xb, g, alpha, max_dist, fraction, max_iterations)
        )
        moved, capped = move(current, images, base, grads)
        any_capped = jnp.any(capped)
        jax.lax.cond(any_capped, lambda: jax.debug.callback(_raise_if_capped, any_capped, i, max_iterations),
                     lambda: None)
        return (images, base, moved), (moved - current) * grads

    return Modification(num_samples, prepare, None, step,
                        signature=_signature("guided_ig_path", num_samples, baseline, fraction, max_dist, mean, std))
