"""The faithfulness metrics of Quantus 0.6 (gag_jax.metrics.faithfulness) against (1) numpy references
written from each definition, one image at a time, (2) Quantus 0.6.0 itself on a torch linear model
with the same weights, the same maps and the same draws (skipped where quantus / torch do not import),
plus batch independence with per-image keys, one trace per shape and the input checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.metrics import faithfulness as F

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

B, H, W, C, K = 3, 12, 12, 3, 5
TRACES = {"n": 0}


def _apply(variables, x):
    TRACES["n"] += 1  # runs once per trace
    return jnp.einsum("bhwc,hwck->bk", x, variables["w"]) + variables["b"]


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, H, W, C)).astype(np.float32)
    w = (rng.normal(size=(H, W, C, K)) * 0.1).astype(np.float32)
    bias = rng.normal(size=K).astype(np.float32)
    maps = rng.normal(size=(B, H, W)).astype(np.float32)
    maps /= np.abs(maps).max(axis=(1, 2), keepdims=True)  # max|a| = 1 per image: Quantus's batch normalisation agrees
    labels = np.array([0, 1, 2])
    model = gj.ModelFunctions.from_apply(_apply, {"w": jnp.asarray(w), "b": jnp.asarray(bias)})
    return model, x, labels, maps, w, bias


# ----------------------------------------------------------------------------------------------
# numpy references (float64, one image at a time, from the definitions)
# ----------------------------------------------------------------------------------------------

def _np_scores(w, bias, xs, label, softmax):
    logits = np.einsum("nhwc,hwck->nk", np.asarray(xs, np.float64), w.astype(np.float64)) + bias
    if softmax:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = e / e.sum(axis=1, keepdims=True)
    return logits[:, label]


def _np_prep(a, normalise, absolute):
    a = np.asarray(a, np.float64)
    if normalise and np.abs(a).max() > 0:
        a = a / np.abs(a).max()
    return np.abs(a) if absolute else a


def _np_feature_order(a, descending):
    """Features (pixel, channel) as flat channel-last indices: pixels by value, ties by index."""
    flat = a.reshape(-1)
    pixels = sorted(range(flat.size), key=lambda p: ((-flat[p] if descending else flat[p]), p))
    return np.array([p * C + ch for p in pixels for ch in range(C)])


def _np_pearson(u, v):
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum()))


def _np_ranks(v):
    return np.array([np.sum(v < t) + (np.sum(v == t) + 1) / 2 for t in v])


def ref_pixel_flipping(w, bias, x, label, a, fis):
    a = _np_prep(a, True, False)
    order = _np_feature_order(a, True)
    cur, curve = x.reshape(-1).astype(np.float64).copy(), []
    for s in range(order.size // fis):
        cur[order[s * fis:(s + 1) * fis]] = x.min()
        curve.append(_np_scores(w, bias, cur.reshape(1, H, W, C), label, True)[0])
    curve = np.array(curve)
    return np.trapezoid(curve), curve


def ref_faithfulness_estimate(w, bias, x, label, a, fis):
    a = _np_prep(a, True, False)
    order = _np_feature_order(a, True)
    af = np.repeat(a.reshape(-1), C)
    y0 = _np_scores(w, bias, x[None], label, False)[0]
    att, delta = [], []
    for s in range(order.size // fis):
        idx = order[s * fis:(s + 1) * fis]
        xs = x.reshape(-1).astype(np.float64).copy()
        xs[idx] = x.min()
        delta.append(y0 - _np_scores(w, bias, xs.reshape(1, H, W, C), label, False)[0])
        att.append(af[idx].sum())
    return _np_pearson(np.array(att), np.array(delta))


def ref_faithfulness_correlation(w, bias, x, label, a, subsets):
    a = _np_prep(a, True, False)
    af = np.repeat(a.reshape(-1), C)
    y0 = _np_scores(w, bias, x[None], label, False)[0]
    att, delta = [], []
    for sub in subsets:
        xs = x.reshape(-1).astype(np.float64).copy()
        xs[sub] = x.min()
        delta.append(y0 - _np_scores(w, bias, xs.reshape(1, H, W, C), label, False)[0])
        att.append(af[sub].sum())
    return _np_pearson(np.array(att), np.array(delta))


def ref_infidelity(w, bias, x, label, a, patch_sizes):
    a = np.asarray(a, np.float64)
    y0 = _np_scores(w, bias, x[None], label, False)[0]
    per = []
    for p in patch_sizes:
        cur, losses = x.astype(np.float64).copy(), []
        for i in range(H // p):
            for j in range(W // p):
                cur[i * p:(i + 1) * p, j * p:(j + 1) * p] = x.min()
                diff = x - cur
                losses.append((y0 - _np_scores(w, bias, cur[None], label, False)[0]
                               - np.sum(a[..., None] * diff)) ** 2)
        per.append(np.mean(losses))
    return np.mean(per)


def _np_blocks(p):
    """Quantus's grid: padded evenly (floor before) to a multiple of p; list of (row slice, col slice)."""
    def pad(n):
        return (p - n % p) // 2 if n % p else 0

    ph, pw = pad(H), pad(W)
    blocks = []
    for i in range(-(-H // p)):
        for j in range(-(-W // p)):
            r0, c0 = i * p - ph, j * p - pw
            blocks.append((slice(max(r0, 0), max(r0 + p, 0)), slice(max(c0, 0), max(c0 + p, 0))))
    return blocks


def ref_regions(w, bias, x, label, a, p, regions, order, delta):
    a = _np_prep(a, True, False)
    blocks = _np_blocks(p)
    sums = np.array([a[r, c].sum() for r, c in blocks])
    ranked = sorted(range(len(blocks)), key=lambda k: ((-sums[k] if order == "morf" else sums[k]), k))
    y0 = _np_scores(w, bias, x[None], label, True)[0]
    cur, curve = x.astype(np.float64).copy(), []
    for k in ranked[:regions]:
        r, c = blocks[k]
        cur[r, c] = x.min()
        s = _np_scores(w, bias, cur[None], label, True)[0]
        curve.append(y0 - s if delta else s)
    curve = np.array(curve)
    return np.trapezoid(curve), curve


def ref_irof(w, bias, x, label, a, segments):
    a = _np_prep(a, True, False)
    labels_ = np.unique(segments)
    means = np.array([a[segments == s].mean() for s in labels_])
    ranked = sorted(range(len(labels_)), key=lambda k: (-means[k], k))
    y0 = _np_scores(w, bias, x[None], label, True)[0]
    cur, curve = x.astype(np.float64).copy(), []
    for k in ranked:
        cur[segments == labels_[k]] = cur.mean()  # the mean of the image as perturbed so far
        curve.append(_np_scores(w, bias, cur[None], label, True)[0] / y0)
    curve = np.array(curve)
    return len(labels_) - np.trapezoid(curve), curve


def ref_monotonicity(w, bias, x, label, a, fis, values, eps=1e-5):
    a = _np_prep(a, True, True)
    order = _np_feature_order(a, False)
    af = np.repeat(a.reshape(-1), C)
    y0 = _np_scores(w, bias, x[None], label, True)[0]
    inv = (1 / abs(y0) if abs(y0) >= eps else 1.0) ** 2
    att, var = [], []
    for s in range(order.size // fis):
        idx = order[s * fis:(s + 1) * fis]
        preds = []
        for u in values[s]:
            xs = x.reshape(-1).astype(np.float64).copy()
            xs[idx] = u
            preds.append(_np_scores(w, bias, xs.reshape(1, H, W, C), label, True)[0])
        var.append(np.mean((np.array(preds) - y0) ** 2) * inv)
        att.append(af[idx].sum())
    return _np_pearson(_np_ranks(np.array(att)), _np_ranks(np.array(var)))


# ----------------------------------------------------------------------------------------------
# (1) against the numpy references
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fis", [1, 12, 48])
def test_pixel_flipping_matches_numpy(setup, fis):
    model, x, y, a, w, bias = setup
    out = F.pixel_flipping(model, x, y, a, features_in_step=fis, copies_per_call=16)
    assert out["pixel_flipping_curve"].shape == (B, H * W * C // fis)
    for i in range(B):
        auc, curve = ref_pixel_flipping(w, bias, x[i], y[i], a[i], fis)
        np.testing.assert_allclose(out["pixel_flipping_curve"][i], curve, atol=2e-6)
        np.testing.assert_allclose(out["pixel_flipping"][i], auc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fis", [4, 36])
def test_faithfulness_estimate_matches_numpy(setup, fis):
    model, x, y, a, w, bias = setup
    out = F.faithfulness_estimate(model, x, y, a, features_in_step=fis)
    ref = [ref_faithfulness_estimate(w, bias, x[i], y[i], a[i], fis) for i in range(B)]
    np.testing.assert_allclose(out["faithfulness_estimate"], ref, atol=2e-5)


def test_faithfulness_correlation_matches_numpy_with_given_subsets(setup):
    model, x, y, a, w, bias = setup
    rng = np.random.default_rng(1)
    subsets = np.stack([[rng.choice(H * W * C, 20, replace=False) for _ in range(9)] for _ in range(B)])
    out = F.faithfulness_correlation(model, x, y, a, subsets=subsets, copies_per_call=5)
    ref = [ref_faithfulness_correlation(w, bias, x[i], y[i], a[i], subsets[i]) for i in range(B)]
    np.testing.assert_allclose(out["faithfulness_correlation"], ref, atol=2e-5)


def test_faithfulness_correlation_draws_distinct_uniform_subsets(setup):
    subsets = np.asarray(F._draw_subsets_jit(gj.keys.per_image_keys(jax.random.PRNGKey(0), 2), runs=400, subset_size=30,
                                             n=60))
    assert subsets.shape == (2, 400, 30)
    assert all(len(set(r)) == 30 for r in subsets.reshape(-1, 30))
    counts = np.bincount(subsets.reshape(-1), minlength=60)  # each feature chosen with probability 1/2
    assert abs(counts.mean() - 400) < 1e-9 and counts.min() > 330 and counts.max() < 470


def test_infidelity_matches_numpy(setup):
    model, x, y, a, w, bias = setup
    out = F.infidelity(model, x, y, a, patch_sizes=(3, 4))
    ref = [ref_infidelity(w, bias, x[i], y[i], a[i], (3, 4)) for i in range(B)]
    np.testing.assert_allclose(out["infidelity"], ref, rtol=2e-5)


@pytest.mark.parametrize("patch,regions,order", [(4, 100, "morf"), (5, 4, "lerf"), (5, 100, "morf")])
def test_region_perturbation_matches_numpy(setup, patch, regions, order):
    model, x, y, a, w, bias = setup
    out = F.region_perturbation(model, x, y, a, patch_size=patch, regions=regions, order=order)
    for i in range(B):
        auc, curve = ref_regions(w, bias, x[i], y[i], a[i], patch, regions, order, True)
        np.testing.assert_allclose(out["region_perturbation_curve"][i], curve, atol=2e-6)
        np.testing.assert_allclose(out["region_perturbation"][i], auc, atol=1e-5)


@pytest.mark.parametrize("patch", [3, 5])
def test_selectivity_matches_numpy(setup, patch):
    model, x, y, a, w, bias = setup
    out = F.selectivity(model, x, y, a, patch_size=patch)
    for i in range(B):
        auc, curve = ref_regions(w, bias, x[i], y[i], a[i], patch, 10**6, "morf", False)
        np.testing.assert_allclose(out["selectivity_curve"][i], curve, atol=2e-6)
        np.testing.assert_allclose(out["selectivity"][i], auc, atol=1e-5)


def _segments():
    """Segments with different counts per image (6, 9 and 4 blocks; labels not contiguous in image 2)."""
    seg = np.zeros((B, H, W), np.int64)
    seg[0] = (np.arange(H)[:, None] // 6) * 3 + np.arange(W)[None, :] // 4
    seg[1] = (np.arange(H)[:, None] // 4) * 3 + np.arange(W)[None, :] // 4
    seg[2] = 10 * ((np.arange(H)[:, None] // 6) * 2 + np.arange(W)[None, :] // 6)
    return seg


def test_irof_matches_numpy_with_given_segments(setup):
    model, x, y, a, w, bias = setup
    seg = _segments()
    out = F.irof(model, x, y, a, segments=seg)
    for i in range(B):
        aoc, curve = ref_irof(w, bias, x[i], y[i], a[i], seg[i])
        n = len(curve)
        np.testing.assert_allclose(out["irof_curve"][i, :n], curve, rtol=1e-5)
        assert np.all(np.isnan(out["irof_curve"][i, n:]))
        np.testing.assert_allclose(out["irof"][i], aoc, rtol=1e-5)


def test_irof_default_segments_are_slic_on_the_host(setup):
    from skimage.segmentation import slic

    model, x, y, a, *_ = setup
    seg = np.stack([slic(img.astype(np.float64), start_label=0) for img in x])
    np.testing.assert_array_equal(F.slic_segments(x), seg)
    np.testing.assert_allclose(F.irof(model, x, y, a)["irof"], F.irof(model, x, y, a, segments=seg)["irof"])


def test_monotonicity_correlation_matches_numpy_with_given_values(setup):
    model, x, y, a, w, bias = setup
    fis, samples = 36, 3
    steps = H * W * C // fis
    values = np.random.default_rng(2).uniform(size=(B, steps, samples)).astype(np.float32)
    out = F.monotonicity_correlation(model, x, y, a, features_in_step=fis, baselines=values)
    ref = [ref_monotonicity(w, bias, x[i], y[i], a[i], fis, values[i]) for i in range(B)]
    np.testing.assert_allclose(out["monotonicity_correlation"], ref, atol=1e-5)


def test_spearman_average_ranks_match_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    u = rng.integers(0, 4, size=(4, 15)).astype(np.float32)  # many ties
    v = rng.normal(size=(4, 15)).astype(np.float32)
    ref = [spearmanr(u[i], v[i])[0] for i in range(4)]
    np.testing.assert_allclose(F.spearman(jnp.asarray(u), jnp.asarray(v)), ref, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# (2) against Quantus 0.6.0 (torch linear model with the same weights)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantus_setup(setup):
    quantus = pytest.importorskip("quantus")
    torch = pytest.importorskip("torch")
    model, x, y, a, w, bias = setup
    tm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * C, K)).eval()
    with torch.no_grad():  # NCHW flattening: feature (c, i, j) -> weight w[i, j, c]
        tm[1].weight.copy_(torch.tensor(w.transpose(2, 0, 1, 3).reshape(-1, K).T))
        tm[1].bias.copy_(torch.tensor(bias))
    xq = np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def run(metric, xs=xq, ys=y, maps=a):
        return np.asarray(metric(tm, xs, ys, maps[:, None], channel_first=True, device="cpu"), np.float64)

    return quantus, run


@pytest.mark.parametrize("fis", [3, 48])  # whole pixels per step: Quantus orders a pixel's channels arbitrarily
def test_pixel_flipping_and_estimate_match_quantus(setup, quantus_setup, fis):
    quantus, run = quantus_setup
    model, x, y, a, *_ = setup
    curve = run(quantus.PixelFlipping(features_in_step=fis, disable_warnings=True))
    np.testing.assert_allclose(F.pixel_flipping(model, x, y, a, features_in_step=fis)["pixel_flipping_curve"],
                               curve, atol=5e-6)
    fe = run(quantus.FaithfulnessEstimate(features_in_step=fis, disable_warnings=True))
    np.testing.assert_allclose(F.faithfulness_estimate(model, x, y, a, features_in_step=fis)["faithfulness_estimate"],
                               fe, atol=5e-5)


def test_faithfulness_correlation_matches_quantus_with_its_draws(setup, quantus_setup):
    quantus, run = quantus_setup
    model, x, y, a, *_ = setup
    runs, size = 8, 20
    np.random.seed(3)  # replay Quantus's draws: per run, one choice per image, then its baseline dict's uniform
    draws = []
    for _ in range(runs):
        draws.append([np.random.choice(H * W * C, size, replace=False) for _ in range(B)])
        np.random.uniform(0, 1, size=B)
    draws = np.array(draws).transpose(1, 0, 2)  # (B, runs, size), channel-first flat indices
    subsets = (draws % (H * W)) * C + draws // (H * W)
    np.random.seed(3)
    ref = run(quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, return_aggregate=False,
                                              disable_warnings=True))
    out = F.faithfulness_correlation(model, x, y, a, subsets=subsets)
    np.testing.assert_allclose(out["faithfulness_correlation"], ref, atol=5e-5)


def test_infidelity_region_perturbation_selectivity_match_quantus(setup, quantus_setup):
    quantus, run = quantus_setup
    model, x, y, a, *_ = setup
    ref = run(quantus.Infidelity(perturb_patch_sizes=[3, 4], disable_warnings=True))
    np.testing.assert_allclose(F.infidelity(model, x, y, a, patch_sizes=(3, 4))["infidelity"], ref, rtol=2e-5)
    for patch, regions, order in ((5, 100, "morf"), (4, 5, "lerf")):
        ref = run(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, order=order,
                                             disable_warnings=True))
        out = F.region_perturbation(model, x, y, a, patch_size=patch, regions=regions, order=order)
        np.testing.assert_allclose(out["region_perturbation_curve"], ref, atol=5e-6)
    ref = run(quantus.Selectivity(patch_size=5, disable_warnings=True))
    np.testing.assert_allclose(F.selectivity(model, x, y, a, patch_size=5)["selectivity_curve"], ref, atol=5e-6)


def test_monotonicity_correlation_matches_quantus_with_its_draws(setup, quantus_setup):
    quantus, run = quantus_setup
    model, x, y, a, *_ = setup
    fis, samples = 48, 4
    steps = H * W * C // fis
    np.random.seed(5)  # Quantus draws one uniform value per image for each step and sample
    values = np.random.uniform(0, 1, size=(steps, samples, B)).transpose(2, 0, 1)
    np.random.seed(5)
    ref = run(quantus.MonotonicityCorrelation(features_in_step=fis, nr_samples=samples, disable_warnings=True))
    out = F.monotonicity_correlation(model, x, y, a, features_in_step=fis, baselines=values)
    np.testing.assert_allclose(out["monotonicity_correlation"], ref, atol=1e-5)


def test_irof_matches_quantus_one_image_at_a_time(setup, quantus_setup, monkeypatch):
    """Quantus 0.6's IROF fails on RGB (a (B, 1, H, W) mask against baseline_replacement_by_mask's
    shape assertion) and on NumPy >= 2.4 (np.trapz): compared on single-channel images with np.trapz
    restored, and on RGB with a perturb_func that broadcasts the mask; one image per call (its "mean"
    baseline is the whole batch's)."""
    quantus, run = quantus_setup
    model, x, y, a, w, bias = setup
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    with pytest.raises(AssertionError, match="shape of arr"):  # Quantus's own bug on RGB
        run(quantus.IROF(disable_warnings=True), xs=np.ascontiguousarray(x[:1].transpose(0, 3, 1, 2)), ys=y[:1],
            maps=a[:1])

    def broadcast_mask(arr, mask, **kwargs):
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    ours = F.irof(model, x, y, a)["irof"]
    for i in range(B):
        ref = run(quantus.IROF(return_aggregate=False, perturb_func=broadcast_mask, disable_warnings=True),
                  xs=np.ascontiguousarray(x[i:i + 1].transpose(0, 3, 1, 2)), ys=y[i:i + 1], maps=a[i:i + 1])
        np.testing.assert_allclose(ours[i], ref[0], rtol=1e-5)

    # single channel: Quantus's own perturbation; a linear model on the grey image
    torch = pytest.importorskip("torch")
    grey = x[..., :1].copy()
    wg = w[:, :, :1]
    gm = gj.ModelFunctions.from_apply(_apply, {"w": jnp.asarray(wg), "b": jnp.asarray(bias)})
    tm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W, K)).eval()
    with torch.no_grad():
        tm[1].weight.copy_(torch.tensor(wg.reshape(-1, K).T))
        tm[1].bias.copy_(torch.tensor(bias))
    ours = F.irof(gm, grey, y, a)["irof"]
    for i in range(B):
        ref = quantus.IROF(return_aggregate=False, disable_warnings=True)(
            tm, np.ascontiguousarray(grey[i:i + 1].transpose(0, 3, 1, 2)), y[i:i + 1], a[i:i + 1, None],
            channel_first=True, device="cpu")
        np.testing.assert_allclose(ours[i], ref[0], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# (3) batch independence with per-image keys, (4) one trace per shape, input checks
# ----------------------------------------------------------------------------------------------

def test_random_metrics_do_not_depend_on_the_batch(setup):
    """Same image, same key, another batch (other neighbours, other positions) -> same value."""
    model, x, y, a, *_ = setup
    keys = jax.random.split(jax.random.PRNGKey(7), B)
    other_keys = jax.random.split(jax.random.PRNGKey(8), B)
    perm = np.array([2, 0, 1])
    x2, a2 = x[perm].copy(), a[perm].copy()
    x2[1], a2[1] = -x[0], a[1]  # image 0 replaced by another one in the second batch
    keys2 = keys[perm].at[1].set(other_keys[0])
    for fn, opts, name in ((F.faithfulness_correlation, {"runs": 6, "subset_size": 10}, "faithfulness_correlation"),
                           (F.monotonicity_correlation, {"features_in_step": 72, "nr_samples": 2},
                            "monotonicity_correlation")):
        full = np.asarray(fn(model, x, y, a, key=keys, **opts)[name])
        moved = np.asarray(fn(model, x2, y[perm], a2, key=keys2, **opts)[name])
        np.testing.assert_allclose(moved[[0, 2]], full[[2, 1]], rtol=1e-6)
        other = fn(model, x, y, a, key=other_keys, **opts)[name]
        assert not np.allclose(full, other)  # the draws do come from the keys


def test_irof_does_not_depend_on_the_batch(setup):
    model, x, y, a, *_ = setup
    seg = _segments()  # 6, 9 and 4 segments: Quantus would pad the shorter curves with zeros
    full = F.irof(model, x, y, a, segments=seg)["irof"]
    for i in range(B):
        np.testing.assert_allclose(full[i], F.irof(model, x[i:i + 1], y[i:i + 1], a[i:i + 1],
                                                   segments=seg[i:i + 1])["irof"][0], rtol=1e-6)


def test_second_call_with_the_same_shapes_does_not_retrace(setup):
    model, x, y, a, *_ = setup
    calls = (lambda xs: F.pixel_flipping(model, xs, y, a, features_in_step=72),
             lambda xs: F.faithfulness_correlation(model, xs, y, a, runs=4, subset_size=8),
             lambda xs: F.region_perturbation(model, xs, y, a, patch_size=6))
    for call in calls:
        call(x)
        before = TRACES["n"]
        call(x + 1.0)
        assert TRACES["n"] == before


@pytest.mark.parametrize("fn,kwargs,match", [
    (F.pixel_flipping, {"features_in_step": 5}, "features_in_step"),
    (F.pixel_flipping, {"perturb_baseline": "mean"}, "perturb_baseline"),
    (F.faithfulness_correlation, {"subset_size": 144}, "subset_size"),
    (F.faithfulness_correlation, {"subsets": np.zeros((B, 2, 3), int)}, "distinct"),
    (F.infidelity, {"patch_sizes": (5,)}, "divide"),
    (F.region_perturbation, {"order": "random"}, "order"),
    (F.irof, {"segments": np.zeros((B, H, W), int)}, "at least 2 segments"),
    (F.monotonicity_correlation, {"features_in_step": 72, "baselines": np.zeros((B, 5, 2))}, "baselines"),
])
def test_bad_options_raise_value_error(setup, fn, kwargs, match):
    model, x, y, a, *_ = setup
    with pytest.raises(ValueError, match=match):
        fn(model, x, y, a, **kwargs)


def test_bad_inputs_raise_value_error(setup):
    model, x, y, a, *_ = setup
    with pytest.raises(ValueError, match="saliency"):
        F.selectivity(model, x, y, a[:, :4])
    with pytest.raises(ValueError, match="labels"):
        F.selectivity(model, x, np.array([0, 1, K]), a, patch_size=6)
    with pytest.raises(ValueError, match="NaN"):
        F.selectivity(model, x, y, np.where(a > 0.5, np.nan, a), patch_size=6)


def test_registry_records(setup):
    import gag_jax.metrics as gm

    model, x, y, a, *_ = setup
    names = ("faithfulness_correlation", "faithfulness_estimate", "infidelity", "pixel_flipping",
             "region_perturbation", "selectivity", "irof", "monotonicity_correlation")
    assert all(gm.metric(n).category == "faithfulness" for n in names)
    assert {n for n in names if "key" in gm.metric(n).needs} == {"faithfulness_correlation", "monotonicity_correlation"}
    assert gm.metric("pixel_flipping").cost({"features_in_step": 224}) == 3 * 224  # 224 channel values per step
    assert gm.metric("selectivity").forward_passes({"patch_size": 6}, (H, W, C)) == 4
    record = gm.metric("selectivity")
    out = record.function(model, x, y, a, patch_size=6)
    assert set(record.curves) <= set(out)
    np.testing.assert_allclose(out["selectivity"], F.selectivity(model, x, y, a, patch_size=6)["selectivity"])
