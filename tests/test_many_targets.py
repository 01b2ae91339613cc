"""Maps for several targets in one call: ``labels (B, K)`` and ``target=fn``.

Checked against independent computations: K single-target calls with the same key (the shared
forward / sweep must not change any map), closed-form gradients of linear models (the gradient of a
sum of logits is the sum of the weight rows; a 1x1-conv "segmentation" model summed over a region),
and properties (no re-trace, batch independence of keyed maps, errors naming the bad entry).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from toy_models import tiny_conv_net

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

SIZE, CLASSES = 12, 5
LABELS = np.array([[0, 3, 4], [2, 1, 0]], np.int32)  # (B, K) = (2, 3), a repeated class across images
KEY = jax.random.PRNGKey(1)
OPTIONS = {"n": 4, "chunk_size": 2, "window": 4, "stride": 4}


@pytest.fixture(scope="module")
def tiny():
    module, variables, _ = tiny_conv_net(size=SIZE, num_classes=CLASSES, activation="relu")
    model = gj.ModelFunctions.from_module(module, variables, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, SIZE, SIZE, 3))
    return model, images


def _options(method):
    return {k: v for k, v in OPTIONS.items() if k in gj.DEFAULTS[method]}


def _mostly_equal(a, b, *, atol=1e-5, flips=0.02):
    """Equal to float rounding, except that a variance guide's percentile threshold may flip a few
    pixels where two variances nearly tie (then at most ``flips`` of the values differ)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    differ = ~np.isclose(a, b, atol=atol, rtol=1e-4)
    assert differ.mean() <= flips, f"{differ.sum()} of {differ.size} values differ"


@pytest.mark.parametrize("method", ["vg", "sg", "ig", "gag", "gradcam", "occlusion"])
def test_each_target_map_equals_the_single_target_call(tiny, method):
    model, images = tiny
    raw = gj.explain(method, model, images, LABELS, key=KEY, postprocess=False, **_options(method))
    assert raw.shape[:2] == (2, 3) and raw.ndim == 5
    for k in range(LABELS.shape[1]):
        alone = gj.explain(method, model, images, LABELS[:, k], key=KEY, postprocess=False, **_options(method))
        np.testing.assert_allclose(raw[:, k], alone, rtol=1e-4, atol=1e-5 * float(np.abs(alone).max()))


def test_gag_maps_per_target_with_min_max_per_image_and_target(tiny):
    model, images = tiny
    many = gj.explain("gag", model, images, LABELS, key=KEY, **_options("gag"))
    assert many.shape == (2, 3, SIZE, SIZE)
    for k in range(LABELS.shape[1]):
        alone = gj.explain("gag", model, images, LABELS[:, k], key=KEY, postprocess=False, **_options("gag"))
        _mostly_equal(many[:, k], gj.to_saliency(alone))
        np.testing.assert_allclose(np.asarray(many[:, k]).reshape(2, -1).max(1), 1.0)  # each map spans [0, 1]


@pytest.mark.slow  # the guided rewrite and the adaptive path compile slowly on a loaded CPU
@pytest.mark.parametrize("method", ["gb", "guided_ig"])
def test_guided_gradients_and_the_adaptive_path_per_target(tiny, method):
    model, images = tiny
    many = gj.explain(method, model, images, LABELS, key=KEY, postprocess=False, **_options(method))
    for k in range(LABELS.shape[1]):
        alone = gj.explain(method, model, images, LABELS[:, k], key=KEY, postprocess=False, **_options(method))
        np.testing.assert_allclose(many[:, k], alone, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # several compilations of the noise sweep (about 10 s of CPU)
def test_explain_many_reads_every_target_from_one_sweep(tiny):
    model, images = tiny
    rows = ["gag", "sg", ("gag", {"percentile": 0.45})]
    many = gj.explain_many(rows, model, images, LABELS, key=KEY, postprocess=False, n=4, chunk_size=2)
    assert gj.explainers.sweeps_of(rows, n=4) == [["gag", "sg", "gag[percentile=0.45]"]]
    for name, own in (("gag", {}), ("sg", {}), ("gag", {"percentile": 0.45})):
        got = many[gj.explainers.method_key(name, own)]
        assert got.shape == (2, 3, SIZE, SIZE, 3)
        for k in range(3):
            alone = gj.explain(name, model, images, LABELS[:, k], key=KEY, postprocess=False, n=4, chunk_size=2,
                               **own)
            _mostly_equal(got[:, k], alone, atol=1e-5 * float(np.abs(alone).max()))


# ------------------------------------------------------------------ target=fn, closed forms


def _linear(weights):
    """Logits ``x.reshape(B, -1) @ weights`` for weights ``(H*W*C, classes)``."""
    return gj.ModelFunctions.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, weights)


def sum_of_classes(logits, classes=(0, 2)):
    return logits[:, list(classes)].sum(-1)


def two_targets(logits):
    return jnp.stack([logits[:, 0] + logits[:, 2], logits[:, 1] - logits[:, 3]], axis=-1)


def test_target_function_gradient_is_the_sum_of_weight_rows():
    shape = (2, 4, 4, 3)
    weights = jax.random.normal(jax.random.PRNGKey(3), (48, CLASSES))
    model = _linear(weights)
    x = jax.random.normal(jax.random.PRNGKey(4), shape)
    w = np.asarray(weights)
    one = gj.explain("vg", model, x, target=sum_of_classes, postprocess=False)
    np.testing.assert_allclose(one, np.broadcast_to((w[:, 0] + w[:, 2]).reshape(shape[1:]), shape), rtol=1e-5)
    two = gj.explain("vg", model, x, target=two_targets, postprocess=False)
    assert two.shape == (2, 2, 4, 4, 3)
    expected = np.stack([w[:, 0] + w[:, 2], w[:, 1] - w[:, 3]]).reshape(2, 4, 4, 3)
    np.testing.assert_allclose(two, np.broadcast_to(expected, two.shape), rtol=1e-5, atol=1e-6)
    # IG of a linear function from a zero baseline: x * gradient (completeness, exact)
    ig = gj.explain("ig", model, x, target=two_targets, postprocess=False, baseline="zero", n=3)
    np.testing.assert_allclose(ig, np.asarray(x)[:, None] * expected[None], rtol=1e-4, atol=1e-5)
    # a functools.partial is a target too, and (B,) int labels give the same as a one-class target
    np.testing.assert_allclose(gj.explain("vg", model, x, target=functools.partial(sum_of_classes, classes=(3,)),
                                          postprocess=False),
                               gj.explain("vg", model, x, jnp.array([3, 3]), postprocess=False), rtol=1e-6)


def region_class_sum(output, c=1, rows=slice(0, 2)):
    """Sum of class ``c``'s logits over the top rows of a segmentation output ``(B, H, W, classes)``."""
    return output[:, rows, :, c].sum(axis=(1, 2))


def test_segmentation_region_target_closed_form():
    mix = jax.random.normal(jax.random.PRNGKey(5), (3, 4))  # a 1x1 conv: out[b, h, w] = x[b, h, w] @ mix
    model = gj.ModelFunctions.from_apply(lambda m, x: x @ m, mix)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 6, 6, 3))
    grads = gj.explain("vg", model, x, target=region_class_sum, postprocess=False)
    expected = np.zeros((6, 6, 3), np.float32)
    expected[:2] = np.asarray(mix)[:, 1]
    np.testing.assert_allclose(grads, np.broadcast_to(expected, grads.shape), rtol=1e-6)
    maps = gj.explain("gag", model, x, target=region_class_sum, key=KEY, n=4)
    assert maps.shape == (2, 6, 6) and float(maps[:, 2:].max()) == 0.0  # nothing outside the region


# ------------------------------------------------------------------ errors, re-tracing, jit, keys


def test_out_of_range_entry_and_bad_requests_are_refused_by_name(tiny):
    model, images = tiny
    with pytest.raises(ValueError, match=r"labels\[1, 1\] = 7"):
        gj.explain("gag", model, images, jnp.array([[0, 1], [2, 7]]), key=KEY, n=4)
    with pytest.raises(ValueError, match=r"labels\[0, 1\] = -1"):
        gj.explain("gradcam", model, images, jnp.array([[0, -1], [2, 3]]))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, K\)"):
        gj.explain("vg", model, images, jnp.zeros((2, 2, 2), jnp.int32))
    with pytest.raises(ValueError, match="not both"):
        gj.explain("vg", model, images, LABELS, target=two_targets)
    with pytest.raises(ValueError, match="labels are required"):
        gj.explain("vg", model, images)
    with pytest.raises(ValueError, match="attribution function"):
        gj.explain("gradcam", model, images, target=two_targets)
    with pytest.raises(ValueError, match="attribution function"):
        gj.explain_many(["vg", "occlusion"], model, images, target=two_targets)

    class Unhashable:
        __hash__ = None

        def __call__(self, logits):
            return logits[:, 0]

    with pytest.raises(ValueError, match="hashable"):
        gj.explain("vg", model, images, target=Unhashable())
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, K\)"):
        gj.explain("vg", model, images, target=lambda logits: logits[:, :, None])


def test_no_retrace_on_a_second_call():
    traces = []

    def apply(w, x):
        traces.append(1)  # runs when traced, never when a compiled program runs
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w)

    weights = jax.random.normal(jax.random.PRNGKey(7), (48, CLASSES))
    x = jax.random.normal(jax.random.PRNGKey(8), (2, 4, 4, 3))
    model = gj.ModelFunctions.from_apply(apply, weights)
    first = gj.explain("gag", model, x, LABELS, key=KEY, n=4, validate=False)
    count = len(traces)
    other = model.replace(variables=weights * 2.0)  # new weights and new labels, same shapes: same program
    second = gj.explain("gag", other, x, LABELS[:, ::-1].copy(), key=KEY, n=4, validate=False)
    assert len(traces) == count
    assert not np.allclose(first, second)
    gj.explain("sg", model, x, target=two_targets, key=KEY, n=4, validate=False)
    count = len(traces)
    gj.explain("sg", other, x, target=two_targets, key=KEY, n=4, validate=False)
    assert len(traces) == count


def test_jit_with_the_model_as_a_pytree_argument(tiny):
    model, images = tiny
    options = _options("sg")

    @jax.jit
    def raw(model, images, labels, key):
        return gj.explain("sg", model, images, labels, key=key, postprocess=False, validate=False, **options)

    expected = gj.explain("sg", model, images, LABELS, key=KEY, postprocess=False, **options)
    np.testing.assert_allclose(raw(model, images, LABELS, KEY), expected, rtol=1e-5, atol=1e-7)
    fn = jax.jit(gj.explainer_fn("sg", postprocess=False, **options))
    np.testing.assert_allclose(fn(model, images, LABELS, KEY), expected, rtol=1e-5, atol=1e-7)
    zeroed = raw(model.replace(variables=jax.tree_util.tree_map(jnp.zeros_like, model.variables)), images,
                 LABELS, KEY)
    assert float(jnp.abs(zeroed).max()) == 0.0  # the weights are arguments, not constants
    maps = jax.jit(gj.explainer_fn("sg", **options))(model, images, LABELS, KEY)  # min-max per (image, target)
    np.testing.assert_allclose(maps, gj.explain("sg", model, images, LABELS, key=KEY, **options), atol=1e-6)
    assert maps.shape == (2, 3, SIZE, SIZE) and np.allclose(maps.max(axis=(2, 3)), 1.0)


@pytest.mark.slow  # a second batch size compiles again
def test_an_images_target_maps_depend_only_on_its_own_key(tiny):
    model, images = tiny
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(5), jnp.array([11, 42]))
    both = gj.explain("gag", model, images, LABELS, key=keys, postprocess=False, **_options("gag"))
    alone = gj.explain("gag", model, images[1:], LABELS[1:], key=keys[1:], postprocess=False, **_options("gag"))
    _mostly_equal(both[1:], alone, atol=1e-5 * float(np.abs(alone).max()))


# ------------------------------------------------------------------ the command line


@pytest.mark.slow  # two runs of the shipped Lite0 (about 45 s of CPU)
def test_explain_command_top_k_writes_one_map_per_class_named_by_it(tmp_path, capsys):
    from PIL import Image

    from gag_jax import cli
    from gag_jax.experiments.tables import read_table_csv

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    common = ["--method", "vg", "--size", "32", "--compile-cache", "none", "--no-progress"]
    assert cli.main(["explain", str(folder), "--labels", "top-3", "--out", str(tmp_path / "top"), *common]) == 0
    assert cli.main(["explain", str(folder), "--out", str(tmp_path / "one"), *common]) == 0
    capsys.readouterr()
    rows = read_table_csv(str(tmp_path / "top" / "explain.csv"))
    top1 = {r["image"]: r for r in read_table_csv(str(tmp_path / "one" / "explain.csv"))}
    assert [r["image"] for r in rows] == ["a.png"] * 3 + ["b.png"] * 3
    for image in ("a.png", "b.png"):
        mine = [r for r in rows if r["image"] == image]
        probs = [float(r["probability"]) for r in mine]
        assert probs == sorted(probs, reverse=True) and len({r["label"] for r in mine}) == 3
        assert mine[0]["label"] == top1[image]["label"]  # the first of the top-3 is the top-1
        for rank, r in enumerate(mine, 1):
            assert r["file_stem"].startswith(f"{image[0]}_top{rank}_{r['label']}_")
            saliency = np.load(tmp_path / "top" / f"{r['file_stem']}_vg.npy")
            assert saliency.shape == (32, 32) and (tmp_path / "top" / f"{r['file_stem']}_vg.png").is_file()
        np.testing.assert_allclose(np.load(tmp_path / "top" / f"{mine[0]['file_stem']}_vg.npy"),
                                   np.load(tmp_path / "one" / f"{image[0]}_vg.npy"), atol=1e-5)
    assert cli.main(["explain", str(folder), "--labels", "top-x", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "top-K" in capsys.readouterr().err


def test_evaluate_top_k_scores_each_image_and_class_and_its_first_class_is_the_predicted_run(tmp_path, capsys):
    """``evaluate --target top-2``: one record row per (image, class) pair, the classes the model's two
    most probable (numpy argsort of its own logits), rank 0's maps and metrics those of ``--target
    predicted`` (same image keys), rank 1 scored for the second class; the tables count the pairs."""
    import glob

    from gag_jax import cli
    from gag_jax.experiments import modelzoo

    common = ["--case", "synthetic", "--limit", "6", "--batch-size", "4", "--n", "2", "--confidence", "none",
              "--methods", "gag,sg_r", "--metrics", "rcap,dauc", "--image-size", "16", "--no-figures",
              "--no-progress", "--compile-cache", "none"]
    checkpoint = tmp_path / "tiny.msgpack"
    assert cli.main(["evaluate", *common, "--target", "predicted", "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / "one")]) == 0
    assert cli.main(["evaluate", *common, "--target", "top-2", "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert "2 most probable classes" in out
    model, _ = modelzoo.load_model("tiny", checkpoint, image_size=16)
    for row in ("gag", "sg_r"):
        one = [dict(np.load(f)) for f in sorted(glob.glob(str(tmp_path / "one" / "records" / row / "*.npz")))]
        two = [dict(np.load(f)) for f in sorted(glob.glob(str(tmp_path / "two" / "records" / row / "*.npz")))]
        assert len(one) == len(two) == 2
        for a, b in zip(one, two):
            np.testing.assert_array_equal(b["names"], np.repeat(a["names"], 2))
            np.testing.assert_array_equal(b["valid"], np.repeat(a["valid"], 2))
            np.testing.assert_array_equal(b["target_rank"], np.tile([0, 1], a["names"].shape[0]))
            np.testing.assert_array_equal(b["labels"][0::2], a["labels"])  # rank 0 = the top-1 class
            for metric in ("rcap", "dauc"):
                np.testing.assert_allclose(b[metric][0::2], a[metric], atol=1e-5, err_msg=f"{row} {metric}")
            assert not np.allclose(b["rcap"][1::2], a["rcap"])  # the second class is explained on its own
    # the classes are the model's two most probable, computed here from its logits
    from gag_jax.data import load_case

    batches = load_case("synthetic", None, image_size=16, batch_size=6, num_images=6, seed=0,
                        mean=model.mean, std=model.std)
    images = next(iter(batches))["images"][:6]
    expected = np.argsort(-np.asarray(model(images)), axis=-1, kind="stable")[:, :2]
    records = [dict(np.load(f)) for f in sorted(glob.glob(str(tmp_path / "two" / "records" / "gag" / "*.npz")))]
    labels = np.concatenate([r["labels"][r["valid"]] for r in records]).reshape(-1, 2)
    np.testing.assert_array_equal(labels, expected)
    with open(tmp_path / "two" / "table2.csv") as f:
        assert ",12," in f.read()  # n = 6 images x 2 classes
    assert cli.main(["evaluate", *common, "--target", "top-0", "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path / "bad")]) == 2
    assert "'top-K' with K >= 1" in capsys.readouterr().err
