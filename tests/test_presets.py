"""Every entry of ``gj.PRESETS`` on a tiny model, the way optax's alias tests run every optimiser:
shape, range, jit-ability (the model a pytree argument) and batch independence with per-image keys."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from toy_models import tiny_conv_net

SIZE = 16
# small settings so that every method runs in about a second
FAST = {"n": 3, "chunk_size": 3}
OPTIONS = {
    "vg": {}, "gb": {}, "gradcam": {}, "sg": FAST, "vargrad": FAST, "ig": FAST, "guided_ig": FAST, "blur_ig": FAST,
    "ag": FAST, "gag": FAST, "occlusion": {"window": 4, "stride": 4}, "rise": {"n": 8, "cells": 4, "chunk_size": 8},
    "xrai": {"base_options": {"n": 2}, "scales": (50,), "segment_size": None, "min_size": 10},
    "attention_rollout": {}, "generic_attention": {},  # on a small ViT (they need attention layers)
}
ATTENTION = ("attention_rollout", "generic_attention")


@pytest.fixture(scope="module")
def setup():
    module, variables, _ = tiny_conv_net(size=SIZE, activation="relu")
    model = gj.ModelFunctions.from_module(module, variables, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    images = jax.random.normal(jax.random.PRNGKey(0), (3, SIZE, SIZE, 3))
    labels = jnp.array([0, 1, 2])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(1), jnp.arange(3))
    return model, images, labels, keys


@pytest.fixture(scope="module")
def vit_setup():
    from gag_jax.models import vit

    module = vit.ViTTiny()
    images = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 32, 3))
    variables = module.init(jax.random.PRNGKey(2), images[:1])
    model = gj.ModelFunctions.from_module(module, variables, mean=(0.5,) * 3, std=(0.5,) * 3)
    labels = jnp.array([0, 1, 2])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(1), jnp.arange(3))
    return model, images, labels, keys


def test_every_preset_is_listed_with_options():
    assert set(OPTIONS) == set(gj.PRESETS) == set(gj.METHOD_RECORDS)
    for name, record in gj.METHOD_RECORDS.items():
        assert record.function is gj.PRESETS[name] and set(OPTIONS[name]) <= set(gj.DEFAULTS[name])


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("name", list(gj.PRESETS))
def test_preset_shape_range_jit_and_batch_independence(setup, vit_setup, name):
    if name == "xrai":
        pytest.importorskip("skimage")
    model, images, labels, keys = vit_setup if name in ATTENTION else setup
    record = gj.METHOD_RECORDS[name]
    maps = np.asarray(gj.explain(name, model, images, labels, key=keys, **OPTIONS[name]))
    assert maps.shape == images.shape[:3] and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and np.isfinite(maps).all()
    top = maps.max(axis=(1, 2))  # per-image min-max: a map reaches 1, unless it is constant (all zeros)
    assert np.all((np.abs(top - 1.0) < 1e-6) | (top == 0.0))
    # each image's map depends only on the image and its key, not on the others in the batch
    alone = np.asarray(gj.explain(name, model, images[1:2], labels[1:2], key=keys[1:2], **OPTIONS[name]))
    np.testing.assert_allclose(alone[0], maps[1], atol=2e-5)
    if record.jittable:  # inside the user's own jit, the model an ordinary (pytree) argument
        fn = jax.jit(gj.explainer_fn(name, **OPTIONS[name]))
        np.testing.assert_allclose(np.asarray(fn(model, images, labels, keys)), maps, atol=2e-5)
    if record.kind == "composition" or record.random:
        assert gj.explainers.needs_key(name, OPTIONS[name]) == (name not in ("vg", "gb", "ig", "guided_ig", "blur_ig")
                                                                 and name != "gradcam")


def test_every_preset_is_a_row_for_evaluate_and_a_method_for_sanity():
    from gag_jax.experiments.specs import parse_methods

    rows = parse_methods("occlusion,rise,xrai,rise_r")
    assert [r.method for r in rows] == ["occlusion", "rise", "xrai", "rise"] and rows[-1].reverse
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        parse_methods("lime")
