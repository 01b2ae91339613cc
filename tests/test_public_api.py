"""The public names (the README's API) exist with the documented signatures (code outside imports them)."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.models import load


def params(fn):
    return inspect.signature(fn).parameters


def test_explain_and_guided_absolute_grad_signatures():
    p = params(gj.explain)
    assert list(p)[:4] == ["method", "model_fn", "images", "labels"]
    assert p["key"].kind is inspect.Parameter.KEYWORD_ONLY
    p = params(gj.guided_absolute_grad)
    assert list(p)[:4] == ["model_fn", "images", "labels", "key"]
    assert (p["n"].default, p["noise_level"].default, p["percentile"].default) == (20, 0.15, 0.85)
    assert set(gj.METHODS) == {"vg", "sg", "vargrad", "ig", "guided_ig", "blur_ig", "gb", "gradcam", "ag", "gag"}


def test_metric_and_reverse_signatures():
    p = params(gj.metrics.rcap)
    assert list(p)[:4] == ["model_fn", "images", "labels", "saliency"]
    assert (p["lower_bound"].default, p["interval"].default) == (50, 10)
    # since 275e51d the input scaling defaults to None (the model's, from gj.ModelFunctions), no longer ImageNet's
    assert p["mean"].default is None and p["std"].default is None
    assert p["baseline"].default == "black"
    assert list(params(gj.metrics.deletion_insertion))[:4] == ["model_fn", "images", "labels", "saliency"]
    assert list(params(gj.metrics.log_cosh_dice))[:2] == ["saliency", "masks"]
    assert list(params(gj.metrics.mae))[:2] == ["saliency", "masks"]
    p = params(gj.reverse)
    assert list(p)[:2] == ["saliency", "key"] and (p["keep"].default, p["swap"].default) == (0.07, 0.10)
    assert list(params(gj.aggregations.guided))[:2] == ["grads", "percentile"]
    assert list(params(load))[:2] == ["name", "checkpoint_path"]


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_returned_shapes_follow_the_contract():
    w = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 3))

    def model_fn(x):
        s = jnp.sum(jnp.tanh(x * w), axis=(1, 2, 3))
        return jnp.stack([s, -s, 0.5 * s], -1)

    images = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    labels = jnp.array([0, 2])
    maps = gj.guided_absolute_grad(model_fn, images, labels, jax.random.PRNGKey(2))
    assert maps.shape == (2, 8, 8) and maps.dtype == jnp.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    out = gj.metrics.rcap(model_fn, images, labels, maps, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    assert out["rcap"].shape == (2,) and out["ratios"].shape == (2, 5) and out["probs"].shape == (2, 5)
    di = gj.metrics.deletion_insertion(model_fn, images, labels, maps)
    assert di["dauc"].shape == (2,) and di["iauc"].shape == (2,)
    masks = (np.arange(64).reshape(8, 8) < 20).astype(np.float32)[None].repeat(2, 0)
    assert gj.metrics.log_cosh_dice(maps, masks).shape == (2,) and gj.metrics.mae(maps, masks).shape == (2,)
    assert gj.aggregations.guided(jnp.ones((3, 2, 8, 8, 3)), 0.5).shape == (2, 8, 8, 3)
