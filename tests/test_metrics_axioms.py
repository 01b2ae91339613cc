"""gag_jax.metrics complexity and axiomatic metrics of Quantus 0.6 (effective complexity, completeness,
non-sensitivity): numpy references written from the definitions on a linear model, Quantus 0.6.0 with a
torch linear model of the same weights where installed, IG's closed-form completeness, batch and chunk
independence, compile caching and errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
import gag_jax.metrics as gm
from gag_jax.metrics import axioms as A
from gag_jax.metrics.complexity import effective_complexity

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

B, H, W, C, K = 3, 8, 8, 3, 4
TRACES = {"n": 0}


def _apply(weights, x):
    """A linear model on the flattened NHWC input; counts its traces."""
    TRACES["n"] += 1
    return x.reshape(x.shape[0], -1) @ weights


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(H * W * C, K)) * 0.3
    w[rng.uniform(size=H * W * C) < 0.4] = 0.0  # features the model does not depend on
    return w.astype(np.float32)


def _model(weights):
    return gj.ModelFunctions.from_apply(_apply, jnp.asarray(weights), mean=(0.5,) * C, std=(0.25,) * C)


def _data(seed=0, b=B):
    rng = np.random.default_rng(seed)
    images = (np.round(rng.normal(size=(b, H, W, C)) * 4) / 4).astype(np.float32)  # gaps 0 or >= 0.25
    labels = rng.integers(0, K, b).astype(np.int32)
    maps = rng.uniform(size=(b, H, W)).astype(np.float32)
    maps[rng.uniform(size=(b, H, W)) < 0.3] = 0.0
    return images, labels, maps


def _torch_model(weights):
    """``torch.nn.Linear`` on the flattened NCHW input with the same weights."""
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(H * W * C, K, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weights.reshape(H, W, C, K).transpose(3, 2, 0, 1).reshape(K, -1)))
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


# ------------------------------------------------------------------ numpy references (one image at a time)

def _pre(a, abs_, normalise):
    a = a.astype(np.float64).ravel()
    if normalise and np.max(np.abs(a)) > 0:
        a = a / np.max(np.abs(a))
    return np.abs(a) if abs_ else a


def _outputs(weights, x, label, softmax):
    z = x.reshape(len(x), -1).astype(np.float64) @ weights.astype(np.float64)
    if softmax:
        z = np.exp(z - z.max(1, keepdims=True))
        z = z / z.sum(1, keepdims=True)
    return z[:, label]


def ref_non_sensitivity(weights, image, label, a, eps=1e-5, f=1, softmax=True, abs_=True, normalise=True):
    x = image.transpose(2, 0, 1).ravel()  # Quantus's features: channel first
    feats = np.tile(_pre(a, abs_, normalise), C)
    base = x.min()
    y = _outputs(weights, image[None], label, softmax)[0]
    copies = []
    for s in range(x.size // f):
        xp = x.copy()
        xp[s * f:(s + 1) * f] = base
        copies.append(xp.reshape(C, H, W).transpose(1, 2, 0))
    changed = np.abs(_outputs(weights, np.stack(copies), label, softmax) - y) < eps
    return int(np.sum(np.repeat(changed, f) ^ (feats < eps)))


def ref_completeness(weights, image, label, a, baseline, softmax=False):
    y = _outputs(weights, np.stack([image, baseline]), label, softmax)
    return a.astype(np.float64).sum(), y[0] - y[1]


# ------------------------------------------------------------------ effective complexity

@pytest.mark.parametrize("options", [{}, {"eps": 0.3}, {"abs": False, "normalise": False, "eps": 0.5}])
def test_effective_complexity_matches_the_numpy_reference(options):
    _, _, maps = _data(1)
    maps = maps - 0.4  # signed
    ref = {"eps": options.get("eps", 1e-5), "abs_": options.get("abs", True),
           "normalise": options.get("normalise", True)}
    got = np.asarray(effective_complexity(None, None, None, maps, **options)["effective_complexity"])
    want = [np.sum(_pre(maps[i], ref["abs_"], ref["normalise"]) > ref["eps"]) for i in range(B)]
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # imports Quantus (and TensorFlow): 10-20 s on 2 cores
def test_effective_complexity_same_as_quantus():
    quantus = pytest.importorskip("quantus")
    images, labels, maps = _data(2)
    maps[1] *= 1e4  # Quantus normalises by the batch's maximum: one image at a time there
    ours = np.asarray(effective_complexity(None, images, labels, maps, eps=0.2)["effective_complexity"])
    metric = quantus.EffectiveComplexity(eps=0.2, disable_warnings=True)
    theirs = [metric(model=None, x_batch=images[i:i + 1].transpose(0, 3, 1, 2), y_batch=labels[i:i + 1],
                     a_batch=maps[i:i + 1, None])[0] for i in range(B)]
    np.testing.assert_array_equal(ours, theirs)


def test_effective_complexity_does_not_depend_on_the_batch():
    _, _, maps = _data(2)
    maps[1] *= 1e4
    full = effective_complexity(None, None, None, maps, eps=0.2)["effective_complexity"]
    alone = effective_complexity(None, None, None, maps[:1], eps=0.2)["effective_complexity"]
    np.testing.assert_array_equal(alone, full[:1])
    np.testing.assert_array_equal(full[:1], np.sum(maps[0] / maps[0].max() > 0.2))


# ------------------------------------------------------------------ completeness

def test_completeness_matches_the_numpy_reference():
    w = _weights(3)
    images, labels, maps = _data(3)
    maps = maps - 0.5
    for options, softmax in [({}, False), ({"softmax": True, "perturb_baseline": "mean"}, True),
                             ({"perturb_baseline": 0.7}, False), ({"perturb_baseline": "white"}, False)]:
        out = A.completeness(_model(w), images, labels, maps, **options)
        kind = options.get("perturb_baseline", "black")
        for i in range(B):
            value = {"black": images[i].min(), "white": images[i].max(), "mean": images[i].mean()}.get(kind, 0.7)
            base = np.full_like(images[i], value)
            total, delta = ref_completeness(w, images[i], labels[i], maps[i], base, softmax)
            np.testing.assert_allclose(out["attribution_sum"][i], total, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out["output_difference"][i], delta, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out["completeness_gap"][i], total - delta, rtol=1e-5, atol=1e-5)
            assert out["completeness"][i] == float(abs(total - delta) <= 1e-5 + 1e-4 * abs(delta))


@pytest.mark.parametrize("baseline", ["min", "black"])
def test_raw_integrated_gradients_of_a_linear_model_are_complete(baseline):
    """IG on a linear model is exact: sum(IG) = f(x) - f(x0) for its own baseline x0 (closed form)."""
    w = _weights(4)
    model = _model(w)
    images, labels, _ = _data(4)
    ig = gj.explain("ig", model, images, labels, key=jax.random.PRNGKey(0), postprocess=False, n=5, baseline=baseline)
    maps = np.asarray(ig).sum(-1)
    # IG's "min" is Quantus's "black"; IG's "black" (zero in pixel space) is passed as the baseline image
    perturb = "black" if baseline == "min" else np.asarray((0.0 - 0.5) / 0.25, np.float32).reshape(1, 1, 1, 1)
    out = A.completeness(model, images, labels, maps, perturb_baseline=perturb)
    np.testing.assert_array_equal(out["completeness"], 1.0)
    x0 = np.full_like(images, -2.0) if baseline == "black" else np.broadcast_to(
        images.min(axis=(1, 2, 3), keepdims=True), images.shape)
    closed = np.einsum("bi,ib->b", (images - x0).reshape(B, -1), w[:, labels])  # w_c . (x - x0)
    np.testing.assert_allclose(out["output_difference"], closed, rtol=1e-5)
    # the same attribution in [0, 1] (the explainers' default output) is not complete
    sal = gj.explain("ig", model, images, labels, key=jax.random.PRNGKey(0), n=5, baseline=baseline)
    scaled = A.completeness(model, images, labels, sal, perturb_baseline=perturb)
    np.testing.assert_array_equal(scaled["completeness"], 0.0)


@pytest.mark.slow  # imports Quantus (and TensorFlow): 10-20 s on 2 cores
def test_completeness_agrees_with_quantus():
    quantus = pytest.importorskip("quantus")
    w = _weights(5)
    images, labels, maps = _data(5)
    tm = _torch_model(w)
    x = images.transpose(0, 3, 1, 2)
    # Quantus's defaults (normalise=True, exact ==): a map in [0, 1] is not complete, in both
    theirs = quantus.Completeness(disable_warnings=True)(model=tm, x_batch=x, y_batch=labels, a_batch=maps[:, None],
                                                         device="cpu")
    ours = A.completeness(_model(w), images, labels, maps, normalise=True, rtol=0.0, atol=0.0)["completeness"]
    np.testing.assert_array_equal(ours, np.asarray(theirs, np.float32))
    # an attribution that holds the output difference (torch's, float32) in one value is complete in both.
    # Quantus is given it per channel (B, C, H, W), ours its channel sum: given a (B, 1, H, W) map, Quantus 0.6
    # replaces only the first H*W input values (the first channel) by the baseline.
    torch = pytest.importorskip("torch")
    black = np.broadcast_to(x.min(axis=(1, 2, 3), keepdims=True), x.shape).copy()
    with torch.no_grad():
        delta = (tm(torch.tensor(x)).numpy() - tm(torch.tensor(black)).numpy())[np.arange(B), labels]
    per_channel = np.zeros_like(x)
    per_channel[:, 1, 2, 3] = delta
    theirs = quantus.Completeness(disable_warnings=True, normalise=False)(
        model=tm, x_batch=x, y_batch=labels, a_batch=per_channel, device="cpu")
    assert all(theirs)
    ours = A.completeness(_model(w), images, labels, per_channel.sum(1))
    np.testing.assert_array_equal(ours["completeness"], 1.0)
    np.testing.assert_allclose(ours["output_difference"], delta, rtol=1e-5)


# ------------------------------------------------------------------ non-sensitivity

@pytest.mark.parametrize("options", [{}, {"features_in_step": 4}, {"features_in_step": 16, "softmax": False},
                                     {"eps": 0.05, "normalise": False}])
def test_non_sensitivity_matches_the_numpy_reference(options):
    w = _weights(6)
    images, labels, maps = _data(6)
    got = np.asarray(A.non_sensitivity(_model(w), images, labels, maps, **options)["non_sensitivity"])
    ref_options = {"eps": options.get("eps", 1e-5), "f": options.get("features_in_step", 1),
                   "softmax": options.get("softmax", True), "normalise": options.get("normalise", True)}
    want = [ref_non_sensitivity(w, images[i], labels[i], maps[i], **ref_options) for i in range(B)]
    np.testing.assert_array_equal(got, want)
    assert 0 < min(want)  # the test has something to count


@pytest.mark.slow  # imports Quantus (and TensorFlow): 10-20 s on 2 cores
def test_non_sensitivity_same_as_quantus():
    quantus = pytest.importorskip("quantus")
    w = _weights(7)
    images, labels, maps = _data(7)
    tm = _torch_model(w)
    metric = quantus.NonSensitivity(disable_warnings=True)
    x = images.transpose(0, 3, 1, 2)
    theirs = [metric(model=tm, x_batch=x[i:i + 1], y_batch=labels[i:i + 1], a_batch=maps[i:i + 1, None],
                     device="cpu")[0] for i in range(B)]
    ours = A.non_sensitivity(_model(w), images, labels, maps)["non_sensitivity"]
    np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ batching, chunks, caching, errors

def test_values_do_not_depend_on_the_batch_or_the_chunks():
    w = _weights(8)
    model = _model(w)
    images, labels, maps = _data(8, b=4)
    maps[2] *= 100.0
    for fn, options in [(A.completeness, {}), (A.non_sensitivity, {"features_in_step": 8})]:
        name = fn.__name__
        full = np.asarray(fn(model, images, labels, maps, copies_per_call=None, **options)[name])
        chunked = fn(model, images, labels, maps, copies_per_call=3, **options)[name]
        np.testing.assert_array_equal(chunked, full)
        alone = fn(model, images[1:2], labels[1:2], maps[1:2], key=jax.random.PRNGKey(3), **options)[name]  # "auto"
        np.testing.assert_array_equal(alone, full[1:2])


def test_second_call_with_the_same_shapes_does_not_retrace():
    model = _model(_weights(9))
    images, labels, maps = _data(9)
    images2, labels2, maps2 = _data(10)
    for fn, options in [(A.completeness, {}), (A.non_sensitivity, {"features_in_step": 16})]:
        fn(model, images, labels, maps, **options)
        before = TRACES["n"]
        fn(_model(_weights(10)), images2, labels2, maps2, **options)  # new weights, new data, same shapes
        assert TRACES["n"] == before, fn.__name__


def test_bad_input_raises_value_error_naming_the_problem():
    model = _model(_weights(11))
    images, labels, maps = _data(11)
    with pytest.raises(ValueError, match="features_in_step=5 must divide"):
        A.non_sensitivity(model, images, labels, maps, features_in_step=5)
    with pytest.raises(ValueError, match="unknown perturb_baseline"):
        A.completeness(model, images, labels, maps, perturb_baseline="blue")
    with pytest.raises(ValueError, match="does not broadcast"):
        A.completeness(model, images, labels, maps, perturb_baseline=np.zeros((2, 5)))
    with pytest.raises(ValueError, match="rtol"):
        A.completeness(model, images, labels, maps, rtol=-1.0)
    bad = maps.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        A.non_sensitivity(model, images, labels, bad, features_in_step=64)
    with pytest.raises(ValueError, match="labels"):
        A.completeness(model, images, labels + K, maps)
    with pytest.raises(ValueError, match="saliency must have shape"):
        A.completeness(model, images, labels, maps[:, :4])


def test_exported_from_gag_jax_metrics():
    assert gm.completeness is A.completeness and gm.non_sensitivity is A.non_sensitivity
    assert gm.effective_complexity is effective_complexity
    assert A.non_sensitivity_forward_passes({}) == 150529
    assert A.non_sensitivity_forward_passes({"features_in_step": 16}, (16, 16, 3)) == 49
