"""Input scaling and pixel space: the one place where normalised images meet pixels in [0, 1].

A model standardises pixels ``p`` in [0, 1] as ``x = (p - mean) / std`` (per channel). The **model
is the only source of that scaling** (``gj.ModelFunctions.mean`` / ``.std``, set by
``gag_jax.models.model_functions`` and the zoo); explicit ``mean=`` / ``std=`` keywords, where a
function takes them, override it. Everything the package puts in pixel space is built here:

* :func:`baseline`: what a removed pixel becomes: ``"black"`` (pixel 0: IG's and Guided IG's
  baseline, occlusion / RISE, RCAP), ``"blur"`` (the image blurred in pixel space) or ``"mean"``
  (its mean colour), returned in normalised space;
* :func:`to_pixels` / :func:`from_pixels`; XRAI segments :func:`to_pixels` of the images;
* :func:`noise_scale`: ROAD's imputation noise, given in pixel units, in normalised units;
* :func:`resolve` / :func:`require`: the scaling to use, and the one error (:func:`scaling_error`)
  when a pixel-space value is asked for and no scaling is known: never a guess;
* :func:`warn_if_out_of_range`: the cheap check (one min / max per channel) that images lie near
  the range the scaling implies (e.g. raw 0-255 floats are not normalised images);
* :func:`normalize`: uint8 photos -> model inputs, the data loaders' one rule.

Blur and mean baselines commute with a per-channel affine scaling, so they work without one
(identity scaling); black does not.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import ops
from gag_jax.model import ModelFunctions, check_scaling, scaling_tuple

__all__ = ["BASELINES", "RANGE_SLACK", "baseline", "black", "check_scaling", "expected_range", "from_pixels",
           "noise_scale", "normalize", "require", "resolve", "scaling_error", "scaling_tuple", "to_pixels",
           "warn_if_out_of_range"]

BASELINES = ("black", "blur", "mean")
"""The pixel-space baselines of :func:`baseline`."""

IDENTITY = ((0.0,), (1.0,))
"""The scaling used where the caller's operation commutes with any per-channel scaling."""

RANGE_SLACK = 1.0
"""How far outside the range implied by the scaling images may lie before a warning, as a fraction
of the range's width on each side (resizing, augmentation and rounding overshoot a little; raw
0-255 values are hundreds of widths away)."""

_FIX = ("give the model its scaling: gj.ModelFunctions.from_module(module, variables, mean=..., std=...) / "
        ".from_nnx(module, mean=..., std=...) / .from_apply(apply, variables, mean=..., std=...) "
        "(gj.models.model_functions sets it for the shipped models)")


def scaling_error(what: str, keywords: str = "mean=..., std=...") -> ValueError:
    """The one error for a pixel-space value asked for without a known input scaling.

    Args:
      what: the caller and what it puts in pixel space, e.g. ``"method 'ig' (baseline 'black')"``.
      keywords: how the caller takes an explicit scaling (ROAD: ``"std=..."``; ``""``: it takes none).
    """
    how = f"pass {keywords}, or " if keywords else ""
    return ValueError(
        f"{what} needs the model's input scaling (pixels p in [0, 1] enter the model as (p - mean) / std), which is "
        f"not known here: {how}{_FIX}; mean=(0, 0, 0), std=(1, 1, 1) for a model that takes pixels in [0, 1]")


def resolve(model: ModelFunctions | None, mean=None, std=None, *, needed: bool, what: str,
            channels: int | None = None, keywords: str = "mean=..., std=...",
            ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input scaling to use: explicit ``mean``/``std`` (both or neither), else the model's.

    Args:
      model: a ``gj.ModelFunctions`` (its ``mean``/``std``), or None (only explicit values count).
      mean, std: explicit per-channel values (override the model's), or None.
      needed: whether the caller puts values in pixel space (black = pixel 0): then an unknown
        scaling is :func:`scaling_error`; otherwise the identity ``(0,), (1,)`` is returned (the
        caller's operation commutes with a per-channel affine scaling, e.g. a blur).
      what: the caller, for the message.
      channels: number of image channels, to check the lengths (1 or C entries).
      keywords: how the caller takes the scaling, for the message.

    Returns:
      ``(mean, std)`` tuples of floats.

    Raises:
      ValueError: only one of mean/std given, bad values or lengths, or ``needed`` with no scaling known.
    """
    mean, std = check_scaling(mean, std, channels)
    if mean is None and model is not None:
        mean, std = check_scaling(model.mean, model.std, channels)
    if mean is None:
        if needed:
            raise scaling_error(what, keywords)
        return IDENTITY
    return mean, std


def require(mean, std, *, what: str, channels: int | None = None,
            keywords: str = "mean=..., std=...") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` checked (:func:`check_scaling`), or :func:`scaling_error` when they are None:
    for the building blocks that take the scaling but no model (a ``gj.explain`` call fills it from
    the model first)."""
    return resolve(None, mean, std, needed=True, what=what, channels=channels, keywords=keywords)


def to_pixels(images: jax.Array, mean, std) -> jax.Array:
    """Normalised images ``(..., C)`` -> pixels: ``images * std + mean`` (float32)."""
    return images * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)


def from_pixels(pixels: jax.Array, mean, std) -> jax.Array:
    """Pixels ``(..., C)`` in [0, 1] -> normalised: ``(pixels - mean) / std`` (float32)."""
    return (pixels - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def black(images: jax.Array, mean, std) -> jax.Array:
    """Pixel 0 in normalised space, ``-mean / std`` per channel, broadcast to ``images (B, H, W, C)``
    (float32).

    Raises:
      ValueError: no scaling (:func:`scaling_error`).
    """
    mean, std = require(mean, std, what="the black baseline", channels=images.shape[-1])
    return jnp.broadcast_to(from_pixels(jnp.zeros((images.shape[-1],), jnp.float32), mean, std), images.shape)


def baseline(images: jax.Array, kind: str = "black", mean=None, std=None, *, blur_sigma: float = 16.0,
             blur_kernel: int = 33) -> jax.Array:
    """What a removed pixel becomes, ``(B, H, W, C)`` float32 in normalised space.

    ``"black"``: pixel 0 (needs ``mean``/``std``; :func:`scaling_error` otherwise); ``"blur"``: the
    image Gaussian-blurred in pixel space (``blur_sigma``, ``blur_kernel``, reflect padding:
    torchvision's ``GaussianBlur``, as the insertion metric); ``"mean"``: each image's per-channel
    mean colour. Blur and mean commute with the per-channel scaling: without one the identity is
    used. RCAP, occlusion and RISE take their baselines from here.

    Args:
      images: ``(B, H, W, C)`` normalised images.
      kind: one of :data:`BASELINES`.
      mean, std: the input scaling (1 or C entries each), or None.
      blur_sigma, blur_kernel: the ``"blur"`` Gaussian.

    Raises:
      ValueError: unknown ``kind``; ``"black"`` without a scaling.
    """
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES}")
    if kind == "black":
        mean, std = require(mean, std, what="baseline 'black'", channels=images.shape[-1])
    elif mean is None or std is None:
        mean, std = IDENTITY
    images = images.astype(jnp.float32)
    if kind == "black":
        pixels = jnp.zeros((1, 1, 1, images.shape[-1]), jnp.float32)
    else:
        pixels = to_pixels(images, mean, std)
        if kind == "blur":
            pixels = ops.gaussian_blur(pixels, blur_sigma, (blur_kernel - 1) // 2, mode="reflect")
        else:
            pixels = jnp.mean(pixels, axis=(1, 2), keepdims=True)
    return jnp.broadcast_to(from_pixels(pixels, mean, std), images.shape)


def noise_scale(noise: float, std: Sequence[float] | None, *, what: str = "noise in pixel units",
                keywords: str = "std=...") -> tuple[float, ...] | None:
    """Per-channel standard deviation ``noise / std_c`` in normalised units of a noise given in
    pixel units (``[0, 1]`` images); None when ``noise == 0`` (no scaling needed then).

    Raises:
      ValueError: ``noise > 0`` and no ``std`` (:func:`scaling_error`), or bad ``std`` values.
    """
    if float(noise) == 0:
        return None
    if std is None:
        raise scaling_error(what, keywords)
    return tuple(float(noise) / s for s in scaling_tuple("std", std))


def expected_range(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` per channel: where pixels in [0, 1] land, ``(0 - mean) / std`` and ``(1 - mean) / std``."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    return (0.0 - mean) / std, (1.0 - mean) / std


def warn_if_out_of_range(images, mean, std, *, slack: float = RANGE_SLACK, where: str = "images",
                         stacklevel: int = 2) -> bool:
    """Warn (one warning) when ``images`` lie far outside the range the scaling implies.

    The expected range of channel ``c`` is :func:`expected_range` widened by ``slack`` times its
    width on each side. Costs one min and one max per channel (a host sync); nothing when the
    scaling is unknown (None) or ``images`` is abstract (under ``jax.jit``).

    Args:
      images: ``(..., C)`` normalised images.
      mean, std: the input scaling, or None.
      slack: tolerated overshoot, a fraction of the range's width (:data:`RANGE_SLACK`).
      where: the caller, for the message.
      stacklevel: as ``warnings.warn``'s, counted from the caller of this function (2: its caller).

    Returns:
      whether it warned.
    """
    if mean is None or std is None or isinstance(images, jax.core.Tracer) or np.ndim(images) < 1:
        return False
    low, high = expected_range(mean, std)
    axes = tuple(range(np.ndim(images) - 1))
    lib = jnp if isinstance(images, jax.Array) else np
    found_low = np.asarray(lib.min(images, axis=axes), np.float64)
    found_high = np.asarray(lib.max(images, axis=axes), np.float64)
    width = high - low
    if np.all(found_low >= low - slack * width) and np.all(found_high <= high + slack * width):
        return False
    hint = (" (they look like raw 0-255 pixel values)" if found_high.max() > 20 and found_low.min() >= -1e-6
            else "")
    warnings.warn(
        f"{where} range from {found_low.min():.3g} to {found_high.max():.3g}, far outside what the model's input "
        f"scaling gives pixels in [0, 1] ({low.min():.3g} to {high.max():.3g}; mean={tuple(mean)}, std={tuple(std)})"
        f"{hint}: normalise them as the model expects, e.g. gj.data.prepare_pixels(photos, size, model=model) "
        "or gj.pixels.from_pixels(pixels / 255, **model.scaling)", UserWarning, stacklevel=stacklevel + 1)
    return True


def normalize(pixels, mean, std) -> np.ndarray:
    """uint8 pixels ``(..., H, W, C)`` -> float32 ``(pixels / 255 - mean) / std`` (numpy, same shape)."""
    mean, std = check_scaling(mean, std)
    if mean is None:
        raise scaling_error("normalising images", "mean=..., std=...")
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return ((np.asarray(pixels, np.float32) / 255.0 - mean) / std).astype(np.float32)
