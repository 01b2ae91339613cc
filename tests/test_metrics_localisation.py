"""gag_jax.metrics localisation metrics (Quantus 0.6's localisation suite): numpy references written
from the definitions, Quantus 0.6.0 itself and sklearn's roc_auc_score where installed, the perfect-map
property, batch independence, compile caching and errors."""
from __future__ import annotations

import numpy as np
import pytest

import gag_jax.metrics as gm
from gag_jax.metrics import localisation as L

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

B, H, W, C = 4, 16, 16, 3
N = H * W


def _data(seed=0, b=B, signed=False):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(b, H, W)) if signed else rng.uniform(size=(b, H, W))
    masks = np.zeros((b, H, W), bool)
    for i in range(b):  # a box per image, of varied size
        y0, x0 = rng.integers(0, H // 2, 2)
        masks[i, y0:y0 + rng.integers(3, H // 2), x0:x0 + rng.integers(3, W // 2)] = True
    images = rng.normal(size=(b, H, W, C)).astype(np.float32)
    return images, np.zeros(b, np.int32), maps.astype(np.float32), masks


# ------------------------------------------------------------------ numpy references (one image at a time)

def _pre(a, abs_, normalise):
    a = a.astype(np.float64).ravel()
    if normalise and np.max(np.abs(a)) > 0:
        a = a / np.max(np.abs(a))
    return np.abs(a) if abs_ else a


def ref_attribution_localisation(a, s, weighted=False, positive=False, abs_=True, normalise=True):
    a, s = _pre(a, abs_, normalise), s.ravel().astype(bool)
    if positive:
        a = np.clip(a, 0, None)
    if not s.any():
        return np.nan
    r = a[s].sum() / (a.sum() + 1e-9)
    if r > 1:
        return np.nan
    return r * s.sum() / s.size if weighted else r


def _order(a):
    return sorted(range(a.size), key=lambda i: (-a[i], i))  # decreasing, ties by index


def ref_top_k(a, s, k, concept=False, abs_=False, normalise=True):
    a, s = _pre(a, abs_, normalise), s.ravel().astype(bool)
    if not s.any():
        return np.nan
    tki = np.mean([s[i] for i in _order(a)[:k]])
    return tki * s.size / s.sum() if concept else tki


def ref_rank_accuracy(a, s, abs_=False, normalise=True):
    a, s = _pre(a, abs_, normalise), s.ravel().astype(bool)
    k = int(s.sum())
    return np.nan if k == 0 else np.mean([s[i] for i in _order(a)[:k]])


def ref_mass_accuracy(a, s, abs_=False, normalise=True):
    a, s = _pre(a, abs_, normalise), s.ravel().astype(bool)
    return np.nan if not s.any() else a[s].sum() / a.sum()


def ref_auc(a, s, abs_=False, normalise=True):
    """Mann-Whitney over all (positive, negative) pairs, ties one half."""
    a, s = _pre(a, abs_, normalise), s.ravel().astype(bool)
    pos, neg = a[s], a[~s]
    if not len(pos) or not len(neg):
        return np.nan
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


CASES = [
    (L.attribution_localisation, ref_attribution_localisation, {}, {}),
    (L.attribution_localisation, ref_attribution_localisation, {"weighted": True}, {"weighted": True}),
    (L.attribution_localisation, ref_attribution_localisation, {"positive_attributions": True, "abs": False},
     {"positive": True, "abs_": False}),
    (L.top_k_intersection, ref_top_k, {"k": 40}, {"k": 40}),
    (L.top_k_intersection, ref_top_k, {"k": 40, "concept_influence": True, "abs": True},
     {"k": 40, "concept": True, "abs_": True}),
    (L.relevance_rank_accuracy, ref_rank_accuracy, {}, {}),
    (L.relevance_rank_accuracy, ref_rank_accuracy, {"abs": True}, {"abs_": True}),
    (L.relevance_mass_accuracy, ref_mass_accuracy, {}, {}),
    (L.relevance_mass_accuracy, ref_mass_accuracy, {"abs": True, "normalise": False},
     {"abs_": True, "normalise": False}),
    (L.localisation_auc, ref_auc, {}, {}),
    (L.localisation_auc, ref_auc, {"abs": True}, {"abs_": True}),
]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("fn,ref,options,ref_options", CASES)
def test_matches_the_numpy_reference(fn, ref, options, ref_options, signed):
    images, labels, maps, masks = _data(1, signed=signed)
    out = fn(None, images, labels, maps, masks=masks, **options)
    assert set(out) == {fn.__name__}
    got = np.asarray(out[fn.__name__])
    assert got.shape == (B,) and got.dtype == np.float32
    want = [ref(maps[i], masks[i], **ref_options) for i in range(B)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_auc_counts_ties_as_sklearn_does():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    maps = rng.integers(0, 4, (B, H, W)).astype(np.float32)  # many ties, within and across the classes
    masks = rng.uniform(size=(B, H, W)) > 0.6
    got = np.asarray(L.localisation_auc(None, None, None, maps, masks=masks)["localisation_auc"])
    want = [sklearn.roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(B)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, [ref_auc(maps[i], masks[i]) for i in range(B)], rtol=1e-6)


def test_auc_exact_at_224_pixels():
    """224 x 224 = 50176 pixels: the rank sums exceed float32's exact integers; the int32 blocks keep them."""
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    maps = np.round(rng.normal(size=(2, 224, 224)), 2).astype(np.float32)  # ties too
    masks = rng.uniform(size=(2, 224, 224)) > np.array([0.5, 0.97])[:, None, None]
    got = np.asarray(L.localisation_auc(None, None, None, maps, masks=masks)["localisation_auc"])
    want = [sklearn.roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=2e-7)


def _quantus_one_by_one(quantus, cls, options, images, maps, masks):
    """Quantus with its defaults, one image per call (its normalisation is per batch; ours per image)."""
    metric = cls(disable_warnings=True, **options)
    x = images.transpose(0, 3, 1, 2)
    return np.asarray([metric(model=None, x_batch=x[i:i + 1], y_batch=np.zeros(1, int), a_batch=maps[i:i + 1, None],
                              s_batch=masks[i:i + 1, None].astype(np.float32))[0] for i in range(len(maps))],
                      np.float64)


@pytest.mark.slow  # imports Quantus (and TensorFlow): 10-20 s on 2 cores
@pytest.mark.parametrize("signed", [False, True])
def test_same_values_as_quantus(signed):
    quantus = pytest.importorskip("quantus")
    images, labels, maps, masks = _data(4, signed=signed)
    masks[2] = False  # an empty mask: NaN in both
    pairs = [(L.attribution_localisation, quantus.AttributionLocalisation, {}),
             (L.top_k_intersection, quantus.TopKIntersection, {"k": 40}),
             (L.top_k_intersection, quantus.TopKIntersection, {"k": 40, "concept_influence": True}),
             (L.relevance_rank_accuracy, quantus.RelevanceRankAccuracy, {}),
             (L.relevance_mass_accuracy, quantus.RelevanceMassAccuracy, {}),
             (L.localisation_auc, quantus.AUC, {})]
    for fn, cls, options in pairs:
        ours = np.asarray(fn(None, images, labels, maps, masks=masks, **options)[fn.__name__])
        theirs = _quantus_one_by_one(quantus, cls, options, images, maps, masks)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=fn.__name__)
        assert np.isnan(ours[2])


@pytest.mark.slow  # imports Quantus (and TensorFlow): 10-20 s on 2 cores
def test_quantus_batch_normalisation_only_moves_attribution_localisation_by_its_epsilon():
    """Quantus on the whole batch (one max for the batch) gives the same localisation scores."""
    quantus = pytest.importorskip("quantus")
    images, labels, maps, masks = _data(5)
    maps = maps * np.array([1.0, 10.0, 0.1, 3.0], np.float32)[:, None, None]
    x = images.transpose(0, 3, 1, 2)
    ours = L.attribution_localisation(None, images, labels, maps, masks=masks)["attribution_localisation"]
    theirs = quantus.AttributionLocalisation(disable_warnings=True)(
        model=None, x_batch=x, y_batch=labels, a_batch=maps[:, None], s_batch=masks[:, None].astype(np.float32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_a_map_equal_to_the_mask_scores_perfectly():
    images, labels, _, masks = _data(6)
    maps = masks.astype(np.float32)
    k = int(masks.sum((1, 2)).min())
    for fn, options in [(L.attribution_localisation, {}), (L.top_k_intersection, {"k": k}),
                        (L.relevance_rank_accuracy, {}), (L.relevance_mass_accuracy, {}), (L.localisation_auc, {})]:
        got = np.asarray(fn(None, images, labels, maps, masks=masks, **options)[fn.__name__])
        np.testing.assert_allclose(got, 1.0, rtol=1e-6, err_msg=fn.__name__)
    # and a bool / 0-1 int mask are the same mask
    a = L.localisation_auc(None, None, None, maps, masks=masks.astype(np.int32))["localisation_auc"]
    np.testing.assert_array_equal(a, 1.0)


def test_degenerate_masks_give_nan_as_quantus():
    _, _, maps, masks = _data(7)
    masks[0] = False
    masks[1] = True
    out = {fn.__name__: np.asarray(fn(None, None, None, maps, masks=masks, **options)[fn.__name__])
           for fn, options in [(L.attribution_localisation, {}), (L.top_k_intersection, {"k": 10}),
                               (L.relevance_rank_accuracy, {}), (L.relevance_mass_accuracy, {}),
                               (L.localisation_auc, {})]}
    for name, values in out.items():
        assert np.isnan(values[0]), name  # empty mask
        assert np.all(np.isfinite(values[2:])), name
    assert np.isnan(out["localisation_auc"][1])  # no negatives: no ROC curve
    np.testing.assert_allclose(out["relevance_mass_accuracy"][1], 1.0, rtol=1e-6)


def test_an_image_scores_the_same_in_any_batch():
    images, labels, maps, masks = _data(8, signed=True)
    maps[1] *= 50.0  # a large map beside the others must not change their normalisation
    for fn, options in [(L.attribution_localisation, {}), (L.top_k_intersection, {"k": 30}),
                        (L.relevance_rank_accuracy, {}), (L.relevance_mass_accuracy, {}), (L.localisation_auc, {})]:
        full = np.asarray(fn(None, images, labels, maps, masks=masks, **options)[fn.__name__])
        for i in (0, 3):
            alone = np.asarray(fn(None, images[i:i + 1], labels[i:i + 1], maps[i:i + 1], masks=masks[i:i + 1],
                                  **options)[fn.__name__])
            np.testing.assert_allclose(alone, full[i:i + 1], rtol=1e-6, err_msg=fn.__name__)


def test_second_call_with_the_same_shapes_does_not_retrace():
    _, _, maps, masks = _data(9)
    _, _, maps2, masks2 = _data(10)
    cores = [(L.attribution_localisation, L._attribution_localisation_core, {}),
             (L.top_k_intersection, L._top_k_core, {"k": 20}),
             (L.relevance_rank_accuracy, L._rank_accuracy_core, {}),
             (L.relevance_mass_accuracy, L._mass_accuracy_core, {}),
             (L.localisation_auc, L._auc_core, {})]
    for fn, core, options in cores:
        if not hasattr(core, "_cache_size"):
            pytest.skip("this JAX has no jit cache size")
        fn(None, None, None, maps, masks=masks, **options)
        before = core._cache_size()
        fn(None, None, None, maps2, masks=masks2, **options)
        assert core._cache_size() == before, fn.__name__


def test_bad_input_raises_value_error_naming_the_problem():
    images, labels, maps, masks = _data(11)
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        L.localisation_auc(None, images, labels, maps)
    with pytest.raises(ValueError, match="masks shape"):
        L.relevance_mass_accuracy(None, images, labels, maps, masks=masks[:, :8])
    with pytest.raises(ValueError, match="saliency must have shape"):
        L.attribution_localisation(None, images[:, :8], labels, maps, masks=masks)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        L.relevance_rank_accuracy(None, images, labels, bad, masks=masks)
    with pytest.raises(ValueError, match="exceeds the 256 pixels"):
        L.top_k_intersection(None, images, labels, maps, masks=masks)  # Quantus's default k=1000
    with pytest.raises(ValueError, match="positive integer"):
        L.top_k_intersection(None, images, labels, maps, masks=masks, k=0)


def test_exported_from_gag_jax_metrics():
    for name in ("attribution_localisation", "top_k_intersection", "relevance_rank_accuracy",
                 "relevance_mass_accuracy", "localisation_auc"):
        assert getattr(gm, name) is getattr(L, name)
