"""The linen ViT (``gag_jax.models.vit``) against a float64 numpy reference written from the definition,
timm's ``VisionTransformer`` and torchvision's ``vit_b_16`` on the same random weights, and its loader on
every checkpoint layout (timm / torchvision state dicts, Google and big_vision ``.npz`` written here).

Relative error = ``max |flax - reference| / max |reference|``.
"""
from __future__ import annotations

import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax import models
from gag_jax.models import vit
from gag_jax.models.porter import CheckpointMismatchError, save_variables

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

RTOL = 1e-4
erf = np.vectorize(math.erf)  # exact GELU's erf, float64, without scipy
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ helpers: weights and the reference

def random_params(module, seed=0) -> dict:
    """Random float32 params with ``module``'s structure: kernels ~ N(0, 1 / fan_in) (so attention is far
    from uniform), LayerNorm scales 1 + N(0, 0.2), biases N(0, 0.1), CLS token and position embedding
    N(0, 0.5): every wrongly mapped array changes the logits."""
    rng = np.random.default_rng(seed)
    side = module.img_size
    tmpl = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))

    def draw(path, leaf):
        name, shp = path[-1].key, leaf.shape
        if name == "kernel":
            return (rng.standard_normal(shp) / np.sqrt(np.prod(shp[:-1]))).astype(np.float32)
        if name == "scale":
            return (1 + 0.2 * rng.standard_normal(shp)).astype(np.float32)
        if name in ("cls_token", "pos_embed"):
            return (0.5 * rng.standard_normal(shp)).astype(np.float32)
        return (0.1 * rng.standard_normal(shp)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, tmpl)


def to_google(params, heads: int, prefix: str = "") -> dict:
    """Flax ViT params -> the google-research/vision_transformer ``.npz`` arrays (written for the tests)."""
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    d = p["cls_token"].shape[-1]
    hd = d // heads
    out = {"embedding/kernel": p["patch_embed"]["proj"]["kernel"], "embedding/bias": p["patch_embed"]["proj"]["bias"],
           "cls": p["cls_token"], "Transformer/posembed_input/pos_embedding": p["pos_embed"],
           "Transformer/encoder_norm/scale": p["norm"]["scale"], "Transformer/encoder_norm/bias": p["norm"]["bias"],
           "head/kernel": p["head"]["kernel"], "head/bias": p["head"]["bias"]}
    i = 0
    while f"blocks_{i}" in p:
        b, e = p[f"blocks_{i}"], f"Transformer/encoderblock_{i}/"
        qkv_k = b["attn"]["qkv"]["kernel"].reshape(d, 3, heads, hd)
        qkv_b = b["attn"]["qkv"]["bias"].reshape(3, heads, hd)
        for j, n in enumerate(("query", "key", "value")):
            out[f"{e}MultiHeadDotProductAttention_1/{n}/kernel"] = qkv_k[:, j]
            out[f"{e}MultiHeadDotProductAttention_1/{n}/bias"] = qkv_b[j]
        out[f"{e}MultiHeadDotProductAttention_1/out/kernel"] = b["attn"]["proj"]["kernel"].reshape(heads, hd, d)
        out[f"{e}MultiHeadDotProductAttention_1/out/bias"] = b["attn"]["proj"]["bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[f"{e}{theirs}/scale"], out[f"{e}{theirs}/bias"] = b[ours]["scale"], b[ours]["bias"]
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[f"{e}MlpBlock_3/{theirs}/kernel"] = b["mlp"][ours]["kernel"]
            out[f"{e}MlpBlock_3/{theirs}/bias"] = b["mlp"][ours]["bias"]
        i += 1
    return {prefix + k: v for k, v in out.items()}


def google_to_big_vision(w: dict, depth: int, scanned: bool, prefix: str = "params/") -> dict:
    """Google layout -> big_vision's: blocks' modules renumbered, position embedding without the CLS row
    (big_vision adds it before prepending the CLS token, so the CLS row's value moves into ``cls``)."""
    out = {}
    rename = (("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"), ("LayerNorm_2", "LayerNorm_1"),
              ("MlpBlock_3", "MlpBlock_0"))
    stacked: dict[str, list] = {}
    for key, value in w.items():
        if key == "Transformer/posembed_input/pos_embedding":
            out["pos_embedding"] = value[:, 1:]
            continue
        if key == "cls":
            out["cls"] = value + w["Transformer/posembed_input/pos_embedding"][:, :1]
            continue
        for a, b in rename:
            key = key.replace(a, b)
        if key.startswith("Transformer/encoderblock_") and scanned:
            block, rest = key[len("Transformer/encoderblock_"):].split("/", 1)
            stacked.setdefault(rest, [None] * depth)[int(block)] = value
            continue
        out[key] = value
    for rest, values in stacked.items():
        out["Transformer/encoderblock/" + rest] = np.stack(values)
    return {prefix + k: v for k, v in out.items()}


def _ln(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def numpy_vit(w: dict, x, heads: int, depth: int, delta=None, delta_block=None):
    """Float64 ViT from the definition on Google-layout arrays: logits ``(B, K)`` and the attention
    probabilities of every block ``[(B, heads, T, T)]``; ``delta`` is added to block ``delta_block``'s."""
    w = {k: np.asarray(v, np.float64) for k, v in w.items()}
    x = np.asarray(x, np.float64)
    kernel = w["embedding/kernel"]
    p, d = kernel.shape[0], kernel.shape[-1]
    b_, h_, w_, c = x.shape
    patches = x.reshape(b_, h_ // p, p, w_ // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b_, -1, p * p * c)
    tok = patches @ kernel.reshape(p * p * c, d) + w["embedding/bias"]
    tok = np.concatenate([np.broadcast_to(w["cls"], (b_, 1, d)), tok], axis=1)
    tok = tok + w["Transformer/posembed_input/pos_embedding"]
    hd = d // heads
    probs_all = []
    for i in range(depth):
        e = f"Transformer/encoderblock_{i}/"
        a = f"{e}MultiHeadDotProductAttention_1/"
        y = _ln(tok, w[f"{e}LayerNorm_0/scale"], w[f"{e}LayerNorm_0/bias"])
        q, k, v = (np.einsum("btd,dhe->bthe", y, w[f"{a}{n}/kernel"]) + w[f"{a}{n}/bias"]
                   for n in ("query", "key", "value"))
        logits = np.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(hd)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs = probs / probs.sum(-1, keepdims=True)
        if delta is not None and i == delta_block:
            probs = probs + delta
        probs_all.append(probs)
        att = np.einsum("bhqk,bkhe->bqhe", probs, v)
        tok = tok + np.einsum("bqhe,hed->bqd", att, w[f"{a}out/kernel"]) + w[f"{a}out/bias"]
        y = _ln(tok, w[f"{e}LayerNorm_2/scale"], w[f"{e}LayerNorm_2/bias"])
        hid = y @ w[f"{e}MlpBlock_3/Dense_0/kernel"] + w[f"{e}MlpBlock_3/Dense_0/bias"]
        hid = 0.5 * hid * (1 + erf(hid / math.sqrt(2)))  # exact GELU
        tok = tok + hid @ w[f"{e}MlpBlock_3/Dense_1/kernel"] + w[f"{e}MlpBlock_3/Dense_1/bias"]
    tok = _ln(tok, w["Transformer/encoder_norm/scale"], w["Transformer/encoder_norm/bias"])
    return tok[:, 0] @ w["head/kernel"] + w["head/bias"], probs_all


def images(n=2, side=32, seed=1):
    """Images standardised with mean = std = 0.5 (values in [-1, 1])."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, side, side, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    module = vit.ViTTiny()
    return module, random_params(module)


# ------------------------------------------------------------------ architecture, against numpy

def _count(d, depth, mlp, p, tokens, k):
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return p * p * 3 * d + d + d + tokens * d + depth * block + 2 * d + d * k + k


@pytest.mark.parametrize("ctor, side, count", [
    (vit.ViTS16, 224, _count(384, 12, 1536, 16, 197, 1000)),
    (vit.ViTB16, 224, _count(768, 12, 3072, 16, 197, 1000)),
    (vit.ViTTiny, 32, _count(32, 2, 128, 8, 17, 10))])
def test_parameter_counts_follow_the_architecture(ctor, side, count):
    module = ctor()
    tmpl = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tmpl)) == count
    if ctor is vit.ViTS16:
        assert count == 22_050_664  # timm vit_small_patch16_224
    if ctor is vit.ViTB16:
        assert count == 86_567_656  # timm vit_base_patch16_224 / torchvision vit_b_16


def test_logits_and_attention_match_the_numpy_reference(tiny):
    module, params = tiny
    x = images()
    logits, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(params, x)
    ref, probs = numpy_vit(to_google(params, 2), x, heads=2, depth=2)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    assert rel_err(logits, ref) < RTOL
    for i in range(2):
        (sown,) = state["intermediates"][f"blocks_{i}"]["attn"]["attention"]
        assert sown.shape == (2, 2, 17, 17) and sown.dtype == jnp.float32
        assert rel_err(sown, probs[i]) < RTOL
    np.testing.assert_allclose(np.asarray(sown).sum(-1), 1.0, rtol=1e-5)


def test_attention_equals_flax_multi_head_dot_product_attention():
    rng = np.random.default_rng(0)
    d, h = 32, 4
    x = rng.standard_normal((2, 9, d)).astype(np.float32)
    ours = vit.Attention(d, h)
    p = random_params_of(ours, x)
    flax_mha = nn.MultiHeadDotProductAttention(num_heads=h, qkv_features=d, out_features=d)
    qkv_k = p["params"]["qkv"]["kernel"].reshape(d, 3, h, d // h)
    qkv_b = p["params"]["qkv"]["bias"].reshape(3, h, d // h)
    theirs = {"params": {n: {"kernel": qkv_k[:, j], "bias": qkv_b[j]} for j, n in enumerate(("query", "key", "value"))}}
    theirs["params"]["out"] = {"kernel": p["params"]["proj"]["kernel"].reshape(h, d // h, d),
                               "bias": p["params"]["proj"]["bias"]}
    assert rel_err(ours.apply(p, x), flax_mha.apply(theirs, x, x)) < RTOL


def random_params_of(module, x, seed=0):
    rng = np.random.default_rng(seed)
    tmpl = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    return jax.tree_util.tree_map(lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32), tmpl)


def test_bfloat16_compute_keeps_float32_logits(tiny):
    module, params = tiny
    x = images()
    low = jax.jit(vit.ViTTiny(dtype=jnp.bfloat16).apply)(params, x)
    assert low.dtype == jnp.float32
    assert rel_err(low, jax.jit(module.apply)(params, x)) < 0.05


def test_attention_probs_layer_gives_the_probabilities_and_their_gradient(tiny):
    module, params = tiny
    fns = gj.ModelFunctions.from_module(module, params)
    x, label = images(1), 3
    layer = "blocks_1/attn/attn_probs"
    assert layer == module.attention_layers[-1]
    zero = jnp.zeros((1, 2, 17, 17), jnp.float32)
    logits, probs = jax.jit(lambda f, dl: f.layer_output(x, layer, dl))(fns, zero)
    w = to_google(params, 2)
    ref_logits, ref_probs = numpy_vit(w, x, 2, 2)
    assert rel_err(probs, ref_probs[1]) < RTOL and rel_err(logits, ref_logits) < RTOL

    grad = jax.jit(jax.grad(lambda dl, f: f.layer_output(x, layer, dl)[0][0, label]))(zero, fns)
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(5):  # central differences of the float64 reference, entry by entry
        idx = (0, rng.integers(2), rng.integers(17), rng.integers(17))
        bump = np.zeros((1, 2, 17, 17))
        bump[idx] = eps
        up = numpy_vit(w, x, 2, 2, delta=bump, delta_block=1)[0][0, label]
        down = numpy_vit(w, x, 2, 2, delta=-bump, delta_block=1)[0][0, label]
        fd = (up - down) / (2 * eps)
        assert abs(float(grad[idx]) - fd) <= 1e-3 * max(1.0, abs(fd)), (idx, float(grad[idx]), fd)


def test_shipped_layer_names_and_attributes(tiny):
    module, params = tiny
    assert module.gradcam_layer == "blocks_1/norm1" and module.grid_size == (4, 4) and module.num_prefix_tokens == 1
    assert vit.ViTS16().gradcam_layer == "blocks_11/norm1" and vit.ViTS16().grid_size == (14, 14)
    fns = gj.ModelFunctions.from_module(module, params)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(lambda x: fns.layer_output(x, module.gradcam_layer)[1], x).shape == (1, 17, 32)
    assert jax.eval_shape(lambda x: fns.layer_output(x, "patch_embed/proj")[1], x).shape == (1, 4, 4, 32)
    assert vit.torch_prefix(("blocks_11", "attn", "qkv")) == "blocks.11.attn.qkv"


def test_other_image_sizes_are_refused(tiny):
    module, params = tiny
    with pytest.raises(ValueError, match=r"takes images \(B, 32, 32, C\)"):
        module.apply(params, images(1, side=48))


def test_vanilla_gradient_runs_and_equals_finite_differences(tiny):
    module, params = tiny
    fns = gj.ModelFunctions.from_module(module, params, mean=vit.INPUT_MEAN, std=vit.INPUT_STD)
    x, labels = images(2), np.array([3, 7])
    raw = np.asarray(gj.explain("vg", fns, x, labels, postprocess=False))
    assert raw.shape == x.shape
    w = to_google(params, 2)
    rng = np.random.default_rng(0)
    eps = 1e-4
    for _ in range(4):
        idx = (rng.integers(2), rng.integers(32), rng.integers(32), rng.integers(3))
        bump = np.zeros(x.shape)
        bump[idx] = eps
        fd = (numpy_vit(w, x + bump, 2, 2)[0] - numpy_vit(w, x - bump, 2, 2)[0])[idx[0], labels[idx[0]]] / (2 * eps)
        assert abs(raw[idx] - fd) <= 1e-3 * max(1.0, abs(fd)), (idx, raw[idx], fd)


def test_guided_backprop_refuses_gelu_by_name(tiny):
    module, params = tiny
    fns = gj.ModelFunctions.from_module(module, params)
    assert fns.guided_logits is None  # no guided_backprop field: GELU has no guided rule
    with pytest.raises(ValueError, match="GELU"):
        gj.explain("gb", fns, images(1), np.array([0]))


# ------------------------------------------------------------------ checkpoints without torch

def test_google_npz_loads_and_matches_the_reference(tiny, tmp_path):
    module, params = tiny
    w = to_google(params, 2)
    path = tmp_path / "vit.npz"
    np.savez(path, **w)
    loaded, variables = vit.load_vit(vit.ViTTiny, path, num_classes=None)
    assert loaded.num_classes == 10
    assert rel_err(loaded.apply(variables, images()), numpy_vit(w, images(), 2, 2)[0]) < RTOL
    # the same arrays under the old trainer's prefix
    np.savez(tmp_path / "opt.npz", **{"opt/target/" + k: v for k, v in w.items()})
    assert vit.detect_layout(list(np.load(tmp_path / "opt.npz").keys())) == ("google", "opt/target/")
    _, again = vit.load_vit(vit.ViTTiny, tmp_path / "opt.npz")
    assert rel_err(loaded.apply(again, images()), numpy_vit(w, images(), 2, 2)[0]) < RTOL


@pytest.mark.parametrize("scanned, prefix", [(False, "params/"), (True, "params/img/")])
def test_big_vision_npz_loads_and_matches_the_reference(tiny, tmp_path, scanned, prefix):
    module, params = tiny
    w = to_google(params, 2)
    bv = google_to_big_vision(w, 2, scanned, prefix)
    assert vit.detect_layout(list(bv))[0] == "big_vision"
    np.savez(tmp_path / "bv.npz", **bv)
    loaded, variables = vit.load_vit(vit.ViTTiny, tmp_path / "bv.npz")
    assert rel_err(loaded.apply(variables, images()), numpy_vit(w, images(), 2, 2)[0]) < RTOL


def test_msgpack_round_trip_and_num_classes(tiny, tmp_path):
    module, params = tiny
    save_variables(params, tmp_path / "v.msgpack")
    loaded, variables = vit.load_vit(vit.ViTTiny, tmp_path / "v.msgpack")
    assert loaded.num_classes == 10
    np.testing.assert_array_equal(loaded.apply(variables, images()), module.apply(params, images()))
    with pytest.raises(CheckpointMismatchError, match="'params/head/(kernel|bias)' has shape"):
        vit.load_vit(vit.ViTTiny, tmp_path / "v.msgpack", num_classes=5)


def test_mismatched_npz_is_refused_naming_the_key(tiny):
    module, params = tiny
    w = to_google(params, 2)
    missing = dict(w)
    del missing["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    with pytest.raises(CheckpointMismatchError,
                       match=r"missing key 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias'"):
        vit.convert_checkpoint(missing, module)
    extra = {**w, "pre_logits/kernel": np.zeros((32, 32), np.float32)}
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key 'pre_logits/kernel'"):
        vit.convert_checkpoint(extra, module)
    wrong = {**w, "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/kernel": np.zeros((32, 4, 8))}
    with pytest.raises(CheckpointMismatchError, match=r"'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/key/"
                                                      r"kernel' has shape \(32, 4, 8\), .* expects \(32, 2, 16\)"):
        vit.convert_checkpoint(wrong, module)
    with pytest.raises(CheckpointMismatchError, match="classifier has 10 classes, model expects 7"):
        vit.convert_checkpoint(w, vit.ViTTiny(num_classes=7))
    with pytest.raises(CheckpointMismatchError, match="missing key 'Transformer/encoderblock_2/LayerNorm_0/scale'"):
        vit.convert_checkpoint(w, vit.ViTTiny(depth=3))  # a deeper model than the checkpoint
    with pytest.raises(CheckpointMismatchError, match="not a ViT checkpoint .* 'patch_embed.proj.weight'"):
        vit.convert_checkpoint({"conv1.weight": np.zeros((8, 3, 7, 7))}, module)


def test_fold_input_scaling_is_exact():
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((4, 4, 3, 5)), rng.standard_normal(5)
    pixels = rng.uniform(size=(2, 8, 8, 3))
    frm = (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    to = ((0.5,) * 3, (0.5,) * 3)

    def conv(k, b, x):  # non-overlapping patches
        pt = x.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, -1)
        return pt @ k.reshape(-1, 5) + b

    new_k, new_b = vit.fold_input_scaling(kernel, bias, frm, to)
    expected = conv(kernel, bias, (pixels - IMAGENET_MEAN) / IMAGENET_STD)
    assert rel_err(conv(new_k, new_b, (pixels - 0.5) / 0.5), expected) < 1e-6


def test_registry_names_and_scaling():
    assert {"vit_s16", "vit_b16"} <= set(models.MODEL_NAMES) and {"vit_s16", "vit_b16"} <= set(models.TORCH_MODEL_NAMES)
    for name in ("vit_s16", "vit_b16"):
        assert models.input_normalization(name) == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert models.model_functions(vit.ViTS16(), {}).scaling == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert models.model_functions(vit.ViTTiny(), {}).scaling is None  # not a registered model
    with pytest.raises(ValueError, match="needs checkpoint_path"):
        models.load("vit_s16")


# ------------------------------------------------------------------ against timm and torchvision

def randomise_torch(model, seed=0):
    """Random weights as :func:`random_params` for a torch ViT (every parameter, eval mode)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if any(t in name for t in ("cls_token", "class_token", "pos_embed")):
                p.copy_(0.5 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            elif "norm" in name or ".ln" in name:
                p.copy_((1 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def _timm_tiny():
    pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    return randomise_torch(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                             num_classes=10))


def _torch_logits(model, x_nhwc):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_tiny_timm_state_dict_matches_timm(tmp_path, suffix):
    torch = pytest.importorskip("torch")
    model = _timm_tiny()
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), path)
    else:
        safetensors_torch = pytest.importorskip("safetensors.torch")
        safetensors_torch.save_file(model.state_dict(), path)
    module, variables = vit.load_vit(vit.ViTTiny, path)
    x = images()
    assert rel_err(module.apply(variables, x), _torch_logits(model, x)) < RTOL


@pytest.mark.parametrize("layout", ["google", "big_vision"])
def test_npz_written_from_timm_weights_matches_timm(tmp_path, layout):
    model = _timm_tiny()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    d, h = 32, 2
    w = {"embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["patch_embed.proj.bias"],
         "cls": sd["cls_token"], "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
         "Transformer/encoder_norm/scale": sd["norm.weight"], "Transformer/encoder_norm/bias": sd["norm.bias"],
         "head/kernel": sd["head.weight"].T, "head/bias": sd["head.bias"]}
    for i in range(2):
        t, e = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        a = e + "MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = sd[t + "attn.qkv.weight"].reshape(3, h, d // h, d), sd[t + "attn.qkv.bias"].reshape(3, h, d // h)
        for j, n in enumerate(("query", "key", "value")):
            w[f"{a}{n}/kernel"], w[f"{a}{n}/bias"] = qkv_w[j].transpose(2, 0, 1), qkv_b[j]
        w[a + "out/kernel"] = sd[t + "attn.proj.weight"].T.reshape(h, d // h, d)
        w[a + "out/bias"] = sd[t + "attn.proj.bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            w[f"{e}{theirs}/scale"], w[f"{e}{theirs}/bias"] = sd[f"{t}{ours}.weight"], sd[f"{t}{ours}.bias"]
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            w[f"{e}MlpBlock_3/{theirs}/kernel"] = sd[f"{t}mlp.{ours}.weight"].T
            w[f"{e}MlpBlock_3/{theirs}/bias"] = sd[f"{t}mlp.{ours}.bias"]
    if layout == "big_vision":
        w = google_to_big_vision(w, 2, scanned=False)
    np.savez(tmp_path / "w.npz", **w)
    module, variables = vit.load_vit(vit.ViTTiny, tmp_path / "w.npz")
    x = images()
    assert rel_err(module.apply(variables, x), _torch_logits(model, x)) < RTOL


def test_timm_state_dict_mismatch_is_refused_naming_the_key():
    model = _timm_tiny()
    sd = dict(model.state_dict())
    module = vit.ViTTiny()
    del sd["blocks.1.attn.proj.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'blocks.1.attn.proj.bias' .*timm layout"):
        vit.convert_checkpoint(sd, module)
    sd = dict(model.state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"'pos_embed' has shape \(1, 17, 32\), .* expects \(1, 65, 32\)"):
        vit.convert_checkpoint(sd, vit.ViTTiny(img_size=64))
    with pytest.raises(CheckpointMismatchError, match="unexpected key 'blocks.1.norm1.weight'"):
        vit.convert_checkpoint(sd, vit.ViTTiny(depth=1))


def _torchvision_tiny():
    tv = pytest.importorskip("torchvision")
    return randomise_torch(tv.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128, num_classes=10))


def test_tiny_torchvision_state_dict_matches_torchvision(tmp_path):
    torch = pytest.importorskip("torch")
    model = _torchvision_tiny()
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    module, variables = vit.load_vit(vit.ViTTiny, tmp_path / "tv.pth")
    pixels = np.random.default_rng(2).uniform(size=(2, 32, 32, 3))
    # torchvision's weights take ImageNet statistics; the port takes mean = std = 0.5 (folded in)
    ours = module.apply(variables, ((pixels - 0.5) / 0.5).astype(np.float32))
    theirs = _torch_logits(model, ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32))
    assert rel_err(ours, theirs) < RTOL
    sd = dict(model.state_dict())
    del sd["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]
    with pytest.raises(CheckpointMismatchError, match="missing key 'encoder.layers.encoder_layer_0.self_attention"
                                                      ".in_proj_weight'"):
        vit.convert_checkpoint(sd, module)


@pytest.mark.slow
def test_vit_s16_matches_timm_at_224_through_the_registry(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    model = randomise_torch(timm.create_model("vit_small_patch16_224", pretrained=False))
    torch.save(model.state_dict(), tmp_path / "s16.pth")
    module, variables = models.load("vit_s16", tmp_path / "s16.pth")
    fns = models.model_functions(module, variables)
    assert fns.scaling == {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    x = images(2, 224)
    start = time.perf_counter()
    ours = np.asarray(fns.logits(x))
    print(f"ViT-S/16 224 px, 2 images, first call (compile + run) {time.perf_counter() - start:.2f} s")
    err = rel_err(ours, _torch_logits(model, x))
    print(f"ViT-S/16 vs timm: relative error {err:.2e}")
    assert err < RTOL


@pytest.mark.slow
def test_vit_b16_matches_torchvision_at_224_through_the_registry(tmp_path):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    model = randomise_torch(tv.models.vit_b_16())
    torch.save(model.state_dict(), tmp_path / "b16.pth")
    module, variables = models.load("vit_b16", tmp_path / "b16.pth")
    pixels = np.random.default_rng(3).uniform(size=(1, 224, 224, 3))
    ours = models.model_functions(module, variables).logits(((pixels - 0.5) / 0.5).astype(np.float32))
    theirs = _torch_logits(model, ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32))
    err = rel_err(ours, theirs)
    print(f"ViT-B/16 vs torchvision vit_b_16: relative error {err:.2e}")
    assert err < RTOL


def test_vit_on_synthetic_shapes_trains_explains_scores_and_writes_the_readme_section(tmp_path):
    """``gag_jax.experiments.vit_shapes``: a small ViT trained on the synthetic shapes, every transformer
    method's map scored against the masks (values in [0, 1]), the figure and table written, and the README
    section replaced between its markers."""
    from gag_jax.experiments import vit_shapes

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- {vit_shapes.README_SECTION}:start -->\nold\n<!-- {vit_shapes.README_SECTION}:end -->\n")
    result = vit_shapes.main(["--out", str(tmp_path / "out"), "--steps", "3", "--images", "3", "--n", "2",
                              "--update-readme", str(readme)])
    assert set(result["scores"]) == set(vit_shapes.METHODS)
    for method, values in result["scores"].items():
        assert 0.0 <= values["pointing_game"] <= 1.0 and 0.0 <= values["relevance_mass"] <= 1.0, method
    assert os.path.getsize(result["files"]["figure"]) > 0
    text = readme.read_text()
    assert "old" not in text and "| Attention rollout |" in text and "--steps 3" in text

