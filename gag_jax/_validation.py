"""Input checks shared by the public entry points: explainers, seams and metrics.

Shape and option checks run on the host before tracing (static, cheap). Value checks that need
the data (NaN in a saliency map, a label outside the model's classes) are computed on device as
flags inside the jitted metric and raised afterwards with :func:`raise_if`; under an outer
``jax.jit`` the flags are abstract and those checks become the caller's responsibility.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# ----------------------------------------------------------------------------------------------
# scalars and options
# ----------------------------------------------------------------------------------------------

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


def check_batch_size(batch_size, name: str = "batch_size") -> int | None:
    """``None`` or a positive int (returned as ``int``); ValueError otherwise."""
    if batch_size is None:
        return None
    check_positive_int(batch_size, name)
    return int(batch_size)


def check_fractions(fractions, *, name: str = "fractions", min_points: int = 2,
                    high_inclusive: bool = True) -> tuple[float, ...]:
    """Strictly increasing fractions in ``[0, 1]`` (``[0, 1)`` with ``high_inclusive=False``), as floats.

    Raises:
      ValueError: fewer than ``min_points`` values, a value out of range, or not strictly increasing.
    """
    fr = tuple(float(f) for f in np.ravel(np.asarray(fractions, dtype=np.float64)))
    if len(fr) < min_points:
        raise ValueError(f"{name} needs at least {min_points} points for an AUC; got {fr}")
    top = "1]" if high_inclusive else "1)"
    if any(not (0.0 <= f <= 1.0) or (not high_inclusive and f >= 1.0) for f in fr):
        raise ValueError(f"{name} must lie in [0, {top}; got {fr}")
    if any(b <= a for a, b in itertools.pairwise(fr)):
        raise ValueError(f"{name} must be strictly increasing; got {fr}")
    return fr


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; ValueError naming the option and its choices otherwise.

    The one choice check of the package (options, seams, metrics, data loaders).
    """
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}: {name} must be one of {', '.join(map(repr, choices))}")
    return value


def check_blur(blur_kernel, blur_sigma) -> tuple[int, float]:
    """A positive odd kernel size and a positive sigma, as ``(int, float)``."""
    if isinstance(blur_kernel, bool) or not isinstance(blur_kernel, (int, np.integer)) \
            or blur_kernel < 1 or blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd int; got {blur_kernel!r}")
    if not (float(blur_sigma) > 0):
        raise ValueError(f"blur_sigma must be > 0; got {blur_sigma!r}")
    return int(blur_kernel), float(blur_sigma)


# ----------------------------------------------------------------------------------------------
# arrays
# ----------------------------------------------------------------------------------------------

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


def check_labels(labels, batch: int, num_classes: int | None, name: str = "labels", *,
                 many: bool = False) -> None:
    """Raise ValueError unless ``labels`` is an int array ``(B,)`` (with ``many``: or ``(B, K)``, K
    targets per image) with values in [0, num_classes); an entry out of range is named
    (``labels[1, 3] = 1000``)."""
    shape = getattr(labels, "shape", None)
    if shape is None or not (tuple(shape) == (batch,) or many and len(shape) == 2 and shape[0] == batch):
        wanted = f"({batch},) or ({batch}, K)" if many else f"({batch},)"
        raise ValueError(f"{name} must have shape {wanted} to match the images; got {shape}")
    if len(shape) == 2 and shape[1] == 0:
        raise ValueError(f"{name} of shape {tuple(shape)} give no target (K = 0)")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be an integer array of class indices; got dtype {labels.dtype}")
    if num_classes is not None and _is_concrete(labels):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = tuple(int(i) for i in np.argwhere((values < 0) | (values >= num_classes))[0])
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (the model has {num_classes} classes); "
                f"got values in [{values.min()}, {values.max()}]: {name}[{', '.join(map(str, bad))}] = {values[bad]}"
            )


def check_images_labels_saliency(images, labels, saliency=None) -> None:
    """Shapes only (no data is read): images ``(B,H,W,C)``, labels ``(B,)`` ints and (if given)
    saliency ``(B,H,W)``; ValueError naming both shapes otherwise."""
    ishape, lshape = np.shape(images), np.shape(labels)
    if len(ishape) != 4:
        raise ValueError(f"images must be NHWC (B, H, W, C); got shape {ishape}")
    sshape = None if saliency is None else np.shape(saliency)
    if sshape is not None and (len(sshape) != 3 or tuple(sshape) != tuple(ishape[:3])):
        raise ValueError(
            f"saliency must have shape (B, H, W) = {tuple(ishape[:3])} to match images {tuple(ishape)}; "
            f"got saliency shape {tuple(sshape)}")
    if tuple(lshape) != (ishape[0],):
        raise ValueError(f"labels must have shape (B,) = ({ishape[0]},) to match images {tuple(ishape)}; "
                         f"got labels shape {tuple(lshape)}")
    ldtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    if not np.issubdtype(ldtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {ldtype}")


def check_saliency(saliency) -> None:
    """Shape only: saliency ``(B, H, W)``."""
    s = tuple(np.shape(saliency))
    if len(s) != 3:
        raise ValueError(f"saliency must have shape (B, H, W); got {s}")


def check_maps(saliency, masks) -> None:
    """Shapes only: saliency ``(B, H, W)`` and masks of the same shape (both named otherwise)."""
    check_saliency(saliency)
    s, m = tuple(np.shape(saliency)), tuple(np.shape(masks))
    if s != m:
        raise ValueError(f"masks shape {m} does not match saliency shape {s}; resize the masks to "
                         f"the saliency resolution first")


# ----------------------------------------------------------------------------------------------
# value checks computed on device, raised on the host
# ----------------------------------------------------------------------------------------------

def raise_if(flag, message: str) -> None:
    """Raise ``ValueError(message)`` if the (device) boolean ``flag`` is true.

    Skipped when ``flag`` is abstract (the metric was called under an outer ``jax.jit``), since a
    traced value cannot be inspected; the checks then become the caller's responsibility.
    """
    if not _is_concrete(flag):
        return
    if bool(flag):
        raise ValueError(message)


def saliency_flags(saliency: jax.Array) -> jax.Array:
    """``[any NaN, any ±inf, any negative]`` of a saliency batch, as a bool ``(3,)`` array."""
    return jnp.stack([jnp.any(jnp.isnan(saliency)), jnp.any(jnp.isinf(saliency)),
                      jnp.any(saliency < 0)])


def raise_on_saliency_flags(flags, *, allow_negative: bool) -> None:
    """Raise for NaN / inf (always) and negative values (unless ``allow_negative``; RCAP) flagged
    by :func:`saliency_flags`."""
    if not _is_concrete(flags):
        return
    nan, inf, neg = (bool(v) for v in np.asarray(flags))
    if nan:
        raise ValueError("saliency contains NaN; a saliency map must be finite")
    if inf:
        raise ValueError("saliency contains inf; a saliency map must be finite")
    if neg and not allow_negative:
        raise ValueError("saliency contains negative values; RCAP needs a non-negative map "
                         "(the saliency ratio sum(M[M >= q]) / sum(M) is meaningless otherwise)")


LABEL_RANGE_MESSAGE = "labels must lie in [0, K) where K is the number of model outputs"
