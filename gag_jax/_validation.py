"""Input checks shared by the public entry points (run on the host, outside jit)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_images(images, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is a finite float array of shape (B, H, W, C)."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{name} must have shape (B, H, W, C) (NHWC); got shape {shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a float array already normalised for the model; got dtype {images.dtype}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {shape})")
    if _is_concrete(images) and not bool(jnp.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_labels(labels, batch: int, num_classes: int | None, name: str = "labels") -> None:
    """Raise ValueError unless ``labels`` is an int array (B,) with values in [0, num_classes)."""
    shape = getattr(labels, "shape", None)
    if shape is None or tuple(shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the images; got {shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array of class indices; got dtype {labels.dtype}")
    if num_classes is not None and _is_concrete(labels):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (the model has {num_classes} classes); "
                f"got values in [{values.min()}, {values.max()}]"
            )


def check_fraction(value, name: str, *, low: float = 0.0, high: float = 1.0, high_inclusive: bool = False) -> None:
    """Raise ValueError unless ``low <= value < high`` (or ``<= high``)."""
    ok = low <= value <= high if high_inclusive else low <= value < high
    bracket = "]" if high_inclusive else ")"
    if not ok:
        raise ValueError(f"{name} must lie in [{low}, {high}{bracket}; got {value}")


def check_positive_int(value, name: str) -> None:
    """Raise ValueError unless ``value`` is an int >= 1."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
