"""EfficientNet-B0 (torchvision layout) and EfficientNet-Lite0 (lukemelas / ``efficientnet-lite-pytorch`` layout).

Both are Flax **linen**, NHWC, inference-only ports (BatchNorm uses its running statistics,
dropout and stochastic depth are off). They share the models/ conventions:

* fields ``num_classes`` (1000), ``dtype`` (compute dtype; parameters are always float32) and
  ``guided_backprop`` (wrap every activation in
  :func:`gag_jax.gradients.guided_backprop_activation`; forward values are unchanged);
* three methods sharing one parameter set, selected with ``module.apply(variables, x, method=...)``:
  ``__call__(x) -> (B, num_classes)`` float32 logits, ``features(x) -> (B, h, w, C)`` the output of
  the last conv block (1x1 head conv + BN + activation, before pooling) and
  ``head(f) -> (B, num_classes)`` (global average pool + linear classifier);
* ``torch_prefix_*(flax_module_path) -> str`` maps a Flax submodule path (the tuple of names above a
  parameter leaf, e.g. ``("features_1_0", "block_0", "conv")``) to the torch module name
  (``"features.1.0.block.0.0"``), for ``models.porter.convert``.

EfficientNet-B0 follows ``torchvision.models.efficientnet_b0``: SiLU, squeeze-excitation, symmetric
``(k - 1) // 2`` padding, BatchNorm eps 1e-5 (torchvision's EfficientNet-V1 uses the default
``nn.BatchNorm2d``).

EfficientNet-Lite0 follows ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")``:
ReLU6, no squeeze-excitation, stem/head fixed at 32/1280 channels, BatchNorm eps 1e-3 and
TensorFlow-style *static* "SAME" padding. The torch model computes every convolution's padding once,
at construction, for its configured ``image_size`` (224) -- asymmetric at stride 2, the extra pixel at
the bottom/right -- and keeps those pads whatever the size of the actual input. This port does the
same: the pads come from the ``image_size`` field, not from the input, so inputs of other sizes give
exactly what the torch model gives for them (for 224 inputs this equals TF "SAME").
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gag_jax.model import guided_backprop_activation
from ._conv import DepthwiseConv, conv_bn

__all__ = [
    "EfficientNet",
    "EfficientNetB0",
    "EfficientNetLite",
    "EfficientNetLite0",
    "torch_prefix_b0",
    "torch_prefix_lite0",
    "default_lite0_checkpoint",
    "tf_same_padding",
]

Activation = Callable[[jax.Array], jax.Array]
Padding = tuple[tuple[int, int], tuple[int, int]]

_GUIDED_SILU = guided_backprop_activation(jax.nn.silu)
_GUIDED_RELU6 = guided_backprop_activation(jax.nn.relu6)


def _silu(guided: bool) -> Activation:
    return _GUIDED_SILU if guided else jax.nn.silu


def _relu6(guided: bool) -> Activation:
    return _GUIDED_RELU6 if guided else jax.nn.relu6


def _global_avg_pool(x: jax.Array) -> jax.Array:
    """``(B, h, w, C) -> (B, C)`` mean over space, accumulated in float32, returned in ``x.dtype``."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def _batch_norm(epsilon: float, dtype: Any, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=True, momentum=0.9, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, name=name
    )


# --------------------------------------------------------------------------------------------------
# EfficientNet (torchvision layout)
# --------------------------------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's ``_make_divisible`` (channel rounding for width multipliers)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# (expand_ratio, kernel, stride, input_channels, out_channels, num_layers) -- torchvision's B0 table.
_B_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


class _ConvBNAct(nn.Module):
    """torchvision ``Conv2dNormActivation``: conv (no bias) -> BN -> optional activation.

    Children ``conv`` / ``bn`` are torch's ``.0`` / ``.1``. ``(B, H, W, Cin) -> (B, H', W', features)``.
    """

    features: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    activation: Activation | None = None
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    depthwise: str = "auto"
    fold_bn: bool = True

    def setup(self):
        p = (self.kernel - 1) // 2
        if self.groups > 1 and self.groups == self.features:  # depthwise (input channels == features)
            self.conv = DepthwiseConv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                padding=((p, p), (p, p)),
                impl=self.depthwise,
                dtype=self.dtype,
            )
        else:
            self.conv = nn.Conv(
                self.features,
                (self.kernel, self.kernel),
                strides=(self.stride, self.stride),
                padding=((p, p), (p, p)),
                feature_group_count=self.groups,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=jnp.float32,
            )
        self.bn = _batch_norm(self.epsilon, self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv_bn(self.conv, self.bn, x, self.fold_bn)
        return x if self.activation is None else self.activation(x)


class _SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation``: pool -> fc1 (1x1 conv) -> SiLU -> fc2 -> sigmoid -> scale.

    ``(B, H, W, C) -> (B, H, W, C)``. The sigmoid is a gate, not an activation of the network's
    feature path, so Guided Backprop leaves it alone (only the SiLU is wrapped).
    """

    channels: int
    squeeze_channels: int
    activation: Activation = jax.nn.silu
    dtype: Any = jnp.float32

    def setup(self):
        conv = functools.partial(nn.Conv, kernel_size=(1, 1), use_bias=True, dtype=self.dtype, param_dtype=jnp.float32)
        self.fc1 = conv(self.squeeze_channels)
        self.fc2 = conv(self.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        s = _global_avg_pool(x)[:, None, None, :]
        s = self.fc2(self.activation(self.fc1(s)))
        return x * jax.nn.sigmoid(s)


class _MBConv(nn.Module):
    """torchvision ``MBConv`` (eval mode). Children ``block_0..3`` are torch's ``block.0..3``.

    ``(B, H, W, in_channels) -> (B, H/stride, W/stride, out_channels)``.
    """

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    activation: Activation = jax.nn.silu
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    depthwise: str = "auto"
    fold_bn: bool = True

    def setup(self):
        expanded = _make_divisible(self.in_channels * self.expand_ratio, 8)
        cba = functools.partial(
            _ConvBNAct, epsilon=self.epsilon, dtype=self.dtype, depthwise=self.depthwise, fold_bn=self.fold_bn
        )
        layers = []
        if expanded != self.in_channels:
            layers.append(cba(expanded, 1, activation=self.activation))
        layers.append(cba(expanded, self.kernel, self.stride, groups=expanded, activation=self.activation))
        layers.append(
            _SqueezeExcitation(expanded, max(1, self.in_channels // 4), activation=self.activation, dtype=self.dtype)
        )
        layers.append(cba(self.out_channels, 1, activation=None))
        self.block = layers

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for layer in self.block:
            y = layer(y)
        if self.stride == 1 and self.in_channels == self.out_channels:
            y = y + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet-B* in the layout of ``torchvision.models.efficientnet_b*`` (NHWC, inference).

    Use :data:`EfficientNetB0` for B0. Flax submodule names mirror torch's: ``features_0`` (stem),
    ``features_{stage}_{i}`` (MBConv blocks), ``features_8`` (1x1 head conv), ``classifier_1``.

    Attributes:
      num_classes: classifier outputs (1000 for ImageNet, 2 or 8 for the ISIC fine-tuned heads).
      dtype: compute dtype; parameters are float32 and logits are returned as float32.
      guided_backprop: wrap every SiLU in the Guided-Backprop activation (forward unchanged).
      width_mult, depth_mult: torchvision's compound-scaling coefficients (1.0, 1.0 for B0).
      epsilon: BatchNorm epsilon (torchvision EfficientNet-V1: default 1e-5).
      depthwise: depthwise-conv implementation, ``"auto"`` (fastest measured on the default backend:
        ``"slices"`` on CPU, ``"grouped"`` elsewhere), ``"grouped"`` or ``"slices"``; same values and
        variables (see :class:`models._conv.DepthwiseConv`).
      fold_bn: fold each BatchNorm into its conv's kernel and a bias at apply time and run 1x1 convs
        as matrix products (same values to float rounding, same variables; see
        :func:`models._conv.conv_bn`). False applies conv and BatchNorm one after the other.
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    width_mult: float = 1.0
    depth_mult: float = 1.0
    epsilon: float = 1e-5
    depthwise: str = "auto"
    fold_bn: bool = True

    def setup(self):
        act = _silu(self.guided_backprop)
        cba = functools.partial(_ConvBNAct, epsilon=self.epsilon, dtype=self.dtype, fold_bn=self.fold_bn)
        ch = lambda c: _make_divisible(c * self.width_mult, 8)
        # Submodules are named like torch's Sequential indices: features_0 (stem),
        # features_{stage}_{i} (MBConv blocks), features_8 (head conv).
        layers = [("features_0", cba(ch(_B_STAGES[0][3]), 3, 2, activation=act))]
        for stage, (expand, kernel, stride, cin, cout, n) in enumerate(_B_STAGES, start=1):
            cin, cout, n = ch(cin), ch(cout), int(math.ceil(n * self.depth_mult))
            for i in range(n):
                block = _MBConv(
                    expand,
                    kernel,
                    stride if i == 0 else 1,
                    cin if i == 0 else cout,
                    cout,
                    activation=act,
                    epsilon=self.epsilon,
                    dtype=self.dtype,
                    depthwise=self.depthwise,
                    fold_bn=self.fold_bn,
                )
                layers.append((f"features_{stage}_{i}", block))
        layers.append((f"features_{len(_B_STAGES) + 1}", cba(4 * ch(_B_STAGES[-1][4]), 1, activation=act)))
        for name, layer in layers:
            setattr(self, name, layer)
        self._layer_names = tuple(name for name, _ in layers)
        self.classifier_1 = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def features(self, x: jax.Array) -> jax.Array:
        """Last conv block's output.

        Args:
          x: ``(B, H, W, 3)`` normalised images.

        Returns:
          ``(B, ceil(H/32), ceil(W/32), 1280)`` activations (after the 1x1 head conv, BN and SiLU),
          in ``dtype``.
        """
        x = jnp.asarray(x, self.dtype)
        for name in self._layer_names:
            x = getattr(self, name)(x)
        return x

    def head(self, f: jax.Array) -> jax.Array:
        """Global average pool and linear classifier (dropout is off at inference).

        Args:
          f: ``(B, h, w, 1280)`` output of :meth:`features`.

        Returns:
          ``(B, num_classes)`` float32 logits.
        """
        return self.classifier_1(_global_avg_pool(jnp.asarray(f, self.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` normalised images -> ``(B, num_classes)`` float32 logits."""
        return self.head(self.features(x))


EfficientNetB0 = functools.partial(EfficientNet, width_mult=1.0, depth_mult=1.0)
EfficientNetB0.__doc__ = "EfficientNet-B0, torchvision ``efficientnet_b0`` layout (5,288,548 parameters at 1000 classes)."


def torch_prefix_b0(path: Sequence[str]) -> str:
    """Torch module name of a Flax :class:`EfficientNet` submodule.

    Args:
      path: Flax module path above a parameter leaf, e.g. ``("features_2_1", "block_1", "conv")``.

    Returns:
      The torch module name, e.g. ``"features.2.1.block.1.0"`` (``conv``/``bn`` are a torchvision
      ``Conv2dNormActivation``'s ``0``/``1``; ``fc1``/``fc2`` are squeeze-excitation convs).

    Examples:
      >>> torch_prefix_b0(("features_0", "bn"))
      'features.0.1'
      >>> torch_prefix_b0(("features_1_0", "block_1", "fc2"))
      'features.1.0.block.1.fc2'
      >>> torch_prefix_b0(("classifier_1",))
      'classifier.1'
    """
    leaf = {"conv": "0", "bn": "1"}
    return ".".join(leaf.get(p, p).replace("_", ".") for p in path)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite (lukemelas layout, efficientnet-lite-pytorch)
# --------------------------------------------------------------------------------------------------

# (num_repeat, kernel, stride, expand_ratio, input_filters, output_filters) -- efficientnet_lite blocks_args.
_LITE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def tf_same_padding(image_size: int | Sequence[int], kernel: int, stride: int) -> Padding:
    """Static TF-"SAME" padding of ``Conv2dStaticSamePadding`` for a given input size.

    Args:
      image_size: the conv's input size, ``H`` or ``(H, W)``.
      kernel: square kernel size.
      stride: stride.

    Returns:
      ``((top, bottom), (left, right))``; the odd pixel goes to bottom/right.

    Examples:
      >>> tf_same_padding(224, 3, 2)
      ((0, 1), (0, 1))
      >>> tf_same_padding(112, 5, 1)
      ((2, 2), (2, 2))
    """
    pads = []
    for i in _pair(image_size):
        o = math.ceil(i / stride)
        p = max((o - 1) * stride + kernel - i, 0)
        pads.append((p // 2, p - p // 2))
    return tuple(pads)  # type: ignore[return-value]


def _out_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride))


def _round_filters(filters: int, width: float, skip: bool = False, divisor: int = 8) -> int:
    """lukemelas ``round_filters``."""
    if skip or not width:
        return filters
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


class _LiteMBConv(nn.Module):
    """lukemelas ``MBConvBlock`` without squeeze-excitation (eval mode).

    Children ``expand_conv, bn0, depthwise_conv, bn1, project_conv, bn2`` are torch's
    ``_expand_conv, _bn0, ...``. ``(B, H, W, in_filters) -> (B, H', W', out_filters)``.
    """

    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    depthwise_padding: Padding
    activation: Activation = jax.nn.relu6
    epsilon: float = 1e-3
    dtype: Any = jnp.float32
    depthwise: str = "auto"
    fold_bn: bool = True

    def setup(self):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        bn = functools.partial(_batch_norm, self.epsilon, self.dtype)
        hidden = self.in_filters * self.expand_ratio
        if self.expand_ratio != 1:
            self.expand_conv = conv(hidden, (1, 1), padding="VALID")
            self.bn0 = bn()
        self.depthwise_conv = DepthwiseConv(
            hidden,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=self.depthwise_padding,
            impl=self.depthwise,
            dtype=self.dtype,
        )
        self.bn1 = bn()
        self.project_conv = conv(self.out_filters, (1, 1), padding="VALID")
        self.bn2 = bn()

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs
        if self.expand_ratio != 1:
            x = self.activation(conv_bn(self.expand_conv, self.bn0, x, self.fold_bn))
        x = self.activation(conv_bn(self.depthwise_conv, self.bn1, x, self.fold_bn))
        x = conv_bn(self.project_conv, self.bn2, x, self.fold_bn)
        if self.stride == 1 and self.in_filters == self.out_filters:
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite in the layout of ``efficientnet_lite_pytorch.EfficientNet`` (NHWC, inference).

    Use :data:`EfficientNetLite0` for Lite0 (the shipped ImageNet weights). Flax submodule names are
    torch's without the leading underscore: ``conv_stem, bn0, blocks_{i}, conv_head, bn1, fc``.

    Attributes:
      num_classes: classifier outputs (1000 for the shipped weights).
      dtype: compute dtype; parameters are float32 and logits are returned as float32.
      guided_backprop: wrap every ReLU6 in the Guided-Backprop activation (forward unchanged).
      width_mult, depth_mult: lukemelas ``width_coefficient`` / ``depth_coefficient`` (1.0 for Lite0).
      image_size: the size the static "SAME" pads are computed for (torch: ``global_params.image_size``,
        224 for Lite0). The pads do not follow the input; see the module docstring.
      epsilon: BatchNorm epsilon (lukemelas ``batch_norm_epsilon`` = 1e-3).
      depthwise: depthwise-conv implementation, ``"auto"`` (fastest measured on the default backend:
        ``"slices"`` on CPU, ``"grouped"`` elsewhere), ``"grouped"`` or ``"slices"``; same values and
        variables (see :class:`models._conv.DepthwiseConv`).
      fold_bn: fold each BatchNorm into its conv's kernel and a bias at apply time and run 1x1 convs
        as matrix products (same values to float rounding, same variables; see
        :func:`models._conv.conv_bn`). False applies conv and BatchNorm one after the other.
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32
    guided_backprop: bool = False
    width_mult: float = 1.0
    depth_mult: float = 1.0
    image_size: int | tuple[int, int] = 224
    epsilon: float = 1e-3
    depthwise: str = "auto"
    fold_bn: bool = True

    def setup(self):
        self._act = _relu6(self.guided_backprop)
        size = _pair(self.image_size)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        self.conv_stem = conv(32, (3, 3), strides=(2, 2), padding=tf_same_padding(size, 3, 2))  # stem fixed
        self.bn0 = _batch_norm(self.epsilon, self.dtype)
        size = _out_size(size, 2)
        blocks = []
        last = len(_LITE_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_LITE_STAGES):
            cin, cout = _round_filters(cin, self.width_mult), _round_filters(cout, self.width_mult)
            if i == 0:
                cin = 32  # fix_head_stem: the first stage reads the fixed 32-channel stem
            if i not in (0, last):
                repeats = int(math.ceil(repeats * self.depth_mult))
            for r in range(repeats):
                s = stride if r == 0 else 1
                blocks.append(
                    _LiteMBConv(
                        kernel,
                        s,
                        expand,
                        cin if r == 0 else cout,
                        cout,
                        depthwise_padding=tf_same_padding(size, kernel, s),
                        activation=self._act,
                        epsilon=self.epsilon,
                        dtype=self.dtype,
                        depthwise=self.depthwise,
                        fold_bn=self.fold_bn,
                    )
                )
                size = _out_size(size, s)
        self.blocks = blocks
        self.conv_head = conv(1280, (1, 1), padding="VALID")  # head fixed
        self.bn1 = _batch_norm(self.epsilon, self.dtype)
        self.fc = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32)

    def features(self, x: jax.Array) -> jax.Array:
        """Last conv block's output (torch ``extract_features``).

        Args:
          x: ``(B, H, W, 3)`` normalised images (224x224 for the shipped weights).

        Returns:
          ``(B, h, w, 1280)`` activations after the 1x1 head conv, BN and ReLU6, in ``dtype``
          (``h = w = 7`` for 224 inputs).
        """
        x = jnp.asarray(x, self.dtype)
        x = self._act(conv_bn(self.conv_stem, self.bn0, x, self.fold_bn))
        for block in self.blocks:
            x = block(x)
        return self._act(conv_bn(self.conv_head, self.bn1, x, self.fold_bn))

    def head(self, f: jax.Array) -> jax.Array:
        """Global average pool and ``fc`` (dropout is off at inference).

        Args:
          f: ``(B, h, w, 1280)`` output of :meth:`features`.

        Returns:
          ``(B, num_classes)`` float32 logits.
        """
        return self.fc(_global_avg_pool(jnp.asarray(f, self.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` normalised images -> ``(B, num_classes)`` float32 logits."""
        return self.head(self.features(x))


EfficientNetLite0 = functools.partial(EfficientNetLite, width_mult=1.0, depth_mult=1.0, image_size=224)
EfficientNetLite0.__doc__ = "EfficientNet-Lite0, ``efficientnet-lite-pytorch`` layout (4,652,008 parameters at 1000 classes)."


def torch_prefix_lite0(path: Sequence[str]) -> str:
    """Torch module name of a Flax :class:`EfficientNetLite` submodule.

    Args:
      path: Flax module path above a parameter leaf, e.g. ``("blocks_3", "depthwise_conv")``.

    Returns:
      The torch module name, e.g. ``"_blocks.3._depthwise_conv"``.

    Examples:
      >>> torch_prefix_lite0(("conv_stem",))
      '_conv_stem'
      >>> torch_prefix_lite0(("blocks_15", "bn2"))
      '_blocks.15._bn2'
    """
    parts = []
    for p in path:
        if p.startswith("blocks_") and p[len("blocks_") :].isdigit():
            parts.append("_blocks." + p[len("blocks_") :])
        else:
            parts.append("_" + p)
    return ".".join(parts)


def default_lite0_checkpoint() -> Path:
    """Path of the shipped EfficientNet-Lite0 ImageNet weights (Flax msgpack, no torch needed).

    Returns:
      ``models/weights/efficientnet_lite0.msgpack`` next to this file; provenance in the ``.json``
      beside it.
    """
    return Path(__file__).resolve().parent / "weights" / "efficientnet_lite0.msgpack"
