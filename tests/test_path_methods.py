"""Integration paths against independent numpy/scipy references of the published algorithms.

BlurIG: Xu et al. 2020 (reference: PAIR-code/saliency ``blur_ig.py``, blur by
``scipy.ndimage.gaussian_filter(mode="constant")``). Guided IG: Kapishnikov et al. 2021 (reference:
PAIR-code/saliency ``guided_ig.py``), re-implemented below in float64 numpy. IG's ``linspace``
rule: the reference ``integrated_gradients.py`` grid. Models are analytic, so the references
need no autodiff.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import gag_jax as gj
from gag_jax import aggregations, gradients, interpretations, modifications, ops

SIZE = 16
blur_jit = jax.jit(ops.gaussian_blur, static_argnames=("sigma", "radius", "mode"))


def quadratic_model(size=SIZE, seed=0):
    """Logits ``[f, -f]`` with ``f(x) = sum(a x + b x^2 / 2)``; returns (model_fn, numpy gradient of f)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(size, size, 3))
    b = rng.normal(size=(size, size, 3))
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def model_fn(x):
        f = jnp.sum(a32 * x + 0.5 * b32 * x * x, axis=(1, 2, 3))
        return jnp.stack([f, -f], axis=-1)

    return model_fn, lambda x: a + b * x


def raw_attribution(modification, model_fn, images, labels):
    explainer = gj.chain(modification, gradients.logit_gradient(), interpretations.by_name("raw"),
                         aggregations.total())
    return np.asarray(jax.jit(explainer, static_argnums=0)(model_fn, images, labels, jax.random.PRNGKey(0)))


# ---------------------------------------------------------------------------------------------
# the blur


@pytest.mark.parametrize("sigma", [0.3, 1.7, 4.0, 9.5])
def test_constant_blur_matches_scipy_gaussian_filter(sigma):
    img = np.random.default_rng(1).normal(size=(2, 13, 11, 3)).astype(np.float32)
    got = np.asarray(blur_jit(jnp.asarray(img), sigma=sigma, mode="constant"))
    for b in range(2):  # sigma 9.5: radius 38, wider than the image
        expected = ndimage.gaussian_filter(img[b].astype(np.float64), [sigma, sigma, 0], mode="constant")
        np.testing.assert_allclose(got[b], expected, atol=2e-6)


@pytest.mark.parametrize("mode,scipy_mode", [("symmetric", "reflect"), ("reflect", "mirror"), ("constant", "constant")])
def test_fixed_radius_blur_matches_scipy(mode, scipy_mode):
    img = np.random.default_rng(2).normal(size=(1, 9, 7, 2)).astype(np.float32)
    got = np.asarray(blur_jit(jnp.asarray(img), sigma=2.3, radius=5, mode=mode))
    expected = ndimage.gaussian_filter(img[0].astype(np.float64), [2.3, 2.3, 0], mode=scipy_mode, radius=5)
    np.testing.assert_allclose(got[0], expected, atol=2e-6)


def test_traced_sigma_and_radius_give_the_static_blur():
    img = jnp.asarray(np.random.default_rng(3).normal(size=(1, 12, 12, 3)), jnp.float32)
    blur = jax.jit(lambda s, r: ops.gaussian_blur(img, s, r, "constant", max_radius=30))
    for sigma in (0.0, 0.01, 2.5, 7.0):
        expected = ndimage.gaussian_filter(np.asarray(img[0], np.float64), [sigma, sigma, 0], mode="constant")
        np.testing.assert_allclose(blur(sigma, ops.gaussian_radius(sigma))[0], expected, atol=2e-6)
    np.testing.assert_allclose(blur(0.0, 0), img, atol=0)


def test_blur_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode 'wrap'.*constant"):
        ops.gaussian_blur(jnp.zeros((1, 4, 4, 1)), 1.0, 2, "wrap")


# ---------------------------------------------------------------------------------------------
# BlurIG


def reference_blur_ig(x, grad_fn, max_sigma, steps, grad_step, sqrt):
    """The published BlurIG for one (H, W, C) float64 image, written from the paper's reference code."""
    if sqrt:
        sigmas = [math.sqrt(float(i) * max_sigma / float(steps)) for i in range(steps + 1)]
    else:
        sigmas = [float(i) * max_sigma / float(steps) for i in range(steps + 1)]

    def blur(image, sigma):
        return image if sigma == 0 else ndimage.gaussian_filter(image, [sigma, sigma, 0], mode="constant")

    total = np.zeros_like(x)
    for i in range(steps):
        x_step = blur(x, sigmas[i])
        derivative = (blur(x, sigmas[i] + grad_step) - x_step) / grad_step
        total += (sigmas[i + 1] - sigmas[i]) * derivative * grad_fn(x_step)
    return -total


@pytest.mark.parametrize("max_sigma,n,sqrt", [(50.0, 8, False), (6.0, 7, True), (3.0, 5, False)])
def test_blur_ig_matches_published_reference(max_sigma, n, sqrt):
    model_fn, grad_np = quadratic_model()
    x = np.random.default_rng(4).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    got = raw_attribution(modifications.blur_path(n, max_sigma, 0.01, sqrt), model_fn, jnp.asarray(x),
                          jnp.array([0, 0]))
    for b in range(2):
        expected = reference_blur_ig(x[b].astype(np.float64), grad_np, max_sigma, n, 0.01, sqrt)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got[b], expected, atol=1e-5 * scale, rtol=1e-5)


def test_blur_ig_default_through_explain_is_the_published_path():
    model_fn, grad_np = quadratic_model()
    x = np.random.default_rng(5).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    got = np.asarray(gj.explain("blur_ig", model_fn, jnp.asarray(x), jnp.array([0]), postprocess=False, n=6))
    expected = reference_blur_ig(x[0].astype(np.float64), grad_np, 50.0, 6, 0.01, False)
    np.testing.assert_allclose(got[0], expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)


def test_blur_ig_fixed_radius_reflect_option_is_the_old_path():
    model_fn, grad_np = quadratic_model()
    x = np.random.default_rng(6).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    got = raw_attribution(modifications.blur_path(4, 3.0, 0.01, mode="symmetric", radius=13), model_fn,
                          jnp.asarray(x), jnp.array([0]))
    sigmas = np.arange(5) * 3.0 / 4

    def blur(img, s):
        return img if s == 0 else ndimage.gaussian_filter(img, [s, s, 0], mode="reflect", radius=13)

    xs = x[0].astype(np.float64)
    expected = -sum((sigmas[i + 1] - sigmas[i]) * (blur(xs, sigmas[i] + 0.01) - blur(xs, sigmas[i])) / 0.01
                    * grad_np(blur(xs, sigmas[i])) for i in range(4))
    np.testing.assert_allclose(got[0], expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Guided IG


def reference_guided_ig(x_input, x_base, grad_fn, steps, fraction, max_dist):
    """The published Guided IG for one float64 input (an independent port of the reference algorithm)."""
    x = x_base.copy()
    diff = x_input - x_base
    l1_total = np.abs(diff).sum()
    attr = np.zeros_like(x)
    for step in range(steps):
        grad = grad_fn(x)
        alpha = (step + 1.0) / steps
        alpha_min, alpha_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_min, x_max = x_base + diff * alpha_min, x_base + diff * alpha_max
        l1_target = l1_total * (1 - alpha)
        gamma = np.inf
        while gamma > 1.0:
            x_old = x.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                x_alpha = np.where(diff != 0, (x - x_base) / diff, alpha_max)
            lagging = x_alpha < alpha_min
            x[lagging] = x_min[lagging]
            l1_current = np.abs(x - x_input).sum()
            if math.isclose(l1_target, l1_current, rel_tol=1e-9, abs_tol=1e-9):
                attr += (x - x_old) * grad
                break
            magnitude = np.abs(grad)
            magnitude[x == x_max] = np.inf
            threshold = np.quantile(magnitude, fraction, method="lower")
            selected = (magnitude <= threshold) & np.isfinite(magnitude)
            l1_selected = (np.abs(x - x_max) * selected).sum()
            gamma = (l1_current - l1_target) / l1_selected if l1_selected > 0 else np.inf
            if gamma > 1.0:
                x[selected] = x_max[selected]
            else:
                assert gamma > 0
                x[selected] = x[selected] + (x_max[selected] - x[selected]) * gamma
            attr += (x - x_old) * grad
    return attr


@pytest.mark.parametrize("n,fraction,max_dist,baseline", [
    (8, 0.25, 0.02, "zero"), (5, 0.1, 0.1, "black"), (6, 0.5, 0.0, "zero"), (4, 1.0, 1.0, "zero"),
])
def test_guided_ig_matches_published_reference(n, fraction, max_dist, baseline):
    model_fn, grad_np = quadratic_model()
    x = np.random.default_rng(7).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    # "black" is zero in pixel space: it needs the model's input scaling (here ImageNet's, given explicitly)
    scaling = {"mean": gj.IMAGENET_MEAN, "std": gj.IMAGENET_STD} if baseline == "black" else {}
    got = raw_attribution(modifications.guided_ig_path(n, baseline, fraction, max_dist, **scaling), model_fn,
                          jnp.asarray(x), jnp.array([0, 0]))
    if baseline == "black":  # the reference's baseline, in numpy: pixel 0 standardised with the same mean/std
        pixel_black = -np.asarray(gj.IMAGENET_MEAN, np.float64) / np.asarray(gj.IMAGENET_STD, np.float64)
        base = np.broadcast_to(pixel_black, x.shape)
    else:
        base = np.zeros(x.shape, np.float64)
    for b in range(2):
        expected = reference_guided_ig(x[b].astype(np.float64), base[b], grad_np, n, fraction, max_dist)
        np.testing.assert_allclose(got[b], expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)


def test_guided_ig_input_equal_to_baseline_gives_zero():
    model_fn, _ = quadratic_model()
    got = raw_attribution(modifications.guided_ig_path(4, "zero"), model_fn, jnp.zeros((1, SIZE, SIZE, 3)),
                          jnp.array([0]))
    np.testing.assert_array_equal(got, 0.0)


def test_guided_ig_inner_loop_cap_raises(monkeypatch):
    monkeypatch.setattr(modifications, "guided_ig_max_iterations", lambda fraction: 1)
    model_fn, _ = quadratic_model()
    x = jnp.asarray(np.random.default_rng(8).normal(size=(1, SIZE, SIZE, 3)), jnp.float32)
    with pytest.raises(Exception, match="did not reach its L1 target within 1 iterations"):
        raw_attribution(modifications.guided_ig_path(3, "zero", 0.25), model_fn, x, jnp.array([0]))


# ---------------------------------------------------------------------------------------------
# IG's linspace rule


def test_ig_linspace_rule_is_the_reference_grid_and_mean():
    model_fn, grad_np = quadratic_model()
    x = np.random.default_rng(9).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    got = np.asarray(gj.explain("ig", model_fn, jnp.asarray(x), jnp.array([0]), postprocess=False, n=7,
                                rule="linspace", baseline="zero"))
    xs = x[0].astype(np.float64)
    expected = sum(grad_np(a * xs) for a in np.linspace(0, 1, 7)) * xs / 7
    np.testing.assert_allclose(got[0], expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# option checks live in the factories


@pytest.mark.parametrize("factory,kwargs,match", [
    (modifications.gaussian_noise, {"num_samples": 0}, "n must be a positive integer"),
    (modifications.gaussian_noise, {"num_samples": 2.0}, "n must be a positive integer"),
    (modifications.gaussian_noise, {"noise_level": -0.1}, "noise_level must be a finite number >= 0"),
    (modifications.gaussian_noise, {"noise_level": float("nan")}, "noise_level must be a finite number"),
    (modifications.gaussian_noise, {"noise_range": "pixel"}, "noise_range 'pixel'.*'image', 'batch'"),
    (modifications.straight_path, {"rule": "simpson"}, "rule 'simpson'.*'linspace'"),
    (modifications.straight_path, {"baseline": "grey"}, "baseline.*'black', 'zero', 'min', 'max'"),
    (modifications.straight_path, {"num_samples": -1}, "n must be a positive integer"),
    (modifications.straight_path, {"num_samples": 1, "rule": "trapezoid"}, "trapezoid rule needs n >= 2"),
    (modifications.guided_ig_path, {"fraction": 0.0}, r"fraction must be a finite number > 0.0 and <= 1.0"),
    (modifications.guided_ig_path, {"fraction": 1.5}, "fraction must be"),
    (modifications.guided_ig_path, {"max_dist": -0.1}, r"max_dist must be a finite number >= 0.0 and <= 1.0"),
    (modifications.guided_ig_path, {"baseline": None}, "baseline must be one of"),
    (modifications.blur_path, {"max_sigma": 0}, "max_sigma must be a finite number > 0"),
    (modifications.blur_path, {"grad_step": -0.01}, "grad_step must be a finite number > 0"),
    (modifications.blur_path, {"sqrt": "yes"}, "sqrt must be True or False"),
    (modifications.blur_path, {"mode": "wrap"}, "mode 'wrap'.*'constant'"),
    (modifications.blur_path, {"radius": -2}, "radius must be None"),
])
def test_factories_name_the_bad_option(factory, kwargs, match):
    if factory in (modifications.straight_path, modifications.guided_ig_path):
        # their default baseline "black" needs the input scaling: give it, so the bad option is what fails
        kwargs = {"mean": gj.IMAGENET_MEAN, "std": gj.IMAGENET_STD, **kwargs}
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)
