"""Depthwise convolution with a per-backend implementation choice.

XLA:CPU runs a grouped convolution with ``feature_group_count = C`` (a depthwise conv) far slower
than the same arithmetic written as a sum of ``kh * kw`` strided, per-channel-scaled slices of the
padded input (measured on a 2-core CPU, see ``models/README.md``). :class:`DepthwiseConv` is a
drop-in for ``nn.Conv(C, (kh, kw), feature_group_count=C, use_bias=False)``: the same parameter
(``kernel``, shape ``(kh, kw, 1, C)``, same initialiser), so variables and the torch porter are
unchanged; only the computation differs, chosen by the static field ``impl``.
"""
from __future__ import annotations

import functools
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
    if x.shape[1] + sum(pads[0]) < kh or x.shape[2] + sum(pads[1]) < kw:
        raise ValueError(f"kernel {(kh, kw)} larger than the padded input {x.shape[1:3]} + {pads}")
    return _depthwise_slices(x, kernel, strides, pads)


def _taps(xp: jax.Array, kernel: jax.Array, strides: Tuple[int, int], out_hw: Tuple[int, int]) -> jax.Array:
    """``sum_{i,j} xp[:, i::sh, j::sw][:, :ho, :wo] * kernel[i, j, 0]`` (``xp`` already padded)."""
    kh, kw = kernel.shape[:2]
    b, c = xp.shape[0], xp.shape[3]
    (ho, wo), (sh, sw) = out_hw, strides
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def _out_hw(in_hw, kernel_hw, strides, pads) -> Tuple[int, int]:
    return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads))


# The backward pass is written out: autodiff of the slices transposes each strided slice into a
# full-size (interior-)padded tensor and adds kh * kw of them, measured 4x slower than this at
# (8, 112, 112, 96) on a 2-core CPU. Here the input cotangent is the same sum-of-taps applied to the
# cotangent dilated by the stride and padded (one lax.pad), with the kernel flipped.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_slices(x, kernel, strides, pads):
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    return _taps(xp, kernel, strides, _out_hw(x.shape[1:3], kernel.shape[:2], strides, pads))


def _depthwise_slices_fwd(x, kernel, strides, pads):
    return _depthwise_slices(x, kernel, strides, pads), (x, kernel)


def _depthwise_slices_bwd(strides, pads, residuals, ct):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    # dx[p] = sum_u ct_dilated[p + pad_lo - u] * w[u]: pad the dilated cotangent by k - 1 - pad_lo below
    # (negative = crop) and up to n + k - 1 in all, then taps of the flipped kernel at stride 1.
    config = [(0, 0, 0)]
    for axis, (k, s, (lo, _)) in enumerate(zip((kh, kw), strides, pads)):
        n, dilated = x.shape[1 + axis], (ct.shape[1 + axis] - 1) * s + 1
        config.append((k - 1 - lo, n + lo - dilated, s - 1))
    config.append((0, 0, 0))
    ct_padded = lax.pad(ct, jnp.zeros((), ct.dtype), config)
    dx = _taps(ct_padded, kernel[::-1, ::-1], (1, 1), x.shape[1:3])
    # dkernel[i, j] = sum over batch and space of tap_ij(x) * ct (dead code when only dx is asked for)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    (ho, wo), (sh, sw) = ct.shape[1:3], strides
    dk = jnp.stack([
        jnp.stack([
            jnp.sum(lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1,
                                                 xp.shape[3]), (1, sh, sw, 1)) * ct, axis=(0, 1, 2))
            for j in range(kw)
        ])
        for i in range(kh)
    ])[:, :, None, :]
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_depthwise_slices.defvjp(_depthwise_slices_fwd, _depthwise_slices_bwd)


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
