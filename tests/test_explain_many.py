"""``gj.explain_many``: one gradient sweep per family, each map equal to ``gj.explain``'s."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from toy_models import tiny_conv_net

SIZE = 12
ROWS = ["vg", "sg", "vargrad", "ag", "gag", ("gag", {"percentile": 0.45}), ("vg", {"guide": True}), "ig",
        ("ig", {"interpretation": "absolute"}), ("ig", {"guide": True}), "blur_ig", "gb", "gradcam"]


@pytest.fixture(scope="module")
def setup():
    module, variables, _ = tiny_conv_net(size=SIZE, activation="relu")
    model = gj.ModelFunctions.from_module(module, variables, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, 3))
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(5), jnp.array([11, 42]))  # image ids
    return model, images, jnp.array([0, 2]), keys


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_every_map_equals_explain(setup):
    model, images, labels, keys = setup
    many = gj.explain_many(ROWS, model, images, labels, key=keys, n=4, chunk_size=2)
    assert list(many) == [gj.explainers.method_key(*(r if isinstance(r, tuple) else (r,))) for r in ROWS]
    for row in ROWS:
        name, own = row if isinstance(row, tuple) else (row, {})
        opts = {k: v for k, v in {"n": 4, "chunk_size": 2}.items() if k in gj.DEFAULTS[name]}
        alone = gj.explain(name, model, images, labels, key=keys, **{**opts, **own})
        np.testing.assert_allclose(many[gj.explainers.method_key(name, own)], alone, atol=2e-5, err_msg=str(row))


def test_sweeps_are_shared_by_family():
    groups = gj.explainers.sweeps_of(ROWS, n=4)
    as_sets = [set(g) for g in groups]
    assert {"sg", "vargrad", "ag", "gag", "gag[percentile=0.45]", "vg[guide=True]"} in as_sets  # one noise sweep
    # one straight path: the IG variants (+, -, A, G, GA) only read the path's gradients differently
    assert {"ig", "ig[interpretation='absolute']", "ig[guide=True]"} in as_sets
    assert {"vg"} in as_sets and {"gb"} in as_sets and {"gradcam"} in as_sets and {"blur_ig"} in as_sets
    assert len(groups) == 6


def test_duplicate_rows_are_one_computation_and_repeated_keys_are_refused(setup):
    model, images, labels, keys = setup
    many = gj.explain_many(["gag", ("gag", {"percentile": 0.85})], model, images, labels, key=keys, n=4)
    np.testing.assert_array_equal(many["gag"], many["gag[percentile=0.85]"])
    with pytest.raises(ValueError, match="listed twice"):
        gj.explain_many(["gag", "gag"], model, images, labels, key=keys, n=4)


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_an_images_maps_depend_only_on_its_own_key(setup):
    model, images, labels, keys = setup
    both = gj.explain_many(["gag", "sg"], model, images, labels, key=keys, n=4)
    second = gj.explain_many(["sg", "gag"], model, images[1:], labels[1:], key=keys[1:], n=4)
    for name in ("gag", "sg"):
        np.testing.assert_allclose(both[name][1], second[name][0], atol=2e-5)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_one_key_policy_across_entry_points(setup):
    """The same (method, image, seed) gives the same map from gj.explain with gj.keys.image_keys, the
    demo / explain commands' batching (any batch size), evaluate's stage 2 and the sanity test."""
    from gag_jax.experiments import jobs, specs, stages

    model, images, labels, _ = setup
    files = ["a/cat.png", "b/dog.jpg"]
    keys = gj.keys.image_keys(7, ["cat.png", "dog.jpg"])
    reference = np.asarray(gj.explain("gag", model, images, labels, key=keys, n=4))
    for batch_size in (1, 2):
        job = jobs.Job("unused", seed=7, n=4, batch_size=batch_size)
        got = job.explain(model, np.asarray(images), np.asarray(labels), job.keys(files), "gag")
        np.testing.assert_allclose(got, reference, atol=2e-5)
    rows = stages.explain_rows(specs.parse_methods("gag,ag"), model, images, labels,
                               gj.keys.file_keys(7, files), {"n": 4})
    np.testing.assert_allclose(rows["gag"], reference, atol=2e-5)
    raw = gj.sanity._attributions("gag", model, images, labels, keys, {"n": 4}, batch_size=1)
    np.testing.assert_allclose(gj.postprocess.to_saliency(jnp.asarray(raw)), reference, atol=2e-5)
    # another seed, another draw
    assert np.abs(np.asarray(gj.explain("gag", model, images, labels, key=gj.keys.image_keys(8, files), n=4))
                  - reference).max() > 1e-3
