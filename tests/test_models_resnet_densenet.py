"""ResNet-50 and DenseNet-161: Flax ports equal torchvision (random weights, randomised BN stats).

Full-size models, float32, CPU, small 64x64 inputs (both nets pool globally, so any size >= 32 is
a faithful check of every weight). Relative error = max |ours - torch| / max |torch|.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gag_jax import models
from gag_jax.models import densenet, porter, resnet
from torch_helpers import randomise_bn

pytestmark = pytest.mark.slow  # model equivalence with torchvision; CI runs it, -m "not slow" skips it

TOL = 1e-4
SHAPE = (1, 64, 64, 3)


def _n_params(module):
    tmpl = porter.template(module, SHAPE)
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tmpl["params"])))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _images(seed, shape=(2, 64, 64, 3)):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)




def _nchw(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------- parameter counts


def test_parameter_counts():
    assert _n_params(resnet.ResNet50()) == 25_557_032
    assert _n_params(densenet.DenseNet161()) == 28_681_000
    assert _n_params(densenet.DenseNet161(num_classes=365)) == 28_681_000 - 2209 * (1000 - 365)
    assert _n_params(densenet.DenseNet121()) == 7_978_856


# --------------------------------------------------------------------------- full-size equivalence


@pytest.fixture(scope="module")
def resnet50_pair():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tm = randomise_bn(torchvision.models.resnet50(), seed=1)
    module = resnet.ResNet50()
    variables = jax.tree_util.tree_map(jnp.asarray, porter.convert(tm.state_dict(), module, resnet.torch_prefix, SHAPE))
    return torch, tm, module, variables


@pytest.fixture(scope="module")
def densenet161_pair():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tm = randomise_bn(torchvision.models.densenet161(), seed=2)
    module = densenet.DenseNet161()
    variables = jax.tree_util.tree_map(jnp.asarray, porter.convert(tm.state_dict(), module, densenet.torch_prefix, SHAPE))
    return torch, tm, module, variables


def _features_fn(module):
    """Jitted ``features`` taking the variables without the classifier, so one compiled program
    serves every class count (compiling a full-size net is what costs time on CPU)."""
    return jax.jit(lambda v, x: module.apply(v, x, method="features"))


def _without_head(variables, head):
    return {"params": {k: v for k, v in variables["params"].items() if k != head},
            "batch_stats": variables["batch_stats"]}


def _check_pair(torch, tm, module, variables, torch_features, features_fn, head, x):
    feats = features_fn(_without_head(variables, head), x)
    # ``__call__`` is literally ``head(features(x))``; checked as one program on the tiny nets.
    logits = np.asarray(jax.jit(lambda v, f: module.apply(v, f, method="head"))(variables, feats))
    feats = np.asarray(feats)
    with torch.no_grad():
        ref_logits = tm(_nchw(torch, x)).numpy()
        ref_feats = _nhwc(torch_features(_nchw(torch, x)))
    assert logits.shape == ref_logits.shape and logits.dtype == np.float32
    assert feats.shape == ref_feats.shape
    err_logits, err_feats = _rel(logits, ref_logits), _rel(feats, ref_feats)
    print(f"\n{type(module).__name__}({module.num_classes}): rel err logits {err_logits:.2e}, features {err_feats:.2e}")
    assert err_logits <= TOL
    assert err_feats <= TOL
    # The random init must give input-dependent outputs, or the comparison would be weak.
    assert np.std(ref_logits - ref_logits.mean(0)) > 1e-3 * np.abs(ref_logits).max()
    return err_logits


def test_resnet50_matches_torchvision(resnet50_pair):
    torch, tm, module, variables = resnet50_pair

    def layer4(x):
        x = tm.maxpool(tm.relu(tm.bn1(tm.conv1(x))))
        return tm.layer4(tm.layer3(tm.layer2(tm.layer1(x))))

    _check_pair(torch, tm, module, variables, layer4, _features_fn(module), "fc", _images(0))


@pytest.fixture(scope="module")
def densenet161_features():
    return _features_fn(densenet.DenseNet161())


def test_densenet161_matches_torchvision(densenet161_pair, densenet161_features):
    torch, tm, module, variables = densenet161_pair
    _check_pair(torch, tm, module, variables, lambda x: torch.nn.functional.relu(tm.features(x)),
                densenet161_features, "classifier", _images(1))


def test_densenet161_places365_checkpoint(tmp_path, densenet161_features):
    """365 classes, ``module.``-prefixed keys inside a ``state_dict`` holder, via ``models.load``."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    tm = randomise_bn(torchvision.models.densenet161(num_classes=365), seed=3)
    path = tmp_path / "densenet161_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "densenet161",
                "state_dict": {"module." + k: v for k, v in tm.state_dict().items()}}, path)
    module, variables = models.load("densenet161", path)  # num_classes inferred from the checkpoint
    assert module.num_classes == 365
    _check_pair(torch, tm, module, variables, lambda x: torch.nn.functional.relu(tm.features(x)),
                densenet161_features, "classifier", _images(2))
    with pytest.raises(models.CheckpointMismatchError, match="classifier has 365 classes, model expects 1000"):
        models.load("densenet161", path, num_classes=1000)


# --------------------------------------------------------------------------- guided backprop


def _random_variables(module, seed):
    """He-scaled random weights, random BN affine and running stats (numpy; no jit of ``init``)."""
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.randn(*leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.randn(*leaf.shape)).astype(np.float32)  # bias, mean

    return jax.tree_util.tree_map_with_path(fill, porter.template(module, SHAPE))



@pytest.mark.parametrize("ctor,n_relus", [(resnet.ResNetTiny, 1 + 4 * 3), (densenet.DenseNetTiny, 1 + 8 * 2 + 3 + 1)])
def test_guided_backprop(ctor, n_relus):
    plain = ctor()
    guided = ctor(guided_backprop=True)
    x = jnp.asarray(_images(4, (2, 32, 32, 3)))
    variables = _random_variables(plain, seed=0)

    # Same forward values.
    fwd = jax.jit(lambda v, a: (plain.apply(v, a), guided.apply(v, a),
                                plain.apply(v, plain.apply(v, a, method="features"), method="head")))
    lo_plain, lo_guided, lo_split = fwd(variables, x)
    assert lo_plain.shape == (2, 10) and lo_plain.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(lo_guided), np.asarray(lo_plain))
    # __call__ == head(features)
    np.testing.assert_allclose(np.asarray(lo_split), np.asarray(lo_plain), rtol=1e-5, atol=1e-6)

    # Every ReLU is wrapped (one custom_vjp per activation), none in the plain model (whose custom_vjps
    # are its convolutions' written-out backward passes, models._conv.conv2d, as in the guided one).
    n_guided = str(jax.make_jaxpr(lambda a: guided.apply(variables, a))(x)).count("custom_vjp_call")
    n_plain = str(jax.make_jaxpr(lambda a: plain.apply(variables, a))(x)).count("custom_vjp_call")
    assert n_guided - n_plain == n_relus
    n_unfolded = str(jax.make_jaxpr(lambda a: ctor(fold_bn=False).apply(variables, a))(x)).count("custom_vjp_call")
    assert n_unfolded == 0

    feats_shape = jax.eval_shape(lambda a: plain.apply(variables, a, method="features"), x).shape
    negative = -jax.random.uniform(jax.random.PRNGKey(2), feats_shape)
    mixed = jax.random.normal(jax.random.PRNGKey(3), feats_shape)

    @jax.jit
    def gradients(v, a):
        def logit(module):
            return jax.grad(lambda b: module.apply(v, b)[:, 3].sum())(a)

        _, vjp_plain = jax.vjp(lambda b: plain.apply(v, b, method="features"), a)
        _, vjp_guided = jax.vjp(lambda b: guided.apply(v, b, method="features"), a)
        return dict(plain=logit(plain), guided=logit(guided), neg_plain=vjp_plain(negative)[0],
                    neg_guided=vjp_guided(negative)[0], mixed=vjp_guided(mixed)[0],
                    mixed_pos=vjp_guided(jnp.maximum(mixed, 0))[0])

    g = jax.tree_util.tree_map(np.asarray, gradients(variables, x))
    # Input gradients of a logit differ.
    assert np.all(np.isfinite(g["guided"]))
    assert np.abs(g["plain"] - g["guided"]).max() > 1e-3 * np.abs(g["plain"]).max()
    # ``features`` ends with a ReLU: a negative upstream gradient must not pass it at all
    # (a plain ReLU passes it wherever the unit is on) ...
    assert np.abs(g["neg_plain"]).max() > 0
    np.testing.assert_array_equal(g["neg_guided"], 0.0)
    # ... and a mixed-sign upstream gradient acts exactly like its positive part.
    np.testing.assert_allclose(g["mixed"], g["mixed_pos"], rtol=1e-6, atol=1e-7 * np.abs(g["mixed_pos"]).max())


# --------------------------------------------------------------------------- bfloat16


def test_bfloat16_keeps_top1():
    """bfloat16 compute: ~1% logit error and the float32 top-1 on random images (ported weights)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(7)
    tm = randomise_bn(torchvision.models.DenseNet(8, (2, 2, 2, 2), 16, bn_size=2, num_classes=10), seed=7)
    rng = np.random.RandomState(7)
    # Per-image random contrast and colour offset, so a random-weight net does not give every
    # image the same class.
    x = (rng.randn(8, 64, 64, 3) * rng.uniform(0.5, 2, (8, 1, 1, 3)) + rng.uniform(-2, 2, (8, 1, 1, 3))).astype(np.float32)
    f32 = densenet.DenseNetTiny()
    variables = porter.convert(tm.state_dict(), f32, densenet.torch_prefix, SHAPE)
    bf16 = densenet.DenseNetTiny(dtype=jnp.bfloat16)
    run = jax.jit(lambda v, a: (f32.apply(v, a), bf16.apply(v, a), bf16.apply(v, a, method="features")))
    lo32, lo16, f16 = run(variables, x)
    assert lo16.dtype == jnp.float32  # logits are always float32
    assert f16.dtype == jnp.bfloat16
    assert jax.tree_util.tree_leaves(variables)[0].dtype == np.float32  # params stay float32
    lo32, lo16 = np.asarray(lo32), np.asarray(lo16)
    with torch.no_grad():
        assert _rel(lo32, tm(_nchw(torch, x)).numpy()) <= TOL
    err = _rel(lo16, lo32)
    print(f"\nbf16 vs f32: rel err {err:.2e}, top-1 {lo32.argmax(1)} / {lo16.argmax(1)}")
    assert len(set(lo32.argmax(1))) > 1  # the inputs do not all get one class
    np.testing.assert_array_equal(lo16.argmax(1), lo32.argmax(1))
    assert err < 3e-2


# --------------------------------------------------------------------------- fast inference arithmetic


@pytest.mark.parametrize("kernel,stride,pads", [(3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))),
                                                (7, 2, ((3, 3), (3, 3))), (1, 2, ((0, 0), (0, 0))),
                                                (3, 2, ((0, 1), (0, 1)))])
def test_conv2d_gradients_equal_autodiff(kernel, stride, pads):
    """models._conv.conv2d's written-out backward == autodiff of lax.conv_general_dilated (dx and dkernel)."""
    from jax import lax

    from gag_jax.models._conv import conv2d

    rng = np.random.RandomState(kernel * 10 + stride)
    x = jnp.asarray(rng.randn(2, 13, 13, 5).astype(np.float32))
    k = jnp.asarray(rng.randn(kernel, kernel, 5, 4).astype(np.float32))
    ref = lambda x, k: lax.conv_general_dilated(x, k, (stride, stride), pads,  # noqa: E731
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, k: conv2d(x, k, (stride, stride), pads)  # noqa: E731
    np.testing.assert_allclose(np.asarray(ours(x, k)), np.asarray(ref(x, k)), rtol=1e-6, atol=1e-6)
    ct = jnp.asarray(rng.randn(*ref(x, k).shape).astype(np.float32))
    g_ref = jax.grad(lambda x, k: jnp.vdot(ref(x, k), ct), argnums=(0, 1))(x, k)
    g_ours = jax.jit(jax.grad(lambda x, k: jnp.vdot(ours(x, k), ct), argnums=(0, 1)))(x, k)
    for a, b in zip(g_ours, g_ref):
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("ctor", [resnet.ResNetTiny, densenet.DenseNetTiny])
def test_fold_bn_same_values_gradients_and_variables(ctor):
    """fold_bn (BN folded at apply time, 1x1 convs as dots, pool-before-conv transitions) changes no value."""
    folded, plain = ctor(), ctor(fold_bn=False)
    shapes = [jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), porter.template(m, SHAPE)) for m in (folded, plain)]
    assert shapes[0] == shapes[1]
    variables = _random_variables(plain, seed=5)
    x = jnp.asarray(_images(6, (2, 32, 32, 3)))

    @jax.jit
    def run(v, a):
        grads = [jax.grad(lambda b, m=m: m.apply(v, b)[:, 1].sum())(a) for m in (folded, plain)]
        return folded.apply(v, a), plain.apply(v, a), grads

    lo_f, lo_p, (g_f, g_p) = run(variables, x)
    assert _rel(lo_f, lo_p) <= 1e-5
    assert _rel(g_f, g_p) <= 1e-5
