"""gag_jax.metrics: edge cases, errors, compile caching, bfloat16 models, streaming evaluation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
import gag_jax.metrics as gm

B, H, W, C, K = 4, 16, 16, 3, 4
_RNG = np.random.default_rng(0)
_WEIGHTS = (_RNG.normal(size=(H * W * C, K)) * 0.05).astype(np.float32)
TRACES = {"n": 0}
# the toy models are bare callables: RCAP's black baseline needs their input scaling given explicitly
SCALING = {"mean": gm.IMAGENET_MEAN, "std": gm.IMAGENET_STD}


def linear_model(x):
    """Plain-jnp model; counts how often it is traced."""
    TRACES["n"] += 1
    return x.reshape(x.shape[0], -1) @ jnp.asarray(_WEIGHTS)


def scaled_linear_model():
    """``linear_model`` as a ``gj.ModelFunctions`` that carries the input scaling (for the streaming evaluator)."""
    return gj.ModelFunctions(linear_model, **SCALING)


def bf16_model(x):
    w = jnp.asarray(_WEIGHTS, jnp.bfloat16)
    return x.reshape(x.shape[0], -1).astype(jnp.bfloat16) @ w


def _data(seed=0, b=B):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, H, W, C)).astype(np.float32)
    labels = rng.integers(0, K, b).astype(np.int32)
    sal = rng.uniform(size=(b, H, W)).astype(np.float32)
    masks = (rng.uniform(size=(b, H, W)) > 0.5).astype(np.float32)
    return images, labels, sal, masks


# ------------------------------------------------------------------ degenerate maps

@pytest.mark.parametrize("value", [0.0, 0.37])
def test_constant_and_all_zero_maps_are_defined(value):
    images, labels, _, _ = _data()
    sal = np.full((B, H, W), value, np.float32)
    out = gm.rcap(linear_model, images, labels, sal, **SCALING)
    for key in ("rcap", "ratios", "probs"):
        assert np.all(np.isfinite(out[key])), key
    # every pixel is >= its percentile: the whole image is recovered and the ratio is 1
    np.testing.assert_array_equal(out["ratios"], 1.0)
    p_orig = np.asarray(gm.target_probs(linear_model, images, labels))
    np.testing.assert_allclose(out["probs"], np.repeat(p_orig[:, None], 5, 1), atol=1e-6)
    np.testing.assert_allclose(out["rcap"], p_orig, atol=1e-6)
    di = gm.deletion_insertion(linear_model, images, labels, sal)
    assert np.all(np.isfinite(di["dauc"])) and np.all(np.isfinite(di["iauc"]))
    # nothing is strictly above the quantile of a constant map: deletion never deletes
    np.testing.assert_allclose(di["deletion_curve"], np.repeat(p_orig[:, None], 10, 1), atol=1e-6)


def test_mixed_zero_and_nonzero_maps_in_one_batch():
    images, labels, sal, _ = _data(1)
    sal[1] = 0.0
    out = gm.rcap(linear_model, images, labels, sal, **SCALING)
    np.testing.assert_array_equal(out["ratios"][1], 1.0)
    assert np.all(out["ratios"][0] < 1.0)


def test_rcap_is_scale_invariant_in_the_saliency():
    images, labels, sal, _ = _data(2)
    a = gm.rcap(linear_model, images, labels, sal, **SCALING)
    b = gm.rcap(linear_model, images, labels, sal * 250.0, **SCALING)
    np.testing.assert_allclose(a["rcap"], b["rcap"], atol=1e-6)


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_saliency_raises(bad):
    images, labels, sal, masks = _data()
    sal[2, 3, 4] = bad
    with pytest.raises(ValueError, match="saliency"):
        gm.rcap(linear_model, images, labels, sal, **SCALING)
    with pytest.raises(ValueError, match="saliency"):
        gm.deletion_insertion(linear_model, images, labels, sal)
    with pytest.raises(ValueError, match="saliency"):
        gm.mae(sal, masks)
    with pytest.raises(ValueError, match="saliency"):
        gm.log_cosh_dice(sal, masks)


def test_negative_saliency_rejected_by_rcap_only():
    images, labels, sal, _ = _data()
    sal[0, 0, 0] = -0.5
    with pytest.raises(ValueError, match="saliency.*negative"):
        gm.rcap(linear_model, images, labels, sal, **SCALING)
    gm.deletion_insertion(linear_model, images, labels, sal)  # only ranks matter there


def test_shape_mismatches_name_both_shapes():
    images, labels, sal, masks = _data()
    with pytest.raises(ValueError, match=r"\(4, 16, 15\).*|.*\(4, 16, 15\)") as err:
        gm.rcap(linear_model, images, labels, sal[:, :, :15], **SCALING)
    assert "(4, 16, 16, 3)" in str(err.value) and "(4, 16, 15)" in str(err.value)
    with pytest.raises(ValueError) as err:
        gm.deletion_insertion(linear_model, images, labels[:3], sal)
    assert "(3,)" in str(err.value) and "(4, 16, 16, 3)" in str(err.value)
    for fn in (gm.mae, gm.log_cosh_dice):
        with pytest.raises(ValueError) as err:
            fn(sal, masks[:, :8, :8])
        assert "(4, 8, 8)" in str(err.value) and "(4, 16, 16)" in str(err.value)


@pytest.mark.parametrize("lower_bound, interval", [(50, 15), (50, 0), (100, 10), (-10, 10), (50, -10),
                                                   (33, 10)])
def test_partition_that_does_not_divide_raises(lower_bound, interval):
    images, labels, sal, _ = _data()
    with pytest.raises(ValueError, match="interval|lower_bound"):
        gm.rcap(linear_model, images, labels, sal, lower_bound=lower_bound, interval=interval, **SCALING)


def test_valid_partitions():
    assert gm.rcap_percentiles() == (90, 80, 70, 60, 50)
    assert gm.rcap_percentiles(60, 20) == (80, 60)  # Figure 4 would use 20% steps
    assert gm.rcap_percentiles(0, 25) == (75, 50, 25, 0)
    assert gm.rcap_percentiles(50, 2.5)[-1] == 50


def test_other_argument_errors():
    images, labels, sal, _ = _data()
    with pytest.raises(ValueError, match="baseline"):
        gm.rcap(linear_model, images, labels, sal, baseline="white", **SCALING)
    with pytest.raises(ValueError, match="labels"):
        gm.rcap(linear_model, images, np.full(B, K, np.int32), sal, **SCALING)
    with pytest.raises(ValueError, match="labels"):
        gm.deletion_insertion(linear_model, images, labels.astype(np.float32), sal)
    with pytest.raises(ValueError, match="mean must have 1 or C=3 entries"):
        gm.rcap(linear_model, images, labels, sal, mean=(0.5, 0.5), std=gm.IMAGENET_STD)
    with pytest.raises(ValueError, match="both mean and std"):
        gm.rcap(linear_model, images, labels, sal, mean=gm.IMAGENET_MEAN)
    with pytest.raises(ValueError, match="copies_per_call"):
        gm.rcap(linear_model, images, labels, sal, copies_per_call=0, **SCALING)
    with pytest.raises(TypeError, match="batch_size"):  # the old name of copies_per_call is gone
        gm.rcap(linear_model, images, labels, sal, batch_size=2, **SCALING)
    with pytest.raises(ValueError, match="fractions"):
        gm.deletion_insertion(linear_model, images, labels, sal, fractions=[0.5, 0.2])
    with pytest.raises(ValueError, match="blur_kernel"):
        gm.deletion_insertion(linear_model, images, labels, sal, blur_kernel=32)


def test_black_baseline_needs_the_input_scaling_and_blur_does_not():
    """A bare callable carries no input scaling: RCAP's (and so score's) black baseline, which is zero in
    pixel space, is an error without mean/std, never a silent ImageNet guess; the blur baseline commutes
    with a per-channel scaling and works without it (the same values as with any scaling given)."""
    images, labels, sal, _ = _data(8)
    with pytest.raises(ValueError, match="input scaling"):
        gm.rcap(linear_model, images, labels, sal)  # baseline "black" is the default
    with pytest.raises(ValueError, match="input scaling"):
        gm.rcap(linear_model, images, labels, sal, baseline="black")
    with pytest.raises(ValueError, match="input scaling"):
        gm.score(linear_model, images, labels, sal, metrics=("rcap",))
    blur = gm.rcap(linear_model, images, labels, sal, baseline="blur")
    assert np.all(np.isfinite(blur["rcap"])) and blur["rcap"].shape == (B,)
    np.testing.assert_allclose(blur["rcap"], gm.rcap(linear_model, images, labels, sal, baseline="blur",
                                                     **SCALING)["rcap"], atol=1e-5)
    values = gm.score(linear_model, images, labels, sal, metrics=("rcap",), options={"rcap": {"baseline": "blur"}})
    np.testing.assert_allclose(values["rcap"], blur["rcap"], atol=1e-6)
    # the scaling given either way reaches black: explicitly, or carried by the model
    explicit = gm.score(linear_model, images, labels, sal, metrics=("rcap",), **SCALING)
    carried = gm.score(scaled_linear_model(), images, labels, sal, metrics=("rcap",))
    np.testing.assert_allclose(carried["rcap"], explicit["rcap"], atol=1e-6)


# ------------------------------------------------------------------ compile caching

def test_repeated_calls_do_not_retrace():
    images, labels, sal, masks = _data(3)
    calls = [
        lambda i, l, s: gm.rcap(linear_model, i, l, s, **SCALING),
        lambda i, l, s: gm.rcap(linear_model, i, l, s, copies_per_call=3, baseline="blur", **SCALING),
        lambda i, l, s: gm.deletion_insertion(linear_model, i, l, s),
        lambda i, l, s: gm.deletion_insertion(linear_model, i, l, s, copies_per_call=5),
        lambda i, l, s: gm.select_confident(linear_model, i, l),
    ]
    for call in calls:
        call(images, labels, sal)
        before = TRACES["n"]
        other_images, other_labels, other_sal, _ = _data(4)  # new values, same shapes
        call(other_images, other_labels, other_sal)
        call(jnp.asarray(other_images), jnp.asarray(other_labels), jnp.asarray(other_sal))
        assert TRACES["n"] == before, "a second call with the same shapes re-traced the model"
    # and a new shape does trace (the counter is live). The model's input shape must be new: since
    # ModelFunctions compares its apply functions by value, JAX reuses the model's trace for a chunk
    # shape it has seen (b=2 with the default chunks of 2 copies), so ask for all 10 copies in one call
    before = TRACES["n"]
    i2, l2, s2, _ = _data(5, b=2)
    gm.rcap(linear_model, i2, l2, s2, copies_per_call=None, **SCALING)
    assert TRACES["n"] > before


def _model_call_sizes(fn, *args, **kw):
    """Batch sizes of the model calls traced into the metric's compiled program.

    The spy takes its weights as an argument (``ModelFunctions.from_apply``): a plain function that
    closes over arrays is first traced once on the whole batch by the closed-over-weights check
    (``gag_jax.model.warn_if_closed_over``), which is no call of the compiled program."""
    seen = []

    def spy(weights, x):
        seen.append(x.shape[0])
        return x.reshape(x.shape[0], -1) @ weights

    fn(gj.ModelFunctions.from_apply(spy, jnp.asarray(_WEIGHTS)), *args, **kw)
    return seen


@pytest.mark.parametrize("b, batch_size, expected", [
    (4, 3, [2]),        # 20 copies: 10 calls of 2 (2 > 3 / 2 divides 20)
    (4, 8, [5]),        # 20 = 4 x 5
    (4, 16, [10]),      # 20 = 2 x 10
    (4, 20, [20]),      # one call
    (4, None, [20]),    # one call, as asked
    (7, 16, [16, 3]),   # 35 = 7 x 5 only: 2 calls of 16 + 1 call of the 3 left, no padding
    (1, 2, [2, 1]),     # 5 copies: 2 calls of 2 + 1 call of 1
])
def test_model_calls_are_bounded_and_never_padded(b, batch_size, expected):
    images, labels, sal, _ = _data(6, b=b)
    assert _model_call_sizes(gm.rcap, images, labels, sal, copies_per_call=batch_size,
                             **SCALING) == expected  # traced shapes
    assert all(n <= (batch_size or 5 * b) for n in expected)


def test_chunk_plan_covers_every_copy_once():
    from gag_jax.metrics._common import chunk_plan
    for n in range(1, 60):
        for bs in (None, 1, 2, 3, 7, 16, 50, 100):
            size, full, rest = chunk_plan(n, bs)
            assert size * full + rest == n and (bs is None or max(size, rest) <= bs)
            assert rest == 0 or (rest < size and full >= 1)


def test_default_model_batch_is_used():
    images, labels, sal, _ = _data(6)
    sizes = _model_call_sizes(gm.deletion_insertion, images, labels, sal)  # 80 copies
    assert gm.default_batch_size() == gm.CPU_BATCH_SIZE  # the tests run on CPU
    assert max(sizes) <= gm.CPU_BATCH_SIZE < 80


# ------------------------------------------------------------------ bfloat16

def test_bfloat16_model_accepted():
    images, labels, sal, _ = _data(7)
    out = gm.rcap(bf16_model, images, labels, sal, **SCALING)
    ref = gm.rcap(linear_model, images, labels, sal, **SCALING)
    assert out["rcap"].dtype == jnp.float32 and out["probs"].dtype == jnp.float32
    np.testing.assert_allclose(out["probs"], ref["probs"], atol=3e-2)
    di = gm.deletion_insertion(bf16_model, images, labels, sal, copies_per_call=8)
    assert di["dauc"].dtype == jnp.float32 and np.all(np.isfinite(di["iauc"]))
    assert gm.select_confident(bf16_model, images, labels, 0.0).dtype == bool


# ------------------------------------------------------------------ streaming

def _batches(sizes, seed=10):
    for i, b in enumerate(sizes):
        images, labels, sal, masks = _data(seed + i, b=b)
        yield {"images": images, "labels": labels, "saliency": sal, "masks": masks}


def test_streaming_matches_whole_dataset_statistics():
    sizes = (4, 4, 3)
    res = gm.evaluate_stream(scaled_linear_model(), _batches(sizes))
    allb = list(_batches(sizes))
    cat = {k: np.concatenate([b[k] for b in allb]) for k in allb[0]}
    per = {
        "rcap": np.asarray(gm.rcap(linear_model, cat["images"], cat["labels"], cat["saliency"],
                                   **SCALING)["rcap"]),
        "log_cosh_dice": np.asarray(gm.log_cosh_dice(cat["saliency"], cat["masks"])),
        "mae": np.asarray(gm.mae(cat["saliency"], cat["masks"])),
    }
    di = gm.deletion_insertion(linear_model, cat["images"], cat["labels"], cat["saliency"])
    per["dauc"], per["iauc"] = np.asarray(di["dauc"]), np.asarray(di["iauc"])
    n = sum(sizes)
    assert res["_counts"] == {"seen": n, "kept": n}
    for k, v in per.items():
        v = v.astype(np.float64)
        assert res[k]["n"] == n
        np.testing.assert_allclose(res[k]["mean"], v.mean(), atol=1e-6)
        np.testing.assert_allclose(res[k]["sem"], v.std(ddof=1) / np.sqrt(n), atol=1e-6)


def test_streaming_last_short_batch_does_not_recompile_and_selection_works():
    ev = gm.StreamingEvaluator(scaled_linear_model(), metrics=("rcap",), confidence_threshold=0.3)
    batches = list(_batches((4, 4, 2), seed=20))
    kept_vals = []
    update_traces = []
    for batch in batches:
        before = TRACES["n"]
        out = ev.update(batch)
        update_traces.append(TRACES["n"] - before)
        p = np.asarray(gm.target_probs(linear_model, batch["images"], batch["labels"]))
        np.testing.assert_array_equal(out["kept"], p > 0.3)
        full = np.asarray(gm.rcap(linear_model, batch["images"], batch["labels"], batch["saliency"],
                                  **SCALING)["rcap"])
        np.testing.assert_allclose(out["rcap"], full[p > 0.3], atol=1e-6)
        kept_vals.append(full[p > 0.3])
    assert update_traces[1:] == [0, 0]  # the short batch was padded to the compiled shape
    res = ev.result()
    allv = np.concatenate(kept_vals)
    assert res["_counts"] == {"seen": 10, "kept": len(allv)} and 0 < len(allv) < 10
    np.testing.assert_allclose(res["rcap"]["mean"], allv.mean(), atol=1e-6)


def test_streaming_requires_masks_for_mask_metrics():
    batch = next(_batches((4,)))
    del batch["masks"]
    with pytest.raises(ValueError, match="masks"):
        gm.StreamingEvaluator(scaled_linear_model(), metrics=("mae",)).update(batch)
    res = gm.evaluate_stream(scaled_linear_model(), [batch])  # default: mask metrics skipped
    assert set(res) == {"rcap", "dauc", "iauc", "_counts"}
    with pytest.raises(ValueError, match="unknown"):
        gm.StreamingEvaluator(linear_model, metrics=("roar",))
    with pytest.raises(ValueError, match="masks"):
        gm.StreamingEvaluator(linear_model, metrics=("pointing_game",)).update(batch)


def test_running_stat_merge_is_exact():
    rng = np.random.default_rng(0)
    v = rng.normal(size=101) * 3 + 100
    s = gm.RunningStat()
    for chunk in np.array_split(v, 7):
        s.update(chunk)
    assert s.n == 101
    np.testing.assert_allclose(s.mean, v.mean(), rtol=1e-12)
    np.testing.assert_allclose(s.std, v.std(ddof=1), rtol=1e-10)


def test_metrics_compose_under_an_outer_jit():
    images, labels, sal, masks = _data(30)

    @jax.jit
    def everything(i, l, s, m):
        return (gm.rcap(linear_model, i, l, s, **SCALING)["rcap"],
                gm.deletion_insertion(linear_model, i, l, s)["iauc"],
                gm.mae(s, m), gm.log_cosh_dice(s, m), gm.select_confident(linear_model, i, l))

    inside = everything(images, labels, sal, masks)
    outside = (gm.rcap(linear_model, images, labels, sal, **SCALING)["rcap"],
               gm.deletion_insertion(linear_model, images, labels, sal)["iauc"],
               gm.mae(sal, masks), gm.log_cosh_dice(sal, masks), gm.select_confident(linear_model, images, labels))
    for a, b in zip(inside, outside):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("host", [True, False])
def test_the_metrics_sorts_equal_xla_and_numpy_with_ties_under_jit_and_vmap(host, monkeypatch):
    """gag_jax.metrics._sorting's sort / argsort / top_k_indices: numpy on CPU (gag_jax.backend.host_sort), XLA
    elsewhere; both equal numpy's stable definitions, ties (many equal values) included."""
    from gag_jax import backend
    from gag_jax.metrics import _sorting as ops

    monkeypatch.setattr(backend, "HOST_SORT_PLATFORMS", ("cpu",) if host else ())
    assert backend.host_sort("cpu") is host
    x = np.random.default_rng(5).integers(0, 9, (2, 3, 50)).astype(np.float32)  # many ties
    sort, argsort = jax.jit(ops.sort), jax.jit(ops.argsort)
    top = jax.jit(lambda a: ops.top_k_indices(a, 11))
    np.testing.assert_array_equal(sort(x), np.sort(x, axis=-1))
    np.testing.assert_array_equal(argsort(x), np.argsort(x, axis=-1, kind="stable"))
    assert argsort(x).dtype == jnp.int32 and top(x).dtype == jnp.int32
    expected = np.argsort(-x, axis=-1, kind="stable")[..., :11]  # largest first, ties to the lower index
    np.testing.assert_array_equal(top(x), expected)
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda a: ops.top_k_indices(a, 11)))(x), expected)
    np.testing.assert_array_equal(jax.vmap(ops.argsort)(x), np.argsort(x, axis=-1, kind="stable"))
