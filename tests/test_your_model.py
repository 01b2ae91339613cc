"""A user's own model: weights that change between calls, other input scaling, Flax NNX, named layers.

Every expected value here comes from an independent computation: a closed form of a linear model,
a numpy Grad-CAM from the activations and gradients computed by hand, or the same method on a
model object built from scratch with the new weights (a fresh trace, nothing cached).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gag_jax as gj

KEY = jax.random.PRNGKey(0)


# ---------------------------------------------------------------------------------------------
# models


class Body(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.softplus(nn.Conv(5, (3, 3), name="conv")(nn.softplus(nn.Conv(6, (3, 3))(x))))


class LinenNet(nn.Module):
    """A CNN whose Grad-CAM layer is the submodule ``body`` (no features/head methods)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="fc")(Body(name="body")(x).mean(axis=(1, 2)))


class NnxBody(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 6, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(6, rngs=rngs)
        self.conv2 = nnx.Conv(6, 5, (3, 3), rngs=rngs)

    def __call__(self, x):
        return nnx.softplus(self.conv2(nnx.softplus(self.bn(self.conv1(x)))))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.body = NnxBody(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.fc = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc(self.drop(self.body(x).mean(axis=(1, 2))))


def _data(size=16, batch=2, seed=1):
    images = jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))
    return images, jnp.arange(batch, dtype=jnp.int32) % 3


def _linen():
    module = LinenNet()
    images, labels = _data()
    return module, module.init(jax.random.PRNGKey(2), images), images, labels


def _changed(variables, seed):
    """New weights for the head (not a rescaling, which min-max normalisation would hide)."""
    params = dict(variables["params"])
    kernel = variables["params"]["fc"]["kernel"]
    params["fc"] = {"kernel": jax.random.normal(jax.random.PRNGKey(seed), kernel.shape),
                    "bias": variables["params"]["fc"]["bias"]}
    return {**variables, "params": params}


# ---------------------------------------------------------------------------------------------
# 1. weights are never baked in


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_linen_model_with_new_variables_gives_new_maps_and_rcap():
    module, variables, images, labels = _linen()
    new_variables = _changed(variables, 11)
    model = gj.ModelFunctions.from_module(module, variables, mean=(0.5,), std=(0.25,))
    first = gj.explain("gag", model, images, labels, key=KEY, n=4)
    changed = gj.explain("gag", gj.ModelFunctions.from_module(module, new_variables, mean=(0.5,), std=(0.25,)),
                         images, labels, key=KEY, n=4)
    # the reference: a plain function of the new weights, a new object, traced from scratch
    reference = gj.explain("gag", lambda x: module.apply(new_variables, x), images, labels, key=KEY, n=4)
    assert float(jnp.abs(first - changed).max()) > 1e-2
    np.testing.assert_allclose(changed, reference, atol=1e-5)
    r_first = gj.metrics.rcap(model, images, labels, first)["rcap"]
    r_new = gj.metrics.rcap(model.replace(variables=new_variables), images, labels, first)["rcap"]
    r_ref = gj.metrics.rcap(lambda x: module.apply(new_variables, x), images, labels, first, mean=(0.5,),
                            std=(0.25,))["rcap"]
    assert float(jnp.abs(r_first - r_new).max()) > 1e-4
    np.testing.assert_allclose(r_new, r_ref, rtol=1e-5)


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_model_functions_replace_reuses_the_compiled_program():
    module, variables, images, labels = _linen()
    model = gj.ModelFunctions.from_module(module, variables)
    traced = []

    def method(model, images, labels, key=None):
        traced.append(1)  # Python side effect: once per trace
        return jax.grad(lambda x: model(x)[:, 0].sum())(images)

    method = gj.Method("method", method, "attribution", random=False)

    a = gj.explain(method, model, images, labels)
    b = gj.explain(method, model.replace(variables=_changed(variables, 12)), images, labels)
    assert len(traced) == 1
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_nnx_module_changed_in_place_gives_new_maps():
    model = NnxNet(nnx.Rngs(0))
    images, labels = _data()
    before = gj.explain("gag", model, images, labels, key=KEY, n=4)
    model.fc.kernel[...] = jax.random.normal(jax.random.PRNGKey(13), model.fc.kernel.shape)
    after = gj.explain("gag", model, images, labels, key=KEY, n=4)
    fresh = nnx.merge(*nnx.split(model))  # a new object with the new weights
    fresh.eval()
    graphdef, state = nnx.split(fresh)
    reference = gj.explain("gag", lambda x: nnx.merge(graphdef, state)(x), images, labels, key=KEY, n=4)
    assert float(jnp.abs(before - after).max()) > 1e-2
    np.testing.assert_allclose(after, reference, atol=1e-5)


def test_nnx_module_left_in_train_mode_is_explained_in_eval_mode():
    model = NnxNet(nnx.Rngs(0))  # train mode: batch norm would update its statistics, dropout is on
    images, labels = _data()
    maps = gj.explain("vg", model, images, labels)
    stats_before = np.asarray(model.body.bn.mean[...])
    model.eval()
    graphdef, state = nnx.split(model)
    reference = gj.explain("vg", lambda x: nnx.merge(graphdef, state)(x), images, labels)
    np.testing.assert_allclose(maps, reference, atol=1e-6)
    np.testing.assert_array_equal(stats_before, np.asarray(model.body.bn.mean[...]))


def test_plain_callable_behaviour_is_documented_where_accepted():
    for doc in (gj.explain.__doc__, gj.ModelFunctions.__doc__):
        assert "plain callable" in doc and "first" in doc


# ---------------------------------------------------------------------------------------------
# 2. the model's input scaling travels with it


def _pixel_model(weights):
    """A linear model that takes pixels in [0, 1] (mean 0, std 1)."""
    def logits(x):
        s = jnp.sum(x * weights, axis=(1, 2, 3))
        return jnp.stack([s, -s], axis=-1)
    return logits


def test_ig_black_baseline_comes_from_the_model_scaling():
    weights = jax.random.normal(jax.random.PRNGKey(3), (8, 8, 3))
    pixels = jax.random.uniform(jax.random.PRNGKey(4), (2, 8, 8, 3))
    labels = jnp.zeros(2, jnp.int32)
    model = gj.ModelFunctions(_pixel_model(weights), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    raw = gj.explain("ig", model, pixels, labels, n=8, postprocess=False)
    # closed form for a linear model and the black (pixel 0) baseline: w * (x - 0), exactly
    np.testing.assert_allclose(raw, np.asarray(weights)[None] * np.asarray(pixels), rtol=1e-5, atol=1e-6)
    # the old silent default (ImageNet statistics) gives a baseline below black and another map
    imagenet = gj.explain("ig", model, pixels, labels, n=8, postprocess=False, mean=gj.IMAGENET_MEAN,
                          std=gj.IMAGENET_STD)
    assert float(jnp.abs(imagenet - raw).max()) > 0.1
    with pytest.raises(ValueError, match="input scaling"):
        gj.explain("ig", _pixel_model(weights), pixels, labels, n=8)


@pytest.mark.parametrize("method", ["guided_ig", "occlusion", "xrai"])
def test_pixel_space_methods_refuse_an_unknown_scaling(method):
    pytest.importorskip("skimage")
    weights = jax.random.normal(jax.random.PRNGKey(3), (16, 16, 3))
    pixels = jax.random.uniform(jax.random.PRNGKey(4), (1, 16, 16, 3))
    options = {"occlusion": {"window": 4, "stride": 4}, "xrai": {"scales": (50,)}}.get(method, {"n": 4})
    with pytest.raises(ValueError, match="input scaling"):
        gj.explain(method, _pixel_model(weights), pixels, jnp.zeros(1, jnp.int32), **options)
    model = gj.ModelFunctions(_pixel_model(weights), mean=(0.0,), std=(1.0,))
    assert gj.explain(method, model, pixels, jnp.zeros(1, jnp.int32), **options).shape == (1, 16, 16)


def test_rcap_black_is_pixel_zero_of_the_model():
    weights = jax.random.normal(jax.random.PRNGKey(5), (8, 8, 3))
    pixels = jax.random.uniform(jax.random.PRNGKey(6), (1, 8, 8, 3))
    saliency = jax.random.uniform(jax.random.PRNGKey(7), (1, 8, 8))
    model = gj.ModelFunctions(_pixel_model(weights), mean=(0.0,) * 3, std=(1.0,) * 3)
    out = gj.metrics.rcap(model, pixels, jnp.zeros(1, jnp.int32), saliency)
    # numpy: recover the top (100 - p)% of the map, pixel 0 elsewhere; softmax of the two logits
    s, x, w = np.asarray(saliency[0]), np.asarray(pixels[0], np.float64), np.asarray(weights, np.float64)
    probs = []
    for p in (90, 80, 70, 60, 50):
        kept = np.where((s >= np.percentile(s, p))[..., None], x, 0.0)
        z = float(np.sum(kept * w))
        probs.append(1.0 / (1.0 + np.exp(-2 * z)))
    np.testing.assert_allclose(out["probs"][0], probs, rtol=1e-4)
    with pytest.raises(ValueError, match="input scaling"):
        gj.metrics.rcap(_pixel_model(weights), pixels, jnp.zeros(1, jnp.int32), saliency)


def test_zoo_models_carry_their_scaling():
    models = pytest.importorskip("gag_jax.models")
    module, variables = models.load("efficientnet_lite0")
    model = models.model_functions(module, variables)
    assert model.scaling == models.input_normalization("efficientnet_lite0")
    module_b0 = models.get_model("efficientnet_b0")[0](num_classes=4)
    assert models.model_functions(module_b0, {}).scaling == models.input_normalization("efficientnet_b0")


# ---------------------------------------------------------------------------------------------
# 3. Grad-CAM on a named layer, NNX end to end


def _numpy_gradcam(activations, grads, size):
    weights = np.asarray(grads).mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * np.asarray(activations)).sum(-1), 0.0)
    return np.asarray(jax.image.resize(jnp.asarray(cam), (cam.shape[0], size, size), "bilinear"))


def test_layer_gradcam_on_a_linen_submodule_matches_a_hand_computation():
    module, variables, images, labels = _linen()
    model = gj.ModelFunctions.from_module(module, variables)
    raw = gj.explain("gradcam", model, images, labels, layer="body", postprocess=False)
    body = Body()
    activations = body.apply({"params": variables["params"]["body"]}, images)
    dense = nn.Dense(3)

    def picked(a):
        logits = dense.apply({"params": variables["params"]["fc"]}, a.mean(axis=(1, 2)))
        return jnp.take_along_axis(logits, labels[:, None], axis=1).sum()

    expected = _numpy_gradcam(activations, jax.grad(picked)(activations), 16)
    np.testing.assert_allclose(raw[..., 0], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no layer 'head'.*'body'"):
        gj.explain("gradcam", model, images, labels, layer="head")
    with pytest.raises(ValueError, match="needs a layer"):
        gj.explain("gradcam", model, images, labels)


def test_layer_gradcam_on_an_nnx_submodule_matches_a_hand_computation():
    net = NnxNet(nnx.Rngs(0))
    net.eval()
    images, labels = _data()
    raw = gj.explain("gradcam", net, images, labels, layer="body", postprocess=False)
    activations = net.body(images)

    def picked(a):
        return jnp.take_along_axis(net.fc(a.mean(axis=(1, 2))), labels[:, None], axis=1).sum()

    expected = _numpy_gradcam(activations, jax.grad(picked)(activations), 16)
    np.testing.assert_allclose(raw[..., 0], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="'body/conv2'"):
        gj.explain("gradcam", net, images, labels, layer="conv9")


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_nnx_model_scored_and_sanity_checked():
    net = NnxNet(nnx.Rngs(0))
    model = gj.ModelFunctions.from_nnx(net, mean=(0.5,) * 3, std=(0.25,) * 3)
    images, labels = _data(size=32)
    maps = gj.explain("gag", model, images, labels, key=KEY, n=4)
    values = gj.metrics.score(model, images, labels, maps, metrics="rcap,dauc,iauc")
    assert values["rcap"].shape == (2,) and np.all(np.isfinite(values["rcap"]))
    result = gj.sanity.model_randomisation("gag", model, images, labels, KEY, fresh=NnxNet(nnx.Rngs(9)), n=4,
                                           hog_pixels_per_cell=(4, 4))
    # forward order, top first; the batch norm joins the conv it normalises
    assert result["steps"] == ["fc", "body"]
    assert result["spearman_abs"].shape == (2, 2)
    # randomising every layer changes the maps
    assert result["spearman_abs"][-1].mean() < 0.9


def test_plain_function_closing_over_its_weights_is_named_not_silent():
    weights = jax.random.normal(jax.random.PRNGKey(3), (16, 16, 3))
    pixels = jax.random.uniform(jax.random.PRNGKey(4), (1, 16, 16, 3))

    def reads_global_weights(x):  # the weights are a constant of the compiled program
        s = jnp.sum(x * weights, axis=(1, 2, 3))
        return jnp.stack([s, -s], axis=-1)

    with pytest.warns(UserWarning, match="closes over 3,072 bytes.*from_apply"):
        gj.explain("vg", reads_global_weights, pixels, jnp.zeros(1, jnp.int32))
    model = gj.ModelFunctions.from_apply(lambda w, x: jnp.stack([jnp.sum(x * w, axis=(1, 2, 3)),
                                                                 -jnp.sum(x * w, axis=(1, 2, 3))], -1), weights)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weights as leaves: nothing to warn about
        gj.explain("vg", model, pixels, jnp.zeros(1, jnp.int32))


def test_backend_policy_reads_where_the_inputs_live():
    on_cpu = jax.device_put(jnp.ones((1, 4, 4, 3)), jax.devices("cpu")[0])
    assert gj.backend.platform_of(on_cpu) == "cpu"
    assert gj.backend.sample_chunk(20, 4, "cpu") == 1 and gj.backend.sample_chunk(20, 4, "gpu") == 20
    from gag_jax.metrics._common import resolve_batch_size

    assert resolve_batch_size("auto", on_cpu) == gj.backend.CPU_METRIC_COPIES
    assert gj.backend.depthwise_impl("cpu") == "slices" and gj.backend.depthwise_impl("gpu") == "grouped"
