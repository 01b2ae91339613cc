"""Explainers against closed forms, numpy references and properties."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_models import linear_model, tiny_conv_net

import gag_jax as gj
from gag_jax import aggregations, gradients, interpretations, modifications

KEY = jax.random.PRNGKey(0)


def numpy_normalize(m):
    m = m - m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True)
    return np.where(span > 0, m / np.where(span > 0, span, 1), 0)


def test_vg_of_linear_model_is_its_weights():
    w = jax.random.normal(jax.random.PRNGKey(3), (6, 5, 3))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, 3))
    raw = gj.explain("vg", linear_model(w), x, jnp.array([0, 1]), postprocess=False)
    np.testing.assert_allclose(raw[0], w, rtol=1e-6)
    np.testing.assert_allclose(raw[1], -w, rtol=1e-6)


def test_default_reduction_is_sum_of_absolute_channels_and_signed_sum_is_an_option():
    w = jax.random.normal(jax.random.PRNGKey(3), (6, 5, 3))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, 3))
    wn = np.asarray(w, np.float64)
    default = gj.explain("vg", linear_model(w), x, jnp.array([0, 1]))
    signed = gj.explain("vg", linear_model(w), x, jnp.array([0, 1]), reduce="sum")
    magnitude = numpy_normalize(np.abs(wn).sum(-1)[None])[0]
    np.testing.assert_allclose(default, np.stack([magnitude, magnitude]), atol=1e-6)  # same map for +w and -w
    np.testing.assert_allclose(signed[0], numpy_normalize(wn.sum(-1)[None])[0], atol=1e-6)
    np.testing.assert_allclose(signed[1], numpy_normalize(-wn.sum(-1)[None])[0], atol=1e-6)


def test_sg_of_linear_model_equals_vg():
    w = jax.random.normal(jax.random.PRNGKey(3), (6, 5, 3))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, 3))
    model = linear_model(w)
    vg = gj.explain("vg", model, x, jnp.array([0, 0]))
    sg = gj.explain("sg", model, x, jnp.array([0, 0]), key=KEY, chunk_size=7)
    np.testing.assert_allclose(sg, vg, atol=1e-5)


@pytest.mark.parametrize("method,options", [
    ("ig", {"n": 64, "rule": "trapezoid"}),
    ("ig", {"n": 64, "rule": "riemann_middle", "chunk_size": 5}),
    ("guided_ig", {"n": 200}),  # left-point rule: error O(1/n), as the published algorithm
])
@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_path_methods_satisfy_completeness(method, options):
    _, _, model_fn = tiny_conv_net(size=10)
    # the black baseline needs the model's input scaling: the model carries ImageNet's
    model = gj.ModelFunctions(model_fn, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(5), (2, 10, 10, 3))
    labels = jnp.array([0, 2])
    raw = gj.explain(method, model, x, labels, postprocess=False, **options)
    baseline = modifications.make_baseline(x, "black", gj.IMAGENET_MEAN, gj.IMAGENET_STD)
    target = lambda z: jnp.take_along_axis(model_fn(z), labels[:, None], 1)[:, 0]
    expected = target(x) - target(baseline)
    got = raw.sum(axis=(1, 2, 3))
    assert np.all(np.abs(got - expected) <= 0.01 * np.abs(expected) + 1e-4), (got, expected)


def test_ig_matches_numpy_riemann_sum():
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3))
    model_fn = lambda x: jnp.stack([jnp.sum(jnp.sin(x * w), axis=(1, 2, 3))] * 2, -1)
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 4, 4, 3))
    raw = gj.explain("ig", model_fn, x, jnp.array([0]), postprocess=False, n=10, baseline="zero")
    xs = np.asarray(x[0], np.float64)
    wn = np.asarray(w, np.float64)
    expected = sum(xs * wn * np.cos(a * xs * wn) for a in np.arange(1, 11) / 10) / 10
    np.testing.assert_allclose(raw[0], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_blur_ig_sum_approximates_output_difference():
    _, _, model_fn = tiny_conv_net(size=10)
    x = jax.random.normal(jax.random.PRNGKey(6), (1, 10, 10, 3))
    raw = gj.explain("blur_ig", model_fn, x, jnp.array([1]), postprocess=False, n=200, max_sigma=6.0)
    from gag_jax.ops import gaussian_blur
    target = lambda z: model_fn(z)[:, 1]
    expected = target(x) - target(gaussian_blur(x, 6.0, mode="constant"))  # the published path starts here
    np.testing.assert_allclose(raw.sum(), expected[0], rtol=0.05, atol=1e-3)


def test_gaussian_blur_matches_numpy_reflect_convolution():
    from gag_jax.ops import gaussian_blur
    img = np.random.default_rng(0).normal(size=(1, 9, 7, 2)).astype(np.float32)
    sigma, radius = 1.7, 5
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(img[0], ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    expected = np.zeros((9, 7, 2))
    for i in range(9):
        for j in range(7):
            window = padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1]
            expected[i, j] = np.einsum("a,b,abc->c", taps, taps, window)
    np.testing.assert_allclose(gaussian_blur(jnp.asarray(img), sigma, radius)[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_gag_matches_numpy_on_conv_net():
    _, _, model_fn = tiny_conv_net(size=12)
    x = jax.random.normal(jax.random.PRNGKey(7), (2, 12, 12, 3))
    labels = jnp.array([1, 2])
    n, level = 8, 0.15
    got = gj.guided_absolute_grad(model_fn, x, labels, KEY, n=n, noise_level=level, percentile=0.85, chunk_size=3)
    # independent: draw the documented noise (sample i keyed by fold_in(key, i)), take gradients one by one
    span = np.asarray(x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    grads = []
    for i in range(n):
        noise = np.asarray(jax.random.normal(jax.random.fold_in(KEY, i), x.shape))
        noisy = np.asarray(x) + level * span[:, None, None, None] * noise
        g = np.stack([np.asarray(jax.grad(lambda z, b=b: model_fn(z[None])[0, labels[b]])(jnp.asarray(noisy[b])))
                      for b in range(2)])
        grads.append(g)
    grads = np.stack(grads).astype(np.float64)
    from test_aggregations import numpy_guided
    expected = numpy_normalize(numpy_guided(grads, 0.85).sum(-1))
    np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize("interpretation,fn", [("positive", lambda g: np.maximum(g, 0)),
                                               ("negative", lambda g: np.minimum(g, 0)),
                                               ("absolute", np.abs)])
@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_table3_variants_of_sg(interpretation, fn):
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(8), (1, 8, 8, 3))
    labels = jnp.array([0])
    raw_signals = jnp.stack([gj.explain("vg", model_fn, x + 0.15 * (x.max() - x.min()) *
                                        jax.random.normal(jax.random.fold_in(KEY, i), x.shape), labels,
                                        postprocess=False) for i in range(5)])
    got = gj.explain("sg", model_fn, x, labels, key=KEY, n=5, interpretation=interpretation)
    expected = numpy_normalize(np.abs(fn(np.asarray(raw_signals)).mean(0)).sum(-1))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    guided = gj.explain("sg", model_fn, x, labels, key=KEY, n=5, interpretation=interpretation, guide=True)
    expected_g = numpy_normalize(np.abs(gj.aggregations.guided(raw_signals, 0.85, interpretation=lambda g: jnp.asarray(
        fn(np.asarray(g))))).sum(-1))
    np.testing.assert_allclose(guided, expected_g, atol=1e-5)


def test_guided_backprop_blocks_negative_gradients():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(48, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 2)).astype(np.float32)

    def make(act):
        return lambda x: act(x.reshape(x.shape[0], -1) @ w1) @ w2

    model = gj.ModelFunctions(make(jax.nn.relu), guided_logits=make(gradients.guided_relu))
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 4, 4, 3))
    raw = gj.explain("gb", model, x, jnp.array([0, 1]), postprocess=False)
    pre = np.asarray(x).reshape(2, -1) @ w1
    for b, c in enumerate([0, 1]):
        upstream = np.maximum(w2[:, c], 0) * (pre[b] > 0)  # only positive gradients pass
        np.testing.assert_allclose(raw[b].reshape(-1), w1 @ upstream, rtol=1e-4, atol=1e-5)
    vg = gj.explain("vg", model, x, jnp.array([0, 1]), postprocess=False)
    assert not np.allclose(vg, raw)


def test_gb_on_a_model_it_cannot_guide_is_a_clear_error():
    with pytest.raises(ValueError, match="'silu'.*guided_logits"):
        gj.explain("gb", lambda x: jax.nn.silu(x).sum((1, 2))[:, :2], jnp.ones((1, 4, 4, 3)), jnp.array([0]))


@pytest.mark.slow  # > 5 s: CI runs it, the quick loop skips it
def test_gradcam_matches_hand_computation():
    module, variables, model_fn = tiny_conv_net(size=8)
    model = gj.ModelFunctions(model_fn, features=lambda x: module.apply(variables, x, method="features"),
                              head=lambda f: module.apply(variables, f, method="head"))
    x = jax.random.normal(jax.random.PRNGKey(10), (2, 8, 8, 3))
    raw = gj.explain("gradcam", model, x, jnp.array([0, 2]), postprocess=False)
    acts = np.asarray(model.features(x))
    kernel = np.asarray(variables["params"]["dense"]["kernel"])  # head = mean-pool then dense
    for b, c in enumerate([0, 2]):
        alpha = kernel[:, c] / (8 * 8) * 1.0  # d logit / d A[h, w, k] = W[k, c] / (h * w); mean over h, w
        cam = np.maximum((acts[b] * alpha).sum(-1), 0)
        np.testing.assert_allclose(raw[b, ..., 0], cam, rtol=1e-4, atol=1e-6)


def test_gag_ranks_quadratic_object_pixels_first_where_vg_fails():
    size = 10
    obj = np.zeros((size, size), bool)
    obj[3:6, 4:7] = True
    w_obj = jnp.asarray(obj[..., None] * np.linspace(1.0, 2.0, 3), jnp.float32)
    v_bg = jnp.asarray((~obj)[..., None] * 0.3 * np.ones(3), jnp.float32)

    def model_fn(x):
        s = jnp.sum(w_obj * x ** 2 + v_bg * x, axis=(1, 2, 3))
        return jnp.stack([s, -s], -1)

    # object pixels sit near the quadratic's minimum: their gradient 2 w x is small at x itself
    # (VG misses them), large under noise (GAG finds them)
    x = jax.random.normal(jax.random.PRNGKey(11), (3, size, size, 3)) * jnp.where(obj[..., None], 0.05, 1.0)
    labels = jnp.zeros(3, jnp.int32)
    gag = np.asarray(gj.explain("gag", model_fn, x, labels, key=KEY))
    vg = np.asarray(gj.explain("vg", model_fn, x, labels))
    for b in range(3):
        assert gag[b][obj].min() > gag[b][~obj].max()
    assert all(vg[b][obj].min() <= vg[b][~obj].max() for b in range(3))


def test_same_key_same_map_and_different_keys_differ():
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(12), (2, 8, 8, 3))
    labels = jnp.array([0, 1])
    a = gj.explain("sg", model_fn, x, labels, key=jax.random.PRNGKey(1), n=4)
    b = gj.explain("sg", model_fn, x, labels, key=jax.random.PRNGKey(1), n=4)
    c = gj.explain("sg", model_fn, x, labels, key=jax.random.PRNGKey(2), n=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_gag_does_not_depend_on_chunk_size():
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(13), (2, 8, 8, 3))
    labels = jnp.array([0, 1])
    maps = [gj.explain("gag", model_fn, x, labels, key=KEY, n=10, chunk_size=c) for c in (1, 3, 10)]
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], atol=1e-5)


def test_noise_range_batch_uses_the_batch_range():
    x = jnp.stack([jnp.zeros((4, 4, 3)), jnp.ones((4, 4, 3)) * 10.0])
    np.testing.assert_allclose(modifications.noise_scale(x, 0.1, "image").ravel(), [0.0, 0.0])
    np.testing.assert_allclose(modifications.noise_scale(x, 0.1, "batch").ravel(), [1.0, 1.0])


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_chain_equals_the_steps_by_hand():
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(14), (2, 8, 8, 3))
    labels = jnp.array([2, 0])
    explainer = gj.chain(modifications.gaussian_noise(6, 0.2), gradients.logit_gradient(),
                         interpretations.square(), aggregations.variance(), chunk_size=4)
    got = jax.jit(functools.partial(explainer, model_fn))(x, labels, KEY)
    np.testing.assert_array_equal(jax.jit(explainer, static_argnums=0)(model_fn, x, labels, KEY), got)
    sigma = 0.2 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    squares = [gradients.logit_gradient()(model_fn, x + sigma * jax.random.normal(jax.random.fold_in(KEY, i), x.shape),
                                          labels) ** 2 for i in range(6)]
    np.testing.assert_allclose(got, np.var(np.stack(squares), axis=0, ddof=1), rtol=1e-4, atol=1e-7)


def test_repeated_calls_do_not_retrace():
    traces = []
    w = jax.random.normal(jax.random.PRNGKey(15), (6, 6, 3))

    def model_fn(x):
        traces.append(1)
        return linear_model(w)(x)

    for seed in range(4):
        x = jax.random.normal(jax.random.PRNGKey(seed), (2, 6, 6, 3))
        gj.explain("gag", model_fn, x, jnp.array([0, 1]), key=jax.random.PRNGKey(seed), n=4, validate=False)
    first = len(traces)
    assert first >= 1
    for seed in range(4, 8):
        x = jax.random.normal(jax.random.PRNGKey(seed), (2, 6, 6, 3))
        gj.explain("gag", model_fn, x, jnp.array([1, 0]), key=jax.random.PRNGKey(seed), n=4, validate=False)
    assert len(traces) == first


def test_constant_map_becomes_zeros():
    m = gj.min_max(jnp.stack([jnp.full((3, 3), 5.0), jnp.arange(9.0).reshape(3, 3)]))
    assert not np.isnan(m).any()
    np.testing.assert_array_equal(m[0], 0)
    np.testing.assert_allclose(m[1].max(), 1.0)


def test_reverse_swaps_bands_and_keeps_the_top():
    sal = jax.random.uniform(jax.random.PRNGKey(16), (2, 10, 10))
    rev = gj.reverse(sal, KEY, keep=0.07, swap=0.10)
    for b in range(2):
        s, r = np.asarray(sal[b]).ravel(), np.asarray(rev[b]).ravel()
        np.testing.assert_allclose(np.sort(s), np.sort(r))
        order = np.argsort(s)
        top, low, mid = order[93:], order[:10], order[83:93]
        np.testing.assert_array_equal(r[top], s[top])
        np.testing.assert_array_equal(r[low], s[mid])
        np.testing.assert_array_equal(r[mid], s[low])
        untouched = order[10:83]
        np.testing.assert_array_equal(r[untouched], s[untouched])
    np.testing.assert_array_equal(rev, gj.reverse(sal, KEY))


@pytest.mark.parametrize("images,labels,options,match", [
    (jnp.ones((4, 4, 3)), jnp.array([0]), {}, "images must have shape"),
    (jnp.ones((1, 4, 4, 3), jnp.int32), jnp.array([0]), {}, "dtype"),
    (jnp.full((1, 4, 4, 3), jnp.nan), jnp.array([0]), {}, "NaN"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([2]), {}, r"labels must lie in \[0, 2\)"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([0.5]), {}, "labels must be an integer"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([0]), {"percentile": 1.0}, "percentile"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([0]), {"percentile": -0.2}, "percentile"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([0]), {"noise_levle": 0.1}, "noise_levle"),
    (jnp.ones((1, 4, 4, 3)), jnp.array([0]), {"n": 0}, "n must be a positive integer"),
])
def test_bad_input_is_a_clear_error(images, labels, options, match):
    model_fn = linear_model(jnp.ones((4, 4, 3)))
    with pytest.raises(ValueError, match=match):
        gj.explain("gag", model_fn, images, labels, key=KEY, **options)


def test_unknown_method_and_missing_key():
    model_fn = linear_model(jnp.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="unknown method 'smoothgrad'"):
        gj.explain("smoothgrad", model_fn, jnp.ones((1, 4, 4, 3)), jnp.array([0]), key=KEY)
    with pytest.raises(ValueError, match="key"):
        gj.explain("gag", model_fn, jnp.ones((1, 4, 4, 3)), jnp.array([0]))
    # deterministic paths with a guide draw no noise and need no key
    assert gj.explain("ig", model_fn, jnp.ones((1, 4, 4, 3)), jnp.array([0]), guide=True, n=4,
                      mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD).shape == (1, 4, 4)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_per_image_keys_make_maps_independent_of_the_batch():
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(17), (3, 8, 8, 3))
    labels = jnp.array([0, 1, 2])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(KEY, jnp.arange(3))
    together = gj.explain("gag", model_fn, x, labels, key=keys, n=4)
    for b in range(3):
        alone = gj.explain("gag", model_fn, x[b:b + 1], labels[b:b + 1], key=keys[b:b + 1], n=4)
        np.testing.assert_allclose(alone[0], together[b], atol=1e-6)
    typed = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(0), jnp.arange(3))
    assert gj.explain("sg", model_fn, x, labels, key=typed, n=2).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="one key per image"):
        gj.explain("gag", model_fn, x, labels, key=keys[:2], n=4)


def test_defaults_and_valid_options_come_from_the_preset_signatures():
    import inspect
    for name, fn in gj.PRESETS.items():
        record = gj.METHOD_RECORDS[name]
        params = list(inspect.signature(fn).parameters.values())
        if record.kind == "attribution":  # fn(model, images, labels, key, *options)
            assert len(params) >= 4 and all(p.kind == p.POSITIONAL_OR_KEYWORD for p in params[:4])
            params = params[4:]
        own = {p.name: p.default for p in params}
        processing = {k: v for k, v in gj.explainers.VARIANT_OPTIONS.items() if k not in own} if record.variants else {}
        assert gj.DEFAULTS[name] == {**own, **processing, "reduce": record.reduce}
    assert gj.METHODS == tuple(gj.DEFAULTS)[:10]
    assert {m for m in gj.METHODS if gj.METHOD_RECORDS[m].variants} == {"vg", "gb", "sg", "vargrad", "ig", "guided_ig",
                                                                       "blur_ig"}
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['percentile'\] for method 'ag'"):
        gj.explain("ag", linear_model(jnp.ones((4, 4, 3))), jnp.ones((1, 4, 4, 3)), jnp.array([0]), key=KEY,
                   percentile=0.5)


@pytest.mark.slow  # ~15 s: several compositions compiled
def test_table3_processing_is_one_wrapper_over_any_composition():
    """interpretation= / guide= on a method = gj.variant of its composition = the four seams by hand."""
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(18), (2, 8, 8, 3))
    labels = jnp.array([1, 2])
    path = modifications.straight_path(4, "black", "riemann_right", (0.0,) * 3, (1.0,) * 3)
    by_hand = gj.chain(path, gradients.logit_gradient(), interpretations.absolute(),
                       aggregations.guide(0.85))(model_fn, x, labels, KEY)
    wrapped = gj.variant(gj.PRESETS["ig"](n=4, mean=(0.0,) * 3, std=(1.0,) * 3), interpretation="absolute", guide=True)
    np.testing.assert_array_equal(wrapped(model_fn, x, labels, KEY), by_hand)
    by_option = gj.explain("ig", model_fn, x, labels, key=KEY, n=4, mean=(0.0,) * 3, std=(1.0,) * 3,
                           interpretation="absolute", guide=True, postprocess=False)
    np.testing.assert_allclose(by_option, by_hand, rtol=1e-5, atol=1e-7)
    # VG has one gradient, no variance: its guide is over n noisy copies
    vg_guided = gj.variant(gj.PRESETS["vg"](), interpretation="positive", guide=True, n=3, noise_level=0.2)
    noisy = gj.chain(modifications.gaussian_noise(3, 0.2), gradients.logit_gradient(), interpretations.positive(),
                     aggregations.guide(0.85))
    np.testing.assert_array_equal(vg_guided(model_fn, x, labels, KEY), noisy(model_fn, x, labels, KEY))
    # a user's composition takes the same wrapper
    mine = gj.chain(modifications.gaussian_noise(3, 0.2), gradients.logit_gradient(), interpretations.square(),
                    aggregations.mean())
    np.testing.assert_array_equal(gj.variant(mine, interpretation="negative")(model_fn, x, labels, KEY),
                                  gj.chain(mine.modification, mine.gradient, interpretations.negative(),
                                           mine.aggregation)(model_fn, x, labels, KEY))
    with pytest.raises(ValueError, match="composition"):
        gj.variant("ig")


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_a_preset_is_its_composition():
    _, _, model_fn = tiny_conv_net(size=8)
    x = jax.random.normal(jax.random.PRNGKey(18), (2, 8, 8, 3))
    labels = jnp.array([1, 2])
    by_hand = gj.chain(modifications.gaussian_noise(5, 0.1), gradients.logit_gradient(), interpretations.absolute(),
                       aggregations.guide(0.7))(model_fn, x, labels, KEY)
    np.testing.assert_allclose(gj.PRESETS["gag"](n=5, noise_level=0.1, percentile=0.7)(model_fn, x, labels, KEY),
                               by_hand, rtol=1e-6)
    np.testing.assert_allclose(gj.explain("gag", model_fn, x, labels, key=KEY, n=5, noise_level=0.1, percentile=0.7,
                                          postprocess=False), by_hand, rtol=1e-5, atol=1e-7)


def test_needs_key_follows_the_composition_and_the_signature():
    from gag_jax.explainers import needs_key
    assert [m for m in gj.METHODS if needs_key(m)] == ["sg", "vargrad", "ag", "gag"]
    assert needs_key("vg", {"guide": True}) and needs_key("gb", {"guide": True})
    assert not needs_key("ig", {"guide": True})

    def random_shift(model, images, labels, key):  # an attribution function whose key has no default
        return images * jax.random.uniform(key, images.shape)

    assert needs_key(gj.Method("random_shift", random_shift, "attribution", random=True))
    assert not needs_key(gj.PRESETS["gradcam"])
    with pytest.raises(ValueError, match=r"gj.Method\('random_shift'"):  # a bare function: the record says what it is
        needs_key(random_shift)


def test_a_user_method_is_one_function_in_a_record():
    w = jax.random.normal(jax.random.PRNGKey(3), (6, 5, 3))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, 3))
    labels = jnp.array([0, 1])

    def square_grad(n=1, chunk_size=None):  # a preset: options in the signature, composition in the body
        return gj.chain(modifications.straight_path(n, "zero", "riemann_right"), gradients.logit_gradient(),
                        interpretations.square(), aggregations.total(), chunk_size=chunk_size)

    raw = gj.explain(gj.Method("square_grad", square_grad), linear_model(w), x, labels,
                     postprocess=False)  # IG at n=1: (x * w)^2
    np.testing.assert_allclose(raw[0], (np.asarray(x[0]) * np.asarray(w)) ** 2, rtol=1e-5)

    def times_input(model, images, labels, key=None, *, scale=1.0):  # an attribution function
        return scale * images * gradients.logit_gradient()(model, images, labels)

    times_input = gj.Method("times_input", times_input, "attribution", random=False)
    raw = gj.explain(times_input, linear_model(w), x, labels, postprocess=False, scale=2.0)
    np.testing.assert_allclose(raw[1], -2.0 * np.asarray(x[1]) * np.asarray(w), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown option"):
        gj.explain(times_input, linear_model(w), x, labels, shift=1.0)


def test_a_variance_needs_two_samples():
    model_fn = linear_model(jnp.ones((4, 4, 3)))
    for method, options in [("vargrad", {"n": 1}), ("sg", {"n": 1, "guide": True})]:
        with pytest.raises(ValueError, match="n >= 2"):
            gj.explain(method, model_fn, jnp.ones((1, 4, 4, 3)), jnp.array([0]), key=KEY, **options)


def test_model_functions_from_a_linen_module():
    module, variables, model_fn = tiny_conv_net(size=8)
    fns = gj.ModelFunctions.from_module(module, variables)
    x = jax.random.normal(jax.random.PRNGKey(19), (2, 8, 8, 3))
    np.testing.assert_allclose(fns.logits(x), model_fn(x), rtol=1e-6)
    np.testing.assert_allclose(fns.head(fns.features(x)), model_fn(x), rtol=1e-5, atol=1e-6)
    assert fns.guided_logits is None  # TinyConvNet has no guided_backprop field
    import flax.linen as nn
    dense = gj.ModelFunctions.from_module(nn.Dense(2), {"params": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}})
    assert dense.features is None and dense.head is None
    np.testing.assert_allclose(dense.logits(jnp.ones((1, 3))), [[3.0, 3.0]])
