"""A deterministic synthetic dataset with exact ground-truth masks (pure numpy).

Each image shows one shape (disc, square, triangle, ring or cross) on a textured background;
the label is the shape class and the mask is the set of pixels whose *centre* lies inside the
shape, computed analytically from the shape parameters (returned too). Image ``i`` depends only
on ``(seed, i)``, so ``make_synthetic(10)[:5] == make_synthetic(5)``.
"""
from __future__ import annotations

import numpy as np

from gag_jax.data._common import IMAGENET_MEAN, IMAGENET_STD, input_scaling, iterate_batches, normalize

SHAPES = ("disc", "square", "triangle", "ring", "cross")
"""Shape classes; label ``k`` is ``SHAPES[k]``."""

SYNTHETIC_MEAN, SYNTHETIC_STD = IMAGENET_MEAN, IMAGENET_STD
"""The default scaling of the synthetic images: that of the synthetic case's own model (the tiny CNN,
``gag_jax.models`` ``"tiny"``, trained on these images standardised with ImageNet's statistics).
The case's model is fixed, so this default cannot silently mismatch; pass ``model=`` or
``mean=``/``std=`` for another model."""


def shape_mask(shape: str, params, size: int) -> np.ndarray:
    """Exact mask of one shape on a ``size`` x ``size`` grid, tested at pixel centres.

    Pixel ``(row y, column x)`` has centre ``(x + 0.5, y + 0.5)``. ``params = (cx, cy, a, b)``:

    - disc: radius ``a``: ``(px-cx)^2 + (py-cy)^2 <= a^2``.
    - square: axis-aligned, half side ``a``: ``|px-cx| <= a and |py-cy| <= a``.
    - triangle: vertices ``(cx, cy-a)``, ``(cx-a, cy+a)``, ``(cx+a, cy+a)`` (apex up).
    - ring: ``b^2 <= (px-cx)^2 + (py-cy)^2 <= a^2`` (outer radius ``a``, inner ``b``).
    - cross: union of the bars ``|px-cx| <= a, |py-cy| <= b`` and ``|px-cx| <= b, |py-cy| <= a``.

    Args:
      shape: one of :data:`SHAPES`.
      params: ``(cx, cy, a, b)`` floats.
      size: image side.

    Returns:
      bool ``(size, size)``.
    """
    cx, cy, a, b = (float(p) for p in params)
    centres = np.arange(size, dtype=np.float64) + 0.5
    px, py = centres[None, :], centres[:, None]
    dx, dy = px - cx, py - cy
    if shape == "disc":
        mask = dx * dx + dy * dy <= a * a
    elif shape == "square":
        mask = (np.abs(dx) <= a) & (np.abs(dy) <= a)
    elif shape == "triangle":
        # inside the base line and under both sloped edges (each edge rises 2a over a run of a)
        mask = (dy <= a) & (dy >= 2.0 * np.abs(dx) - a)
    elif shape == "ring":
        r2 = dx * dx + dy * dy
        mask = (r2 <= a * a) & (r2 >= b * b)
    elif shape == "cross":
        mask = ((np.abs(dx) <= a) & (np.abs(dy) <= b)) | ((np.abs(dx) <= b) & (np.abs(dy) <= a))
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")
    return np.broadcast_to(mask, (size, size)).copy()


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """A float (size, size, 3) texture: a random sinusoidal grating modulating ``colour`` plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    freq = rng.uniform(1.5, 6.0, size=2) * rng.choice([-1.0, 1.0], size=2)
    phase = rng.uniform(0.0, 2 * np.pi)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * (freq[0] * xx + freq[1] * yy) + phase)
    tex = colour[None, None, :] * (0.75 + 0.25 * grating[..., None])
    return tex + rng.normal(0.0, 0.03, size=(size, size, 3))


def _shape_params(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """Random ``(cx, cy, a, b)`` such that the shape lies inside the image (extent ``a`` from the centre)."""
    a = rng.uniform(0.18, 0.32) * size
    cx, cy = rng.uniform(a + 1.0, size - 1.0 - a, size=2)
    b = {"ring": 0.5 * a, "cross": 0.35 * a}.get(shape, 0.0)
    if shape == "square":
        a *= 0.85
    return np.array([cx, cy, a, b], np.float64)


def _scaling(model, mean, std):
    if model is None and mean is None and std is None:
        return SYNTHETIC_MEAN, SYNTHETIC_STD
    return input_scaling(model, mean, std, where="make_synthetic")


def make_synthetic(
    num_images: int,
    size: int = 32,
    seed: int = 0,
    num_classes: int = len(SHAPES),
    *,
    model=None,
    mean=None,
    std=None,
) -> dict[str, np.ndarray]:
    """Generate the synthetic dataset; the same arguments give identical arrays.

    Image ``i`` has label ``i % num_classes`` (balanced classes) and its own random generator
    seeded by ``(seed, i)``: a textured background in one colour, the shape filled with a
    contrasting textured colour (brighter or darker at random).

    Args:
      num_images: ``N``.
      size: image side ``S`` (>= 12).
      seed: integer seed.
      num_classes: how many shape classes to use (the first ``num_classes`` of :data:`SHAPES`, 1..5).
      model: a ``gj.ModelFunctions`` whose input scaling normalises ``images``.
      mean, std: explicit per-channel scaling (override the model's); with neither, the synthetic
        case's own model's (:data:`SYNTHETIC_MEAN` / :data:`SYNTHETIC_STD`, ImageNet's statistics).

    Returns:
      dict with ``images`` float32 ``(N, S, S, 3)`` normalised ``(pixels / 255 - mean) / std``;
      ``pixels`` uint8 ``(N, S, S, 3)``; ``masks`` float32 ``(N, S, S)`` in {0, 1} (exactly
      :func:`shape_mask`); ``labels`` int32 ``(N,)``; ``params`` float64 ``(N, 4)`` the shape
      parameters ``(cx, cy, a, b)``; ``names`` str ``(N,)`` like ``"synthetic_00003_disc"``.

    Examples:
      >>> data = make_synthetic(4, size=16, seed=1)
      >>> data["images"].shape, data["masks"].shape, data["labels"].tolist()
      ((4, 16, 16, 3), (4, 16, 16), [0, 1, 2, 3])
    """
    mean, std = _scaling(model, mean, std)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if size < 12:
        raise ValueError(f"size must be >= 12 pixels, got {size}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)}, got {num_classes}")
    pixels = np.zeros((num_images, size, size, 3), np.uint8)
    masks = np.zeros((num_images, size, size), np.float32)
    labels = np.arange(num_images, dtype=np.int32) % num_classes
    params = np.zeros((num_images, 4), np.float64)
    names = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        shape = SHAPES[labels[i]]
        params[i] = _shape_params(rng, shape, size)
        mask = shape_mask(shape, params[i], size)
        dark, bright = rng.uniform(0.1, 0.4, size=3), rng.uniform(0.6, 0.95, size=3)
        bg_colour, fg_colour = (dark, bright) if rng.random() < 0.5 else (bright, dark)
        background = _texture(rng, size, bg_colour)
        foreground = _texture(rng, size, fg_colour)
        image = np.where(mask[..., None], foreground, background)
        pixels[i] = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
        masks[i] = mask
        names.append(f"synthetic_{i:05d}_{shape}")
    return {
        "images": normalize(pixels, mean, std),
        "pixels": pixels,
        "masks": masks,
        "labels": labels,
        "params": params,
        "names": np.asarray(names, dtype=str).reshape(num_images),
    }


def synthetic_batches(
    num_images: int,
    batch_size: int,
    size: int = 32,
    seed: int = 0,
    num_classes: int = len(SHAPES),
    *,
    model=None,
    mean=None,
    std=None,
    start_batch: int = 0,
):
    """Fixed-size batches of :func:`make_synthetic`; the ragged last batch is zero-padded.

    Args:
      num_images, size, seed, num_classes, model, mean, std: as :func:`make_synthetic`.
      batch_size: ``B``.
      start_batch: first batch to yield.

    Yields:
      dicts ``images`` float32 ``(B, S, S, 3)``, ``pixels`` uint8 ``(B, S, S, 3)``, ``masks`` float32
      ``(B, S, S)``, ``labels`` int32 ``(B,)``, ``names`` str ``(B,)`` and ``valid`` bool ``(B,)``
      (False on padding rows).
    """
    data = make_synthetic(num_images, size, seed, num_classes, model=model, mean=mean, std=std)
    del data["params"]
    return iterate_batches(data, batch_size, start_batch=start_batch)
