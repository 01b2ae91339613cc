"""Guided Backprop by jaxpr rewrite against hand-built guided models, a numpy reference and properties."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.gradients import (
    guided_backprop,
    guided_backprop_activation,
    guided_logit_gradient,
    logit_gradient,
)
from gag_jax.models import densenet, efficientnet, resnet

SHAPE = (2, 32, 32, 3)


def random_variables(module, seed=0):
    """He-scaled kernels, well-conditioned batch-norm statistics (numpy; no jit of ``init``)."""
    rng = np.random.default_rng(seed)
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(SHAPE, jnp.float32))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, template)


TINY = {
    "resnet": resnet.ResNetTiny,
    "densenet": densenet.DenseNetTiny,
    "efficientnet_lite": functools.partial(efficientnet.EfficientNetLite, num_classes=10, width_mult=0.1,
                                           depth_mult=0.1, image_size=32),
}


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("family", sorted(TINY))
def test_rewrite_equals_the_hand_built_guided_model(family):
    plain, guided = TINY[family](), TINY[family](guided_backprop=True)
    variables = random_variables(plain)
    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    labels = jnp.array([3, 7])

    @jax.jit
    def gradients(v, a):
        model_fn = functools.partial(plain.apply, v)
        return (guided_logit_gradient()(model_fn, a, labels),
                logit_gradient()(functools.partial(guided.apply, v), a, labels),
                logit_gradient()(model_fn, a, labels))

    rewritten, hand_built, ordinary = (np.asarray(g) for g in gradients(variables, x))
    assert np.abs(hand_built).max() > 0
    np.testing.assert_allclose(rewritten, hand_built, rtol=1e-6, atol=1e-7 * np.abs(hand_built).max())
    assert np.abs(ordinary - hand_built).max() > 1e-3 * np.abs(hand_built).max()  # guiding changed something


def test_silu_model_is_a_clear_error_naming_the_activation():
    module = efficientnet.EfficientNet(num_classes=4, width_mult=0.1, depth_mult=0.1)
    variables = random_variables(module)
    with pytest.raises(ValueError, match="'silu'"):
        jax.eval_shape(jax.grad(lambda a: guided_backprop(functools.partial(module.apply, variables))(a).sum()),
                       jax.ShapeDtypeStruct(SHAPE, jnp.float32))


@pytest.mark.parametrize("activation,name", [(jax.nn.sigmoid, "sigmoid"), (jnp.tanh, "tanh"), (jax.nn.gelu, "tanh"),
                                             (functools.partial(jax.nn.gelu, approximate=False), "erf"),
                                             (jax.nn.leaky_relu, "leaky_relu"), (jax.nn.elu, "elu"),
                                             (jax.nn.softplus, "softplus")])
def test_smooth_activations_are_refused_by_name(activation, name):
    with pytest.raises(ValueError, match=name):
        guided_backprop(lambda x: activation(x) * 2.0)(jnp.ones(3))


def test_activations_off_the_input_path_are_ignored():
    w = jnp.array([0.5, -1.0, 2.0])
    out = guided_backprop(lambda x: jnp.tanh(w) * jax.nn.relu(x))(jnp.ones(3))  # tanh of a constant
    np.testing.assert_allclose(out, np.tanh(np.asarray(w)), rtol=1e-6)


def _mlp(params, x, relu, relu6):
    """Plain function (no Flax): relu -> dense -> relu6 -> dense -> clip, logits (B, 2)."""
    w1, w2, w3 = params
    h = relu(x.reshape(x.shape[0], -1) @ w1)
    h = relu6(3.0 * h @ w2)
    return h @ w3


def test_plain_function_rewrite_equals_hand_built_and_numpy():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in ((48, 16), (16, 12), (12, 2))]
    x = jnp.asarray(rng.standard_normal((3, 4, 4, 3)).astype(np.float32))
    labels = jnp.array([0, 1, 1])
    plain = functools.partial(_mlp, params, relu=jax.nn.relu, relu6=jax.nn.relu6)
    written_out = functools.partial(_mlp, params, relu=lambda z: jnp.maximum(z, 0.0), relu6=lambda z: jnp.clip(z, 0, 6))
    hand = functools.partial(_mlp, params, relu=guided_backprop_activation(jax.nn.relu),
                             relu6=guided_backprop_activation(jax.nn.relu6))
    expected = np.asarray(logit_gradient()(hand, x, labels))

    # numpy: backward through each guided activation, positive gradients where the forward was in range
    w1, w2, w3 = (p.astype(np.float64) for p in params)
    xf = np.asarray(x, np.float64).reshape(3, -1)
    z1 = xf @ w1
    z2 = 3.0 * np.maximum(z1, 0) @ w2
    g = w3[:, np.asarray(labels)].T
    g = np.where((z2 > 0) & (z2 < 6) & (g > 0), g, 0)
    g = 3.0 * g @ w2.T
    g = np.where((z1 > 0) & (g > 0), g, 0) @ w1.T
    np.testing.assert_allclose(expected.reshape(3, -1), g, rtol=1e-5, atol=1e-6)

    for model_fn in (plain, written_out):
        np.testing.assert_allclose(guided_logit_gradient()(model_fn, x, labels), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(guided_backprop(model_fn)(x), model_fn(x))  # forward unchanged
    # gj.explain("gb") on a plain callable, and with a hand-built copy, give the same map
    np.testing.assert_allclose(gj.explain("gb", plain, x, labels, postprocess=False), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gj.explain("gb", gj.ModelFunctions(plain, guided_logits=hand), x, labels),
                               gj.explain("gb", plain, x, labels), atol=1e-6)


class _ProbedNet(nn.Module):
    """Conv net whose every ReLU input carries an additive probe: d out / d probe = gradient entering the ReLU."""

    @nn.compact
    def __call__(self, x, probes):
        h = nn.relu(nn.Conv(4, (3, 3))(x) + probes[0])
        h = nn.relu(nn.Conv(5, (3, 3))(h) + probes[1])
        h = jnp.clip(nn.Conv(3, (3, 3))(h) + probes[2], 0.0, 6.0)
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("seed", range(2))
def test_no_negative_gradient_crosses_a_relu(seed):
    net = _ProbedNet()
    x = jax.random.normal(jax.random.PRNGKey(seed), (2, 6, 6, 3))
    probes = [jnp.zeros((2, 6, 6, c)) for c in (4, 5, 3)]
    variables = net.init(jax.random.PRNGKey(100 + seed), x, probes)
    cotangent = jax.random.normal(jax.random.PRNGKey(200 + seed), (2, 3))  # mixed signs at the logits

    def gradients(fn):
        _, vjp = jax.vjp(lambda p, a: fn(variables, a, p), probes, x)
        return vjp(cotangent)

    guided_probes, guided_x = gradients(guided_backprop(net.apply))
    plain_probes, _ = gradients(net.apply)
    for g in guided_probes:  # the gradient entering every ReLU is >= 0 ...
        assert float(g.min()) >= 0.0
    assert any(float(g.min()) < 0 for g in plain_probes)  # ... which the plain ReLUs do not ensure
    # and the input gradient is the first conv's transpose of a non-negative gradient: finite, not all zero
    assert np.all(np.isfinite(guided_x)) and np.abs(guided_x).max() > 0
