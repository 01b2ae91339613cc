"""Depthwise convolution with a per-backend implementation choice.

XLA:CPU runs a grouped convolution with ``feature_group_count = C`` (a depthwise conv) far slower
than the same arithmetic written as a sum of ``kh * kw`` strided, per-channel-scaled slices of the
padded input (measured on a 2-core CPU, see ``models/README.md``). :class:`DepthwiseConv` is a
drop-in for ``nn.Conv(C, (kh, kw), feature_group_count=C, use_bias=False)``: the same parameter
(``kernel``, shape ``(kh, kw, 1, C)``, same initialiser), so variables and the torch porter are
unchanged; only the computation differs, chosen by the static field ``impl``.
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["DepthwiseConv", "DEPTHWISE_IMPLS", "resolve_depthwise_impl", "depthwise_conv"]

DEPTHWISE_IMPLS = ("auto", "grouped", "slices")
# Backend -> implementation that measured fastest there (``"auto"`` resolves through this).
_FASTEST = {"cpu": "slices"}

Padding = Union[str, Sequence[Tuple[int, int]]]


def resolve_depthwise_impl(impl: str, backend: str | None = None) -> str:
    """The concrete implementation ``"grouped"`` or ``"slices"`` for ``impl`` on ``backend``.

    Args:
      impl: ``"auto"``, ``"grouped"`` or ``"slices"``.
      backend: JAX platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` = ``jax.default_backend()``.

    Returns:
      ``"slices"`` on CPU for ``"auto"``, ``"grouped"`` elsewhere; other values unchanged.

    Raises:
      ValueError: ``impl`` is not one of :data:`DEPTHWISE_IMPLS`.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return _FASTEST.get(backend or jax.default_backend(), "grouped")


def _explicit_padding(padding: Padding, in_hw: Tuple[int, int], kernel: Tuple[int, int], strides) -> tuple:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, kernel, strides, padding))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2:
        raise ValueError(f"padding must give (lo, hi) for the 2 spatial axes, got {padding!r}")
    return pads


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, strides: Tuple[int, int], padding: Padding, impl: str = "auto"
) -> jax.Array:
    """Depthwise 2-D convolution (cross-correlation, as ``lax.conv_general_dilated``), NHWC.

    Args:
      x: ``(B, H, W, C)`` input.
      kernel: ``(kh, kw, 1, C)`` per-channel filters (HWIO with ``I = 1``).
      strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
      impl: ``"grouped"`` (``feature_group_count = C``), ``"slices"`` (sum of ``kh * kw`` strided
        slices of the padded input, each scaled per channel) or ``"auto"`` (fastest measured on the
        default backend).

    Returns:
      ``(B, H', W', C)`` with ``H' = (H + top + bottom - kh) // sh + 1`` (likewise ``W'``).

    Raises:
      ValueError: bad ``impl``, kernel shape not ``(kh, kw, 1, C)``, or malformed padding.
    """
    impl = resolve_depthwise_impl(impl)
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C), got shape {x.shape}")
    kh, kw, one, c = kernel.shape
    if one != 1 or c != x.shape[-1]:
        raise ValueError(f"kernel must be (kh, kw, 1, C={x.shape[-1]}), got shape {kernel.shape}")
    strides = (int(strides[0]), int(strides[1]))
    pads = _explicit_padding(padding, x.shape[1:3], (kh, kw), strides)
    if impl == "grouped":
        return lax.conv_general_dilated(
            x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
        )
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    b, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // strides[0] + 1, (wp - kw) // strides[1] + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel {(kh, kw)} larger than the padded input {(hp, wp)}")
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(
                xp,
                (0, i, j, 0),
                (b, i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1, c),
                (1, strides[0], strides[1], 1),
            )
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """``nn.Conv(features, kernel_size, feature_group_count=features, use_bias=False)`` with an impl choice.

    ``(B, H, W, features) -> (B, H', W', features)``. The parameter is ``kernel`` of shape
    ``(kh, kw, 1, features)`` initialised like ``nn.Conv``'s, so checkpoints and the porter see no
    difference.

    Attributes:
      features: channel count ``C`` (input = output).
      kernel_size: ``(kh, kw)``.
      strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.
      impl: ``"auto"`` (default: ``"slices"`` on CPU, ``"grouped"`` elsewhere), ``"grouped"`` or ``"slices"``.
      dtype: compute dtype (input and kernel are cast to it, as ``nn.Conv`` does).
      param_dtype: parameter dtype.
    """

    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, self.features), self.param_dtype)
        if x.shape[-1] != self.features:
            raise ValueError(f"DepthwiseConv expects {self.features} input channels, got {x.shape[-1]}")
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return depthwise_conv(x, kernel, tuple(self.strides), self.padding, self.impl)
