"""Grad-CAM on token layers (B, T, D): against numpy Grad-CAM on activations and gradients from an
independent forward (always runs), and against pytorch-grad-cam's ``GradCAM`` with a
``reshape_transform`` on timm's ViT with the same weights ported into the shipped ViT (when torch,
timm and grad-cam are installed). The layers that cannot work are refused by name."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import (DEPTH, data, linen_vit, linen_weights, nnx_vit, random_like, reference_forward,
                            timm_vit)

import gag_jax as gj
from gag_jax.gradcam import layer_gradcam

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them


@jax.jit
def _reference_norm1(w, x, labels):
    """The last block's norm1 output and the gradient of the label's logit there."""
    taps = {}
    reference_forward(w, x, None, taps)
    key = ("norm1", DEPTH - 1)

    def picked(delta):
        return jnp.take_along_axis(reference_forward(w, x, {key: delta}), labels[:, None], 1).sum()

    return taps[key], jax.grad(picked)(jnp.zeros_like(taps[key]))


def numpy_token_gradcam(activations, grads, grid, prefix=1):
    """Grad-CAM from its definition on tokens: drop the prefix, lay the rest row-major on ``grid``."""
    a = np.asarray(activations, np.float64)[:, prefix:].reshape(-1, *grid, activations.shape[-1])
    g = np.asarray(grads, np.float64)[:, prefix:].reshape(-1, *grid, grads.shape[-1])
    return np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(-1), 0.0)


def _resize(maps, size):
    return np.asarray(jax.image.resize(jnp.asarray(maps, jnp.float32), (maps.shape[0], *size), "bilinear"))


def test_token_gradcam_matches_numpy_on_the_last_norm1_and_is_the_default():
    module, variables = linen_vit()
    images, labels = data()
    activations, grads = _reference_norm1(linen_weights(variables), images, labels)
    assert np.abs(np.asarray(grads)[:, 1:]).max() > 1e-3  # the patch tokens do get gradient here
    expected = _resize(numpy_token_gradcam(activations, grads, (2, 2)), (16, 16))
    model = gj.ModelFunctions.from_module(module, variables)
    raw = gj.explain("gradcam", model, images, labels, postprocess=False)  # default: blocks_1/norm1
    np.testing.assert_allclose(raw[..., 0], expected, rtol=1e-4, atol=1e-6)
    named = gj.explain("gradcam", model, images, labels, layer=f"blocks_{DEPTH - 1}/norm1", postprocess=False)
    np.testing.assert_allclose(named, raw, atol=1e-6)


def test_nnx_vit_default_layer_is_blocks_last_norm1():
    net = nnx_vit()
    images, labels = data()
    raw = gj.explain("gradcam", net, images, labels, postprocess=False)
    named = gj.explain("gradcam", net, images, labels, layer=f"blocks/{DEPTH - 1}/norm1", postprocess=False)
    np.testing.assert_allclose(raw, named, atol=1e-6)
    assert float(raw.max()) > 0


def test_layers_that_cannot_work_are_refused_naming_those_that_can():
    module, variables = linen_vit()
    model = gj.ModelFunctions.from_module(module, variables)
    images, labels = data()
    for layer in ("norm", f"blocks_{DEPTH - 1}", f"blocks_{DEPTH - 1}/norm2", f"blocks_{DEPTH - 1}/attn"):
        with pytest.raises(ValueError, match=rf"cannot use layer '{layer}': computed after the last attention.*"
                                             rf"gradient is zero\. Layers that work: .*'blocks_{DEPTH - 1}/norm1'"):
            gj.explain("gradcam", model, images, labels, layer=layer)
    with pytest.raises(ValueError, match=r"layer 'head' gives shape \(2, 5\)\. Layers that work: 'patch_embed'"):
        gj.explain("gradcam", model, images, labels, layer="head")
    with pytest.raises(ValueError, match=r"grid \(3, 3\) holds 9 patch tokens; the layer has 4"):
        gj.explain("gradcam", model, images, labels, layer="blocks_0/norm1", grid=(3, 3))
    # what the rule refuses is indeed zero: the gradient on the patch tokens after the last attention
    cam = layer_gradcam(model, images, labels, "blocks_0/norm1", cam_grid=True)
    assert cam.shape == (2, 2, 2) and float(cam.max()) > 0


def test_prefix_tokens_zero_on_a_model_that_averages_its_tokens():
    module, variables = linen_vit(cls_token=False)  # no CLS: the head reads the mean token
    model = gj.ModelFunctions.from_module(module, variables)
    images, labels = data()
    raw = gj.explain("gradcam", model, images, labels, layer="norm", prefix_tokens=0, postprocess=False)
    activations = nn.LayerNorm().apply({"params": variables["params"]["norm"]},
                                       _before_norm(module, variables, images))

    def picked(delta):  # the final norm's output: its patches reach the mean read-out directly
        logits = nn.Dense(5).apply({"params": variables["params"]["head"]}, (activations + delta).mean(1))
        return jnp.take_along_axis(logits, labels[:, None], 1).sum()

    grads = jax.grad(picked)(jnp.zeros_like(activations))
    expected = _resize(numpy_token_gradcam(activations, grads, (2, 2), prefix=0), (16, 16))
    np.testing.assert_allclose(raw[..., 0], expected, rtol=1e-4, atol=1e-6)


def _before_norm(module, variables, images):
    _, state = module.apply(variables, images, capture_intermediates=lambda m, _: m.name == f"blocks_{DEPTH - 1}",
                            mutable=["intermediates"])
    return state["intermediates"][f"blocks_{DEPTH - 1}"]["__call__"][0]


def test_a_cnn_without_a_layer_still_asks_for_one_and_lists_layers():
    class Cnn(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(nn.Conv(4, (3, 3), name="conv")(x).mean((1, 2)))

    images, labels = data()
    variables = random_like(jax.eval_shape(Cnn().init, jax.random.PRNGKey(0), images), 0)
    with pytest.raises(ValueError, match="needs a layer.*Layers that work: 'conv'"):
        gj.explain("gradcam", gj.ModelFunctions.from_module(Cnn(), variables), images, labels)


@pytest.mark.slow  # torch, timm and grad-cam imports: ~20 s on the shared 2-core machine
def test_token_gradcam_matches_pytorch_grad_cam_on_timm_vit():
    torch = pytest.importorskip("torch")
    pgc = pytest.importorskip("pytorch_grad_cam")
    cv2 = pytest.importorskip("cv2")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    tm, module, variables = timm_vit()
    images, labels = data(size=(32, 32), seed=5)

    def reshape_transform(tokens):  # pytorch-grad-cam's ViT recipe: drop CLS, lay 16 tokens on 4 x 4
        return tokens[:, 1:].reshape(tokens.size(0), 4, 4, tokens.size(2)).permute(0, 3, 1, 2)

    cam = pgc.GradCAM(model=tm, target_layers=[tm.blocks[-1].norm1], reshape_transform=reshape_transform)
    x = torch.tensor(np.asarray(images).transpose(0, 3, 1, 2))
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    theirs = cam(input_tensor=x, targets=targets)  # min-max scaled per image, cv2.resize to 32 x 32
    # their raw map, before the scaling: the same hooks' activations and gradients, weighted, ReLU
    acts = cam.activations_and_grads.activations[0].cpu().numpy()
    grads = cam.activations_and_grads.gradients[0].cpu().numpy()
    raw_theirs = np.maximum(cam.get_cam_image(x, tm.blocks[-1].norm1, targets, acts, grads, False), 0)

    model = gj.ModelFunctions.from_module(module, variables)  # the shipped ViT: default layer, prefix, grid
    ours = np.asarray(layer_gradcam(model, images, labels, "blocks_1/norm1", cam_grid=True))
    np.testing.assert_allclose(ours, raw_theirs, rtol=1e-4, atol=1e-5 * float(np.abs(raw_theirs).max()))
    def scale(m):  # pytorch_grad_cam.utils.image.scale_cam_image, one map
        m = m - m.min()
        return m / (1e-7 + m.max())

    # their post-processing on our raw map: scaled, cv2.resize, scaled again (aggregate_multi_layers)
    replicated = np.stack([scale(cv2.resize(scale(m).astype(np.float32), (32, 32))) for m in ours])
    np.testing.assert_allclose(replicated, theirs, atol=1e-4)
    maps = gj.explain("gradcam", model, images, labels)  # ours: upsampled, then min-max
    # resize-then-scale vs their scale-resize-scale: equal here (an integer upsampling factor with clamped
    # edges reaches each grid's extremes), measured 7e-7 on 2026-12-06
    np.testing.assert_allclose(maps, theirs, atol=1e-5)
