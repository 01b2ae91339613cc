"""Occlusion, RISE and XRAI against closed forms, brute-force numpy and properties."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from gag_jax import perturbation_methods as pm
from gag_jax import pixels

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def linear_model(w):
    w = jnp.asarray(w, jnp.float32)

    def model_fn(x):
        s = jnp.sum(x * w, axis=(1, 2, 3))
        return jnp.stack([s, -s, 0.5 * s], axis=-1)

    return model_fn


def black(x):
    return np.broadcast_to((0.0 - np.asarray(MEAN)) / np.asarray(STD), x.shape)


def brute_force_occlusion(x, base, w, window, stride, score):
    """Mean over the covering windows of s(x) - s(x occluded), windows placed as documented."""
    h, wd = x.shape[:2]
    ys = list(range(0, h - window[0] + 1, stride[0]))
    xs = list(range(0, wd - window[1] + 1, stride[1]))
    ys += [h - window[0]] if ys[-1] != h - window[0] else []
    xs += [wd - window[1]] if xs[-1] != wd - window[1] else []
    total, count = np.zeros((h, wd)), np.zeros((h, wd))
    for y in ys:
        for x0 in xs:
            occluded = x.copy()
            occluded[y:y + window[0], x0:x0 + window[1]] = base[y:y + window[0], x0:x0 + window[1]]
            total[y:y + window[0], x0:x0 + window[1]] += score(x, w) - score(occluded, w)
            count[y:y + window[0], x0:x0 + window[1]] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def test_occlusion_of_linear_model_is_the_window_sum_of_w_times_x_minus_baseline():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 16, 3))
    x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    got = np.asarray(pm.occlusion(linear_model(w), jnp.asarray(x), jnp.array([0, 1]), window=4, stride=4,
                                  mean=MEAN, std=STD, chunk_size=5))
    assert got.shape == (2, 16, 16, 1)
    for b, sign in ((0, 1.0), (1, -1.0)):
        contrib = (w * (x[b] - black(x[b]))).sum(-1)  # (H, W)
        per_window = contrib.reshape(4, 4, 4, 4).sum(axis=(1, 3))  # closed form: sum over each 4x4 window
        expected = sign * np.kron(per_window, np.ones((4, 4)))
        np.testing.assert_allclose(got[b, ..., 0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window,stride,output", [((5, 3), (2, 2), "logit"), (6, 4, "prob"), (3, 5, "logit")])
def test_occlusion_matches_brute_force(window, stride, output):
    rng = np.random.default_rng(1)
    w = 0.1 * rng.normal(size=(12, 11, 3))
    x = rng.normal(size=(1, 12, 11, 3)).astype(np.float32)

    def score(img, w):
        s = float((img * w).sum())
        logits = np.array([s, -s, 0.5 * s])
        return logits[0] if output == "logit" else np.exp(logits[0]) / np.exp(logits).sum()

    got = np.asarray(pm.occlusion(linear_model(w), jnp.asarray(x), jnp.array([0]), window=window, stride=stride,
                                  output=output, mean=MEAN, std=STD, chunk_size=4))
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    expected = brute_force_occlusion(x[0].astype(np.float64), black(x[0]), w, pair(window), pair(stride), score)
    np.testing.assert_allclose(got[0, ..., 0], expected, rtol=1e-4, atol=1e-5)


def test_occlusion_chunking_does_not_change_the_map():
    w = np.random.default_rng(2).normal(size=(10, 10, 3))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 10, 10, 3)), jnp.float32)
    run = lambda c: pm.occlusion(linear_model(w), x, jnp.array([0, 2]), window=3, stride=2, chunk_size=c,  # noqa: E731
                                 mean=MEAN, std=STD)
    np.testing.assert_allclose(run(3), run(None), rtol=1e-5, atol=1e-5)


def test_baselines_are_the_metrics_ones():  # gag_jax.pixels.baseline serves occlusion, RISE and RCAP
    x = np.random.default_rng(4).normal(size=(1, 20, 18, 3)).astype(np.float32)
    pix = x[0] * np.asarray(STD) + np.asarray(MEAN)
    blur = np.asarray(pixels.baseline(jnp.asarray(x), "blur", MEAN, STD))[0]
    expected = ndimage.gaussian_filter(pix, [16, 16, 0], mode="mirror", radius=16)
    np.testing.assert_allclose(blur * np.asarray(STD) + np.asarray(MEAN), expected, atol=1e-5)
    mean = np.asarray(pixels.baseline(jnp.asarray(x), "mean", MEAN, STD))[0]
    np.testing.assert_allclose(mean * np.asarray(STD) + np.asarray(MEAN), np.broadcast_to(pix.mean((0, 1)), pix.shape),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(pixels.baseline(jnp.asarray(x), "black", MEAN, STD))[0],
                               black(x[0]), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# RISE


def region_model(region):
    """Class-0 logit grows with the mean of the input inside ``region`` only."""
    mask = jnp.zeros((32, 32, 1)).at[region].set(1.0)

    def model_fn(x):
        inside = jnp.sum(x * mask, axis=(1, 2, 3)) / (3 * mask.sum())
        return jnp.stack([8.0 * inside - 4.0, jnp.zeros_like(inside)], axis=-1)

    return model_fn


def test_rise_concentrates_on_the_region_the_model_sees():
    region = (slice(4, 12), slice(18, 28))
    x = jnp.ones((1, 32, 32, 3))
    sal = np.asarray(pm.rise(region_model(region), x, jnp.array([0]), jax.random.PRNGKey(0), n=256, cells=4,
                             baseline="black", mean=(0, 0, 0), std=(1, 1, 1), chunk_size=64))[0, ..., 0]
    inside = np.zeros((32, 32), bool)
    inside[region] = True
    # outside the region the map is about E[p] (~0.5); inside it is E[p | pixel kept]
    assert sal[inside].mean() > sal[~inside].mean() + 0.1
    peak = np.unravel_index(np.argmax(ndimage.uniform_filter(sal, 5)), sal.shape)
    assert inside[peak]


def test_rise_of_a_constant_model_is_its_probability():
    x = jnp.ones((2, 16, 16, 3))
    const = lambda z: jnp.tile(jnp.array([[1.0, 0.0]]), (z.shape[0], 1))  # noqa: E731  p0 = e / (e + 1)
    sal = np.asarray(pm.rise(const, x, jnp.array([0, 1]), jax.random.PRNGKey(1), n=200, cells=4, p_keep=0.4,
                             chunk_size=50))
    p0 = np.e / (np.e + 1)
    np.testing.assert_allclose(sal[0].mean(), p0, rtol=0.05)  # E[M] = p_keep
    np.testing.assert_allclose(sal[1].mean(), 1 - p0, rtol=0.05)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_rise_masks_and_chunking():
    masks = np.asarray(pm.rise_masks(jax.random.PRNGKey(2), jnp.arange(300), (20, 15), cells=5, p_keep=0.3))
    assert masks.shape == (300, 20, 15) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.3) < 0.03
    model = region_model((slice(0, 8), slice(0, 8)))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32, 32, 3)), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)  # per-image keys
    run = lambda c: pm.rise(model, x, jnp.array([0, 1]), keys, n=24, cells=4, chunk_size=c)  # noqa: E731
    both = run(5)
    np.testing.assert_allclose(both, run(None), rtol=1e-5, atol=1e-6)  # chunking does not change the map
    alone = pm.rise(model, x[1:], jnp.array([1]), keys[1:], n=24, cells=4, chunk_size=5)
    np.testing.assert_allclose(both[1:], alone, rtol=1e-5, atol=1e-6)  # nor does the rest of the batch


@pytest.mark.parametrize("fn,kwargs,match", [
    (pm.occlusion, {"window": 0}, "window must be a positive"),
    (pm.occlusion, {"window": 40}, "larger than the image side"),
    (pm.occlusion, {"stride": (2, 0)}, "stride must be a positive"),
    (pm.occlusion, {"baseline": "grey"}, "baseline 'grey'.*'black', 'blur', 'mean'"),
    (pm.occlusion, {"output": "softmax"}, "output 'softmax'.*'logit', 'prob'"),
    (pm.rise, {"p_keep": 0.0}, "p_keep must be a finite number > 0"),
    (pm.rise, {"n": 0}, "n must be a positive integer"),
    (pm.rise, {"cells": 64}, "cells .* must not exceed"),
    (pm.rise, {"chunk_size": 0}, "chunk_size must be a positive integer"),
])
def test_options_are_checked(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(linear_model(np.ones((32, 32, 3))), jnp.ones((1, 32, 32, 3)), jnp.array([0]), jax.random.PRNGKey(0),
           **kwargs)


# ---------------------------------------------------------------------------------------------
# XRAI


def test_xrai_first_region_has_the_largest_attribution_density():
    attr = np.zeros((12, 12))
    attr[:6, :6] = 1.0  # segment A: density 1, sum 36
    attr[6:, :] = 0.5  # segment C: density 0.5, sum 36
    masks = np.zeros((3, 12, 12), bool)
    masks[0, :6, :6] = True
    masks[1, :6, 6:] = True
    masks[2, 6:, :] = True
    attr[:6, 6:] = -0.2
    out, regions = pm.xrai_regions(attr, masks, min_pixel_diff=1)
    np.testing.assert_array_equal(regions[0], masks[0])
    np.testing.assert_array_equal(regions[1], masks[2])
    np.testing.assert_allclose(out[0, 0], 1.0)
    np.testing.assert_allclose(out[11, 11], 0.5)
    np.testing.assert_allclose(out[0, 11], -0.2)


def test_xrai_first_region_is_the_segment_with_the_largest_attribution_sum_among_equal_segments():
    rng = np.random.default_rng(6)
    attr = rng.normal(size=(16, 16))
    labels = np.arange(16).reshape(4, 4).repeat(4, 0).repeat(4, 1)  # sixteen 4x4 segments
    masks = np.stack([labels == k for k in range(16)])
    _, regions = pm.xrai_regions(attr, masks, min_pixel_diff=1)
    sums = [attr[m].sum() for m in masks]
    np.testing.assert_array_equal(regions[0], masks[int(np.argmax(sums))])
    assert len(regions) == 16


def test_xrai_overlapping_masks_rank_by_the_gain_of_new_pixels_and_skip_small_additions():
    attr = np.zeros((10, 10))
    attr[:, :5] = 1.0
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :, :5] = True
    masks[1, :, :6] = True  # adds one column (10 px) after mask 0: below min_pixel_diff = 20
    masks[2, :, 5:] = True
    out, regions = pm.xrai_regions(attr, masks, min_pixel_diff=20)
    assert len(regions) == 2
    np.testing.assert_array_equal(regions[0], masks[0])
    np.testing.assert_allclose(out[:, 5:], 0.0)


def test_xrai_end_to_end_on_a_small_image():
    pytest.importorskip("skimage")
    rng = np.random.default_rng(7)
    x = np.full((1, 32, 32, 3), -1.0, np.float32)
    x[0, 8:20, 10:26] = 1.5  # a bright block on a dark ground
    x += 0.05 * rng.normal(size=x.shape).astype(np.float32)
    w = np.zeros((32, 32, 3))
    w[8:20, 10:26] = 1.0  # the model looks only at the block
    import gag_jax as gj

    base = gj.explainer_fn("ig", postprocess=False, n=4, baseline="zero")  # the base attribution function
    got = np.asarray(pm.xrai(linear_model(w), jnp.asarray(x), jnp.array([0]), base=base, scales=(20, 50),
                             min_size=20, segment_size=None, dilation=0, min_pixel_diff=10, mean=(0, 0, 0),
                             std=(1, 1, 1)))
    via_explain = gj.explain("xrai", linear_model(w), jnp.asarray(x), jnp.array([0]), postprocess=False,
                             base_options={"n": 4, "baseline": "zero"}, scales=(20, 50), min_size=20,
                             segment_size=None, dilation=0, min_pixel_diff=10, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(via_explain, got, rtol=1e-6)
    with pytest.raises(ValueError, match="attribution function"):
        pm.xrai(linear_model(w), jnp.asarray(x), jnp.array([0]), base="ig", mean=(0, 0, 0), std=(1, 1, 1))
    assert got.shape == (1, 32, 32, 1)
    block = np.zeros((32, 32), bool)
    block[8:20, 10:26] = True
    assert got[0, ..., 0][block].mean() > got[0, ..., 0][~block].max()


# ---------------------------------------------------------------------------------------------
# through gj.explain


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_explain_runs_the_perturbation_methods():
    import gag_jax as gj

    rng = np.random.default_rng(8)
    w = rng.normal(size=(16, 16, 3))
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    labels = jnp.array([0, 1])
    # black (occlusion's default baseline) needs the input scaling: gj.explain reads it from the model
    model = gj.ModelFunctions(linear_model(w), mean=MEAN, std=STD)
    maps = gj.explain("occlusion", model, x, labels, window=4, stride=2)
    raw = pm.occlusion(linear_model(w), x, labels, window=4, stride=2, mean=MEAN, std=STD)[..., 0]
    low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (raw - low) / (high - low), atol=1e-5)  # signed map, min-max scaled
    with pytest.raises(ValueError, match="key"):
        gj.explain("rise", model, x, labels, n=4, cells=4)
    assert gj.explain("rise", model, x, labels, key=jax.random.PRNGKey(0), n=4, cells=4).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="unknown option"):
        gj.explain("occlusion", model, x, labels, n=4)
    for name in ("occlusion", "rise", "xrai"):
        assert name in gj.PRESETS and gj.DEFAULTS[name]["reduce"] == "sum"
    pytest.importorskip("skimage")
    out = gj.explain("xrai", model, x, labels, base_options={"n": 2}, scales=(50,), segment_size=None,
                     min_size=10, dilation=1, min_pixel_diff=5)
    assert out.shape == (2, 16, 16) and float(out.min()) == 0.0 and float(out.max()) == 1.0
