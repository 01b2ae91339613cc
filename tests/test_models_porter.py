"""The torch -> Flax porter: checkpoint reading, key/shape checks, msgpack round trip, load().

Uses a small torchvision DenseNet (real torch module, random weights) so every test is fast;
full-size equivalence lives in ``test_models_resnet_densenet.py``.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import gag_jax as gj  # noqa: E402
from gag_jax import models  # noqa: E402
from gag_jax.models import densenet, porter, resnet  # noqa: E402
from gag_jax.models.porter import CheckpointMismatchError  # noqa: E402
from torch_helpers import randomise_bn  # noqa: E402

pytestmark = pytest.mark.slow  # checkpoint conversion against torch; CI runs it, -m "not slow" skips it

SHAPE = (1, 32, 32, 3)
TINY = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2)




@pytest.fixture(scope="module")
def tiny_torch():
    torch.manual_seed(0)
    return randomise_bn(torchvision.models.DenseNet(num_classes=10, **TINY))


@pytest.fixture(scope="module")
def tiny_sd(tiny_torch):
    return {k: v.clone() for k, v in tiny_torch.state_dict().items()}


def _flax_tiny(num_classes=10):
    return densenet.DenseNetTiny(num_classes=num_classes)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _torch_logits(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def test_convert_tiny_densenet_matches_torch(tiny_torch, tiny_sd):
    variables = porter.convert(tiny_sd, _flax_tiny(), densenet.torch_prefix, SHAPE)
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in leaves)
    assert variables["params"]["conv0"]["kernel"].shape == (7, 7, 3, 16)  # OIHW -> HWIO
    assert variables["params"]["classifier"]["kernel"].shape == (tiny_torch.classifier.in_features, 10)
    x = np.random.RandomState(0).randn(2, 64, 64, 3).astype(np.float32)
    ours = _flax_tiny().apply(variables, x)
    assert _rel(ours, _torch_logits(tiny_torch, x)) <= 1e-4


def test_missing_key_is_named(tiny_sd):
    sd = dict(tiny_sd)
    del sd["features.denseblock2.denselayer1.conv2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'features\.denseblock2\.denselayer1\.conv2\.weight'"):
        porter.convert(sd, _flax_tiny(), densenet.torch_prefix, SHAPE)


def test_unexpected_key_is_named(tiny_sd):
    sd = dict(tiny_sd)
    sd["features.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key 'features\.extra\.weight'"):
        porter.convert(sd, _flax_tiny(), densenet.torch_prefix, SHAPE)


def test_wrong_shape_names_key_and_both_shapes(tiny_sd):
    sd = dict(tiny_sd)
    sd["features.norm0.running_var"] = torch.ones(17)
    with pytest.raises(CheckpointMismatchError) as info:
        porter.convert(sd, _flax_tiny(), densenet.torch_prefix, SHAPE)
    msg = str(info.value)
    assert "'features.norm0.running_var'" in msg and "(17,)" in msg and "(16,)" in msg


def test_wrong_class_count_is_explained(tiny_sd):
    with pytest.raises(CheckpointMismatchError, match=r"classifier has 10 classes, model expects 365"):
        porter.convert(tiny_sd, _flax_tiny(num_classes=365), densenet.torch_prefix, SHAPE)


def test_other_architecture_is_refused(tiny_sd):
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'conv1\.weight'"):
        porter.convert(tiny_sd, resnet.ResNetTiny(), resnet.torch_prefix, SHAPE)


def test_read_checkpoint_variants(tmp_path, tiny_torch, tiny_sd):
    """``module.`` prefix + ``state_dict`` holder + legacy ``norm.1`` keys + legacy file format."""
    legacy = {}
    for k, v in tiny_sd.items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in k and f".{part}." in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy["module." + k] = v
    assert "module.features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "places_like.pth.tar"
    torch.save({"epoch": 1, "arch": "densenet", "state_dict": legacy}, path, _use_new_zipfile_serialization=False)
    sd = porter.read_torch_checkpoint(path)
    assert not any(k.endswith("num_batches_tracked") for k in sd)
    assert set(sd) == {k for k in tiny_sd if not k.endswith("num_batches_tracked")}
    assert all(isinstance(v, np.ndarray) for v in sd.values())

    path2 = tmp_path / "holder.pt"
    torch.save({"model": tiny_sd}, path2)
    sd2 = porter.read_torch_checkpoint(path2)
    for k in sd:
        np.testing.assert_array_equal(sd[k], sd2[k])

    x = np.random.RandomState(1).randn(1, 32, 32, 3).astype(np.float32)
    variables = porter.convert(sd, _flax_tiny(), densenet.torch_prefix, SHAPE)
    assert _rel(_flax_tiny().apply(variables, x), _torch_logits(tiny_torch, x)) <= 1e-4


def test_unreadable_files(tmp_path, tiny_sd):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        porter.read_torch_checkpoint(tmp_path / "nope.pth")

    good = tmp_path / "good.pth"
    torch.save(tiny_sd, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointMismatchError, match=r"truncated\.pth.*not a readable torch checkpoint"):
        porter.read_torch_checkpoint(truncated)

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"notes\.pth.*not a readable torch checkpoint"):
        porter.read_torch_checkpoint(text)

    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointMismatchError, match="holds no state_dict"):
        porter.read_torch_checkpoint(tensor_only)


def test_msgpack_round_trip_and_checks(tmp_path, tiny_sd):
    module = _flax_tiny()
    variables = porter.convert(tiny_sd, module, densenet.torch_prefix, SHAPE)
    path = tmp_path / "sub" / "tiny.msgpack"
    porter.save_variables(variables, path)
    restored = porter.load_variables(path, module, SHAPE)
    flat_a = jax.tree_util.tree_leaves_with_path(variables)
    flat_b = jax.tree_util.tree_leaves_with_path(restored)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (_, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(CheckpointMismatchError, match="classifier"):
        porter.load_variables(path, _flax_tiny(num_classes=3), SHAPE)
    with pytest.raises(CheckpointMismatchError, match="missing variable"):
        porter.load_variables(path, densenet.DenseNet(growth_rate=8, block_config=(2, 2, 2, 3),
                                                      num_init_features=16, bn_size=2, num_classes=10), SHAPE)
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\xc1\xc1\xc1 not msgpack")
    with pytest.raises(CheckpointMismatchError, match=r"bad\.msgpack"):
        porter.load_variables(bad, module, SHAPE)
    with pytest.raises(FileNotFoundError, match="absent.msgpack"):
        porter.load_variables(tmp_path / "absent.msgpack", module, SHAPE)


def test_load_registry_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'vgg16'.*resnet50.*efficientnet_b0.*efficientnet_lite0.*densenet161"):
        models.load("vgg16", "x.pth")
    with pytest.raises(ValueError, match="needs checkpoint_path"):
        models.load("resnet50")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        models.load("densenet161", tmp_path / "missing.pth")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        models.load("resnet50", other)


def test_torch_prefix_examples():
    assert resnet.torch_prefix(("layer1_0", "conv1")) == "layer1.0.conv1"
    assert resnet.torch_prefix(("layer3_5", "downsample_bn")) == "layer3.5.downsample.1"
    assert resnet.torch_prefix(("fc",)) == "fc"
    assert densenet.torch_prefix(("denseblock3_35", "norm2")) == "features.denseblock3.denselayer36.norm2"
    assert densenet.torch_prefix(("transition1", "conv")) == "features.transition1.conv"
    assert densenet.torch_prefix(("norm5",)) == "features.norm5"
    assert densenet.torch_prefix(("classifier",)) == "classifier"


def test_model_functions_on_tiny(tiny_torch, tiny_sd):
    module = _flax_tiny()
    variables = jax.tree_util.tree_map(jnp.asarray, porter.convert(tiny_sd, module, densenet.torch_prefix, SHAPE))
    fns = models.model_functions(module, variables)
    # ModelFunctions is no longer a NamedTuple (not iterable): check each of its parts by name
    parts = ("logits", "features", "head", "guided_logits")
    assert isinstance(fns, gj.ModelFunctions) and all(getattr(fns, p) is not None for p in parts)
    x = jnp.asarray(np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32))
    logits = fns.logits(x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    np.testing.assert_allclose(fns.head(fns.features(x)), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns.guided_logits(x), logits, rtol=1e-6, atol=1e-6)
    assert _rel(logits, _torch_logits(tiny_torch, np.asarray(x))) <= 1e-4
