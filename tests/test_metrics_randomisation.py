"""The randomisation metrics of Quantus 0.6 (gag_jax.metrics.randomisation) against (1) numpy / scipy
references written from each definition, one image at a time, with the explainer's maps in closed form
(Vanilla Gradient of a one-hidden-layer softplus network) and the randomised weights given; (2) Quantus
0.6.0 on a torch copy of the network, the randomised layers being exactly what torch's
``reset_parameters()`` gives after Quantus's ``torch.manual_seed(seed + 1)`` (passed to the metric as
``randomised_variables``), Quantus's other class reproduced from its ``np.random.seed(seed)`` draw, and
SmoothMPRT's noise injected by replacing ``np.random.randn`` with a function returning the given
draws; plus the similarity / entropy helpers against scipy / skimage / numpy, batch independence, one
trace per shape and the input checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import gag_jax as gj
from gag_jax.metrics import randomisation as Rn

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

B, H, W, C, M, K = 3, 8, 8, 3, 16, 4
SAMPLES = 3  # smooth MPRT: 2 noisy copies and the image
TRACES = {"n": 0}
LAYERS = ("hidden", "out")  # bottom-up (the order of torch's named_modules() too)


def _apply(variables, x):
    TRACES["n"] += 1  # runs once per trace
    p = variables["params"]
    hidden = jax.nn.softplus(x.reshape(x.shape[0], -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return hidden @ p["out"]["kernel"] + p["out"]["bias"]


def _weights(seed):
    rng = np.random.default_rng(seed)
    return {"hidden": {"kernel": (rng.normal(size=(H * W * C, M)) * 0.2).astype(np.float32),
                       "bias": (rng.normal(size=M) * 0.1).astype(np.float32)},
            "out": {"kernel": rng.normal(size=(M, K)).astype(np.float32),
                    "bias": (rng.normal(size=K) * 0.1).astype(np.float32)}}


def _jax(tree):
    return {"params": jax.tree_util.tree_map(jnp.asarray, tree)}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    trained, fresh = _weights(0), _weights(5)
    model = gj.ModelFunctions.from_apply(_apply, _jax(trained))
    x = rng.normal(size=(B, H, W, C)).astype(np.float32)
    labels = np.array([0, 1, 3])
    maps = np.stack([np_vg(trained, x[b], labels[b]) for b in range(B)]).astype(np.float32)
    noise = rng.normal(size=(SAMPLES - 1, B, H, W, C)).astype(np.float32)
    return model, trained, fresh, x, labels, maps, noise


# ----------------------------------------------------------------------------------------------
# numpy references
# ----------------------------------------------------------------------------------------------

def np_vg(wt, x, k):
    """Vanilla Gradient map in closed form, |.| summed over channels, min-max per image."""
    h = x.reshape(-1).astype(np.float64) @ wt["hidden"]["kernel"] + wt["hidden"]["bias"]
    g = wt["hidden"]["kernel"].astype(np.float64) @ (wt["out"]["kernel"][:, k] / (1 + np.exp(-h)))
    m = np.abs(g.reshape(H, W, C)).sum(-1)
    return (m - m.min()) / (m.max() - m.min())


def np_ssim(a, b, win=7):
    """skimage's structural_similarity of two 1-D arrays, written out (uniform window, ddof 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    r = np.concatenate([a, b]).max() - np.concatenate([a, b]).min()
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    values = []
    for i in range(a.size - win + 1):
        u, v = a[i:i + win], b[i:i + win]
        cov = np.cov(u, v, ddof=1)
        values.append(((2 * u.mean() * v.mean() + c1) * (2 * cov[0, 1] + c2))
                      / ((u.mean() ** 2 + v.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
    return float(np.mean(values))


def np_entropy(a, bins=100):
    return float(scipy.stats.entropy(np.histogram(np.asarray(a).reshape(-1), bins=bins)[0]))


def weights_after(trained, fresh, step, cascading=True):
    """The weights after randomisation step ``step`` (-1: none) in bottom-up order."""
    return {name: (fresh[name] if (i <= step if cascading else i == step) else trained[name])
            for i, name in enumerate(LAYERS)}


def np_smoothed(wt, x, label, zs, magnitude=0.1):
    std = magnitude * (x.max() - x.min())
    maps = [np_vg(wt, x.astype(np.float64) + z * std, label) for z in zs] + [np_vg(wt, x, label)]
    return np.mean(maps, axis=0)


# ----------------------------------------------------------------------------------------------
# helpers against scipy / skimage / numpy
# ----------------------------------------------------------------------------------------------

def test_ssim_spearman_entropy_match_their_definitions():
    rng = np.random.default_rng(0)
    a = rng.random((4, 64)).astype(np.float32)
    b = (a + rng.normal(scale=0.3, size=a.shape)).astype(np.float32)
    b[1] = np.round(b[1] * 4) / 4  # ties
    np.testing.assert_allclose(np.asarray(jax.jit(Rn.ssim)(a, b)), [np_ssim(u, v) for u, v in zip(a, b)], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(jax.jit(Rn.spearman)(a, b)),
                               [scipy.stats.spearmanr(u, v)[0] for u, v in zip(a, b)], rtol=1e-5)
    c = np.concatenate([a[:2], np.zeros((1, 64), np.float32), np.linspace(0, 1, 64, dtype=np.float32)[None]])
    np.testing.assert_allclose(np.asarray(jax.jit(Rn.discrete_entropy)(c)), [np_entropy(u) for u in c], rtol=1e-5, atol=1e-7)
    skimage = pytest.importorskip("skimage.metrics")
    for u, v in zip(a, b):
        r = float(np.concatenate([u, v]).max() - np.concatenate([u, v]).min())
        assert abs(np_ssim(u, v) - skimage.structural_similarity(u, v, data_range=r)) < 1e-5


def test_layers_are_the_traced_forward_order(setup):
    model = setup[0]
    assert Rn.randomisation_layers(model, (1, H, W, C)) == [("hidden", ("hidden",)), ("out", ("out",))]
    assert Rn.randomisation_layers(model, (1, H, W, C), layer_order="top_down") == [("out", ("out",)),
                                                                                   ("hidden", ("hidden",))]


# ----------------------------------------------------------------------------------------------
# (1) numpy references
# ----------------------------------------------------------------------------------------------

def test_random_logit_matches_numpy(setup):
    model, trained, _, x, labels, maps, _ = setup
    other = np.array([2, 3, 0])
    out = Rn.random_logit(model, x, labels, maps, explainer="vg", other_labels=other)
    for b in range(B):
        a, ap = maps[b].astype(np.float64), np_vg(trained, x[b], other[b])
        expected = np_ssim((a / np.abs(a).max()).ravel(), (ap / np.abs(ap).max()).ravel())
        np.testing.assert_allclose(float(out["random_logit"][b]), expected, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(out["random_logit_other_labels"]), other)


def test_random_logit_draws_another_class_uniformly(setup):
    model, _, _, x, _, maps, _ = setup
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    xs = np.repeat(x[:1], 200, axis=0)
    out = Rn.random_logit(model, xs, np.zeros(200, int), np.repeat(maps[:1], 200, axis=0), explainer="vg", key=keys,
                          similarity="spearman")
    drawn = np.asarray(out["random_logit_other_labels"])
    assert set(drawn) == {1, 2, 3}  # never the label, every other class
    assert np.all(np.abs(np.bincount(drawn, minlength=K)[1:] / 200 - 1 / 3) < 0.1)


@pytest.mark.parametrize("order", ["bottom_up", "independent"])
def test_smooth_mprt_matches_numpy(setup, order):
    model, trained, fresh, x, labels, maps, noise = setup
    out = Rn.smooth_mprt(model, x, labels, maps, explainer="vg", samples=SAMPLES, noise=noise, layer_order=order,
                         randomised_variables=_jax(fresh), copies_per_call=1)
    assert out["smooth_mprt_curve"].shape == (B, len(LAYERS))
    for b in range(B):
        def similarity(step):
            smoothed = np_smoothed(weights_after(trained, fresh, step, order != "independent"), x[b], labels[b],
                                   noise[:, b])
            return scipy.stats.spearmanr(np.abs(maps[b]).ravel(), np.abs(smoothed).ravel())[0]

        curve = [similarity(step) for step in range(len(LAYERS))]
        np.testing.assert_allclose(np.asarray(out["smooth_mprt_curve"][b]), curve, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(out["smooth_mprt_original"][b]), similarity(-1), rtol=1e-4)
        np.testing.assert_allclose(float(out["smooth_mprt"][b]), np.mean(curve), rtol=1e-4, atol=1e-6)


def test_efficient_mprt_matches_numpy(setup):
    model, trained, fresh, x, labels, maps, _ = setup
    out = Rn.efficient_mprt(model, x, labels, maps, explainer="vg", randomised_variables=_jax(fresh),
                            skip_layers=False)
    for b in range(B):
        curve = [np_entropy(np_vg(weights_after(trained, fresh, step), x[b], labels[b])) for step in range(2)]
        original = np_entropy(maps[b])
        np.testing.assert_allclose(np.asarray(out["efficient_mprt_curve"][b]), curve, rtol=1e-5)
        np.testing.assert_allclose(float(out["efficient_mprt"][b]), (curve[-1] - original) / original, rtol=1e-4)


def test_default_randomisation_is_flax_initialisers_of_the_params(setup):
    """Without randomised_variables: lecun-normal kernels, zero biases (seeded), batch-free model."""
    model, trained, _, x, labels, maps, _ = setup
    out = Rn.efficient_mprt(model, x, labels, maps, explainer="vg", seed=3)
    fresh = Rn._default_fresh(model, (1, H, W, C), 3)["params"]
    assert float(jnp.abs(fresh["out"]["bias"]).max()) == 0.0
    np.testing.assert_allclose(float(jnp.std(fresh["hidden"]["kernel"])), 1 / np.sqrt(H * W * C), rtol=0.1)
    host = jax.tree_util.tree_map(np.asarray, fresh)
    for b in range(B):
        expected = np_entropy(np_vg(host, x[b], labels[b]))
        np.testing.assert_allclose(float(out["efficient_mprt_curve"][b, 0]), expected, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# (2) Quantus 0.6.0
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantus_setup(setup):  # importing quantus (and TensorFlow) takes ~15 s: its tests are marked slow
    quantus = pytest.importorskip("quantus")
    torch = pytest.importorskip("torch")
    _, trained, _, _, _, _, _ = setup
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * C, M), torch.nn.Softplus(),
                              torch.nn.Linear(M, K)).eval()
    with torch.no_grad():  # NCHW flattening: feature (c, i, j) -> kernel row (i, j, c)
        net[1].weight.copy_(torch.tensor(_torch_kernel(trained["hidden"]["kernel"])))
        net[1].bias.copy_(torch.tensor(trained["hidden"]["bias"]))
        net[3].weight.copy_(torch.tensor(trained["out"]["kernel"].T))
        net[3].bias.copy_(torch.tensor(trained["out"]["bias"]))

    def torch_vg(model, inputs, targets, **kwargs):
        xt = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
        out = model(xt)
        out[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))].sum().backward()
        m = xt.grad.abs().sum(1)
        low = m.amin(dim=(1, 2), keepdim=True)
        return ((m - low) / (m.amax(dim=(1, 2), keepdim=True) - low)).numpy()

    def reset(layer: torch.nn.Linear, seed: int):
        """What Quantus's random layer generator puts in ``layer``: reset_parameters() after manual_seed(seed + 1)."""
        copy = torch.nn.Linear(layer.in_features, layer.out_features)
        torch.manual_seed(seed + 1)
        copy.reset_parameters()
        return copy.weight.detach().numpy(), copy.bias.detach().numpy()

    (w1, b1), (w2, b2) = reset(net[1], 42), reset(net[3], 42)
    fresh = {"hidden": {"kernel": w1.reshape(M, C, H, W).transpose(2, 3, 1, 0).reshape(-1, M), "bias": b1},
             "out": {"kernel": w2.T, "bias": b2}}
    return quantus, net, torch_vg, _jax(fresh)


def _torch_kernel(kernel):
    return kernel.reshape(H, W, C, M).transpose(3, 2, 0, 1).reshape(M, -1)


def _nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@pytest.mark.slow
def test_random_logit_matches_quantus(setup, quantus_setup):
    model, _, _, x, labels, maps, _ = setup
    quantus, net, torch_vg, _ = quantus_setup
    np.random.seed(42)  # Quantus's draw of the other class, reproduced
    off = np.random.randint(0, K - 1, B)
    other = np.array([[c for c in range(K) if c != labels[b]][off[b]] for b in range(B)])
    expected = quantus.RandomLogit(num_classes=K, seed=42, disable_warnings=True)(
        model=net, x_batch=_nchw(x), y_batch=labels, a_batch=maps, explain_func=torch_vg, channel_first=True,
        device="cpu")
    out = Rn.random_logit(model, x, labels, maps, explainer="vg", other_labels=other)
    np.testing.assert_allclose(np.asarray(out["random_logit"]), np.asarray(expected), rtol=2e-4)


@pytest.mark.slow
def test_smooth_mprt_matches_quantus(setup, quantus_setup, monkeypatch):
    model, _, _, x, labels, maps, noise = setup
    quantus, net, torch_vg, fresh = quantus_setup
    draws = _nchw(noise.reshape(-1, H, W, C)).reshape((SAMPLES - 1, B, C, H, W))
    calls = {"n": 0}

    def randn(*shape):  # the same draws for the original model and after each layer (ours: common draws)
        assert shape == (B, C, H, W)
        calls["n"] += 1
        return draws[(calls["n"] - 1) % (SAMPLES - 1)].astype(np.float64)

    monkeypatch.setattr(np.random, "randn", randn)
    monkeypatch.setattr(quantus, "explain", lambda model, inputs, targets, **kw: torch_vg(model, inputs, targets))
    expected = quantus.SmoothMPRT(nr_samples=SAMPLES, disable_warnings=True)(
        model=net, x_batch=_nchw(x), y_batch=labels, a_batch=maps, explain_func=torch_vg, channel_first=True,
        device="cpu")
    assert calls["n"] == (SAMPLES - 1) * 3
    out = Rn.smooth_mprt(model, x, labels, maps, explainer="vg", samples=SAMPLES, noise=noise,
                         randomised_variables=fresh, copies_per_call=1)
    np.testing.assert_allclose(np.asarray(out["smooth_mprt_original"]), expected["original"], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out["smooth_mprt_curve"]), np.stack([expected["1"], expected["3"]], 1),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_efficient_mprt_matches_quantus(setup, quantus_setup):
    model, _, _, x, labels, maps, _ = setup
    quantus, net, torch_vg, fresh = quantus_setup
    expected = quantus.EfficientMPRT(disable_warnings=True)(
        model=net, x_batch=_nchw(x), y_batch=labels, a_batch=maps, explain_func=torch_vg, channel_first=True,
        device="cpu")
    out = Rn.efficient_mprt(model, x, labels, maps, explainer="vg", randomised_variables=fresh)
    np.testing.assert_allclose(np.asarray(out["efficient_mprt"]), expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# (3) batch independence; (4) one trace per shape; checks
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("explainer", ["vg", pytest.param(("sg", {"n": 2}), marks=pytest.mark.slow)])
def test_batch_independence_with_per_image_keys(setup, explainer):
    """A drawn class (and a random explainer, SmoothGrad): image 2 alone scores what it scores in the batch."""
    model, _, _, x, labels, maps, _ = setup
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(9), jnp.arange(B))
    full = Rn.random_logit(model, x, labels, maps, explainer=explainer, key=keys)
    alone = Rn.random_logit(model, x[2:], labels[2:], maps[2:], explainer=explainer, key=keys[2:])
    assert int(alone["random_logit_other_labels"][0]) == int(full["random_logit_other_labels"][2])
    np.testing.assert_allclose(float(alone["random_logit"][0]), float(full["random_logit"][2]), rtol=1e-5)


def test_second_call_with_the_same_shapes_does_not_retrace(setup):
    model, trained, fresh, x, labels, maps, noise = setup
    Rn.efficient_mprt(model, x, labels, maps, explainer="vg", randomised_variables=_jax(fresh))
    before = TRACES["n"]
    other = gj.ModelFunctions.from_apply(_apply, _jax(_weights(7)))  # new weights, same apply: no new trace
    Rn.efficient_mprt(other, x + 1, labels, maps[::-1].copy(), explainer="vg", randomised_variables=_jax(trained))
    assert TRACES["n"] == before


def test_bad_arguments_raise(setup):
    model, _, fresh, x, labels, maps, noise = setup
    with pytest.raises(ValueError, match="layer_order"):
        Rn.efficient_mprt(model, x, labels, maps, explainer="vg", layer_order="sideways")
    with pytest.raises(ValueError, match="structure"):
        Rn.efficient_mprt(model, x, labels, maps, explainer="vg", randomised_variables={"params": {}})
    with pytest.raises(ValueError, match="noise"):
        Rn.smooth_mprt(model, x, labels, maps, explainer="vg", samples=5, noise=noise)
    with pytest.raises(ValueError, match="differ"):
        Rn.random_logit(model, x, labels, maps, explainer="vg", other_labels=labels)
    with pytest.raises(ValueError, match="not jittable"):
        Rn.random_logit(model, x, labels, maps, explainer="xrai")
    plain = gj.ModelFunctions(lambda v: _apply(_jax(_weights(0)), v))
    with pytest.raises(ValueError, match="layers="):
        Rn.efficient_mprt(plain, x, labels, maps, explainer="vg")


@pytest.mark.slow  # eager Flax init of convs: ~10 s of small compilations on a loaded 2-core CPU
def test_linen_models_randomise_with_their_initialisers_and_the_sanity_blocks():
    """A Flax linen model: the layers of gj.sanity.layer_blocks, fresh weights from module.init(PRNGKey(seed))."""
    from toy_models import tiny_conv_net

    from gag_jax import sanity

    module, variables, _ = tiny_conv_net(size=8)
    model = gj.ModelFunctions.from_module(module, variables)
    shape = (1, 8, 8, 3)
    assert Rn.randomisation_layers(model, shape, layer_order="top_down") == sanity.layer_blocks(module, variables, shape)
    assert [label for label, _ in Rn.randomisation_layers(model, shape)] == ["conv1", "conv2", "dense"]
    fresh = Rn._default_fresh(model, shape, 42)["params"]
    expected = module.init(jax.random.PRNGKey(42), jnp.zeros(shape))["params"]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), fresh, expected)


def test_labels_out_of_range_raise(setup):
    model, _, _, x, _, maps, _ = setup
    for metric in (Rn.random_logit, Rn.efficient_mprt):
        with pytest.raises(ValueError, match="labels"):
            metric(model, x, np.array([0, 1, K]), maps, explainer="vg")
