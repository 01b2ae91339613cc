"""ROAD, pointing game, sparseness and complexity against numpy / scipy references, one image at a time.

The ROAD reference builds the authors' sparse system (``NoisyLinearImputer.setup_sparse_system`` of
``tleemann/road_evaluation``: diagonal ``-sum of in-image neighbour weights``, removed neighbours on the
left, kept neighbours on the right) with scipy and solves it with ``spsolve``; the pointing-game
reference loops over pixels; the Gini index is the pairwise mean-absolute-difference form and the
entropy is ``scipy.stats.entropy``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats

import gag_jax as gj
import gag_jax.metrics as gm

B, H, W, C, K = 3, 10, 12, 3, 4
STD = np.asarray(gm.IMAGENET_STD)
_WEIGHTS = (np.random.default_rng(7).normal(size=(H * W * C, K)) * 0.3).astype(np.float32)
AUTHORS_WEIGHTS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
                   ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def model(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ jnp.asarray(_WEIGHTS)) * 3.0


def _data(seed=0, b=B):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, H, W, C)).astype(np.float32)
    labels = rng.integers(0, K, b).astype(np.int32)
    yy, xx = np.mgrid[0:H, 0:W]
    maps = np.stack([np.exp(-((yy - 2 - 3 * i) ** 2 + (xx - 4 - i) ** 2) / 8.0) for i in range(b)])
    maps = (maps + 0.05 * rng.uniform(size=maps.shape)).astype(np.float32)
    return images, labels, maps


# ------------------------------------------------------------------ references

def ref_impute(img, removed):
    """The authors' linear system for one image (H, W, C), solved with scipy in float64."""
    h, w, c = img.shape
    idx = -np.ones((h, w), int)
    coords = np.argwhere(removed)
    idx[removed] = np.arange(len(coords))
    a = scipy.sparse.lil_matrix((len(coords), len(coords)))
    rhs = np.zeros((len(coords), c))
    for e, (i, j) in enumerate(coords):
        total = 1.0
        for (dy, dx), wt in AUTHORS_WEIGHTS:
            y, x = i + dy, j + dx
            if not (0 <= y < h and 0 <= x < w):
                total -= wt
            elif removed[y, x]:
                a[e, idx[y, x]] = wt
            else:
                rhs[e] -= wt * img[y, x]
        a[e, e] = -total
    out = img.astype(np.float64).copy()
    out[removed] = scipy.sparse.linalg.spsolve(scipy.sparse.csc_matrix(a), rhs).reshape(len(coords), c)
    return out


def ref_prob(image, label):
    logits = np.asarray(model(jnp.asarray(image[None], jnp.float32)), np.float64)[0]
    e = np.exp(logits - logits.max())
    return (e / e.sum())[label]


def ref_road(images, labels, maps, fractions, order, noise_fn=None):
    curves = []
    for b in range(images.shape[0]):
        rank_order = np.argsort(-maps[b].ravel(), kind="stable")  # most salient first, ties row-major
        n = rank_order.size
        curve = []
        for t, f in enumerate(fractions):
            k = int(f * n)
            chosen = rank_order[:k] if order == "morf" else rank_order[n - k:]
            removed = np.zeros(n, bool)
            removed[chosen] = True
            removed = removed.reshape(maps[b].shape)
            x = ref_impute(images[b], removed) if k else images[b].astype(np.float64)
            if noise_fn is not None:
                x = np.where(removed[..., None], x + noise_fn(b, t), x)
            curve.append(ref_prob(x, labels[b]))
        curves.append(curve)
    curves = np.asarray(curves)
    fr = np.asarray(fractions)
    auc = np.array([sum((fr[i + 1] - fr[i]) * (c[i] + c[i + 1]) / 2 for i in range(len(fr) - 1)) for c in curves])
    return curves, auc


# ------------------------------------------------------------------ ROAD

def test_linear_imputation_matches_the_authors_sparse_system():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 9, 11, 3)).astype(np.float32)
    removed = rng.uniform(size=(4, 9, 11)) < np.array([0.1, 0.5, 0.9, 0.97])[:, None, None]
    removed[:, 0, 0] = False  # every image keeps a pixel
    got = np.asarray(gm.noisy_linear_impute(images, removed, jax.random.PRNGKey(0), noise=0.0))
    for i in range(4):
        np.testing.assert_allclose(got[i], ref_impute(images[i], removed[i]), atol=2e-5)
    np.testing.assert_array_equal(got[~removed], images[~removed])  # kept pixels untouched


def test_imputation_noise_is_scaled_to_pixel_units():
    images = np.zeros((1, 32, 32, 3), np.float32)
    removed = np.zeros((1, 32, 32), bool)
    removed[0, 4:28, 4:28] = True
    out = np.asarray(gm.noisy_linear_impute(images, removed, jax.random.PRNGKey(1), noise=0.05, std=STD))[0]
    np.testing.assert_array_equal(out[~removed[0]], 0.0)
    # the image is constant (0), so the imputed values are pure noise of std 0.05 / std_c per channel
    np.testing.assert_allclose(out[removed[0]].std(axis=0), 0.05 / STD, rtol=0.1)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_matches_reference_without_noise(order):
    images, labels, maps = _data(2)
    fractions = (0.1, 0.4, 0.7, 0.9)
    out = gm.road(model, images, labels, maps, fractions=fractions, order=order, noise=0.0, copies_per_call=5)
    curves, auc = ref_road(images, labels, maps, fractions, order)
    np.testing.assert_allclose(out["curve"], curves, atol=1e-4)
    np.testing.assert_allclose(out["auc"], auc, atol=1e-4)
    np.testing.assert_allclose(out["fractions"], fractions)
    assert np.ptp(curves) > 1e-2  # the removals change the prediction (the test is not vacuous)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_road_noise_follows_the_documented_keys():
    images, labels, maps = _data(3)
    key = jax.random.PRNGKey(11)
    fractions = (0.2, 0.5)

    def noise_fn(b, t):
        k = jax.random.fold_in(jax.random.fold_in(key, b), t)
        return np.asarray(jax.random.normal(k, (H, W, C), jnp.float32), np.float64) * 0.01 / STD

    # the noise is in pixel units: it needs the input scaling, given explicitly to a bare callable ...
    out = gm.road(model, images, labels, maps, fractions=fractions, key=key, std=gm.IMAGENET_STD)
    curves, _ = ref_road(images, labels, maps, fractions, "morf", noise_fn)
    np.testing.assert_allclose(out["curve"], curves, atol=1e-4)
    # chunking does not change the noise of a copy (... or carried by the model)
    scaled = gj.ModelFunctions(model, mean=gm.IMAGENET_MEAN, std=gm.IMAGENET_STD)
    chunked = gm.road(scaled, images, labels, maps, fractions=fractions, key=key, copies_per_call=4)
    np.testing.assert_allclose(chunked["curve"], out["curve"], atol=1e-6)


def test_road_ties_and_orders():
    images, labels, _ = _data(4, b=1)
    flat = np.zeros((1, H, W), np.float32)  # all tied: row-major order decides
    fractions = (0.25, 0.5)
    morf = gm.road(model, images, labels, flat, fractions=fractions, order="morf", noise=0.0)
    lerf = gm.road(model, images, labels, flat, fractions=fractions, order="lerf", noise=0.0)
    for out, order in ((morf, "morf"), (lerf, "lerf")):
        curves, _ = ref_road(images, labels, flat, fractions, order)
        np.testing.assert_allclose(out["curve"], curves, atol=1e-4)
    # MoRF of M removes what LeRF of -M removes
    _, _, maps = _data(5, b=1)
    a = gm.road(model, images, labels, maps, fractions=fractions, order="morf", noise=0.0)
    b = gm.road(model, images, labels, -maps, fractions=fractions, order="lerf", noise=0.0)
    np.testing.assert_allclose(a["curve"], b["curve"], atol=1e-6)


@pytest.mark.slow  # > 5 s: CI runs it, the quick loop skips it
def test_road_errors():
    images, labels, maps = _data()
    with pytest.raises(ValueError, match="order"):
        gm.road(model, images, labels, maps, order="random")
    with pytest.raises(ValueError, match="fractions"):
        gm.road(model, images, labels, maps, fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="fractions"):
        gm.road(model, images, labels, maps, fractions=(0.5, 0.2))
    with pytest.raises(ValueError, match="noise"):
        gm.road(model, images, labels, maps, noise=-0.1)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="saliency"):
        gm.road(model, images, labels, bad, std=gm.IMAGENET_STD)
    with pytest.raises(ValueError, match="labels"):
        gm.road(model, images, np.full(B, K, np.int32), maps, std=gm.IMAGENET_STD)
    with pytest.raises(ValueError, match="saliency"):
        gm.road(model, images, labels, maps[:, :, :5], std=gm.IMAGENET_STD)


# ------------------------------------------------------------------ pointing game

def ref_pointing(sal, mask, tolerance):
    py, px = np.unravel_index(np.argmax(sal), sal.shape)
    for y in range(sal.shape[0]):
        for x in range(sal.shape[1]):
            d2 = (y - py) ** 2 + (x - px) ** 2
            if mask[y, x] and (d2 < tolerance ** 2 or d2 == 0):
                return 1.0
    return 0.0


def test_pointing_game_matches_reference():
    rng = np.random.default_rng(8)
    sal = rng.uniform(size=(6, 40, 40)).astype(np.float32)
    masks = np.zeros((6, 40, 40), np.float32)
    for i in range(6):
        y, x = rng.integers(0, 30, 2)
        masks[i, y:y + 10, x:x + 10] = 1
    sal[2] = np.round(sal[2] * 3)  # heavy ties: the first maximum in row-major order counts
    for tol in (0, 1, 4.5, 15):
        want = [ref_pointing(sal[i], masks[i], tol) for i in range(6)]
        np.testing.assert_array_equal(gm.pointing_game(sal, masks, tolerance=tol), want)
    np.testing.assert_array_equal(gm.pointing_game(sal, masks.astype(bool)), gm.pointing_game(sal, masks))


def test_pointing_game_tolerance_boundary_and_ties():
    sal = np.zeros((4, 40, 40), np.float32)
    masks = np.zeros((4, 40, 40), np.float32)
    sal[:, 5, 5] = 1.0
    masks[0, 5 + 14, 5 + 5] = 1  # distance^2 = 221 < 225: hit
    masks[1, 5 + 9, 5 + 12] = 1  # distance = 15 exactly: miss (strict, as TorchRay)
    masks[2, 5, 5] = 1           # on the point
    sal[3, 30, 30] = 1.0         # a tie after (5, 5) in row-major order: (5, 5) is the point
    masks[3, 30, 30] = 1
    np.testing.assert_array_equal(gm.pointing_game(sal, masks), [1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gm.pointing_game(sal, masks, tolerance=0), [0.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(gm.pointing_game(sal, np.zeros_like(masks)), 0.0)  # empty mask: miss
    with pytest.raises(ValueError, match="tolerance"):
        gm.pointing_game(sal, masks, tolerance=-1)
    with pytest.raises(ValueError, match="masks shape"):
        gm.pointing_game(sal, masks[:, :20])


# ------------------------------------------------------------------ sparseness / complexity

def ref_gini(m):
    a = np.abs(m.astype(np.float64)).ravel()
    if a.sum() == 0:
        return 0.0
    return np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size * a.sum())


def test_sparseness_and_complexity_match_reference():
    rng = np.random.default_rng(9)
    maps = rng.uniform(size=(5, 12, 14)).astype(np.float32)
    maps[1] = maps[1] ** 8          # peaky
    maps[2] -= 0.5                  # signed: absolute values
    maps[3] = 0.0
    maps[3, 4, 4] = 2.0             # one pixel holds everything
    maps[4] = 0.0                   # all zero: the constant-map limit
    n = 12 * 14
    gini = [ref_gini(m) for m in maps]
    ent = [scipy.stats.entropy(np.abs(m.astype(np.float64)).ravel()) if np.abs(m).sum() else np.log(n)
           for m in maps]
    sparse, complex_ = np.asarray(gm.sparseness(maps)), np.asarray(gm.complexity(maps))
    np.testing.assert_allclose(sparse, gini, atol=2e-6)
    np.testing.assert_allclose(complex_, ent, atol=2e-5)
    np.testing.assert_allclose(sparse[[3, 4]], [(n - 1) / n, 0.0], atol=1e-6)
    np.testing.assert_allclose(complex_[[3, 4]], [0.0, np.log(n)], atol=1e-5)
    assert sparse[1] > sparse[0] and complex_[1] < complex_[0]
    bad = maps.copy()
    bad[0, 0, 0] = np.inf
    for fn in (gm.sparseness, gm.complexity):
        with pytest.raises(ValueError, match="saliency"):
            fn(bad)
        with pytest.raises(ValueError, match=r"\(B, H, W\)"):
            fn(maps[0])
