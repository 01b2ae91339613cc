"""Vision Transformer (ViT, Dosovitskiy et al. 2021) in Flax linen, NHWC, inference only, with timm's names.

Architecture (timm ``VisionTransformer`` with ``global_pool="token"``): a ``patch x patch`` stride-``patch``
convolution embeds the patches, a learned CLS token is prepended, a learned position embedding is added
(CLS included), ``depth`` pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` (LayerNorm
epsilon 1e-6, MLP ``fc1 -> GELU -> fc2``), a final ``norm`` and the ``head`` on the CLS token.

Submodule names follow timm, so the layers are where a timm user looks for them:
``patch_embed/proj``, ``blocks_{i}/norm1``, ``blocks_{i}/attn/{qkv, attn_probs, proj}``,
``blocks_{i}/norm2``, ``blocks_{i}/mlp/{fc1, fc2}``, ``norm``, ``head``; parameters ``cls_token``
and ``pos_embed``.

* **Attention probabilities** ``(B, heads, T, T)`` (float32, ``T = 1 + patches``) are the output of the
  identity submodule ``blocks_{i}/attn/attn_probs`` (so ``gj.ModelFunctions.layer_output(images,
  "blocks_11/attn/attn_probs", delta)`` gives them and, through ``delta``, their gradient) and are sown
  as ``intermediates/blocks_{i}/attn/attention`` (``module.apply(v, x, mutable=["intermediates"])``).
* **Grad-CAM** on a ViT uses a token layer: :attr:`ViT.gradcam_layer` is ``"blocks_{depth-1}/norm1"``
  (after the last block the patch tokens reach the logit only through the CLS token). The module has
  no ``features``/``head`` split (``head`` is the classifier's name, as in timm).
* **Guided Backprop** is not defined for GELU: ``gj.explain("gb", ...)`` refuses the model by name
  (there is no ``guided_backprop`` field, unlike the CNNs).
* **Input scaling**: every ViT of this module takes pixels in [0, 1] standardised with
  ``mean = std = (0.5, 0.5, 0.5)`` (:data:`INPUT_MEAN`, :data:`INPUT_STD`: timm's ``augreg`` weights and
  Google's ``[-1, 1]``). :func:`load_vit` records each checkpoint layout's own scaling
  (:data:`LAYOUT_SCALING`) and, where it differs (torchvision's ``vit_b_16``: ImageNet statistics), folds
  the difference into the patch embedding (exact: the embedding is linear with no padding), so the
  registry's one scaling per name holds for every checkpoint.

Checkpoints (:func:`load_vit`, :func:`convert_checkpoint`; the layout is told from the keys):

* ``timm`` (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``): ``patch_embed.proj.weight``,
  ``blocks.{i}.attn.qkv.weight``, ``head.weight``.
* ``torchvision`` (``.pth`` / ``.pt`` / ``.bin``): ``conv_proj.weight``, ``class_token``,
  ``encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight``, ``heads.head.weight``.
* ``google`` (``.npz`` of google-research/vision_transformer; optional prefix ``opt/target/``):
  ``embedding/kernel`` (HWIO), ``cls``, ``Transformer/posembed_input/pos_embedding``,
  ``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel`` ``(dim, heads, head_dim)``,
  ``LayerNorm_0`` / ``LayerNorm_2``, ``MlpBlock_3``, ``head/kernel``.
* ``big_vision`` (``.npz``; prefix ``params/`` or ``params/img/``): ``embedding/kernel``, ``pos_embedding``
  ``(1, patches, dim)`` (added before the CLS token is prepended: the CLS row of ``pos_embed`` is 0),
  ``MultiHeadDotProductAttention_0``, ``LayerNorm_0`` / ``LayerNorm_1``, ``MlpBlock_0``; blocks
  ``encoderblock_{i}`` or scanned ``encoderblock`` (leading depth axis).

A checkpoint that does not fit raises :class:`~gag_jax.models.porter.CheckpointMismatchError` naming the
first missing key (in the layout's order), else the first unexpected key, else the first mis-shaped one.

Differences from the references, on purpose:

* GELU is the exact (erf) form, as timm and torchvision; Google's and big_vision's JAX code use flax's
  default tanh approximation (``gelu_approximate=True`` gives it; timm, which ports those weights,
  uses erf as here).
* Inputs must be ``img_size x img_size`` (as timm's default ``dynamic_img_size=False``): the position
  embedding is not resampled.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD

from . import porter
from .porter import CheckpointMismatchError

__all__ = ["INPUT_MEAN", "INPUT_STD", "LAYOUT_SCALING", "LAYOUTS", "Attention", "AttentionProbs", "Block", "Mlp",
           "PatchEmbed", "ViT", "ViTB16", "ViTS16", "ViTTiny", "convert_checkpoint", "detect_layout",
           "fold_input_scaling", "load_vit", "read_checkpoint", "torch_prefix"]

INPUT_MEAN: tuple[float, ...] = (0.5, 0.5, 0.5)
"""Per-channel mean every ViT of this module takes its inputs standardised with (pixels in [0, 1])."""
INPUT_STD: tuple[float, ...] = (0.5, 0.5, 0.5)
"""Per-channel std every ViT of this module takes its inputs standardised with (pixels in [0, 1])."""

LAYOUTS: tuple[str, ...] = ("timm", "torchvision", "google", "big_vision")
"""The checkpoint layouts :func:`convert_checkpoint` reads."""

LAYOUT_SCALING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "timm": (INPUT_MEAN, INPUT_STD),  # vit_*_patch16_224 (augreg and orig) pretrained_cfg: mean = std = 0.5
    "torchvision": (IMAGENET_MEAN, IMAGENET_STD),  # vit_b_16 weights' transforms: ImageNet statistics
    "google": (INPUT_MEAN, INPUT_STD),  # vision_transformer's input pipeline: pixels to [-1, 1]
    "big_vision": (INPUT_MEAN, INPUT_STD),  # value_range(-1, 1) in its ViT configs
}
"""The input scaling ``(mean, std)`` each layout's weights were trained with, as far as the layout tells.
A timm state dict of another pretraining (DeiT: ImageNet statistics) has timm's layout but not timm's
augreg scaling, and the file does not say so: pass its scaling yourself
(``model_functions(module, variables, mean=..., std=...)``)."""

_LN_EPS = 1e-6  # timm / torchvision / flax ViTs


def _layer_norm(dtype: Any) -> nn.LayerNorm:
    # Two-pass variance E[(x - mean)^2] as torch (flax's default E[x^2] - mean^2 loses digits on the
    # large-mean tokens some trained ViTs carry).
    return nn.LayerNorm(epsilon=_LN_EPS, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False)


class AttentionProbs(nn.Module):
    """Identity on the attention probabilities ``(B, heads, T, T)``: the named point where they can be
    captured (``nn.intercept_methods``) and perturbed (``ModelFunctions.layer_output(..., delta)``)."""

    def __call__(self, p):
        return p


class Attention(nn.Module):
    """Multi-head self-attention as timm's ``Attention``: one ``qkv`` Dense, softmax in float32.

    The same computation as ``nn.MultiHeadDotProductAttention`` (queries scaled by ``head_dim ** -0.5``,
    softmax over keys, heads concatenated, output projection), written out so that the probabilities
    pass through :class:`AttentionProbs` (``attn_probs``) and are sown as ``intermediates/attention``.

    Attributes:
      dim: token width ``D`` (a multiple of ``num_heads``).
      num_heads: heads ``h``.
      dtype: compute dtype of the projections (the softmax is float32).

    ``(B, T, D) -> (B, T, D)``.
    """

    dim: int
    num_heads: int
    dtype: Any = jnp.float32

    def setup(self):
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        self.qkv = dense(3 * self.dim)
        self.attn_probs = AttentionProbs()
        self.proj = dense(self.dim)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, t, 3, h, d // h)  # timm: qkv.reshape(B, N, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q = q * jnp.asarray((d // h) ** -0.5, q.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = self.attn_probs(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
        self.sow("intermediates", "attention", probs)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(b, t, d)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``: ``(B, T, D) -> (B, T, D)`` with hidden width ``hidden``.

    GELU is exact (erf) unless ``gelu_approximate`` (the tanh form of Google's / big_vision's code).
    """

    hidden: int
    dim: int
    dtype: Any = jnp.float32
    gelu_approximate: bool = False

    def setup(self):
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        self.fc1 = dense(self.hidden)
        self.fc2 = dense(self.dim)

    def __call__(self, x):
        return self.fc2(nn.gelu(self.fc1(x), approximate=self.gelu_approximate))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``. ``(B, T, D) -> (B, T, D)``."""

    dim: int
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    gelu_approximate: bool = False

    def setup(self):
        norm = partial(_layer_norm, dtype=self.dtype)
        self.norm1 = norm()
        self.attn = Attention(self.dim, self.num_heads, dtype=self.dtype)
        self.norm2 = norm()
        self.mlp = Mlp(self.mlp_dim, self.dim, dtype=self.dtype, gelu_approximate=self.gelu_approximate)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: a ``patch x patch`` stride-``patch`` conv ``proj``, flattened row by row.

    ``(B, H, W, C) -> (B, (H / patch) * (W / patch), D)``; ``proj`` itself gives the grid ``(B, H/p, W/p, D)``.
    """

    patch_size: int
    dim: int
    dtype: Any = jnp.float32

    def setup(self):
        p = self.patch_size
        self.proj = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                            param_dtype=jnp.float32)

    def __call__(self, x):
        y = self.proj(x)
        return y.reshape(y.shape[0], y.shape[1] * y.shape[2], y.shape[3])


class ViT(nn.Module):
    """Vision Transformer with a CLS token and a learned position embedding (timm ``global_pool="token"``).

    Attributes:
      img_size: input side (square images, ``img_size x img_size``; a multiple of ``patch_size``).
      patch_size: patch side ``p``: ``(img_size / p) ** 2`` patch tokens, ``T = 1 + patches`` tokens.
      embed_dim: token width ``D``.
      depth: number of blocks (``blocks_0 ... blocks_{depth-1}``).
      num_heads: attention heads (``D`` a multiple of it).
      mlp_dim: hidden width of each block's MLP.
      num_classes: outputs of ``head``.
      dtype: compute dtype (parameters stay float32; softmax and logits are float32).
      gelu_approximate: tanh GELU (Google's / big_vision's JAX code) instead of the exact erf one (timm,
        torchvision).

    ``__call__(x)``: images ``(B, img_size, img_size, 3)`` standardised with :data:`INPUT_MEAN` /
    :data:`INPUT_STD` -> logits ``(B, num_classes)`` float32.
    """

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    dtype: Any = jnp.float32
    gelu_approximate: bool = False

    num_prefix_tokens: ClassVar[int] = 1
    """Tokens before the patch tokens (the CLS token), as timm's ``num_prefix_tokens``."""

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid ``(img_size / patch_size,) * 2`` the patch tokens are laid out on (row by row)."""
        side = self.img_size // self.patch_size
        return side, side

    @property
    def gradcam_layer(self) -> str:
        """Grad-CAM's layer on this ViT: the last block's ``norm1`` (tokens ``(B, T, D)``)."""
        return f"blocks_{self.depth - 1}/norm1"

    @property
    def attention_layers(self) -> tuple[str, ...]:
        """The layers whose output is a block's attention probabilities ``(B, heads, T, T)``, in order."""
        return tuple(f"blocks_{i}/attn/attn_probs" for i in range(self.depth))

    def setup(self):
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        tokens = 1 + (self.img_size // self.patch_size) ** 2
        self.patch_embed = PatchEmbed(self.patch_size, self.embed_dim, dtype=self.dtype)
        self.cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim), jnp.float32)
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (1, tokens, self.embed_dim),
                                    jnp.float32)
        self.blocks = [Block(self.embed_dim, self.num_heads, self.mlp_dim, dtype=self.dtype,
                             gelu_approximate=self.gelu_approximate) for _ in range(self.depth)]
        self.norm = _layer_norm(dtype=self.dtype)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def __call__(self, x):
        """Images ``(B, img_size, img_size, C)`` -> logits ``(B, num_classes)`` float32."""
        if x.ndim != 4 or x.shape[1:3] != (self.img_size, self.img_size):
            raise ValueError(f"this ViT takes images (B, {self.img_size}, {self.img_size}, C) (its position "
                             f"embedding has {self.grid_size[0]}x{self.grid_size[1]} patches); got {x.shape}")
        x = self.patch_embed(x.astype(self.dtype))
        cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.astype(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0]).astype(jnp.float32)


ViTS16 = partial(ViT, img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_dim=1536)
ViTS16.__doc__ = "ViT-S/16 at 224 (timm ``vit_small_patch16_224``): 22,050,664 parameters with 1000 classes."
ViTB16 = partial(ViT, img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_dim=3072)
ViTB16.__doc__ = ("ViT-B/16 at 224 (timm ``vit_base_patch16_224``, torchvision ``vit_b_16``): 86,567,656 "
                  "parameters with 1000 classes.")
ViTTiny = partial(ViT, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_dim=128, num_classes=10)
ViTTiny.__doc__ = "A 32 px, patch-8, width-32, 2-block, 2-head ViT with 10 classes, for fast tests."


def torch_prefix(flax_module_path: tuple[str, ...]) -> str:
    """Flax submodule path -> timm module name: ``("blocks_3", "attn", "qkv")`` -> ``"blocks.3.attn.qkv"``,
    ``("patch_embed", "proj")`` -> ``"patch_embed.proj"``, ``("head",)`` -> ``"head"``."""
    parts = []
    for name in flax_module_path:
        if name.startswith("blocks_"):
            parts.append("blocks." + name[len("blocks_"):])
        else:
            parts.append(name)
    return ".".join(parts)


# ----------------------------------------------------------------------------------------------
# checkpoints


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One Flax parameter: the checkpoint keys it is built from, their shapes, and how."""

    path: tuple[str, ...]  # ("blocks_0", "attn", "qkv", "kernel") under "params"
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    build: Callable[..., np.ndarray]


def _same(a):
    return a


def _t(a):
    return a.T


def _oihw_to_hwio(a):
    return np.transpose(a, (2, 3, 1, 0))


def _rule(path: str, key: str, shape: Sequence[int], build: Callable = _same) -> _Rule:
    return _Rule(tuple(path.split("/")), (key,), (tuple(shape),), build)


def _torch_rules(m: ViT, layout: str) -> list[_Rule]:
    """Rules of the two torch layouts, in their ``state_dict`` order."""
    d, mlp, p, k = m.embed_dim, m.mlp_dim, m.patch_size, m.num_classes
    tokens = 1 + (m.img_size // p) ** 2
    if layout == "timm":
        head = [_rule("cls_token", "cls_token", (1, 1, d)), _rule("pos_embed", "pos_embed", (1, tokens, d)),
                _rule("patch_embed/proj/kernel", "patch_embed.proj.weight", (d, 3, p, p), _oihw_to_hwio),
                _rule("patch_embed/proj/bias", "patch_embed.proj.bias", (d,))]
        block = {"norm1": "blocks.{i}.norm1", "qkv": "blocks.{i}.attn.qkv.{w}", "proj": "blocks.{i}.attn.proj",
                 "norm2": "blocks.{i}.norm2", "fc1": "blocks.{i}.mlp.fc1", "fc2": "blocks.{i}.mlp.fc2"}
        tail = [("norm", "norm"), ("head", "head")]
    else:  # torchvision
        head = [_rule("cls_token", "class_token", (1, 1, d)),
                _rule("patch_embed/proj/kernel", "conv_proj.weight", (d, 3, p, p), _oihw_to_hwio),
                _rule("patch_embed/proj/bias", "conv_proj.bias", (d,)),
                _rule("pos_embed", "encoder.pos_embedding", (1, tokens, d))]
        e = "encoder.layers.encoder_layer_{i}"
        block = {"norm1": e + ".ln_1", "qkv": e + ".self_attention.in_proj_{w}", "proj": e + ".self_attention.out_proj",
                 "norm2": e + ".ln_2", "fc1": e + ".mlp.0", "fc2": e + ".mlp.3"}
        tail = [("norm", "encoder.ln"), ("head", "heads.head")]
    rules = list(head)
    for i in range(m.depth):
        b = f"blocks_{i}"
        name = {part: key.format(i=i, w="{w}") for part, key in block.items()}  # {w}: weight / bias (qkv)
        qkv_w, qkv_b = name["qkv"].format(w="weight"), name["qkv"].format(w="bias")
        rules += [_rule(f"{b}/norm1/scale", name["norm1"] + ".weight", (d,)),
                  _rule(f"{b}/norm1/bias", name["norm1"] + ".bias", (d,)),
                  _rule(f"{b}/attn/qkv/kernel", qkv_w, (3 * d, d), _t),
                  _rule(f"{b}/attn/qkv/bias", qkv_b, (3 * d,)),
                  _rule(f"{b}/attn/proj/kernel", name["proj"] + ".weight", (d, d), _t),
                  _rule(f"{b}/attn/proj/bias", name["proj"] + ".bias", (d,)),
                  _rule(f"{b}/norm2/scale", name["norm2"] + ".weight", (d,)),
                  _rule(f"{b}/norm2/bias", name["norm2"] + ".bias", (d,)),
                  _rule(f"{b}/mlp/fc1/kernel", name["fc1"] + ".weight", (mlp, d), _t),
                  _rule(f"{b}/mlp/fc1/bias", name["fc1"] + ".bias", (mlp,)),
                  _rule(f"{b}/mlp/fc2/kernel", name["fc2"] + ".weight", (d, mlp), _t),
                  _rule(f"{b}/mlp/fc2/bias", name["fc2"] + ".bias", (d,))]
    (norm, norm_key), (head_name, head_key) = tail
    rules += [_rule("norm/scale", norm_key + ".weight", (d,)), _rule("norm/bias", norm_key + ".bias", (d,)),
              _rule("head/kernel", head_key + ".weight", (k, d), _t), _rule("head/bias", head_key + ".bias", (k,))]
    return rules


def _npz_rules(m: ViT, layout: str, prefix: str, scanned: bool) -> list[_Rule]:
    """Rules of the Google (vision_transformer) and big_vision ``.npz`` layouts."""
    d, mlp, p, k, h = m.embed_dim, m.mlp_dim, m.patch_size, m.num_classes, m.num_heads
    patches = (m.img_size // p) ** 2
    big = layout == "big_vision"
    mha, ln2, mlp_block = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big else (
        "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    rules = [_rule("patch_embed/proj/kernel", prefix + "embedding/kernel", (p, p, 3, d)),
             _rule("patch_embed/proj/bias", prefix + "embedding/bias", (d,)),
             _rule("cls_token", prefix + "cls", (1, 1, d))]
    if big:  # added to the patches before the CLS token is prepended: the CLS token gets no position
        rules.append(_rule("pos_embed", prefix + "pos_embedding", (1, patches, d),
                           lambda a: np.concatenate([np.zeros_like(a[:, :1]), a], axis=1)))
    else:
        rules.append(_rule("pos_embed", prefix + "Transformer/posembed_input/pos_embedding", (1, 1 + patches, d)))

    for i in range(m.depth):
        b = f"blocks_{i}"
        if scanned:  # big_vision's scan=True: one stacked array per parameter, block i at index i
            base, lead = prefix + "Transformer/encoderblock/", (m.depth,)

            def pick(f, i=i):
                return lambda *arrays: f(*(a[i] for a in arrays))
        else:
            base, lead = prefix + f"Transformer/encoderblock_{i}/", ()

            def pick(f):
                return f

        def r(path, key, shape, build=_same):
            return _Rule((b, *path.split("/")), (base + key,), (lead + tuple(shape),), pick(build))

        def qkv_kernel(q, k_, v):  # (D, h, hd) each -> (D, 3D): [q | k | v], heads major, as timm's qkv
            return np.concatenate([a.reshape(d, d) for a in (q, k_, v)], axis=1)

        def qkv_bias(q, k_, v):
            return np.concatenate([a.reshape(d) for a in (q, k_, v)])

        names = ("query", "key", "value")
        rules += [r("norm1/scale", "LayerNorm_0/scale", (d,)), r("norm1/bias", "LayerNorm_0/bias", (d,)),
                  _Rule((b, "attn", "qkv", "kernel"), tuple(f"{base}{mha}/{n}/kernel" for n in names),
                        (lead + (d, h, d // h),) * 3, pick(qkv_kernel)),
                  _Rule((b, "attn", "qkv", "bias"), tuple(f"{base}{mha}/{n}/bias" for n in names),
                        (lead + (h, d // h),) * 3, pick(qkv_bias)),
                  r("attn/proj/kernel", f"{mha}/out/kernel", (h, d // h, d), lambda a: a.reshape(d, d)),
                  r("attn/proj/bias", f"{mha}/out/bias", (d,)),
                  r("norm2/scale", f"{ln2}/scale", (d,)), r("norm2/bias", f"{ln2}/bias", (d,)),
                  r("mlp/fc1/kernel", f"{mlp_block}/Dense_0/kernel", (d, mlp)),
                  r("mlp/fc1/bias", f"{mlp_block}/Dense_0/bias", (mlp,)),
                  r("mlp/fc2/kernel", f"{mlp_block}/Dense_1/kernel", (mlp, d)),
                  r("mlp/fc2/bias", f"{mlp_block}/Dense_1/bias", (d,))]
    rules += [_rule("norm/scale", prefix + "Transformer/encoder_norm/scale", (d,)),
              _rule("norm/bias", prefix + "Transformer/encoder_norm/bias", (d,)),
              _rule("head/kernel", prefix + "head/kernel", (d, k)), _rule("head/bias", prefix + "head/bias", (k,))]
    return rules


_NPZ_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def detect_layout(keys: Sequence[str]) -> tuple[str, str]:
    """The checkpoint layout told from its keys.

    Args:
      keys: the checkpoint's keys (torch ``state_dict`` names, or ``.npz`` array names).

    Returns:
      ``(layout, prefix)``: layout one of :data:`LAYOUTS`; prefix the ``.npz`` key prefix (``""``,
      ``"opt/target/"``, ``"params/"``, ``"params/img/"``), ``""`` for the torch layouts.

    Raises:
      CheckpointMismatchError: no layout's patch-embedding key is there (the message names them).
    """
    keys = set(keys)
    if "patch_embed.proj.weight" in keys:
        return "timm", ""
    if "conv_proj.weight" in keys:
        return "torchvision", ""
    for prefix in _NPZ_PREFIXES:
        if prefix + "embedding/kernel" in keys:
            big = (prefix.startswith("params/") or prefix + "pos_embedding" in keys
                   or prefix + "Transformer/encoderblock/LayerNorm_0/scale" in keys)
            return ("big_vision" if big else "google"), prefix
    shown = ", ".join(repr(k) for k in sorted(keys)[:3])
    raise CheckpointMismatchError(
        "not a ViT checkpoint of a known layout: it is missing key 'patch_embed.proj.weight' (timm), "
        f"'conv_proj.weight' (torchvision) and 'embedding/kernel' (Google / big_vision .npz); its keys begin {shown}")


def _rules(module: ViT, layout: str, prefix: str, keys) -> list[_Rule]:
    if layout in ("timm", "torchvision"):
        return _torch_rules(module, layout)
    scanned = prefix + "Transformer/encoderblock/LayerNorm_0/scale" in keys
    return _npz_rules(module, layout, prefix, scanned)


def _head_key(layout: str, prefix: str = "") -> tuple[str, int]:
    """The classifier weight's key in a layout and the axis of its class count."""
    return {"timm": ("head.weight", 0), "torchvision": ("heads.head.weight", 0)}.get(
        layout, (prefix + "head/kernel", 1))


def fold_input_scaling(kernel: np.ndarray, bias: np.ndarray, from_scaling, to_scaling) -> tuple[np.ndarray, np.ndarray]:
    """A patch embedding trained on inputs scaled with ``from_scaling``, rewritten to take ``to_scaling``.

    Inputs standardised as ``x_to = (pixel - m_to) / s_to`` give ``x_from = a * x_to + c`` with
    ``a = s_to / s_from``, ``c = (m_to - m_from) / s_from`` per channel. The embedding is a conv without
    padding (every output sees a full patch), so ``conv(x_from) = conv'(x_to)`` exactly, with
    ``kernel' = kernel * a`` (input channel axis) and ``bias' = bias + sum(kernel * c)``.

    Args:
      kernel: ``(p, p, C, D)`` HWIO.
      bias: ``(D,)``.
      from_scaling, to_scaling: ``(mean, std)`` per-channel tuples (pixels in [0, 1]).

    Returns:
      ``(kernel', bias')`` float32, same shapes.
    """
    (m_f, s_f), (m_t, s_t) = [(np.asarray(m, np.float64), np.asarray(s, np.float64)) for m, s in (from_scaling,
                                                                                                  to_scaling)]
    a, c = s_t / s_f, (m_t - m_f) / s_f
    k64 = np.asarray(kernel, np.float64)
    new_kernel = k64 * a[None, None, :, None]
    new_bias = np.asarray(bias, np.float64) + np.einsum("ijco,c->o", k64, c)
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def convert_checkpoint(arrays: Mapping[str, Any], module: ViT, *, source: str = "checkpoint") -> dict:
    """Flax variables of ``module`` from a ViT checkpoint of any of :data:`LAYOUTS`, checking every key.

    Args:
      arrays: ``{key: array}``: a torch ``state_dict`` (tensors or arrays; normalised with
        :func:`gag_jax.models.porter.normalize_state_dict`) or the arrays of an ``.npz``.
      module: the :class:`ViT` (its fields fix every shape; ``img_size`` the position embedding's).
      source: the checkpoint's name for messages (e.g. the file path).

    Returns:
      ``{"params": ...}`` of float32 numpy arrays, taking inputs scaled with :data:`INPUT_MEAN` /
      :data:`INPUT_STD` (a layout trained on another scaling has it folded into the patch embedding:
      :func:`fold_input_scaling`).

    Raises:
      CheckpointMismatchError: an unknown layout, or naming the first key the module needs that the
        checkpoint lacks (in the layout's own order), else the first checkpoint key the module does not
        use, else the first key of another shape (``classifier has K classes, model expects N`` for the
        head) or not a float array.
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise CheckpointMismatchError(f"{source}: not a non-empty mapping of arrays")
    layout, prefix = detect_layout(list(arrays))
    if layout in ("timm", "torchvision"):
        arrays = porter.normalize_state_dict(arrays)
        if layout == "torchvision":  # torchvision < 0.13 named the MLP's linears linear_1 / linear_2
            arrays = {key.replace(".mlp.linear_1.", ".mlp.0.").replace(".mlp.linear_2.", ".mlp.3."): v
                      for key, v in arrays.items()}
    else:
        arrays = {key: np.asarray(v) for key, v in arrays.items()}
    rules = _rules(module, layout, prefix, arrays)
    what = f"{type(module).__name__} ({layout} layout)"

    needed = list(dict.fromkeys(key for rule in rules for key in rule.keys))
    missing = [key for key in needed if key not in arrays]
    if missing:
        raise CheckpointMismatchError(f"{source} is missing key {missing[0]!r} needed by {what} "
                                      f"({len(missing)} missing in all)")
    used = set(needed)
    unexpected = [key for key in arrays if key not in used]
    if unexpected:
        raise CheckpointMismatchError(f"{source} has unexpected key {unexpected[0]!r} that {what} does not use "
                                      f"({len(unexpected)} unexpected in all)")
    head, class_axis = _head_key(layout, prefix)
    head_bias = head[: -len("weight")] + "bias" if head.endswith("weight") else head[: -len("kernel")] + "bias"
    for rule in rules:
        for key, shape in zip(rule.keys, rule.shapes):
            array = arrays[key]
            if tuple(array.shape) != shape:
                if key in (head, head_bias):
                    got = array.shape[class_axis if key == head else 0] if array.ndim else "?"
                    raise CheckpointMismatchError(
                        f"{source}: key {key!r} has shape {tuple(array.shape)}, {what} expects {shape}: classifier "
                        f"has {got} classes, model expects {module.num_classes} (pass num_classes= to match it)")
                raise CheckpointMismatchError(f"{source}: key {key!r} has shape {tuple(array.shape)}, "
                                              f"{what} expects {shape}")
            if not np.issubdtype(array.dtype, np.floating):
                raise CheckpointMismatchError(f"{source}: key {key!r} has dtype {array.dtype}, expected floats")

    params = {}
    for rule in rules:
        params[rule.path] = np.ascontiguousarray(
            rule.build(*(np.asarray(arrays[key], np.float32) for key in rule.keys)), dtype=np.float32)
    scaling = LAYOUT_SCALING[layout]
    if scaling != (INPUT_MEAN, INPUT_STD):
        kp, bp = ("patch_embed", "proj", "kernel"), ("patch_embed", "proj", "bias")
        params[kp], params[bp] = fold_input_scaling(params[kp], params[bp], scaling, (INPUT_MEAN, INPUT_STD))
    variables = {"params": traverse_util.unflatten_dict(params)}
    _check_template(variables, module, source)
    return variables


def _template_shape(module: ViT) -> tuple[int, int, int, int]:
    return (1, module.img_size, module.img_size, 3)


def _check_template(variables: dict, module: ViT, source: str) -> None:
    """The converted variables have exactly the module's structure and shapes (the rules' own check)."""
    porter.restore_variables(variables, module, _template_shape(module), source=source)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{key: array}`` of a ViT checkpoint file, unchecked.

    Args:
      path: torch ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.bin`` (needs torch; read with
        :func:`gag_jax.models.porter.read_torch_checkpoint`), ``.safetensors`` (needs ``safetensors``)
        or ``.npz`` (Google / big_vision).

    Raises:
      FileNotFoundError: no such file.
      ValueError: an extension it does not read.
      CheckpointMismatchError: an unreadable file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    lower = path.lower()
    if lower.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: np.asarray(data[key]) for key in data.files}
        except Exception as err:  # noqa: BLE001 - numpy raises several kinds for a bad file
            raise CheckpointMismatchError(f"{path!r} is not a readable .npz ({type(err).__name__})") from None
    if lower.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("reading .safetensors needs the safetensors package: pip install safetensors") from err
        try:
            return load_file(path)
        except Exception as err:  # noqa: BLE001 - a bad header raises several kinds
            raise CheckpointMismatchError(
                f"{path!r} is not a readable .safetensors file ({type(err).__name__})") from None
    if lower.endswith((".pth", ".pth.tar", ".pt", ".tar", ".bin")):
        return porter.read_torch_checkpoint(path)
    raise ValueError(f"cannot tell the format of {path!r}: expected .pth / .pt / .bin (torch), .safetensors, "
                     ".npz (Google / big_vision) or .msgpack")


def load_vit(ctor: Callable[..., ViT], checkpoint_path: str | os.PathLike, *, num_classes: int | None = None,
             dtype: Any = jnp.float32) -> tuple[ViT, dict]:
    """Build a ViT and load its weights from any of :data:`LAYOUTS` or a ``.msgpack`` of its variables.

    Args:
      ctor: the module constructor (``ViTS16``, ``ViTB16``, ``ViTTiny`` or ``ViT`` / a partial of it).
      checkpoint_path: ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` / ``.npz`` / ``.msgpack``
        (written by :func:`gag_jax.models.porter.save_variables`).
      num_classes: the classifier's outputs; None takes them from the checkpoint.
      dtype: compute dtype (parameters stay float32).

    Returns:
      ``(module, {"params": ...})``; the module takes images standardised with :data:`INPUT_MEAN` /
      :data:`INPUT_STD` whatever the checkpoint's layout.

    Raises:
      FileNotFoundError, ValueError (unknown extension), CheckpointMismatchError (see
      :func:`convert_checkpoint`).
    """
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    kwargs = {"dtype": dtype} if num_classes is None else {"dtype": dtype, "num_classes": num_classes}
    probe = ctor(**kwargs)
    if path.lower().endswith(".msgpack"):
        raw = porter.read_msgpack(path)
        if num_classes is None:
            kernel = raw.get("params", {}).get("head", {}).get("kernel") if isinstance(raw, dict) else None
            if getattr(kernel, "ndim", 0) == 2:
                probe = ctor(dtype=dtype, num_classes=int(kernel.shape[1]))
        variables = porter.restore_variables(raw, probe, _template_shape(probe), source=repr(path))
        return probe, jax.tree_util.tree_map(jnp.asarray, variables)
    arrays = read_checkpoint(path)
    if num_classes is None:
        layout, prefix = detect_layout(list(arrays))
        key, axis = _head_key(layout, prefix)
        head = arrays.get(key, arrays.get("module." + key))  # a DataParallel "module." is stripped later
        if head is not None and len(head.shape) == 2:
            probe = ctor(dtype=dtype, num_classes=int(head.shape[axis]))
    variables = convert_checkpoint(arrays, probe, source=repr(path))
    return probe, jax.tree_util.tree_map(jnp.asarray, variables)
