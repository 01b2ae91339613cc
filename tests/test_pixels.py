"""gag_jax.pixels: the model is the only source of input scaling, one helper builds every pixel-space
value, one error when the scaling is unknown; images are prepared with the model's scaling (no
ImageNet default); far-out-of-range images are warned about; the old names are gone."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import gag_jax as gj
import gag_jax.metrics as gm
from gag_jax import modifications, perturbation_methods, pixels
from gag_jax.model import as_model_functions

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

ROOT = pathlib.Path(__file__).resolve().parents[1]
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
KEY = jax.random.PRNGKey(0)


def _linear(weights):
    """A two-class linear model of whatever it is given (a hashable plain callable)."""
    def logits(x):
        s = jnp.sum(x * weights, axis=(1, 2, 3))
        return jnp.stack([s, -s], axis=-1)
    return logits


WEIGHTS = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 3))
PLAIN = _linear(WEIGHTS)                                 # no scaling known
SCALED = gj.ModelFunctions(PLAIN, mean=MEAN, std=STD)   # carries its scaling


def _images(b=2, seed=2):
    """Normalised images of pixels in [0, 1] under (MEAN, STD)."""
    p = np.random.default_rng(seed).uniform(size=(b, 8, 8, 3))
    return jnp.asarray((p - np.asarray(MEAN)) / np.asarray(STD), jnp.float32)


# ------------------------------------------------------------------------------- pixel-space values

def test_black_is_pixel_zero_for_any_channel_count():
    x = _images()
    np.testing.assert_allclose(pixels.black(x, MEAN, STD)[0, 0, 0], -np.asarray(MEAN) / np.asarray(STD), rtol=1e-6)
    grey = jnp.zeros((1, 4, 4, 1))
    np.testing.assert_allclose(pixels.black(grey, (0.5,), (0.25,)), np.full((1, 4, 4, 1), -2.0))
    # IG's baseline and the metrics' black are the same value
    np.testing.assert_array_equal(modifications.make_baseline(x, "black", MEAN, STD), pixels.baseline(x, "black", MEAN, STD))


def test_blur_and_mean_baselines_commute_with_the_scaling():
    # a per-channel affine scaling commutes with a normalised blur / mean: the identity gives the same value
    x = _images(seed=3)
    base = jax.jit(pixels.baseline, static_argnums=(1, 2, 3), static_argnames=("blur_sigma", "blur_kernel"))
    for kind in ("blur", "mean"):
        scaled = np.asarray(base(x, kind, MEAN, STD, blur_sigma=2.0, blur_kernel=5))
        identity = np.asarray(base(x, kind, None, None, blur_sigma=2.0, blur_kernel=5))
        np.testing.assert_allclose(scaled, identity, atol=1e-5)


def test_noise_scale_is_pixel_noise_over_std():
    assert pixels.noise_scale(0.01, STD) == pytest.approx(tuple(0.01 / s for s in STD))
    assert pixels.noise_scale(0.0, None) is None  # no noise, no scaling needed


def test_expected_range_and_to_from_pixels_are_inverse():
    low, high = pixels.expected_range(MEAN, STD)
    np.testing.assert_allclose(low, [-2.0, -2.0, -2.0])
    np.testing.assert_allclose(high, [3.0, 2.0, 4 / 3])
    p = np.random.default_rng(4).uniform(size=(2, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(pixels.to_pixels(pixels.from_pixels(p, MEAN, STD), MEAN, STD), p, atol=1e-6)


def test_explicit_scaling_overrides_the_model_and_lengths_are_checked():
    assert pixels.resolve(SCALED, needed=True, what="x") == (MEAN, STD)
    assert pixels.resolve(SCALED, (0.5,), (0.5,), needed=True, what="x") == ((0.5,), (0.5,))
    assert pixels.resolve(None, needed=False, what="x") == ((0.0,), (1.0,))
    with pytest.raises(ValueError, match="both mean and std"):
        pixels.resolve(None, MEAN, None, needed=True, what="x")
    with pytest.raises(ValueError, match="mean must have 1 or C=3 entries"):
        pixels.resolve(None, (0.1, 0.2), (0.1, 0.2), needed=True, what="x", channels=3)
    with pytest.raises(ValueError, match="std entries must be > 0"):
        gj.ModelFunctions(PLAIN, mean=MEAN, std=(0.1, 0.0, 0.1))


# ------------------------------------------------------------------------------- the one error

def _pixel_space_calls():
    x, labels, sal = _images(1), jnp.zeros(1, jnp.int32), jnp.ones((1, 8, 8))
    removed = np.zeros((1, 8, 8), bool)
    removed[0, 2:5, 2:5] = True
    photo = np.zeros((6, 6, 3), np.uint8)
    return {
        "ig": lambda: gj.explain("ig", PLAIN, x, labels, n=2),
        "guided_ig": lambda: gj.explain("guided_ig", PLAIN, x, labels, n=2),
        "occlusion": lambda: gj.explain("occlusion", PLAIN, x, labels, window=4, stride=4),
        "rise": lambda: gj.explain("rise", PLAIN, x, labels, key=KEY, n=2, cells=2, baseline="black"),
        "straight_path": lambda: modifications.straight_path(2, "black"),
        "xrai": lambda: perturbation_methods.xrai(PLAIN, x, labels, base=lambda *a: x),
        "rcap": lambda: gm.rcap(PLAIN, x, labels, sal),
        "road": lambda: gm.road(PLAIN, x, labels, sal, fractions=(0.1, 0.5)),
        "noisy_linear_impute": lambda: gm.noisy_linear_impute(x, removed, KEY, noise=0.01),
        "prepare_pixels": lambda: gj.data.prepare_pixels([photo], 4),
        "prepare_pixels(model without scaling)": lambda: gj.data.prepare_pixels([photo], 4, model=PLAIN),
        "normalize": lambda: gj.data.normalize(photo, None, None),
    }


@pytest.mark.parametrize("name", list(_pixel_space_calls()))
def test_every_pixel_space_value_without_scaling_gets_the_one_error(name):
    with pytest.raises(ValueError) as err:
        _pixel_space_calls()[name]()
    message = str(err.value)
    assert "needs the model's input scaling" in message and "which is not known here" in message
    assert "mean=..., std=..." in message or "std=..." in message  # how to pass it
    assert "from_module(module, variables, mean=..., std=...)" in message  # how to give the model its scaling


def test_the_scaling_error_is_written_once():
    sources = {p: p.read_text() for p in (ROOT / "gag_jax").rglob("*.py")}
    writers = [p.name for p, text in sources.items() if "enter the model as (p - mean) / std" in text]
    assert writers == ["pixels.py"]
    old = ("is zero in pixel space and needs", "works in pixel space and needs", "segments the image in pixel space and")
    assert not [p.name for p, text in sources.items() if any(phrase in text for phrase in old)]


def test_the_loaders_have_no_imagenet_default(tmp_path):
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(tmp_path / "a.png")
    for call in (lambda: gj.data.load_image_files(tmp_path, 4),
                 lambda: gj.data.load_case("folder", tmp_path, image_size=4, backend="files")):
        with pytest.raises(ValueError, match="pass model=model .* or mean=..., std=..."):
            call()
    _, images, _ = gj.data.load_image_files(tmp_path, 4, model=SCALED)
    np.testing.assert_allclose(images[0, 0, 0], (200 / 255 - np.asarray(MEAN)) / np.asarray(STD), rtol=1e-6)
    batch = next(iter(gj.data.load_case("folder", tmp_path, image_size=4, backend="files", model=SCALED)))
    np.testing.assert_array_equal(batch["images"][0], images[0])


def test_prepare_pixels_uses_the_models_scaling_and_explicit_values_override_it():
    photos = [np.random.default_rng(5).integers(0, 256, (6, 6, 3), dtype=np.uint8)]
    got = gj.data.prepare_pixels(photos, 6, model=SCALED)
    np.testing.assert_allclose(got[0], (photos[0] / 255.0 - np.asarray(MEAN)) / np.asarray(STD), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, gj.data.prepare_pixels(photos, 6, mean=MEAN, std=STD))
    np.testing.assert_array_equal(gj.data.prepare_pixels(photos, 6, model=SCALED.logits), got)  # its .logits too
    other = gj.data.prepare_pixels(photos, 6, model=SCALED, mean=(0.5,), std=(0.5,))
    np.testing.assert_allclose(other[0], photos[0] / 127.5 - 1.0, atol=1e-6)


def test_the_synthetic_case_keeps_its_own_models_scaling():
    default = gj.data.make_synthetic(2, 16, seed=1)
    np.testing.assert_allclose(default["images"], (default["pixels"] / 255.0 - np.asarray(gj.IMAGENET_MEAN))
                               / np.asarray(gj.IMAGENET_STD), rtol=1e-5, atol=1e-5)
    assert gj.data.SYNTHETIC_MEAN == gj.IMAGENET_MEAN and gj.data.SYNTHETIC_STD == gj.IMAGENET_STD
    mine = gj.data.make_synthetic(2, 16, seed=1, model=SCALED)
    np.testing.assert_allclose(mine["images"], (mine["pixels"] / 255.0 - np.asarray(MEAN)) / np.asarray(STD),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- the range warning

def _explain_warnings(images, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gj.explain("vg", SCALED, images, jnp.zeros(images.shape[0], jnp.int32), **kw)
    return [w for w in caught if "far outside" in str(w.message)]


def test_raw_0_255_images_get_one_warning_naming_the_fix():
    raw = jnp.asarray(np.random.default_rng(6).integers(0, 256, (3, 8, 8, 3)), jnp.float32)
    found = _explain_warnings(raw)
    assert len(found) == 1  # once per call, whatever the number of images and channels
    message = str(found[0].message)
    assert "raw 0-255" in message and "prepare_pixels(photos, size, model=model)" in message
    assert found[0].filename == __file__  # points at the caller's line
    assert _explain_warnings(raw, validate=False) == []  # the check is part of validate=True


def test_normalised_images_and_modest_overshoot_get_no_warning():
    assert _explain_warnings(_images(3)) == []
    low, high = pixels.expected_range(MEAN, STD)
    edge = jnp.asarray(np.stack([np.broadcast_to(low - 0.9 * (high - low), (8, 8, 3)),
                                 np.broadcast_to(high + 0.9 * (high - low), (8, 8, 3))]), jnp.float32)
    assert _explain_warnings(edge) == []  # within the slack (RANGE_SLACK = 1 range width each side)
    assert pixels.warn_if_out_of_range(edge * 3, None, None) is False  # no scaling known: no check


# ------------------------------------------------------------------------------- the old names are gone

def test_removed_shims_are_gone():
    assert not hasattr(gj, "explainer") and callable(gj.explainer_fn)
    assert not hasattr(gj.distributed, "pad_batch") and not hasattr(gj.distributed, "as_model")
    from gag_jax.experiments import sanity_figures
    assert not hasattr(sanity_figures, "sanity_check")
    with pytest.raises(ImportError):
        import gag_jax.metrics.perturbation  # noqa: F401
    x, labels, sal = _images(1), jnp.zeros(1, jnp.int32), jnp.ones((1, 8, 8))
    for metric in (gm.rcap, gm.deletion_insertion, gm.road):
        with pytest.raises(TypeError, match="batch_size"):
            metric(SCALED, x, labels, sal, batch_size=2)


def test_a_bare_function_is_refused_naming_gj_method():
    def edge(model, images, labels, key=None):
        return images

    with pytest.raises(ValueError, match=r"gj.Method\('edge', edge, kind="):
        gj.explain(edge, SCALED, _images(1), jnp.zeros(1, jnp.int32))
    wrapped = gj.Method("edge", edge, "attribution", random=False)
    assert gj.explain(wrapped, SCALED, _images(1), jnp.zeros(1, jnp.int32)).shape == (1, 8, 8)


def test_models_import_only_as_gag_jax_models():
    run = subprocess.run([sys.executable, "-c", "import models"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "from gag_jax import models" in run.stderr


def test_one_model_normaliser_with_variables():
    import flax.linen as nn

    module = nn.Dense(2)
    variables = module.init(KEY, jnp.zeros((1, 3)))
    from_module = as_model_functions(module, variables)
    from_apply = as_model_functions(module.apply, variables)
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(from_module(x), module.apply(variables, x))
    np.testing.assert_array_equal(from_apply(x), module.apply(variables, x))
    with pytest.raises(ValueError, match="with variables"):
        as_model_functions(SCALED, variables)
