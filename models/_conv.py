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
from typing import Any, Union
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from gag_jax import backend as backend_policy

__all__ = [
    "DepthwiseConv", "DEPTHWISE_IMPLS", "resolve_depthwise_impl", "depthwise_conv", "pointwise_conv", "fold_batch_norm",
    "conv_bn", "conv2d",
]

DEPTHWISE_IMPLS = ("auto", "grouped", "slices")

Padding = Union[str, Sequence[tuple[int, int]]]


def resolve_depthwise_impl(impl: str, backend: str | None = None) -> str:
    """The concrete implementation ``"grouped"`` or ``"slices"`` for ``impl`` on ``backend``.

    Args:
      impl: ``"auto"``, ``"grouped"`` or ``"slices"``.
      backend: JAX platform name (``"cpu"``, ``"gpu"``, ``"tpu"``); ``None`` = the default backend
        (the policy and its measurements: :mod:`gag_jax.backend`).

    Returns:
      ``"slices"`` on CPU for ``"auto"``, ``"grouped"`` elsewhere; other values unchanged.

    Raises:
      ValueError: ``impl`` is not one of :data:`DEPTHWISE_IMPLS`.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return backend_policy.depthwise_impl(backend)


def _explicit_padding(padding: Padding, in_hw: tuple[int, int], kernel: tuple[int, int], strides) -> tuple:
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(in_hw, kernel, strides, padding))
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(pads) != 2:
        raise ValueError(f"padding must give (lo, hi) for the 2 spatial axes, got {padding!r}")
    return pads


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding, impl: str = "auto"
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


def _taps(xp: jax.Array, kernel: jax.Array, strides: tuple[int, int], out_hw: tuple[int, int]) -> jax.Array:
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


def _out_hw(in_hw, kernel_hw, strides, pads) -> tuple[int, int]:
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
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
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


# --------------------------------------------------------------------------------------------------
# dense 2-D convolution with a written-out input gradient
# --------------------------------------------------------------------------------------------------

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO, one group) whose input gradient is written out.

    Same values and gradients as the plain op. Why: JAX transposes a conv into a conv with the
    kernel's in/out axes swapped (``01oi``); XLA:CPU lays that out for its fast convolution outside
    loops, but inside a ``lax.scan`` body (the explainers' sample loop) it left it to a slow path,
    measured 2-5x slower per 3x3 conv (4 x 56 x 56 x 64, 2-core CPU). Here the backward conv gets an
    explicitly flipped and transposed ``HWIO`` kernel, which runs fast in and out of loops.

    Args:
      x: ``(B, H, W, Cin)``.
      kernel: ``(kh, kw, Cin, Cout)``.
      strides: ``(sh, sw)``.
      pads: ``((top, bottom), (left, right))``.

    Returns:
      ``(B, H', W', Cout)``.
    """
    return _conv2d(x, kernel, tuple(int(v) for v in strides), tuple((int(lo), int(hi)) for lo, hi in pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)


def _conv2d_fwd(x, kernel, strides, pads):
    return _conv2d(x, kernel, strides, pads), (x, kernel)


def _conv2d_bwd(strides, pads, residuals, ct):
    x, kernel = residuals
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # (kh, kw, Cout, Cin)
    back_pads = []
    for axis, (lo, _) in enumerate(pads):
        n, k, s = x.shape[1 + axis], kernel.shape[axis], strides[axis]
        dilated = (ct.shape[1 + axis] - 1) * s + 1
        back_pads.append((k - 1 - lo, n + lo - dilated))
    dx = lax.conv_general_dilated(ct, flipped.astype(ct.dtype), (1, 1), back_pads, lhs_dilation=strides,
                                  dimension_numbers=_DN)
    _, kernel_vjp = jax.vjp(lambda k: lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=_DN), kernel)
    return dx.astype(x.dtype), kernel_vjp(ct)[0]


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# --------------------------------------------------------------------------------------------------
# conv + inference batch norm, folded at apply time
# --------------------------------------------------------------------------------------------------


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1x1 convolution as a matrix product: ``(B, H, W, Cin) x (1, 1, Cin, Cout) -> (B, H, W, Cout)``."""
    return lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def fold_batch_norm(kernel: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array,
                    epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Kernel and bias of ``bn(conv(x))`` as one conv: ``(kernel * a, bias - mean * a)``.

    ``a = scale / sqrt(var + eps)`` per output channel.

    Args:
      kernel: ``(..., Cout)`` conv kernel (HWIO, or ``(kh, kw, 1, C)`` depthwise); no conv bias.
      scale, bias, mean, var: ``(Cout,)`` BatchNorm affine parameters and running statistics.
      epsilon: BatchNorm epsilon.

    Returns:
      ``(folded kernel (same shape), bias (Cout,))``, float32.
    """
    a = scale.astype(jnp.float32) * lax.rsqrt(var.astype(jnp.float32) + epsilon)
    return kernel.astype(jnp.float32) * a, bias.astype(jnp.float32) - mean.astype(jnp.float32) * a


def _norm_tuple(value, default=1) -> tuple[int, int]:
    if value is None:
        return (default, default)
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def conv_bn(conv: nn.Module, bn: nn.BatchNorm | None, x: jax.Array, fold: bool = True) -> jax.Array:
    """``bn(conv(x))`` for a bias-free ``nn.Conv`` / :class:`DepthwiseConv` and an inference ``nn.BatchNorm``.

    With ``fold`` (and outside ``init``) the BatchNorm is folded into the conv's kernel and a bias
    at apply time (:func:`fold_batch_norm`), a 1x1 stride-1 conv runs as a matrix product
    (:func:`pointwise_conv`) and other dense convs through :func:`conv2d`: the same values to float
    rounding, one pass over the activations less forward and backward, and no slow backward conv
    inside loops. The variables are the modules' own, unchanged.

    Args:
      conv: bound submodule (``nn.Conv`` with ``use_bias=False``, or ``DepthwiseConv``).
      bn: bound ``nn.BatchNorm`` with ``use_running_average=True``, or None: ``conv(x)`` alone
        (a 1x1 stride-1 conv still as a matrix product).
      x: ``(B, H, W, Cin)``.
      fold: False computes ``bn(conv(x))`` as the modules do.

    Returns:
      ``(B, H', W', Cout)`` in the conv's ``dtype``.
    """
    plain = isinstance(conv, nn.Conv) and not conv.use_bias and conv.kernel_dilation in (None, 1, (1, 1))
    plain = plain and conv.input_dilation in (None, 1, (1, 1)) and not callable(conv.padding)
    usable = isinstance(conv, DepthwiseConv) or plain
    if bn is not None:
        usable = usable and bn.use_running_average and bn.use_scale and bn.use_bias
    unfused = (lambda y: conv(y)) if bn is None else (lambda y: bn(conv(y)))
    if not fold or not usable or conv.is_initializing():
        return unfused(x)
    kernel = conv.variables["params"]["kernel"]
    dtype = conv.dtype or jnp.float32
    if bn is None:
        bias, out_dtype = None, dtype
    else:
        stats, affine = bn.variables["batch_stats"], bn.variables["params"]
        kernel, bias = fold_batch_norm(kernel, affine["scale"], affine["bias"], stats["mean"], stats["var"],
                                       bn.epsilon)
        out_dtype = bn.dtype or dtype
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    strides = _norm_tuple(conv.strides)
    if isinstance(conv, DepthwiseConv):
        y = depthwise_conv(x, kernel, strides, conv.padding, conv.impl)
    else:
        padding = conv.padding
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        elif not isinstance(padding, str):
            padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
        pads = _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides) if padding != "CIRCULAR" else None
        if pads is None:
            return unfused(x)
        if kernel.shape[:2] == (1, 1) and strides == (1, 1) and pads == ((0, 0), (0, 0)):
            y = pointwise_conv(x, kernel)
        elif conv.feature_group_count == 1:
            y = conv2d(x, kernel, strides, pads)
        else:
            y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=conv.feature_group_count)
    return (y if bias is None else y + bias.astype(out_dtype)).astype(out_dtype)
