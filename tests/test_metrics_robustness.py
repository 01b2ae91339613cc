"""The robustness metrics of Quantus 0.6 (gag_jax.metrics.robustness) against (1) numpy references written
from each definition, one image and one perturbed copy at a time, with the explainer's maps computed in
closed form (Vanilla Gradient of a one-hidden-layer softplus network); (2) Quantus 0.6.0 itself on a
torch copy of that network (same weights), the same maps, a torch Vanilla Gradient and the same noise
(injected through Quantus's ``perturb_func`` argument: a function returning ``arr + the given draws``);
plus batch independence with per-image keys, the key policy of the draws, chunking, one trace per
shape and the explainer argument."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.metrics import robustness as R
from gag_jax.metrics._explainer import as_explainer

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

B, H, W, C, M, K, S = 3, 8, 8, 3, 16, 4, 4
TRACES = {"n": 0}
METRICS = ("max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate", "relative_input_stability",
           "relative_output_stability")


def _apply(variables, x):
    TRACES["n"] += 1  # runs once per trace
    p = variables["params"]
    hidden = jax.nn.softplus(x.reshape(x.shape[0], -1) @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return hidden @ p["out"]["kernel"] + p["out"]["bias"]


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {"hidden": {"kernel": (rng.normal(size=(H * W * C, M)) * 0.2).astype(np.float32),
                       "bias": (rng.normal(size=M) * 0.1).astype(np.float32)},
            "out": {"kernel": rng.normal(size=(M, K)).astype(np.float32),
                    "bias": (rng.normal(size=K) * 0.1).astype(np.float32)}}


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    weights = _weights()
    model = gj.ModelFunctions.from_apply(_apply, {"params": jax.tree_util.tree_map(jnp.asarray, weights)})
    x = rng.normal(size=(B, H, W, C)).astype(np.float32)
    labels = np.array([0, 1, 3])
    maps = np.stack([np_vg(weights, x[b], labels[b]) for b in range(B)]).astype(np.float32)
    noise = {"uniform": rng.uniform(-0.2, 0.2, size=(S, B, H, W, C)).astype(np.float32),
             "positive": rng.uniform(0.02, 0.2, size=(S, B, H, W, C)).astype(np.float32),
             "normal": (rng.normal(size=(S, B, H, W, C)) * 0.1).astype(np.float32)}
    return model, weights, x, labels, maps, noise


NOISE_OF = {"max_sensitivity": "uniform", "avg_sensitivity": "uniform", "local_lipschitz_estimate": "normal",
            "relative_input_stability": "positive", "relative_output_stability": "positive"}


@pytest.fixture(scope="module")
def results(setup):
    """Each metric once on the batch with given noise (one compiled program each, reused by the tests)."""
    model, _, x, labels, maps, noise = setup
    return {name: getattr(R, name)(model, x, labels, maps, explainer="vg", samples=S, perturbations=noise[NOISE_OF[name]],
                                   copies_per_call=None)
            for name in METRICS}


# ----------------------------------------------------------------------------------------------
# numpy references (float64, one image and one copy at a time)
# ----------------------------------------------------------------------------------------------

def _softplus(v):
    return np.logaddexp(0.0, v)


def np_logits(wt, x):
    h = x.reshape(-1).astype(np.float64) @ wt["hidden"]["kernel"] + wt["hidden"]["bias"]
    return _softplus(h) @ wt["out"]["kernel"] + wt["out"]["bias"]


def np_vg(wt, x, k):
    """Vanilla Gradient map in closed form: d logit_k / dx = K1 (K2[:, k] * sigmoid(h)); |.| summed over
    channels, min-max per image (the project's post-processing)."""
    h = x.reshape(-1).astype(np.float64) @ wt["hidden"]["kernel"] + wt["hidden"]["bias"]
    g = wt["hidden"]["kernel"].astype(np.float64) @ (wt["out"]["kernel"][:, k] / (1 + np.exp(-h)))
    m = np.abs(g.reshape(H, W, C)).sum(-1)
    return (m - m.min()) / (m.max() - m.min())


def _np_prep(a, normalise, absolute):
    a = np.asarray(a, np.float64)
    if normalise == "max" and np.abs(a).max() > 0:
        a = a / np.abs(a).max()
    if normalise == "second_moment" and np.sqrt(np.mean(a ** 2)) > 0:
        a = a / np.sqrt(np.mean(a ** 2))
    return np.abs(a) if absolute else a


def ref(name, wt, x, label, a, deltas, *, normalise=None, absolute=False, nan_changed=None, eps=1e-6,
        norms=None):
    """One image's score from the definition (Quantus 0.6's formulas)."""
    if nan_changed is None:
        nan_changed = name.startswith("relative")
    a = _np_prep(a, normalise, absolute).reshape(-1)
    h0 = np_logits(wt, x)
    values = []
    for d in deltas:
        xp = x.astype(np.float64) + d
        ap = _np_prep(np_vg(wt, xp, label), normalise, absolute).reshape(-1)
        hp = np_logits(wt, xp)
        if name in ("max_sensitivity", "avg_sensitivity"):
            num, den = norms or ("fro", "fro")
            nrm = {"fro": lambda v: np.linalg.norm(v), "linf": lambda v: np.abs(v).max()}
            v = nrm[num](a - ap) / nrm[den](a)
        elif name == "local_lipschitz_estimate":
            v = np.sqrt(((a - ap) ** 2).sum()) / (np.sqrt(((x.reshape(-1) - xp.reshape(-1)) ** 2).sum()) + 1e-10)
        else:
            num = np.linalg.norm((a - ap) / (a + (a == 0) * eps))
            if name == "relative_input_stability":
                xf = x.reshape(-1).astype(np.float64)
                den = np.linalg.norm((xf - xp.reshape(-1)) / (xf + (xf == 0) * eps))
            else:
                den = np.linalg.norm(h0 - hp)
            v = num / (den + (den == 0) * eps)
        if nan_changed and np.argmax(hp) != np.argmax(h0):
            v = np.nan
        values.append(v)
    values = np.array(values)
    if name == "avg_sensitivity":
        return (np.mean if nan_changed else np.nanmean)(values), values
    return (np.max if nan_changed else np.nanmax)(values), values


# ----------------------------------------------------------------------------------------------
# (1) numpy references
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", METRICS)
def test_matches_numpy_reference_with_given_noise(setup, results, name):
    _, wt, x, labels, maps, noise = setup
    out = results[name]
    assert out[name].shape == (B,) and out[f"{name}_per_copy"].shape == (B, S)
    for b in range(B):
        value, per_copy = ref(name, wt, x[b], labels[b], maps[b], noise[NOISE_OF[name]][:, b])
        np.testing.assert_allclose(np.asarray(out[f"{name}_per_copy"][b]), per_copy, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(float(out[name][b]), value, rtol=2e-4, atol=1e-6)


def test_options_match_numpy_reference(setup):
    """Normalisation, absolute value, the linf norm and the NaN rule (per copy) against the reference."""
    model, wt, x, labels, maps, noise = setup
    signed = maps - 0.3  # signed maps: abs and normalise matter
    out = R.max_sensitivity(model, x, labels, signed, explainer="vg", samples=S, perturbations=noise["uniform"],
                            normalise=True, absolute=True, norm_numerator="linf", nan_when_prediction_changes=True,
                            copies_per_call=None)
    for b in range(B):
        value, per_copy = ref("max_sensitivity", wt, x[b], labels[b], signed[b], noise["uniform"][:, b],
                              normalise="max", absolute=True, nan_changed=True, norms=("linf", "fro"))
        np.testing.assert_allclose(np.asarray(out["max_sensitivity_per_copy"][b]), per_copy, rtol=2e-4, equal_nan=True)
        np.testing.assert_allclose(float(out["max_sensitivity"][b]), value, rtol=2e-4, equal_nan=True)


KEYS = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(7), jnp.arange(B))


@pytest.fixture(scope="module")
def drawn(setup):
    """max_sensitivity with its own draws, one key per image."""
    model, _, x, labels, maps, _ = setup
    return R.max_sensitivity(model, x, labels, maps, explainer="vg", key=KEYS, samples=S, copies_per_call=None)


def test_default_draws_follow_the_key_policy(setup, drawn):
    """Copy s of image b adds U(-radius, radius) from fold_in(fold_in(key_b, s), 0) (drawn here independently)."""
    _, wt, x, labels, maps, _ = setup
    keys, out = KEYS, drawn
    for b in range(B):
        deltas = [np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(keys[b], s), 0), (H, W, C),
                                                minval=-0.2, maxval=0.2)) for s in range(S)]
        value, _ = ref("max_sensitivity", wt, x[b], labels[b], maps[b], deltas)
        np.testing.assert_allclose(float(out["max_sensitivity"][b]), value, rtol=2e-4)


# ----------------------------------------------------------------------------------------------
# (2) Quantus 0.6.0 on a torch copy of the network
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantus_setup(setup):  # importing quantus (and TensorFlow) takes ~15 s: its tests are marked slow
    quantus = pytest.importorskip("quantus")
    torch = pytest.importorskip("torch")
    _, wt, x, labels, maps, noise = setup
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(H * W * C, M), torch.nn.Softplus(),
                              torch.nn.Linear(M, K)).eval()
    with torch.no_grad():  # NCHW flattening: feature (c, i, j) -> kernel row (i, j, c)
        net[1].weight.copy_(torch.tensor(wt["hidden"]["kernel"].reshape(H, W, C, M).transpose(3, 2, 0, 1).reshape(M, -1)))
        net[1].bias.copy_(torch.tensor(wt["hidden"]["bias"]))
        net[3].weight.copy_(torch.tensor(wt["out"]["kernel"].T))
        net[3].bias.copy_(torch.tensor(wt["out"]["bias"]))

    def torch_vg(model, inputs, targets, **kwargs):
        """Vanilla Gradient in torch: |d logit / dx| summed over channels, min-max per image."""
        xt = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
        out = model(xt)
        out[torch.arange(len(targets)), torch.as_tensor(np.asarray(targets))].sum().backward()
        m = xt.grad.abs().sum(1)
        low = m.amin(dim=(1, 2), keepdim=True)
        return ((m - low) / (m.amax(dim=(1, 2), keepdim=True) - low)).numpy()

    def run(metric, given):
        """Quantus's metric with its perturb_func replaced by one returning ``arr + given[s]`` (NCHW flat)."""
        draws = iter(np.asarray(given, np.float64).transpose(0, 1, 4, 2, 3).reshape(S, B, -1))

        def inject(arr, indices, **kwargs):
            return arr + next(draws)

        metric.perturb_func = inject
        return np.asarray(metric(model=net, x_batch=np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float64),
                                 y_batch=labels, a_batch=maps.astype(np.float64), explain_func=torch_vg,
                                 channel_first=True, device="cpu"), np.float64)

    return quantus, run


@pytest.mark.slow
def test_sensitivity_and_lipschitz_match_quantus(setup, results, quantus_setup):
    quantus, run = quantus_setup
    _, _, x, labels, maps, noise = setup
    for name, metric in (("max_sensitivity", quantus.MaxSensitivity(nr_samples=S, disable_warnings=True)),
                         ("avg_sensitivity", quantus.AvgSensitivity(nr_samples=S, disable_warnings=True)),
                         # Quantus normalises by the batch's max; the maps' max is 1 per image, so per image agrees
                         ("local_lipschitz_estimate", quantus.LocalLipschitzEstimate(nr_samples=S,
                                                                                     disable_warnings=True))):
        expected = run(metric, noise[NOISE_OF[name]])
        np.testing.assert_allclose(np.asarray(results[name][name]), expected, rtol=2e-4)


@pytest.mark.slow
def test_relative_stability_matches_quantus(setup, results, quantus_setup):
    quantus, run = quantus_setup
    for name, cls in (("relative_input_stability", quantus.RelativeInputStability),
                      ("relative_output_stability", quantus.RelativeOutputStability)):
        expected = run(cls(nr_samples=S, disable_warnings=True), setup[5]["positive"])
        got = np.asarray(results[name][name])
        np.testing.assert_allclose(got, expected, rtol=2e-4, equal_nan=True)
        assert np.isfinite(got).any()


# ----------------------------------------------------------------------------------------------
# (3) batch independence, chunking; (4) one trace per shape; the explainer argument
# ----------------------------------------------------------------------------------------------

def test_batch_independence_with_per_image_keys(setup, drawn):
    """Image 1 alone with its key scores what it scores in the batch (all copies drawn from its key)."""
    model, _, x, labels, maps, _ = setup
    alone = R.max_sensitivity(model, x[1:2], labels[1:2], maps[1:2], explainer="vg", key=KEYS[1:2], samples=S,
                              copies_per_call=None)
    np.testing.assert_allclose(np.asarray(alone["max_sensitivity_per_copy"][0]),
                               np.asarray(drawn["max_sensitivity_per_copy"][1]), rtol=1e-5)


def test_chunking_does_not_change_the_values(setup, results):
    """One copy of the batch per explainer call (a lax.map over 4 chunks) = all copies in one call."""
    model, _, x, labels, maps, noise = setup
    chunked = R.local_lipschitz_estimate(model, x, labels, maps, explainer="vg", samples=S,
                                         perturbations=noise["normal"], copies_per_call=1)
    np.testing.assert_allclose(np.asarray(chunked["local_lipschitz_estimate_per_copy"]),
                               np.asarray(results["local_lipschitz_estimate"]["local_lipschitz_estimate_per_copy"]),
                               rtol=1e-5)


def test_second_call_with_the_same_shapes_does_not_retrace(setup, results):
    model, _, x, labels, maps, noise = setup
    before = TRACES["n"]
    for name in ("max_sensitivity", "relative_output_stability"):
        getattr(R, name)(model, x + 0.5, labels, maps[::-1].copy(), explainer="vg", samples=S,
                         perturbations=noise[NOISE_OF[name]] * 0.5, copies_per_call=None)
    assert TRACES["n"] == before


def test_callable_and_pair_explainers(setup, results):
    """A traceable callable and a (name, options) pair give the same values as the name."""
    model, _, x, labels, maps, noise = setup

    def vg(model, images, labels, key):
        return gj.explain("vg", model, images, labels, key=key, validate=False)

    for explainer in (vg, ("vg", {"reduce": "abs_sum"})):
        out = R.max_sensitivity(model, x, labels, maps, explainer=explainer, samples=S,
                                perturbations=noise["uniform"], copies_per_call=None)
        np.testing.assert_allclose(np.asarray(out["max_sensitivity"]),
                                   np.asarray(results["max_sensitivity"]["max_sensitivity"]), rtol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="not jittable"):
        as_explainer("xrai")
    with pytest.raises(ValueError, match="explainer="):
        as_explainer(None)
    with pytest.raises(ValueError, match="unknown option"):
        as_explainer(("sg", {"nope": 1}))
    assert as_explainer(("sg", {"n": 4})) == as_explainer(("sg", {"n": 4}))  # cached programs are reused
    x = np.zeros((2, H, W, C), np.float32)
    model = gj.ModelFunctions.from_apply(_apply, {"params": jax.tree_util.tree_map(jnp.asarray, _weights())})
    with pytest.raises(ValueError, match="perturbations"):
        R.max_sensitivity(model, x, np.zeros(2, int), np.ones((2, H, W)), explainer="vg", samples=3,
                          perturbations=np.zeros((3, 1, H, W, C)))
    with pytest.raises(ValueError, match="norm_numerator"):
        R.avg_sensitivity(model, x, np.zeros(2, int), np.ones((2, H, W)), explainer="vg", norm_numerator="l3")
    with pytest.raises(ValueError, match="upper_bound"):
        R.relative_input_stability(model, x, np.zeros(2, int), np.ones((2, H, W)), explainer="vg", upper_bound=0.01)
    with pytest.raises(ValueError, match="one key per image"):
        R.max_sensitivity(model, x, np.zeros(2, int), np.ones((2, H, W)), explainer="vg",
                          key=jnp.zeros((3, 2), jnp.uint32))


def test_registry_records_run_the_functions(setup, results):
    """The metric records (category, direction, needs) and the registry's call give the function's values."""
    import gag_jax.metrics as gm
    from gag_jax.metrics import registry

    model, _, x, labels, maps, noise = setup
    for name in METRICS:
        record = gm.metric(name)
        assert record.category == "robustness" and not record.higher_is_better
        assert record.needs == {"key", "explainer"}
    assert gm.metric("max_sensitivity").cost({"samples": 10}) == 20  # 10 gradients
    assert gm.metric("relative_output_stability").cost({"samples": 10}) == 31  # + 10 copies' and the image's logits
    out = registry.compute([gm.metric("max_sensitivity")], model, x, labels, maps, explainer="vg",
                           options={"max_sensitivity": {"samples": S, "perturbations": noise["uniform"],
                                                        "copies_per_call": None}})
    np.testing.assert_allclose(out["max_sensitivity"], np.asarray(results["max_sensitivity"]["max_sensitivity"]))


def test_labels_out_of_range_raise(setup):
    model, _, x, labels, maps, noise = setup
    with pytest.raises(ValueError, match="labels"):
        R.avg_sensitivity(model, x, np.array([0, 1, K]), maps, explainer="vg", samples=S)
