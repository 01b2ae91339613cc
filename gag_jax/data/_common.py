"""Shared pieces of the data package: constants, errors, Pillow decoding, normalisation, batching.

Images are normalised with the model's own input scaling (``model=`` a ``gj.ModelFunctions``, or
explicit ``mean=`` / ``std=``): there is no default, since an ImageNet default silently feeds a
model with another scaling (e.g. the shipped Lite0, ``(p - 127) / 128``) wrong inputs.

Everything here is plain numpy + Pillow (no TensorFlow), so the synthetic data, ``load_image_files``
and the ``backend="files"`` readers work without the ``data`` extra.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from gag_jax import pixels
from gag_jax.model import as_model_functions
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported by gag_jax.data)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RESIZE_MODES = ("squash", "center_crop", "imagenet_eval")
EVAL_CROP_FRACTION = 0.875
"""``imagenet_eval``: the centre crop covers this fraction of the shorter side (256 -> 224)."""
ON_ERROR = ("skip", "raise")


class DatasetLayoutError(FileNotFoundError):
    """A dataset directory is missing or does not have the expected layout.

    The message names the directory that was looked at and shows the layout expected there.
    """


class BadImageError(ValueError):
    """An image or mask file that cannot be decoded (or does not fit its dataset).

    Attributes:
      path: the offending file.
      reason: why it was rejected.
    """

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot use image file {self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file left out of a dataset, with the reason. Loaders record these, never drop silently.

    Attributes:
      name: the example name (path relative to the image folder).
      path: the file that caused it.
      reason: human-readable reason.
    """

    name: str
    path: str
    reason: str


def as_hw(size) -> tuple[int, int]:
    """``int`` or ``(H, W)`` -> ``(H, W)`` of positive ints; ``ValueError`` otherwise."""
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        try:
            hw = tuple(int(s) for s in size)
        except TypeError:
            raise ValueError(f"image size must be an int or (H, W), got {size!r}") from None
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image size must be an int or (H, W) of positive ints, got {size!r}")
    return hw


normalize = pixels.normalize


def input_scaling(model=None, mean=None, std=None, *, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The scaling to normalise images with: explicit ``mean``/``std``, else ``model``'s (a
    ``gj.ModelFunctions``); neither known: ValueError naming the fix (no ImageNet default).

    Args:
      model: a ``gj.ModelFunctions`` (its ``mean`` / ``std``), or None.
      mean, std: explicit per-channel values (pixels in [0, 1]; override the model's), or None.
      where: the caller, for the message.
    """
    model = None if model is None else as_model_functions(model)
    return pixels.resolve(model, mean, std, needed=True, what=f"{where} (normalising images for the model)",
                          keywords="model=model (a gj.ModelFunctions carrying its scaling) or mean=..., std=...")


def _resize(img: Image.Image, hw: tuple[int, int], mode: str, resample) -> Image.Image:
    """Resize a PIL image to ``hw`` = (H, W): ``squash`` (aspect ignored), ``center_crop``
    (shorter side scaled to fit, then the centre cut out) or ``imagenet_eval`` (shorter side scaled
    to ``side / 0.875``, then the centre cut out: the ImageNet evaluation transform, 256 -> 224)."""
    height, width = hw
    if mode in ("center_crop", "imagenet_eval"):
        scale = max(height / img.height, width / img.width)
        if mode == "imagenet_eval":
            scale /= EVAL_CROP_FRACTION
        new_w = max(width, round(img.width * scale))
        new_h = max(height, round(img.height * scale))
        img = img.resize((new_w, new_h), resample=resample)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return img.crop((left, top, left + width, top + height))
    return img.resize((width, height), resample=resample)


def _open(path: str, kind: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise BadImageError(path, f"{kind} file does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(path, f"{kind} cannot be decoded ({type(err).__name__}: {err})") from None
    return img


def image_hw_of(path: str, kind: str = "image") -> tuple[int, int]:
    """``(H, W)`` of an image file, from its header (the pixels are not decoded).

    Args:
      path: image or mask file.
      kind: what the file is, for the message (``"image"``, ``"mask"``).

    Raises:
      BadImageError: naming ``path`` when it does not exist or its header cannot be read.
    """
    try:
        with Image.open(path) as img:
            return int(img.height), int(img.width)
    except FileNotFoundError:
        raise BadImageError(path, f"{kind} file does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(path, f"{kind} cannot be decoded ({type(err).__name__}: {err})") from None


def aspect_matches(image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> bool:
    """Whether a mask of ``mask_hw = (H, W)`` is its image (``image_hw``) at another resolution:
    the image scaled to the mask's height (or width) has the mask's width (height) up to one
    pixel of rounding. Such a mask can be resized onto the image; another aspect ratio cannot.

    Examples:
      >>> [aspect_matches((480, 640), mask) for mask in ((240, 320), (241, 320), (240, 240))]
      [True, True, False]
    """
    (ih, iw), (mh, mw) = image_hw, mask_hw
    return abs(mw - iw * mh / ih) <= 1 + 1e-9 or abs(mh - ih * mw / iw) <= 1 + 1e-9


def read_image(path: str, size, resize_mode: str = "squash", *, exif_transpose: bool = False) -> np.ndarray:
    """Decode an image file with Pillow, convert to RGB and resize.

    Args:
      path: image file.
      size: ``int`` or ``(H, W)``.
      resize_mode: ``"squash"`` (resize to exactly ``(H, W)``, bilinear), ``"center_crop"`` (shorter
        side to fit, centre cut out) or ``"imagenet_eval"`` (shorter side to ``side / 0.875``, centre
        cut out: the ImageNet evaluation transform).
      exif_transpose: apply the EXIF orientation tag first (camera photos).

    Returns:
      uint8 ``(H, W, 3)``.

    Raises:
      BadImageError: naming ``path`` when it cannot be decoded.
    """
    img = _open(path, "image")
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    img = _resize(img.convert("RGB"), as_hw(size), resize_mode, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def prepare_pixels(photos, size, *, model=None, mean=None, std=None, resize_mode: str = "squash") -> np.ndarray:
    """In-memory RGB photos -> a model batch, normalised with the model's own input scaling.

    Args:
      photos: a sequence of uint8 ``(H_i, W_i, 3)`` arrays (sizes may differ), or one uint8
        ``(B, H, W, 3)`` array.
      size: ``int`` or ``(H, W)`` of the output.
      model: the ``gj.ModelFunctions`` the batch is for: its ``mean`` / ``std`` are used.
      mean, std: explicit per-channel scaling of pixels in [0, 1] (override the model's). One of
        ``model`` / ``mean, std`` is needed: there is no default (ImageNet statistics would silently
        give wrong inputs to a model with another scaling).
      resize_mode: ``"squash"`` or ``"center_crop"`` (see ``read_image``).

    Returns:
      float32 ``(B, H, W, 3)`` ``(pixels / 255 - mean) / std``.

    Raises:
      ValueError: a photo that is not uint8 ``(H, W, 3)``; no scaling (neither ``model`` with one nor
        ``mean``/``std``: the message names the fix).

    Examples:
      >>> import numpy as np, gag_jax as gj
      >>> model = gj.ModelFunctions(lambda x: x.mean((1, 2)), mean=(0.5,), std=(0.5,))
      >>> x = prepare_pixels([np.full((4, 6, 3), 255, np.uint8)], 2, model=model)
      >>> x.shape, float(x.max())
      ((1, 2, 2, 3), 1.0)
    """
    mean, std = input_scaling(model, mean, std, where="prepare_pixels")
    resized = []
    for index, photo in enumerate(photos):
        photo = np.asarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
            raise ValueError(f"photo {index} must be uint8 (H, W, 3); got {photo.dtype} {photo.shape}")
        img = _resize(Image.fromarray(photo), as_hw(size), resize_mode, Image.BILINEAR)
        resized.append(np.asarray(img, dtype=np.uint8))
    if not resized:
        raise ValueError("photos is empty")
    return normalize(np.stack(resized), mean, std)


def read_mask(path: str, size, resize_mode: str = "squash", *, kind: str = "binary", class_id: int = 0) -> np.ndarray:
    """Decode a segmentation PNG into a binary mask, resized with nearest-neighbour.

    The mask is resized to ``size`` with the same geometry as its image (``resize_mode``), so a
    mask stored at another resolution than its image (same aspect ratio) lands on the same pixels:
    that resizing is intended. A mask of another aspect ratio would not; the folder case refuses it
    when listing (``layouts.list_folder``), before anything is read.

    Args:
      path: mask file.
      size: ``int`` or ``(H, W)``.
      resize_mode: as in :func:`read_image` (the same geometry is applied to image and mask).
      kind: ``"binary"`` (grey level > 127 is the object, e.g. ISIC ``*_segmentation.png``);
        ``"imagenet_s"`` (RGB, id = R + 256 G; the object is ``id == class_id``);
        ``"imagenet_s_foreground"`` (every id except 0 = other and 1000 = ignored).
      class_id: the ImageNet-S class id of the image (``kind="imagenet_s"``).

    Returns:
      uint8 ``(H, W)`` with values in {0, 1}.

    Raises:
      BadImageError: naming ``path`` when it cannot be decoded, or (``imagenet_s``) when the mask
        holds no pixel of ``class_id`` although it holds other objects.
    """
    img = _open(path, "mask")
    if kind == "binary":
        binary = np.asarray(img.convert("L")) > 127
    else:
        rgb = np.asarray(img.convert("RGB")).astype(np.int32)
        ids = rgb[..., 0] + 256 * rgb[..., 1]
        if kind == "imagenet_s":
            binary = ids == class_id
            others = np.setdiff1d(np.unique(ids), [0, 1000])
            if not binary.any() and others.size:
                raise BadImageError(
                    path,
                    f"mask holds no pixel of class id {class_id} but ids {others.tolist()}; the class id "
                    "comes from the sorted category folders: is the category list complete? "
                    "(mask_mode='foreground' uses every object instead)",
                )
        elif kind == "imagenet_s_foreground":
            binary = (ids != 0) & (ids != 1000)
        else:
            raise ValueError(f"unknown mask kind {kind!r}")
    mask = Image.fromarray(binary.astype(np.uint8) * 255)
    mask = _resize(mask, as_hw(size), resize_mode, Image.NEAREST)
    return (np.asarray(mask) > 127).astype(np.uint8)


def warn_skipped(skipped: Sequence[SkippedFile], where: str) -> None:
    """One warning listing every skipped file with its reason (nothing when the list is empty)."""
    if skipped:
        lines = "\n".join(f"  {s.path}: {s.reason}" for s in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        warnings.warn(f"{where}: skipped {len(skipped)} file(s):\n{lines}{more}", stacklevel=3)


def pad_rows(x, batch_size: int):
    """Pad the leading axis of an array (or of every array in a pytree) to ``batch_size`` by
    repeating its last row; the one padding rule of the library (data batches, sharded batches,
    metric batches).

    A padded row is a real row of the batch (not a zero image), so whatever runs on the padded batch
    sees only inputs from the data, and the ``valid`` mask says which rows to drop. Device arrays
    stay on device (``jax.numpy``), host arrays on the host (``numpy``).

    Args:
      x: an array ``(b, ...)`` or a pytree of arrays sharing ``b``, ``1 <= b <= batch_size``.
      batch_size: the fixed leading size ``B``.

    Returns:
      ``(padded, valid)``: ``x`` with every leaf ``(B, ...)`` (rows ``b..B-1`` copies of row
      ``b - 1``) and a numpy bool ``(B,)`` mask, True for the ``b`` real rows.

    Raises:
      ValueError: leaves of different lengths, or ``b`` outside ``1..batch_size``.

    Examples:
      >>> import numpy as np
      >>> padded, valid = pad_rows(np.array([1, 2]), 4)
      >>> padded.tolist(), valid.tolist()
      ([1, 2, 2, 2], [True, True, False, False])
    """
    leaves = jax.tree_util.tree_leaves(x)
    lengths = {np.shape(leaf)[0] for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(f"arrays must share their leading axis, got lengths {sorted(lengths)}")
    (b,) = lengths
    if b < 1 or b > batch_size:
        raise ValueError(f"a batch of {b} rows cannot be padded to batch_size {batch_size} (need 1..{batch_size})")
    valid = np.arange(batch_size) < b

    def pad(leaf):
        lib = jnp if isinstance(leaf, jax.Array) else np
        leaf = lib.asarray(leaf)
        if b == batch_size:
            return leaf
        return lib.concatenate([leaf, lib.repeat(leaf[-1:], batch_size - b, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, x), valid


def pad_batch(arrays: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A dict of arrays padded with :func:`pad_rows`, the mask added as ``"valid"``.

    Args:
      arrays: arrays that share a leading axis of length ``1 <= n <= batch_size``.
      batch_size: the fixed batch size ``B``.

    Returns:
      the arrays padded to ``(B, ...)`` (the last row repeated) and ``valid``: bool ``(B,)``,
      True for the ``n`` real rows.
    """
    padded, valid = pad_rows({k: np.asarray(v) for k, v in arrays.items()}, batch_size)
    padded["valid"] = valid
    return padded


def iterate_batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, start_batch: int = 0) -> Iterator[dict]:
    """Fixed-size batches over in-memory arrays; the ragged last batch is padded (see :func:`pad_batch`).

    Every batch has the same shapes, so a jitted consumer compiles once.

    Args:
      arrays: name -> array ``(N, ...)``, all with the same ``N``.
      batch_size: ``B``.
      start_batch: first batch to yield (resuming an interrupted run).

    Yields:
      dicts of arrays ``(B, ...)`` plus ``valid`` bool ``(B,)``.

    Examples:
      >>> import numpy as np
      >>> [int(b["valid"].sum()) for b in iterate_batches({"x": np.arange(5)}, 2)]
      [2, 2, 1]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num = len(next(iter(arrays.values()))) if arrays else 0
    for start in range(start_batch * batch_size, num, batch_size):
        yield pad_batch({k: v[start:start + batch_size] for k, v in arrays.items()}, batch_size)


def list_image_files(folder: str) -> list[str]:
    """Sorted image files (by extension, case-insensitive) directly inside ``folder``."""
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f))
    )


