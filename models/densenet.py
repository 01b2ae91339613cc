"""DenseNet (torchvision layout) in Flax linen, NHWC, inference only.

Submodule names follow torchvision's ``features.*`` / ``classifier`` so :func:`torch_prefix` is a
rename: ``conv0, norm0, denseblock{b}_{i}/{norm1,conv1,norm2,conv2}, transition{b}/{norm,conv},
norm5, classifier``.

Methods (all share parameters):

* ``__call__(x)``: images ``(B, H, W, 3)`` -> logits ``(B, num_classes)`` float32.
* ``features(x)``: images -> ``relu(norm5(features))`` ``(B, H/32, W/32, C)`` (``(B, 7, 7, 2208)``
  for DenseNet-161 at 224), exactly what torchvision feeds into its global pooling; the
  Grad-CAM layer.
* ``head(f)``: features -> logits (global average pool + ``classifier``).
"""
from __future__ import annotations

from functools import partial
from typing import Any
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gag_jax.model import guided_backprop_activation
from ._conv import conv_bn

__all__ = ["DenseLayer", "Transition", "DenseNet", "DenseNet121", "DenseNet161", "DenseNetTiny", "torch_prefix"]

_BN = partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


def _activation(guided: bool) -> Callable:
    return guided_backprop_activation(nn.relu) if guided else nn.relu


class DenseLayer(nn.Module):
    """BN-ReLU-1x1conv-BN-ReLU-3x3conv; ``(B, H, W, Cin) -> (B, H, W, Cin + growth_rate)`` (concatenated)."""

    growth_rate: int
    bn_size: int
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    fold_bn: bool = True

    def setup(self):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        bn = partial(_BN, dtype=self.dtype, param_dtype=jnp.float32)
        self.norm1 = bn()
        self.conv1 = conv(self.bn_size * self.growth_rate, (1, 1))
        self.norm2 = bn()
        self.conv2 = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)))

    def __call__(self, x):
        act = _activation(self.guided_backprop)
        y = conv_bn(self.conv1, None, act(self.norm1(x)), self.fold_bn)  # 1x1: a matrix product
        y = conv_bn(self.conv2, None, act(self.norm2(y)), self.fold_bn)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
    """BN-ReLU-1x1conv-avgpool(2); ``(B, H, W, Cin) -> (B, H//2, W//2, features)``."""

    features: int
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    fold_bn: bool = True

    def setup(self):
        self.norm = _BN(dtype=self.dtype, param_dtype=jnp.float32)
        self.conv = nn.Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)

    def __call__(self, x):
        act = _activation(self.guided_backprop)
        y = act(self.norm(x))
        if not self.fold_bn or self.is_initializing():
            return nn.avg_pool(self.conv(y), (2, 2), strides=(2, 2))
        # The 1x1 conv and the 2x2 average pool are both linear and per pixel / per channel, so they
        # commute: pooling first does the conv on a quarter of the pixels (same values to rounding).
        return conv_bn(self.conv, None, nn.avg_pool(y, (2, 2), strides=(2, 2)), True)


class DenseNet(nn.Module):
    """DenseNet-BC matching torchvision ``DenseNet(growth_rate, block_config, num_init_features, bn_size)``.

    Attributes:
      growth_rate: channels each dense layer adds (48 for DenseNet-161).
      block_config: dense layers per block (``(6, 12, 36, 24)`` for DenseNet-161).
      num_init_features: stem channels (96 for DenseNet-161).
      bn_size: bottleneck multiplier of the 1x1 conv.
      num_classes: size of the ``classifier`` layer (1000 ImageNet, 365 Places365).
      dtype: compute dtype (parameters stay float32); logits are returned as float32.
      guided_backprop: wrap every ReLU with Guided-Backprop's backward rule.
      fold_bn: fast inference arithmetic, same values to float rounding and same variables: the
        stem's BatchNorm folded into ``conv0`` at apply time, 1x1 convs as matrix products, and each
        transition's average pool before its 1x1 conv (they commute). See :func:`models._conv.conv_bn`.
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 1000
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    fold_bn: bool = True

    def setup(self):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        self.conv0 = conv(self.num_init_features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)))
        self.norm0 = _BN(dtype=self.dtype, param_dtype=jnp.float32)
        n = self.num_init_features
        for b, n_layers in enumerate(self.block_config):
            layers = [DenseLayer(self.growth_rate, self.bn_size, dtype=self.dtype,
                                 guided_backprop=self.guided_backprop, fold_bn=self.fold_bn)
                      for _ in range(n_layers)]
            # A list attribute ``denseblock1`` names its layers ``denseblock1_0``, ``denseblock1_1``, ...
            setattr(self, f"denseblock{b + 1}", layers)
            n += n_layers * self.growth_rate
            if b != len(self.block_config) - 1:
                setattr(self, f"transition{b + 1}", Transition(n // 2, dtype=self.dtype,
                                                               guided_backprop=self.guided_backprop,
                                                               fold_bn=self.fold_bn))
                n //= 2
        self.norm5 = _BN(dtype=self.dtype, param_dtype=jnp.float32)
        self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def features(self, x):
        """Images ``(B, H, W, 3)`` -> ``relu(norm5(...))`` ``(B, ~H/32, ~W/32, C_final)``."""
        act = _activation(self.guided_backprop)
        x = x.astype(self.dtype)
        x = act(conv_bn(self.conv0, self.norm0, x, self.fold_bn))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        n_blocks = len(self.block_config)
        for b in range(n_blocks):
            for layer in getattr(self, f"denseblock{b + 1}"):
                x = layer(x)
            if b != n_blocks - 1:
                x = getattr(self, f"transition{b + 1}")(x)
        return act(self.norm5(x))

    def head(self, f):
        """Features ``(B, h, w, C)`` -> logits ``(B, num_classes)`` float32 (average pool + classifier)."""
        pooled = jnp.mean(f.astype(self.dtype), axis=(1, 2))
        return self.classifier(pooled).astype(jnp.float32)

    def __call__(self, x):
        """Images ``(B, H, W, 3)`` (ImageNet-normalised) -> logits ``(B, num_classes)`` float32."""
        return self.head(self.features(x))


DenseNet121 = partial(DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
DenseNet121.__doc__ = "torchvision ``densenet121``: 7,978,856 parameters with 1000 classes."
DenseNet161 = partial(DenseNet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96)
DenseNet161.__doc__ = "torchvision ``densenet161``: 28,681,000 parameters with 1000 classes."
DenseNetTiny = partial(DenseNet, growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                       num_classes=10)
DenseNetTiny.__doc__ = ("A small DenseNet for fast tests; torchvision "
                        "``DenseNet(8, (2, 2, 2, 2), 16, bn_size=2, num_classes=10)``.")


def torch_prefix(flax_module_path: tuple[str, ...]) -> str:
    """Flax submodule path -> torchvision module name.

    ``("denseblock1_0", "norm1")`` -> ``"features.denseblock1.denselayer1.norm1"``;
    ``("transition2", "conv")`` -> ``"features.transition2.conv"``; ``("norm5",)`` ->
    ``"features.norm5"``; ``("classifier",)`` -> ``"classifier"``.
    """
    if not flax_module_path:
        return ""
    first, rest = flax_module_path[0], list(flax_module_path[1:])
    if first == "classifier":
        return ".".join([first, *rest])
    if first.startswith("denseblock") and "_" in first:
        block, idx = first.split("_", 1)
        first = f"{block}.denselayer{int(idx) + 1}"
    return ".".join(["features", first, *rest])
