"""gag_jax.metrics against deliberately simple numpy implementations written here.

The references work one image at a time with explicit loops, ``np.percentile`` / ``np.quantile``
and a Gaussian blur done with an explicit numpy kernel; only the model itself (a tiny Flax conv
net) is shared, and the reference calls it on one perturbed image at a time.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
import gag_jax.metrics as gm

MEAN = np.array(gm.IMAGENET_MEAN)
STD = np.array(gm.IMAGENET_STD)
B, H, W, K = 4, 24, 24, 5
TOL = 1e-5


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(K)(x) * 4.0


@functools.lru_cache(maxsize=None)
def _model():
    net = TinyNet()
    variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, 3)))
    return jax.jit(functools.partial(net.apply, variables))


def _scaled_model():
    """The same model as a ``gj.ModelFunctions`` that carries its input scaling (RCAP's black baseline needs it)."""
    return gj.ModelFunctions(_model(), mean=gm.IMAGENET_MEAN, std=gm.IMAGENET_STD)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    pix = rng.uniform(0, 1, (B, H, W, 3))
    pix[:, 6:18, 6:18, :] = np.clip(pix[:, 6:18, 6:18, :] + 0.5, 0, 1)  # a bright "object"
    images = ((pix - MEAN) / STD).astype(np.float32)
    labels = rng.integers(0, K, B).astype(np.int32)
    return images, labels


def _saliency_maps(kind, seed=1):
    rng = np.random.default_rng(seed)
    if kind == "random":
        s = rng.uniform(0, 1, (B, H, W))
    elif kind == "quantized":  # heavy ties: 5 levels
        s = np.round(rng.uniform(0, 1, (B, H, W)) * 4) / 4
    elif kind == "plateau":  # object-only map, zero elsewhere (more than half the pixels tie at 0)
        s = np.zeros((B, H, W))
        s[:, 8:16, 8:16] = rng.uniform(0.2, 1, (B, 8, 8))
    elif kind == "blob":  # smooth Gaussian blobs at different places
        yy, xx = np.mgrid[0:H, 0:W]
        s = np.stack([np.exp(-((yy - 5 - 4 * i) ** 2 + (xx - 12) ** 2) / (2 * 4.0 ** 2)) for i in range(B)])
    else:
        raise AssertionError(kind)
    return s.astype(np.float32)


MAP_KINDS = ["random", "quantized", "plateau", "blob"]


# ------------------------------------------------------------------- numpy references

def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_prob(model_fn, image, label):
    logits = np.asarray(model_fn(jnp.asarray(image[None], jnp.float32)))[0]
    return np_softmax(logits)[label]


def ref_blur(img, kernel_size=33, sigma=16.0):
    """Separable Gaussian blur with an explicit kernel and numpy reflect padding."""
    half = kernel_size // 2
    xs = np.arange(-half, half + 1, dtype=np.float64)
    w = np.exp(-0.5 * (xs / sigma) ** 2)
    w /= w.sum()
    img = np.asarray(img, np.float64)
    h, wd, c = img.shape
    pad = np.pad(img, ((half, half), (0, 0), (0, 0)), mode="reflect")
    tmp = np.zeros_like(img)
    for i in range(h):
        for t in range(kernel_size):
            tmp[i] += w[t] * pad[i + t]
    pad = np.pad(tmp, ((0, 0), (half, half), (0, 0)), mode="reflect")
    out = np.zeros_like(img)
    for j in range(wd):
        for t in range(kernel_size):
            out[:, j] += w[t] * pad[:, j + t]
    return out


def ref_rcap(model_fn, images, labels, sal, lower_bound=50, interval=10, baseline="black"):
    j = int((100 - lower_bound) / interval)
    out_r, out_ratio, out_prob = [], [], []
    for i in range(images.shape[0]):
        x = images[i].astype(np.float64)
        m = sal[i].astype(np.float64)
        pix = x * STD + MEAN
        if baseline == "black":
            base = np.zeros_like(pix)
        elif baseline == "blur":
            base = ref_blur(pix)
        else:
            base = np.broadcast_to(pix.mean(axis=(0, 1)), pix.shape)
        ratios, probs = [], []
        for k in range(1, j + 1):
            q = np.percentile(m, 100 - k * interval)
            mask = m >= q
            rec = np.where(mask[..., None], pix, base)
            rec = (rec - MEAN) / STD
            ratios.append(m[mask].sum() / m.sum() if m.sum() > 0 else 1.0)
            probs.append(ref_prob(model_fn, rec, labels[i]))
        ratios, probs = np.array(ratios), np.array(probs)
        out_ratio.append(ratios)
        out_prob.append(probs)
        out_r.append(np.mean(ratios * probs))
    return np.array(out_r), np.array(out_ratio), np.array(out_prob)


def ref_deletion_insertion(model_fn, images, labels, sal, fractions):
    dcs, ics = [], []
    for i in range(images.shape[0]):
        x = images[i].astype(np.float64)
        m = sal[i].astype(np.float64)
        blurred = ref_blur(x)
        dc, ic = [], []
        for f in fractions:
            q = np.quantile(m, 1 - f)
            mask = (m > q)[..., None]
            dc.append(ref_prob(model_fn, np.where(mask, 0.0, x), labels[i]))
            ic.append(ref_prob(model_fn, np.where(mask, x, blurred), labels[i]))
        dcs.append(dc)
        ics.append(ic)
    dcs, ics = np.array(dcs), np.array(ics)
    fr = np.asarray(fractions)

    def trap(y):
        return sum((fr[t + 1] - fr[t]) * (y[t] + y[t + 1]) / 2 for t in range(len(fr) - 1))

    return np.array([trap(c) for c in dcs]), np.array([trap(c) for c in ics]), dcs, ics


# ------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", MAP_KINDS)
def test_rcap_matches_numpy_reference(kind):
    model = _model()
    images, labels = _data()
    sal = _saliency_maps(kind)
    out = gm.rcap(model, images, labels, sal, mean=gm.IMAGENET_MEAN, std=gm.IMAGENET_STD)
    r, ratios, probs = ref_rcap(model, images, labels, sal)
    np.testing.assert_allclose(out["ratios"], ratios, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["probs"], probs, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["rcap"], r, atol=TOL, rtol=0)
    np.testing.assert_array_equal(out["percentiles"], [90, 80, 70, 60, 50])
    thr = np.array([[np.percentile(sal[i].astype(np.float64), p) for p in (90, 80, 70, 60, 50)]
                    for i in range(B)])
    np.testing.assert_allclose(out["thresholds"], thr, atol=1e-6, rtol=0)
    # the model's prediction really changes across the partitions (the test is not vacuous)
    assert np.ptp(probs) > 1e-2


@pytest.mark.parametrize("baseline", ["blur", "mean"])
def test_rcap_other_baselines_match_reference(baseline):
    model = _model()
    images, labels = _data(3)
    sal = _saliency_maps("random", 4)
    out = gm.rcap(model, images, labels, sal, baseline=baseline)
    r, ratios, probs = ref_rcap(model, images, labels, sal, baseline=baseline)
    np.testing.assert_allclose(out["probs"], probs, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["rcap"], r, atol=TOL, rtol=0)


def test_rcap_other_partition_matches_reference():
    model = _model()
    images, labels = _data(5)
    sal = _saliency_maps("quantized", 6)
    out = gm.rcap(_scaled_model(), images, labels, sal, lower_bound=20, interval=20)  # scaling from the model
    r, ratios, probs = ref_rcap(model, images, labels, sal, lower_bound=20, interval=20)
    assert out["ratios"].shape == (B, 4)
    np.testing.assert_array_equal(out["percentiles"], [80, 60, 40, 20])
    np.testing.assert_allclose(out["ratios"], ratios, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["rcap"], r, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", ["random", "quantized", "plateau"])
def test_deletion_insertion_matches_numpy_reference(kind):
    model = _model()
    images, labels = _data(7)
    sal = _saliency_maps(kind, 8)
    fractions = [i / 10 for i in range(10)]
    out = gm.deletion_insertion(model, images, labels, sal)
    dauc, iauc, dcs, ics = ref_deletion_insertion(model, images, labels, sal, fractions)
    np.testing.assert_allclose(out["fractions"], fractions, atol=1e-7)
    np.testing.assert_allclose(out["deletion_curve"], dcs, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["insertion_curve"], ics, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["dauc"], dauc, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["iauc"], iauc, atol=TOL, rtol=0)
    # f = 0: nothing deleted -> the original image; nothing inserted -> the blurred image
    orig = np.array([ref_prob(model, images[i], labels[i]) for i in range(B)])
    np.testing.assert_allclose(out["deletion_curve"][:, 0], orig, atol=TOL)
    assert np.ptp(dcs) > 1e-2 and np.ptp(ics) > 1e-2


def test_deletion_insertion_full_curve_fractions():
    model = _model()
    images, labels = _data(9)
    sal = _saliency_maps("blob")
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    out = gm.deletion_insertion(model, images, labels, sal, fractions=fractions)
    dauc, iauc, dcs, ics = ref_deletion_insertion(model, images, labels, sal, fractions)
    np.testing.assert_allclose(out["dauc"], dauc, atol=TOL, rtol=0)
    np.testing.assert_allclose(out["iauc"], iauc, atol=TOL, rtol=0)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_blur_matches_explicit_kernel_including_large_padding():
    # a kernel wider than the image exercises repeated reflection (numpy semantics)
    from gag_jax.metrics._common import gaussian_blur
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 12, 9, 3)).astype(np.float32)
    got = np.asarray(gaussian_blur(jnp.asarray(img), 33, 16.0))
    for i in range(2):
        np.testing.assert_allclose(got[i], ref_blur(img[i]), atol=1e-5)
    got = np.asarray(gaussian_blur(jnp.asarray(img), 5, 1.5))
    np.testing.assert_allclose(got[0], ref_blur(img[0], 5, 1.5), atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "blob"])
def test_segmentation_metrics_match_reference(kind):
    sal = _saliency_maps(kind, 11)
    rng = np.random.default_rng(12)
    masks = (rng.uniform(size=(B, H, W)) > 0.6).astype(np.float32)
    lcd, m, ms = [], [], []
    for i in range(B):
        s, g = sal[i].astype(np.float64).ravel(), masks[i].astype(np.float64).ravel()
        dice = (2 * np.sum(s * g) + 1.0) / (np.sum(s) + np.sum(g) + 1.0)
        x = 1 - dice
        lcd.append(np.log((np.exp(x) + np.exp(-x)) / 2.0))
        m.append(np.mean(np.abs(s - g)))
        ms.append(np.sqrt(np.mean(np.abs(s - g))))
    np.testing.assert_allclose(gm.log_cosh_dice(sal, masks), lcd, atol=TOL, rtol=0)
    np.testing.assert_allclose(gm.log_cosh_dice(sal, masks.astype(bool)), lcd, atol=TOL, rtol=0)
    np.testing.assert_allclose(gm.mae(sal, masks), m, atol=TOL, rtol=0)
    np.testing.assert_allclose(gm.mae(sal, masks, sqrt=True), ms, atol=TOL, rtol=0)
    # perfect map: dice = sum(G)*2+1 / (2 sum(G)+1) = 1 -> loss 0, MAE 0
    np.testing.assert_allclose(gm.log_cosh_dice(masks, masks), 0.0, atol=1e-7)
    np.testing.assert_allclose(gm.mae(masks, masks), 0.0, atol=1e-7)


def test_select_confident_matches_reference():
    model = _model()
    images, labels = _data(13)
    probs = np.array([ref_prob(model, images[i], labels[i]) for i in range(B)])
    thr = float(np.median(probs))
    got = np.asarray(gm.select_confident(model, images, labels, threshold=thr))
    np.testing.assert_array_equal(got, probs > thr)
    assert got.dtype == bool and got.shape == (B,)
    np.testing.assert_allclose(gm.target_probs(model, images, labels), probs, atol=TOL)
    np.testing.assert_array_equal(gm.select_confident(model, images, labels, threshold=thr, batch_size=3),
                                  got)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_chunked_equals_one_call(batch_size):
    model = _model()
    images, labels = _data(14)
    sal = _saliency_maps("random", 15)
    one = gm.rcap(_scaled_model(), images, labels, sal, copies_per_call=None)
    chunked = gm.rcap(_scaled_model(), images, labels, sal, copies_per_call=batch_size)
    for key in ("rcap", "ratios", "probs"):
        np.testing.assert_allclose(chunked[key], one[key], atol=1e-6, rtol=0)
    one = gm.deletion_insertion(model, images, labels, sal, copies_per_call=None)
    chunked = gm.deletion_insertion(model, images, labels, sal, copies_per_call=batch_size)
    for key in ("dauc", "iauc", "deletion_curve", "insertion_curve"):
        np.testing.assert_allclose(chunked[key], one[key], atol=1e-6, rtol=0)
