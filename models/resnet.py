"""ResNet (torchvision v1.5 bottleneck layout) in Flax linen, NHWC, inference only.

Submodule names follow torchvision so :func:`torch_prefix` is a rename:
``conv1, bn1, layer{s}_{i}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}, fc``.

Methods (all share parameters):

* ``__call__(x)``: images ``(B, H, W, 3)`` -> logits ``(B, num_classes)`` float32.
* ``features(x)``: images -> output of ``layer4`` ``(B, H/32, W/32, 4 * 8 * width)``
  (``(B, 7, 7, 2048)`` for ResNet-50 at 224), the Grad-CAM layer.
* ``head(f)``: features -> logits (global average pool + ``fc``).
"""
from __future__ import annotations

from functools import partial
from typing import Any
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gag_jax.model import guided_backprop_activation
from ._conv import conv_bn

__all__ = ["Bottleneck", "ResNet", "ResNet50", "ResNetTiny", "torch_prefix"]

_BN = partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5)


def _activation(guided: bool) -> Callable:
    return guided_backprop_activation(nn.relu) if guided else nn.relu


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (stride on the 3x3 conv). ``(B, H, W, Cin) -> (B, H/s, W/s, 4*planes)``."""

    planes: int
    strides: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    fold_bn: bool = True

    def setup(self):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        bn = partial(_BN, dtype=self.dtype, param_dtype=jnp.float32)
        self.conv1 = conv(self.planes, (1, 1))
        self.bn1 = bn()
        self.conv2 = conv(self.planes, (3, 3), strides=(self.strides, self.strides), padding=((1, 1), (1, 1)))
        self.bn2 = bn()
        self.conv3 = conv(self.planes * 4, (1, 1))
        self.bn3 = bn()
        if self.downsample:
            self.downsample_conv = conv(self.planes * 4, (1, 1), strides=(self.strides, self.strides))
            self.downsample_bn = bn()

    def __call__(self, x):
        act = _activation(self.guided_backprop)
        y = act(conv_bn(self.conv1, self.bn1, x, self.fold_bn))
        y = act(conv_bn(self.conv2, self.bn2, y, self.fold_bn))
        y = conv_bn(self.conv3, self.bn3, y, self.fold_bn)
        identity = conv_bn(self.downsample_conv, self.downsample_bn, x, self.fold_bn) if self.downsample else x
        return act(y + identity)


class ResNet(nn.Module):
    """Bottleneck ResNet matching torchvision ``ResNet(Bottleneck, stage_sizes)``.

    Attributes:
      stage_sizes: number of bottleneck blocks in ``layer1..layer4``.
      width: channels of the stem and of ``layer1``'s bottleneck (64 in torchvision).
      num_classes: size of the ``fc`` layer.
      dtype: compute dtype (parameters stay float32); logits are returned as float32.
      guided_backprop: wrap every ReLU with Guided-Backprop's backward rule.
      fold_bn: fold each BatchNorm into its conv's kernel and a bias at apply time and run 1x1
        stride-1 convs as matrix products (same values to float rounding, same variables; see
        :func:`models._conv.conv_bn`). False applies conv and BatchNorm one after the other.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    num_classes: int = 1000
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    fold_bn: bool = True

    def setup(self):
        if len(self.stage_sizes) != 4:
            raise ValueError(f"ResNet has 4 stages, got stage_sizes={self.stage_sizes}")
        self.conv1 = nn.Conv(self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                             dtype=self.dtype, param_dtype=jnp.float32)
        self.bn1 = _BN(dtype=self.dtype, param_dtype=jnp.float32)
        in_ch = self.width
        for s, n_blocks in enumerate(self.stage_sizes):
            planes = self.width * 2 ** s
            blocks = []
            for i in range(n_blocks):
                strides = 2 if (s > 0 and i == 0) else 1
                downsample = i == 0 and (strides != 1 or in_ch != planes * 4)
                blocks.append(Bottleneck(planes, strides, downsample, dtype=self.dtype,
                                         guided_backprop=self.guided_backprop, fold_bn=self.fold_bn))
                in_ch = planes * 4
            # A list attribute ``layer1`` names its blocks ``layer1_0``, ``layer1_1``, ...
            setattr(self, f"layer{s + 1}", blocks)
        self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def features(self, x):
        """Images ``(B, H, W, 3)`` -> ``layer4`` output ``(B, ceil(H/32), ceil(W/32), 32 * width)``."""
        act = _activation(self.guided_backprop)
        x = x.astype(self.dtype)
        x = act(conv_bn(self.conv1, self.bn1, x, self.fold_bn))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for blocks in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in blocks:
                x = block(x)
        return x

    def head(self, f):
        """Features ``(B, h, w, C)`` -> logits ``(B, num_classes)`` float32 (average pool + fc)."""
        pooled = jnp.mean(f.astype(self.dtype), axis=(1, 2))
        return self.fc(pooled).astype(jnp.float32)

    def __call__(self, x):
        """Images ``(B, H, W, 3)`` (ImageNet-normalised) -> logits ``(B, num_classes)`` float32."""
        return self.head(self.features(x))


ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet50.__doc__ = "torchvision ``resnet50``: 25,557,032 parameters with 1000 classes."
ResNetTiny = partial(ResNet, stage_sizes=(1, 1, 1, 1), width=8, num_classes=10)
ResNetTiny.__doc__ = "A 4-block, width-8 bottleneck ResNet with 10 classes, for fast tests."


def torch_prefix(flax_module_path: tuple[str, ...]) -> str:
    """Flax submodule path -> torchvision module name.

    ``("layer1_0", "conv1")`` -> ``"layer1.0.conv1"``;
    ``("layer2_0", "downsample_conv")`` -> ``"layer2.0.downsample.0"`` (``downsample_bn`` -> ``.1``);
    ``("fc",)`` -> ``"fc"``.
    """
    parts = []
    for name in flax_module_path:
        if name == "downsample_conv":
            parts.append("downsample.0")
        elif name == "downsample_bn":
            parts.append("downsample.1")
        elif name.startswith("layer") and "_" in name:
            stage, idx = name.split("_", 1)
            parts.append(f"{stage}.{idx}")
        else:
            parts.append(name)
    return ".".join(parts)
