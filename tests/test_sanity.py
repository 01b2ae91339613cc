"""Model-parameter randomisation test (gj.sanity), on tiny models and 16-32 px images."""
import csv
import inspect
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

import gag_jax as gj
from gag_jax.data import make_synthetic
from gag_jax.experiments.tiny import TinyCNN, save_tiny, train_tiny

HOG_SMALL = {"hog_pixels_per_cell": (4, 4)}


def edge_filter(model, images, labels, key):
    """A 'saliency method' that ignores the model: gradient magnitude of the input image."""
    del model, labels, key
    gx = jnp.diff(images, axis=2, append=images[:, :, -1:])
    gy = jnp.diff(images, axis=1, append=images[:, -1:])
    return jnp.sqrt(gx ** 2 + gy ** 2).sum(-1)


class _Net(nn.Module):
    """Conv + BN stem, a two-member list ``layer``, a dense head; the head is *defined* first."""

    def setup(self):
        self.head = nn.Dense(3)
        self.stem = nn.Conv(4, (3, 3))
        self.stem_bn = nn.BatchNorm(use_running_average=True)
        self.layer = [nn.Conv(4, (3, 3)) for _ in range(2)]

    def __call__(self, x):
        x = jax.nn.relu(self.stem_bn(self.stem(x)))
        for conv in self.layer:
            x = jax.nn.relu(conv(x))
        return self.head(x.mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def synthetic():
    data = make_synthetic(3, 32, 7, 5)
    return jnp.asarray(data["images"]), jnp.asarray(data["labels"])


@pytest.fixture(scope="module")
def trained_tiny():
    module, variables, _ = train_tiny(5, 32, seed=0, steps=120, num_images=256, width=8)
    return module, variables


def test_signature_takes_the_model_contract():
    """SPEC's (method, module, variables, images, labels, key), with the model as one gj.ModelFunctions
    (issue 22: one model contract; an NNX model's re-initialisation comes as fresh=)."""
    params = inspect.signature(gj.sanity.model_randomisation).parameters
    assert list(params)[:5] == ["method", "model", "images", "labels", "key"]
    assert params["fresh"].kind is inspect.Parameter.KEYWORD_ONLY and params["fresh"].default is None
    assert params["cascading"].kind is inspect.Parameter.KEYWORD_ONLY and params["cascading"].default is True
    assert params["options"].kind is inspect.Parameter.VAR_KEYWORD


def test_blocks_follow_the_forward_pass_top_first_with_norm_joined():
    x = jnp.zeros((1, 8, 8, 3))
    module = _Net()
    variables = module.init(jax.random.PRNGKey(0), x)
    blocks = gj.sanity.layer_blocks(module, variables, x.shape)
    assert blocks == [("head", ("head",)), ("layer_1", ("layer_1",)), ("layer_0", ("layer_0",)),
                      ("stem", ("stem", "stem_bn"))]
    stages = gj.sanity.layer_blocks(module, variables, x.shape, by="stage")
    assert stages == [("head", ("head",)), ("layer", ("layer_0", "layer_1")), ("stem", ("stem", "stem_bn"))]
    with pytest.raises(ValueError, match="grouping"):
        gj.sanity.layer_blocks(module, variables, x.shape, by="depth")


def test_blocks_of_lite0_with_and_without_folded_batch_norm():
    import dataclasses

    from gag_jax.models.efficientnet import EfficientNetLite0

    module = EfficientNetLite0(num_classes=10)
    shape = (1, 64, 64, 3)
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    blocks = gj.sanity.layer_blocks(module, variables, shape)
    expected = ([("fc", ("fc",)), ("conv_head", ("conv_head", "bn1"))]
                + [(f"blocks_{i}", (f"blocks_{i}",)) for i in range(15, -1, -1)] + [("conv_stem", ("conv_stem", "bn0"))])
    assert blocks == expected
    if "fold_bn" in {f.name for f in dataclasses.fields(module)}:  # the norm read before its conv's kernel
        other = module.clone(fold_bn=not module.fold_bn)
        assert gj.sanity.layer_blocks(other, variables, shape) == expected


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("cascading", [True, False])
def test_randomised_variables_use_the_module_initialisers_and_keep_batch_stats(cascading):
    x = jnp.zeros((1, 8, 8, 3))
    module = _Net()
    init = module.init(jax.random.PRNGKey(0), x)
    trained = {"params": jax.tree_util.tree_map(lambda a: a + 1.0, init["params"]),
               "batch_stats": jax.tree_util.tree_map(lambda a: a + 5.0, init["batch_stats"])}
    key = jax.random.PRNGKey(3)
    fresh = module.init(key, x)["params"]  # independent draw with the same key
    order = ["head", "layer_1", "layer_0", ["stem", "stem_bn"]]
    steps = list(gj.sanity.randomised_variables(module, trained, key, x.shape, cascading=cascading))
    assert [s[0] for s in steps] == ["head", "layer_1", "layer_0", "stem"]
    for k, (_, v) in enumerate(steps):
        randomised = order[: k + 1] if cascading else [order[k]]
        randomised = {n for item in randomised for n in ([item] if isinstance(item, str) else item)}
        for name in trained["params"]:
            expected = fresh[name] if name in randomised else trained["params"][name]
            for a, b in zip(jax.tree_util.tree_leaves(v["params"][name]), jax.tree_util.tree_leaves(expected)):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(v["batch_stats"]["stem_bn"]["mean"], trained["batch_stats"]["stem_bn"]["mean"])
        np.testing.assert_array_equal(v["batch_stats"]["stem_bn"]["var"], trained["batch_stats"]["stem_bn"]["var"])


def test_similarities_match_scipy_and_skimage():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 24, 24, 3)), rng.normal(size=(2, 24, 24, 3))
    out = gj.sanity.similarities(a, b)
    for i in range(2):
        sa, sb = a[i].sum(-1), b[i].sum(-1)
        aa, ab = np.abs(a[i]).sum(-1), np.abs(b[i]).sum(-1)
        na, nb = (aa - aa.min()) / np.ptp(aa), (ab - ab.min()) / np.ptp(ab)
        assert out["spearman"][i] == pytest.approx(spearmanr(sa.ravel(), sb.ravel())[0], abs=1e-12)
        assert out["spearman_abs"][i] == pytest.approx(spearmanr(aa.ravel(), ab.ravel())[0], abs=1e-12)
        assert out["ssim"][i] == pytest.approx(structural_similarity(na, nb, data_range=1.0), abs=1e-12)
        assert out["hog"][i] == pytest.approx(pearsonr(hog(na), hog(nb))[0], abs=1e-12)


def test_similarity_properties():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(1, 24, 24))
    same = gj.sanity.similarities(m, m)
    assert all(same[k][0] == pytest.approx(1.0) for k in gj.sanity.METRICS)
    flipped = gj.sanity.similarities(m, -m)  # signed ranks reverse, absolute maps identical
    assert flipped["spearman"][0] == pytest.approx(-1.0)
    assert flipped["spearman_abs"][0] == pytest.approx(1.0)
    monotone = gj.sanity.similarities(np.abs(m), np.abs(m) ** 3)  # ranks kept, intensities not
    assert monotone["spearman_abs"][0] == pytest.approx(1.0) and monotone["ssim"][0] < 0.99
    const = gj.sanity.similarities(np.zeros((1, 24, 24)), m)
    assert const["spearman"][0] == 0.0
    with pytest.raises(ValueError, match="HOG cells"):
        gj.sanity.similarities(np.ones((1, 16, 16)), np.ones((1, 16, 16)))


def test_verdict_averages_the_curve_over_steps():
    top_insensitive = {"spearman_abs": np.array([[1.0, 0.98], [0.9, 0.92], [0.8, 0.8], [0.1, 0.0]])}
    assert gj.sanity.passes(top_insensitive) is False  # mean over steps 0.6875
    assert gj.sanity.passes(top_insensitive, summary="min") is True
    assert gj.sanity.passes(top_insensitive, threshold=0.7) is True
    with pytest.raises(ValueError, match="metric"):
        gj.sanity.passes(top_insensitive, metric="iou")


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_model_independent_method_keeps_similarity_one_and_fails(synthetic):
    images, labels = synthetic
    module = TinyCNN(num_classes=5, width=4)
    variables = module.init(jax.random.PRNGKey(0), images[:1])
    result = gj.sanity.model_randomisation(edge_filter, gj.ModelFunctions.from_module(module, variables), images, labels, jax.random.PRNGKey(1),
                                           **HOG_SMALL)
    assert result["steps"] == ["dense", "conv3", "conv2", "conv1"]
    for metric in gj.sanity.METRICS:
        assert result[metric].shape == (4, 3)
        np.testing.assert_allclose(result[metric], 1.0, atol=1e-6)
    assert result["maps"].shape == (4, 3, 32, 32) and result["original"].shape == (3, 32, 32)
    assert result["passed"] is False and not gj.sanity.passes(result)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_vanilla_gradient_loses_similarity_on_a_trained_net(trained_tiny, synthetic):
    module, variables = trained_tiny
    images, labels = synthetic
    result = gj.sanity.model_randomisation("vg", gj.ModelFunctions.from_module(module, variables), images, labels, jax.random.PRNGKey(0),
                                           **HOG_SMALL)
    curve = result["spearman_abs"].mean(axis=1)
    assert curve[-1] < 0.5, curve
    assert curve[-1] < curve[0], curve  # more randomised, less similar
    assert result["ssim"].mean(axis=1)[-1] < 0.5
    assert result["passed"] is True


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_independent_variant_and_step_subset(trained_tiny, synthetic):
    module, variables = trained_tiny
    images, labels = synthetic
    steps = gj.sanity.model_randomisation("vg", gj.ModelFunctions.from_module(module, variables), images, labels, jax.random.PRNGKey(0),
                                          cascading=False, steps=["conv3", "conv1"], **HOG_SMALL)
    assert steps["steps"] == ["conv3", "conv1"] and steps["cascading"] is False
    assert steps["spearman_abs"].shape == (2, 3)
    # independent randomisation of the first conv alone equals the VG maps of that model, by hand
    fresh = module.init(jax.random.split(jax.random.PRNGKey(0))[1], jnp.zeros((1, 32, 32, 3)))["params"]
    by_hand = {"params": {**variables["params"], "conv1": fresh["conv1"]}}
    maps = gj.explain("vg", lambda x: module.apply(by_hand, x), images, labels, key=jax.random.PRNGKey(0))
    np.testing.assert_allclose(steps["maps"][1], maps, atol=1e-5)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_noisy_method_with_options_and_gradcam(trained_tiny, synthetic):
    module, variables = trained_tiny
    images, labels = synthetic
    for method, options in (("gag", {"n": 2}), ("gradcam", {})):
        result = gj.sanity.model_randomisation(method, gj.ModelFunctions.from_module(module, variables), images[:2], labels[:2],
                                               jax.random.PRNGKey(0), steps=["dense"], **options, **HOG_SMALL)
        assert result["spearman_abs"].shape == (1, 2)
        assert np.all(np.abs(result["spearman_abs"]) <= 1.0)


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_bad_input(synthetic):
    images, labels = synthetic
    module = TinyCNN(num_classes=5, width=4)
    variables = module.init(jax.random.PRNGKey(0), images[:1])
    key = jax.random.PRNGKey(0)
    run = gj.sanity.model_randomisation
    model = gj.ModelFunctions.from_module(module, variables)
    with pytest.raises(ValueError, match="unknown method"):
        run("lime", model, images, labels, key)
    with pytest.raises(ValueError, match="unknown option"):
        run("vg", model, images, labels, key, noise=3)
    with pytest.raises(ValueError, match="unknown option"):
        run(edge_filter, model, images, labels, key, n=3)
    with pytest.raises(ValueError, match="unknown step"):
        run(edge_filter, model, images, labels, key, steps=["fc"])
    with pytest.raises(ValueError, match="labels"):
        run(edge_filter, model, images, labels[:2], key)
    wider = TinyCNN(num_classes=5, width=8)
    with pytest.raises(ValueError, match="shape"):
        run(edge_filter, gj.ModelFunctions.from_module(wider, variables), images, labels, key, **HOG_SMALL)
    with pytest.raises(ValueError, match="names"):
        run(edge_filter, model, images, labels, key, blocks=[("top", ("fc",))])
    # the model contract: layers needed, fresh= only for NNX
    with pytest.raises(ValueError, match="built with from_apply has none: build it with gj.ModelFunctions.from_module"):
        run(edge_filter, gj.ModelFunctions.from_apply(module.apply, variables), images, labels, key)
    with pytest.raises(ValueError, match="fresh is for NNX models"):
        run(edge_filter, model, images, labels, key, fresh=module)
    with pytest.raises(ValueError, match="model must be a gj.ModelFunctions"):
        run(edge_filter, module, images, labels, key)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_cli_sanity_writes_csv_and_figures(tmp_path, trained_tiny, capsys):
    from PIL import Image

    from gag_jax.cli import main

    _module, variables = trained_tiny
    ckpt = tmp_path / "tiny.msgpack"
    save_tiny(variables, ckpt, num_classes=5, width=8)
    data = make_synthetic(2, 32, 11, 5)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, px in enumerate(data["pixels"]):
        Image.fromarray(px).save(folder / f"img{i}.png")
    out = tmp_path / "out"
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- sanity-table:start -->\nold\n<!-- sanity-table:end -->\nb\n")
    status = main(["sanity", "--model", "tiny", "--checkpoint", str(ckpt), "--methods", "vg",
                   "--images", str(folder), "--size", "32", "--out", str(out), "--compile-cache", "none",
                   "--update-readme", str(readme)])
    assert status == 0
    text = readme.read_text()
    assert "old" not in text and "| vg |" in text and "gag-jax sanity --model tiny --methods vg" in text
    assert (out / "sanity_summary.md").read_text().strip() in text
    for name in ("sanity.csv", "sanity_summary.csv", "sanity_summary.md", "sanity_curves.png", "sanity_maps.png"):
        assert os.path.getsize(out / name) > 0
    with open(out / "sanity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2  # steps x images
    assert {r["step"] for r in rows} == {"dense", "conv3", "conv2", "conv1"}
    assert "verdict" in capsys.readouterr().out
    assert main(["sanity", "--model", "tiny", "--checkpoint", str(ckpt), "--methods", "nope",
                 "--images", str(folder), "--out", str(out)]) == 2
