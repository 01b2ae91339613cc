"""gj.metrics.score (the one scoring path), metric names, and the one padding rule (gj.data.pad_rows)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
import gag_jax.metrics as gm

B, H, W, C, K = 3, 12, 12, 3, 4
_WEIGHTS = (np.random.default_rng(1).normal(size=(H * W * C, K)) * 0.05).astype(np.float32)


# the toy model is a bare callable: RCAP's black baseline needs its input scaling given explicitly
SCALING = {"mean": gm.IMAGENET_MEAN, "std": gm.IMAGENET_STD}


def linear_model(x):
    return x.reshape(x.shape[0], -1) @ jnp.asarray(_WEIGHTS)


def _data(seed=0, b=B):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, H, W, C)).astype(np.float32)
    labels = rng.integers(0, K, b).astype(np.int32)
    maps = rng.uniform(size=(b, H, W)).astype(np.float32)
    masks = (rng.uniform(size=(b, H, W)) > 0.7).astype(np.float32)
    return images, labels, maps, masks


BUILT_IN = ("log_cosh_dice", "mae", "pointing_game", "rcap", "dauc", "iauc", "road_morf", "road_lerf", "sparseness",
            "complexity")


def test_metric_records_are_the_one_source():
    assert set(BUILT_IN) <= set(gm.metric_names())
    assert set(gm.mask_metrics()) >= {"log_cosh_dice", "mae", "pointing_game"}
    assert all("masks" in gm.metric(m).needs for m in gm.mask_metrics())
    directions = {m: gm.metric(m).higher_is_better for m in BUILT_IN}
    assert directions == {"log_cosh_dice": False, "mae": False, "pointing_game": True, "rcap": True, "dauc": False,
                          "iauc": True, "road_morf": False, "road_lerf": True, "sparseness": True,
                          "complexity": False}
    assert gm.metric("dice").name == "log_cosh_dice" and gm.metric("gini").name == "sparseness"
    # cost: RCAP 5 partitions, DAUC + IAUC one call of 2 x 10 fractions, ROAD 9 per order
    assert gm.forward_passes_per_map(("rcap", "dauc", "iauc")) == 25
    assert gm.forward_passes_per_map(("rcap",), {"rcap": {"interval": 25}}) == 2
    assert gm.forward_passes_per_map(("road_morf", "road_lerf", "sparseness")) == 18
    assert gm.default_metrics(False) == ("rcap", "dauc", "iauc")
    assert gm.default_metrics(True) == ("log_cosh_dice", "mae", "rcap", "dauc", "iauc")
    from gag_jax.experiments import runner
    assert runner.parse_metrics("road_lerf,pointing,sparseness,complexity,road_morf", True) == \
        ("pointing_game", "road_morf", "road_lerf", "sparseness", "complexity")
    with pytest.raises(ValueError, match="masks"):
        runner.parse_metrics("pointing_game", False)
    assert gm.check_metrics("iauc, rcap", False) == ("rcap", "iauc")
    with pytest.raises(ValueError, match="unknown"):
        gm.check_metrics(["rcap", "roar"], True)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_score_equals_the_metric_functions():
    images, labels, maps, masks = _data()
    key = jax.random.PRNGKey(3)
    out = gm.score(linear_model, images, labels, maps, masks, metrics=BUILT_IN, copies_per_call=7,
                   options={"rcap": {"interval": 25}, "road": {"fractions": (0.2, 0.6), "key": key},
                            "pointing_game": {"tolerance": 2}, "mae": {"sqrt": True}}, **SCALING)
    r = gm.rcap(linear_model, images, labels, maps, interval=25, **SCALING)
    d = gm.deletion_insertion(linear_model, images, labels, maps)
    expected = {
        "rcap": r["rcap"], "rcap_ratios": r["ratios"], "rcap_probs": r["probs"],
        "dauc": d["dauc"], "iauc": d["iauc"], "deletion_curve": d["deletion_curve"],
        "insertion_curve": d["insertion_curve"],
        "log_cosh_dice": gm.log_cosh_dice(maps, masks), "mae": gm.mae(maps, masks, sqrt=True),
        "pointing_game": gm.pointing_game(maps, masks, tolerance=2),
        "sparseness": gm.sparseness(maps), "complexity": gm.complexity(maps),
    }
    for order in ("morf", "lerf"):
        ro = gm.road(linear_model, images, labels, maps, fractions=(0.2, 0.6), order=order, key=key,
                     std=gm.IMAGENET_STD)
        expected[f"road_{order}"], expected[f"road_{order}_curve"] = ro["auc"], ro["curve"]
    assert set(out) == set(expected)
    for k, v in expected.items():
        assert isinstance(out[k], np.ndarray) and out[k].shape[0] == B, k
        np.testing.assert_allclose(out[k], np.asarray(v), atol=1e-6, err_msg=k)


def test_score_errors():
    images, labels, maps, _ = _data()
    with pytest.raises(ValueError, match="masks"):
        gm.score(linear_model, images, labels, maps, metrics=("mae",))
    with pytest.raises(ValueError, match="option groups"):
        gm.score(linear_model, images, labels, maps, options={"dauc": {}})
    with pytest.raises(ValueError, match="order"):
        gm.score(linear_model, images, labels, maps, metrics=("road_morf",), options={"road": {"order": "lerf"}})
    assert set(gm.score(linear_model, images, labels, maps, **SCALING)) == {
        "rcap", "rcap_ratios", "rcap_probs", "dauc", "iauc", "deletion_curve", "insertion_curve"}


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_runner_and_demo_score_through_score():
    from gag_jax.experiments import demo, runner
    images, labels, maps, masks = _data(5, b=5)
    model = gj.ModelFunctions(logits=linear_model, **SCALING)  # carries its input scaling (demo's RCAP needs it)
    got = runner.score_batch(model, images, labels, maps, masks, ("mae", "rcap", "iauc"), mean=(0.5,), std=(0.25,),
                             metric_batch_size=4)
    want = gm.score(linear_model, images, labels, maps, masks, metrics=("mae", "rcap", "iauc"), mean=(0.5,),
                    std=(0.25,))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-6)
    # batches of 2: the last one (1 image) padded, and the padding dropped
    scored = demo.score_arrays(model, images, labels, maps, batch_size=2, metric_batch_size=None)
    whole = gm.score(linear_model, images, labels, maps, metrics=("rcap", "dauc", "iauc"), **SCALING)
    for k in ("rcap", "dauc", "iauc"):
        np.testing.assert_allclose(scored[k], whole[k], atol=1e-6)
    np.testing.assert_allclose(scored["ratios"], whole["rcap_ratios"], atol=1e-6)
    np.testing.assert_allclose(scored["probs"], whole["rcap_probs"], atol=1e-6)


def test_pad_rows_repeats_the_last_row_for_arrays_and_pytrees():
    x = np.arange(6).reshape(3, 2)
    padded, valid = gj.data.pad_rows(x, 5)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert valid.tolist() == [True] * 3 + [False] * 2
    tree, valid = gj.data.pad_rows({"a": jnp.arange(2), "b": (np.array(["p", "q"]),)}, 3)
    assert isinstance(tree["a"], jax.Array) and tree["a"].tolist() == [0, 1, 1]  # device arrays stay on device
    assert tree["b"][0].tolist() == ["p", "q", "q"] and valid.tolist() == [True, True, False]
    same, valid = gj.data.pad_rows(x, 3)
    np.testing.assert_array_equal(same, x)
    assert valid.all()
    batch = gj.data.pad_batch({"x": x, "names": np.array(["a", "b", "c"])}, 4)
    assert batch["names"].tolist() == ["a", "b", "c", "c"] and batch["valid"].tolist() == [True] * 3 + [False]
    assert not hasattr(gj.distributed, "pad_batch")  # the old alias of pad_rows is gone
    with pytest.raises(ValueError, match="leading axis"):
        gj.data.pad_rows({"a": np.zeros(2), "b": np.zeros(3)}, 4)
    with pytest.raises(ValueError, match="cannot be padded"):
        gj.data.pad_rows(x, 2)


def test_a_registered_metric_is_scored_like_a_built_in_one():
    """A metric of one's own through the public registry: scored, with its curve, options and direction."""
    images, labels, maps, masks = _data()

    def centre_mass(model, images, labels, maps, *, border=1):
        inner = maps[:, border:-border, border:-border].sum((1, 2))
        return {"centre_mass": inner / maps.sum((1, 2)), "centre_mass_curve": np.stack([inner, inner], 1)}

    def on_mask(model, images, labels, maps, *, masks):
        return (maps * masks).sum((1, 2))

    try:
        record = gm.register("centre_mass", centre_mass, label="Centre", higher_is_better=False,
                             curves=("centre_mass_curve",), category="localisation")
        gm.register("on_mask", on_mask, needs=("masks",))
        assert record.source["module"] == __name__ and len(record.source["sha256"]) == 64
        out = gm.score(linear_model, images, labels, maps, masks, metrics="rcap,centre_mass,on_mask",
                       options={"centre_mass": {"border": 2}}, **SCALING)
        want = maps[:, 2:-2, 2:-2].sum((1, 2)) / maps.sum((1, 2))
        np.testing.assert_allclose(out["centre_mass"], want, rtol=1e-6)
        np.testing.assert_allclose(out["on_mask"], (maps * masks).sum((1, 2)), rtol=1e-6)
        assert out["centre_mass_curve"].shape == (B, 2) and "rcap" in out
        assert gm.check_metrics("centre_mass,rcap", False) == ("rcap", "centre_mass")  # registry order
        with pytest.raises(ValueError, match="masks"):
            gm.check_metrics("on_mask", False)
        with pytest.raises(ValueError, match="built in"):
            gm.register("rcap", centre_mass)
        with pytest.raises(ValueError, match="already registered"):
            gm.register("centre_mass", centre_mass)
        gm.register("bad_shape", lambda model, images, labels, maps: maps)
        with pytest.raises(ValueError, match=r"'bad_shape' returned 'bad_shape' of shape \(3, 12, 12\)"):
            gm.score(linear_model, images, labels, maps, metrics="bad_shape")
    finally:
        for name in ("centre_mass", "on_mask", "bad_shape"):
            gm.unregister(name)
    with pytest.raises(ValueError, match="unknown metric 'centre_mass'"):
        gm.check_metrics("centre_mass", False)
