"""Attention rollout and generic attention (gag_jax.attention) against references written from each
definition: numpy rollout (Abnar & Zuidema 2020, discard order of jacobgil/vit-explain) and numpy
generic attention (Chefer et al. 2021), fed with attention probabilities and gradients from an
independent computation: a hand-written functional forward of the same weights (always runs) and
timm's ViT through torch hooks on ``attn_drop`` (when torch and timm are installed).

The tiny models here (linen with ``nn.MultiHeadDotProductAttention``, NNX with
``nnx.MultiHeadAttention``) are also used by ``test_gradcam_tokens.py``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gag_jax as gj
from gag_jax import attention

pytestmark = pytest.mark.slow  # many compiled programs: CI runs them, the quick loop (-m "not slow") skips them

PATCH, DIM, HEADS, DEPTH, CLASSES = 8, 16, 2, 2, 5


# ---------------------------------------------------------------------------------------------
# the tiny ViTs: patch conv, CLS token, position embedding, pre-norm blocks, final norm, CLS head


class LinenBlock(nn.Module):
    heads: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(nn.LayerNorm(name="norm1")(x))
        h = nn.LayerNorm(name="norm2")(x)
        return x + nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(2 * d, name="fc1")(h)))


class LinenViT(nn.Module):
    """Tokens ``1 + (H/8)(W/8)`` (CLS first); any image size (the position embedding is made for it)."""

    depth: int = DEPTH
    cls_token: bool = True

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(DIM, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID", name="patch_embed")(x)
        b, gh, gw, d = y.shape
        y = y.reshape(b, gh * gw, d)
        if self.cls_token:
            cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, d))
            y = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), y], axis=1)
        y = y + self.param("pos", nn.initializers.normal(1.0), (1, y.shape[1], d))
        for i in range(self.depth):
            y = LinenBlock(HEADS, name=f"blocks_{i}")(y)
        y = nn.LayerNorm(name="norm")(y)
        return nn.Dense(CLASSES, name="head")(y[:, 0] if self.cls_token else y.mean(1))


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm1 = nnx.LayerNorm(DIM, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(HEADS, DIM, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(DIM, rngs=rngs)
        self.fc1 = nnx.Linear(DIM, 2 * DIM, rngs=rngs)
        self.fc2 = nnx.Linear(2 * DIM, DIM, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


class NnxViT(nnx.Module):
    def __init__(self, tokens, rngs):
        self.patch_embed = nnx.Conv(3, DIM, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID", rngs=rngs)
        self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, DIM)))
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (1, tokens, DIM)))
        self.blocks = nnx.List([NnxBlock(rngs) for _ in range(DEPTH)])
        self.norm = nnx.LayerNorm(DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, CLASSES, rngs=rngs)

    def __call__(self, x):
        y = self.patch_embed(x)
        b, gh, gw, d = y.shape
        y = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, d)), y.reshape(b, gh * gw, d)], 1) + self.pos[...]
        for block in self.blocks:
            y = block(y)
        return self.head(self.norm(y)[:, 0])


def random_like(shapes, seed, scale=0.5):
    """Weights of the given shapes drawn in numpy (no XLA compilation: the machine's cores are shared)."""
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape).astype(np.float32)), shapes)


def data(batch=2, size=(16, 16), seed=0):
    images = jnp.asarray(np.random.RandomState(seed).normal(size=(batch, *size, 3)).astype(np.float32))
    return images, jnp.arange(batch, dtype=jnp.int32) % CLASSES


def linen_vit(size=(16, 16), seed=1, **kw):
    module = LinenViT(**kw)
    return module, random_like(jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *size, 3))), seed)


def nnx_vit(size=(16, 16), seed=1):
    abstract = nnx.eval_shape(lambda: NnxViT(1 + (size[0] // PATCH) * (size[1] // PATCH), nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    net = nnx.merge(graphdef, random_like(state, seed))
    net.eval()
    return net


# ---------------------------------------------------------------------------------------------
# an independent forward: the same weights, the attention written out, a delta added to each A


def linen_weights(variables):
    p = variables["params"]
    blocks = [{"norm1": p[f"blocks_{i}"]["norm1"], "norm2": p[f"blocks_{i}"]["norm2"],
               "q": p[f"blocks_{i}"]["attn"]["query"], "k": p[f"blocks_{i}"]["attn"]["key"],
               "v": p[f"blocks_{i}"]["attn"]["value"], "o": p[f"blocks_{i}"]["attn"]["out"],
               "fc1": p[f"blocks_{i}"]["fc1"], "fc2": p[f"blocks_{i}"]["fc2"]} for i in range(DEPTH)]
    return {"embed": p["patch_embed"], "cls": p["cls"], "pos": p["pos"], "blocks": blocks, "norm": p["norm"],
            "head": p["head"]}


def nnx_weights(net):
    def dense(m):
        return {"kernel": m.kernel[...], "bias": m.bias[...]}

    def norm(m):
        return {"scale": m.scale[...], "bias": m.bias[...]}

    blocks = [{"norm1": norm(b.norm1), "norm2": norm(b.norm2), "q": dense(b.attn.query), "k": dense(b.attn.key),
               "v": dense(b.attn.value), "o": dense(b.attn.out), "fc1": dense(b.fc1), "fc2": dense(b.fc2)}
              for b in net.blocks]
    return {"embed": dense(net.patch_embed), "cls": net.cls[...], "pos": net.pos[...], "blocks": blocks,
            "norm": norm(net.norm), "head": dense(net.head)}


def _ln(x, w, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * w["scale"] + w["bias"]


def reference_forward(w, x, deltas=None, taps=None):
    """Logits; ``deltas[i]`` added to block i's attention probabilities; ``taps`` collects
    ``("A", i)`` (the probabilities) and ``("norm1", i)`` (block i's norm1 output)."""
    taps = {} if taps is None else taps
    y = jax.lax.conv_general_dilated(x, w["embed"]["kernel"], (PATCH, PATCH), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + w["embed"]["bias"]
    b, gh, gw, d = y.shape
    y = jnp.concatenate([jnp.broadcast_to(w["cls"], (b, 1, d)), y.reshape(b, gh * gw, d)], 1) + w["pos"]
    for i, blk in enumerate(w["blocks"]):
        n = _ln(y, blk["norm1"])
        if deltas is not None and ("norm1", i) in deltas:
            n = n + deltas[("norm1", i)]
        taps[("norm1", i)] = n
        q, k, v = (jnp.einsum("btD,Dhd->bthd", n, blk[c]["kernel"]) + blk[c]["bias"] for c in "qkv")
        a = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(q.shape[-1]), k), axis=-1)
        taps[("A", i)] = a
        if deltas is not None and ("A", i) in deltas:
            a = a + deltas[("A", i)]
        o = jnp.einsum("bhqk,bkhd->bqhd", a, v)
        y = y + jnp.einsum("bqhd,hdD->bqD", o, blk["o"]["kernel"]) + blk["o"]["bias"]
        h = _ln(y, blk["norm2"])
        y = y + jax.nn.gelu(h @ blk["fc1"]["kernel"] + blk["fc1"]["bias"]) @ blk["fc2"]["kernel"] + blk["fc2"]["bias"]
    y = _ln(y, w["norm"])
    return y[:, 0] @ w["head"]["kernel"] + w["head"]["bias"]


@jax.jit
def _reference_attention(w, x, labels):
    taps = {}
    reference_forward(w, x, None, taps)
    zeros = {("A", i): jnp.zeros_like(taps[("A", i)]) for i in range(DEPTH)}

    def picked(deltas):
        return jnp.take_along_axis(reference_forward(w, x, deltas), labels[:, None], 1).sum()

    grads = jax.grad(picked)(zeros)
    return [taps[("A", i)] for i in range(DEPTH)], [grads[("A", i)] for i in range(DEPTH)]


def reference_attention(w, x, labels):
    """``(A_l, dlogit/dA_l)`` per block, numpy float64, from :func:`reference_forward` (jitted)."""
    probs, grads = _reference_attention(w, x, labels)
    return [np.asarray(p, np.float64) for p in probs], [np.asarray(g, np.float64) for g in grads]


# ---------------------------------------------------------------------------------------------
# the definitions in numpy, one image at a time


def numpy_rollout(probs, head_fusion="mean", discard_ratio=0.0):
    """Abnar & Zuidema's rollout as jacobgil/vit-explain orders it (fuse heads, discard the lowest
    entries but entry (0, 0), add I, renormalise), with rows renormalised: ``(B, T, T)``."""
    out = []
    for b in range(probs[0].shape[0]):
        result = np.eye(probs[0].shape[-1])
        for p in probs:
            fused = getattr(np, head_fusion)(p[b], axis=0)
            flat = fused.reshape(-1).copy()
            lowest = np.argsort(flat, kind="stable")[:int(flat.size * discard_ratio)]
            flat[lowest[lowest != 0]] = 0
            a = flat.reshape(fused.shape) + np.eye(fused.shape[-1])
            a = a / a.sum(-1, keepdims=True)
            result = a @ result
        out.append(result)
    return np.stack(out)


def numpy_generic(probs, grads):
    """Chefer et al.: ``R = I``, ``R += mean_heads(max(grad * A, 0)) @ R`` per block: ``(B, T, T)``."""
    out = []
    for b in range(probs[0].shape[0]):
        r = np.eye(probs[0].shape[-1])
        for p, g in zip(probs, grads):
            r = r + np.maximum(g[b] * p[b], 0).mean(0) @ r
        out.append(r)
    return np.stack(out)


def cls_map(relevance, grid, size):
    """The CLS row over the patches on ``grid``, resized bilinearly (half-pixel centres) to ``size``."""
    rows = relevance[:, 0, 1:].reshape(-1, *grid)
    return np.asarray(jax.image.resize(jnp.asarray(rows, jnp.float32), (rows.shape[0], *size), "bilinear"))


# ---------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("options", [{}, {"head_fusion": "max"}, {"head_fusion": "min", "discard_ratio": 0.3},
                                     {"discard_ratio": 0.5}])
def test_rollout_on_linen_attention_matches_the_numpy_definition(options):
    module, variables = linen_vit()
    images, labels = data()
    probs, _ = reference_attention(linen_weights(variables), images, labels)
    expected = cls_map(numpy_rollout(probs, **options), (2, 2), (16, 16))
    model = gj.ModelFunctions.from_module(module, variables)
    raw = gj.explain("attention_rollout", model, images, labels, postprocess=False, **options)
    assert raw.shape == (2, 16, 16, 1)
    np.testing.assert_allclose(raw[..., 0], expected, rtol=2e-5, atol=1e-6)


def test_generic_attention_on_linen_attention_matches_the_numpy_definition():
    module, variables = linen_vit()
    images, labels = data()
    probs, grads = reference_attention(linen_weights(variables), images, labels)
    assert all(np.abs(g).max() > 1e-3 for g in grads)  # the gradient reaches every block
    expected = cls_map(numpy_generic(probs, grads), (2, 2), (16, 16))
    model = gj.ModelFunctions.from_module(module, variables)
    raw = gj.explain("generic_attention", model, images, labels, postprocess=False)
    np.testing.assert_allclose(raw[..., 0], expected, rtol=1e-4, atol=1e-6)
    captured, captured_grads = jax.jit(attention.capture_attention)(model, images, labels)
    for got, want in zip(captured + captured_grads, probs + grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_nnx_multi_head_attention_matches_the_numpy_definitions():
    net = nnx_vit()
    images, labels = data()
    probs, grads = reference_attention(nnx_weights(net), images, labels)
    rollout = gj.explain("attention_rollout", net, images, labels, postprocess=False, head_fusion="max")
    np.testing.assert_allclose(rollout[..., 0], cls_map(numpy_rollout(probs, "max"), (2, 2), (16, 16)),
                               rtol=2e-5, atol=1e-6)
    generic = gj.explain("generic_attention", net, images, labels, postprocess=False)
    np.testing.assert_allclose(generic[..., 0], cls_map(numpy_generic(probs, grads), (2, 2), (16, 16)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["attention_rollout", "generic_attention"])
def test_maps_are_per_image_and_normalised(method):
    module, variables = linen_vit()
    model = gj.ModelFunctions.from_module(module, variables)
    images, labels = data(batch=3)
    maps = gj.explain(method, model, images, labels)
    assert maps.shape == (3, 16, 16) and float(maps.min()) == 0.0 and float(maps.max()) == 1.0
    alone = gj.explain(method, model, images[1:2], labels[1:2])  # same image, another batch
    np.testing.assert_allclose(alone[0], maps[1], atol=1e-5)
    assert not gj.explainers.needs_key(method)


def test_explainer_fn_runs_inside_the_users_jit():
    module, variables = linen_vit()
    model = gj.ModelFunctions.from_module(module, variables)
    images, labels = data()
    fn = jax.jit(gj.explainer_fn("attention_rollout", postprocess=False))
    np.testing.assert_allclose(fn(model, images, labels, jax.random.PRNGKey(0)),
                               gj.explain("attention_rollout", model, images, labels, postprocess=False), atol=1e-6)


def test_discard_keeps_cls_to_cls_and_zeroes_the_lowest_fraction():
    fused = np.random.RandomState(3).uniform(0.1, 1.0, (2, 5, 5)).astype(np.float32)
    fused[:, 0, 0] = 1e-3  # entry (0, 0) (CLS to CLS) is the lowest: still kept
    out = np.asarray(attention._discard(jnp.asarray(fused), 0.4))
    assert np.all(out[:, 0, 0] == fused[:, 0, 0])
    assert [int((o == 0).sum()) for o in out] == [9, 9]  # int(25 * 0.4) = 10 lowest, less (0, 0)
    for o, f in zip(out, fused):  # the 9 zeroed are the lowest of the others
        others = np.sort(f.reshape(-1)[1:])
        assert np.all(f[o == 0] <= others[8])


def test_grid_and_prefix_tokens_options():
    module, variables = linen_vit(size=(16, 32))  # 2 x 4 patches: not a square, the image's aspect
    model = gj.ModelFunctions.from_module(module, variables)
    images, labels = data(size=(16, 32))
    probs, _ = reference_attention(linen_weights(variables), images, labels)
    raw = gj.explain("attention_rollout", model, images, labels, postprocess=False)
    np.testing.assert_allclose(raw[..., 0], cls_map(numpy_rollout(probs), (2, 4), (16, 32)), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"grid \(3, 3\) holds 9"):
        gj.explain("attention_rollout", model, images, labels, grid=(3, 3))
    with pytest.raises(ValueError, match="cannot lay 9 patch tokens on a grid"):
        gj.explain("attention_rollout", model, images, labels, prefix_tokens=0)
    two = gj.explain("attention_rollout", model, images, labels, postprocess=False, prefix_tokens=0, grid=(3, 3))
    assert two.shape == (2, 16, 32, 1)  # the CLS counted as a patch: what the user asked for


class SownAttention(nn.Module):
    """A user's attention that only sows its probabilities under the documented name."""

    @nn.compact
    def __call__(self, x):
        q, k = nn.Dense(8, name="q")(x), nn.Dense(8, name="k")(x)
        probs = jax.nn.softmax(jnp.einsum("bqd,bkd->bqk", q, k)[:, None], axis=-1)  # one head
        self.sow("intermediates", "attention", probs)
        return x + jnp.einsum("bhqk,bkd->bqd", probs, nn.Dense(x.shape[-1], name="v")(x))


class SownViT(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID")(x)
        y = y.reshape(y.shape[0], -1, 8)
        y = jnp.concatenate([jnp.ones_like(y[:, :1]), y], 1)
        for i in range(2):
            y = SownAttention(name=f"blocks_{i}")(y)
        return nn.Dense(CLASSES)(y[:, 0])


def test_sown_attention_gives_rollout_and_refuses_generic_attention():
    module = SownViT()
    images, labels = data()
    variables = random_like(jax.eval_shape(module.init, jax.random.PRNGKey(0), images), 0)
    _, state = jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"]))(variables, images)
    probs = [np.asarray(state["intermediates"][f"blocks_{i}"]["attention"][0]) for i in range(2)]
    model = gj.ModelFunctions.from_module(module, variables)
    raw = gj.explain("attention_rollout", model, images, labels, postprocess=False)
    np.testing.assert_allclose(raw[..., 0], cls_map(numpy_rollout(probs), (2, 2), (16, 16)), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="only sown.*attn_probs"):
        gj.explain("generic_attention", model, images, labels)


def test_a_model_without_attention_and_bad_options_are_refused():
    images, labels = data()

    class Cnn(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(CLASSES)(nn.Conv(4, (3, 3))(x).mean((1, 2)))

    variables = random_like(jax.eval_shape(Cnn().init, jax.random.PRNGKey(0), images), 0)
    cnn = gj.ModelFunctions.from_module(Cnn(), variables)
    for method in ("attention_rollout", "generic_attention"):
        with pytest.raises(ValueError, match="found no attention in the model: looked for .*MultiHeadDotProduct"):
            gj.explain(method, cnn, images, labels)
        with pytest.raises(ValueError, match="need a Flax model"):
            gj.explain(method, lambda x: Cnn().apply(variables, x), images, labels)
    module, variables = linen_vit()
    model = gj.ModelFunctions.from_module(module, variables)
    with pytest.raises(ValueError, match="head_fusion"):
        gj.explain("attention_rollout", model, images, labels, head_fusion="sum")
    with pytest.raises(ValueError, match="discard_ratio"):
        gj.explain("attention_rollout", model, images, labels, discard_ratio=1.0)
    with pytest.raises(ValueError, match="decode mode"):
        class Decoding(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.MultiHeadDotProductAttention(2, decode=True)(x)

        attention._linen_run(Decoding(), {}, jnp.zeros((1, 3, 4)), None)


# ---------------------------------------------------------------------------------------------
# timm's ViT: attention and its gradient captured by torch hooks, the shipped ViT with its weights


def timm_vit(classes=CLASSES, seed=0):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    vit = pytest.importorskip("gag_jax.models.vit")
    torch.manual_seed(seed)
    tm = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                          num_heads=2, num_classes=classes).eval()
    with torch.no_grad():  # timm's init leaves the CLS token and biases near zero: spread them
        for p in tm.parameters():
            p.add_(0.2 * torch.randn_like(p))
    for block in tm.blocks:
        block.attn.fused_attn = False
    module = vit.ViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128, num_classes=classes)
    return tm, module, vit.convert_checkpoint(tm.state_dict(), module)


def torch_attention(tm, x, labels):
    """Per block ``(A, dlogit/dA)``: forward hooks on ``attn_drop`` (the probabilities after softmax)."""
    import torch

    kept = []

    def hook(_, __, out):
        out.retain_grad()
        kept.append(out)

    handles = [b.attn.attn_drop.register_forward_hook(hook) for b in tm.blocks]
    logits = tm(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2)))
    logits[torch.arange(len(labels)), torch.tensor(np.asarray(labels))].sum().backward()
    for h in handles:
        h.remove()
    return [a.detach().double().numpy() for a in kept], [a.grad.double().numpy() for a in kept]


def torch_upsample(maps, size):
    import torch

    t = torch.tensor(maps[:, None], dtype=torch.float32)
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.slow  # torch and timm imports, two compilations: ~25 s on the shared 2-core machine
@pytest.mark.parametrize("options", [{}, {"head_fusion": "max", "discard_ratio": 0.2}])
def test_rollout_and_generic_attention_match_timm_through_torch_hooks(options):
    tm, module, variables = timm_vit()
    images, labels = data(size=(32, 32), seed=4)
    probs, grads = torch_attention(tm, images, labels)
    model = gj.ModelFunctions.from_module(module, variables)
    rollout = numpy_rollout(probs, **options)[:, 0, 1:].reshape(-1, 4, 4)
    raw = gj.explain("attention_rollout", model, images, labels, postprocess=False, **options)
    np.testing.assert_allclose(raw[..., 0], torch_upsample(rollout, (32, 32)), rtol=1e-4, atol=1e-6)
    generic = numpy_generic(probs, grads)[:, 0, 1:].reshape(-1, 4, 4)
    raw = gj.explain("generic_attention", model, images, labels, postprocess=False)
    np.testing.assert_allclose(raw[..., 0], torch_upsample(generic, (32, 32)), rtol=1e-4, atol=1e-6)
