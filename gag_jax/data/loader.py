"""One entry point for every case: ``load_case`` -> fixed-size numpy batches; plus ``load_image_files``."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from gag_jax.data import layouts
from gag_jax._validation import check_choice
from gag_jax.data._common import (
    ON_ERROR,
    RESIZE_MODES,
    BadImageError,
    SkippedFile,
    as_hw,
    input_scaling,
    list_image_files,
    normalize,
    pad_batch,
    read_image,
    read_mask,
    warn_skipped,
)
from gag_jax.data.synthetic import SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, make_synthetic

CASES = ("imagenet_s", "isic", "places365", "synthetic", "folder")
"""Cases accepted by :func:`load_case`."""

CASE_IMAGE_SIZES = {"imagenet_s": 256, "isic": 448, "places365": 224, "synthetic": 32, "folder": 224}
"""The paper's input side per case (``image_size=None``; a user's folder: 224, the ImageNet models' size)."""

CASE_RESIZE_MODES = {"imagenet_s": "squash", "isic": "squash", "places365": "squash", "synthetic": "squash",
                     "folder": "imagenet_eval"}
"""How each case brings images to ``image_size`` (``resize_mode=None``): the paper's cases squash (as its
code), a user's folder of photos gets the ImageNet evaluation transform (shorter side to ``side / 0.875``,
the centre cut out: 256 -> 224), which keeps the aspect ratio."""

DEFAULT_SPLITS = {"imagenet_s": "validation", "isic": "train", "places365": "validation", "synthetic": "train",
                  "folder": "all"}

LAYOUTS = {
    "imagenet_s": layouts.IMAGENET_S_LAYOUT,
    "isic": layouts.ISIC_LAYOUT,
    "places365": layouts.PLACES365_LAYOUT,
    "synthetic": "  (generated; no directory)\n",
    "folder": layouts.FOLDER_LAYOUT,
}
"""The directory layout each case expects, as text (for ``--help`` and error messages)."""

_CASE_OPTIONS = {
    "imagenet_s": {"label_space": "imagenet1k", "synsets": None, "mask_mode": "class"},
    "isic": {"labels": "diagnosis"},
    "places365": {},
    "synthetic": {"num_images": 64, "seed": 0, "num_classes": len(SHAPES)},
    "folder": {"labels": "labels.txt", "masks": "masks", "synsets": None, "class_names": None},
}
_LISTERS = {"imagenet_s": layouts.list_imagenet_s, "isic": layouts.list_isic, "places365": layouts.list_places365,
            "folder": layouts.list_folder}


class Batches:
    """Fixed-size numpy batches of one case, made by :func:`load_case`. Iterate it (any number of times).

    Every batch is a dict with
      ``images`` float32 ``(B, H, W, 3)``, normalised with ``mean`` / ``std``;
      ``pixels`` uint8 ``(B, H, W, 3)``;
      ``labels`` int32 ``(B,)`` (``-1``: unknown, e.g. ISIC Task 1 images absent from every CSV);
      ``masks`` float32 ``(B, H, W)`` in {0, 1} (only when ``has_masks``);
      ``names`` str ``(B,)``;
      ``valid`` bool ``(B,)``: False on the padding of the ragged last batch (zeros there) and on
      rows whose file could not be decoded while reading (``backend="files"``; the file is then in
      ``skipped``).
    Shapes never change from batch to batch, so a jitted consumer compiles once.

    Attributes:
      case, split, source: what was read, and from where.
      batch_size: ``B``.
      image_size: ``(H, W)``.
      num_examples: examples before padding (including rows that turn out undecodable with
        ``backend="files"``).
      has_masks: whether batches carry ``masks``.
      num_classes: label space size (None when unknown).
      class_names: class names, index = label (may be empty).
      mean, std: the normalisation of ``images``.
      skipped: :class:`SkippedFile` list: every file left out and why (grows during iteration
        with ``backend="files"``).
      backend: ``"tfds"``, ``"files"`` or ``"memory"`` (synthetic).
      prefetch: whether iteration reads the next batch in a background thread.
      has_labels: whether any example has a known label (False: an unlabelled folder, ISIC
        Task 1 images without a classification CSV).
      resize_mode: how images were brought to ``image_size``.
      listing: the :class:`~gag_jax.data.layouts.Listing` the examples came from (None for
        synthetic data).
    """

    def __init__(
        self,
        *,
        fetch: Callable[[int, int], dict],
        num_examples: int,
        batch_size: int,
        image_size: tuple[int, int],
        has_masks: bool,
        case: str,
        split: str,
        source: str,
        num_classes,
        class_names: Sequence[str],
        mean,
        std,
        skipped: list[SkippedFile],
        backend: str,
        prefetch: bool = True,
        has_labels: bool = True,
        resize_mode: str = "squash",
        listing: layouts.Listing | None = None,
    ):
        self._fetch = fetch
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.image_size = image_size
        self.has_masks = has_masks
        self.case = case
        self.split = split
        self.source = source
        self.num_classes = num_classes
        self.class_names = tuple(class_names)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.skipped = skipped
        self.backend = backend
        self.prefetch = prefetch
        self.has_labels = has_labels
        self.resize_mode = resize_mode
        self.listing = listing

    def check_model_classes(self, num_classes: int) -> None:
        """Check the labels against a model with ``num_classes`` outputs before anything is computed.

        Args:
          num_classes: ``K``, the classifier's outputs (logits ``(B, K)``).

        Raises:
          DatasetLayoutError: one line naming the ``labels.txt`` line (``file:line``) or class
            folder of a class ``>= K``, or folders named by ImageNet class names when ``K != 1000``
            (:func:`gag_jax.data.layouts.check_model_classes`; a folder case only, others pass).
        """
        if self.listing is not None:
            layouts.check_model_classes(self.listing, num_classes)

    def __len__(self) -> int:
        """Number of batches (the last one padded)."""
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        return self.iter_from(0)

    def iter_from(self, batch_index: int) -> Iterator[dict]:
        """Batches ``batch_index, batch_index + 1, ...``: resume a run without reading earlier batches.

        Args:
          batch_index: first batch (0-based); batch ``k`` always holds examples ``k B .. k B + B - 1``.

        Yields:
          batch dicts (see the class docstring).
        """
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        if not self.prefetch:
            for index in range(batch_index, len(self)):
                yield self.batch(index)
            return
        # Read batch k + 1 in a background thread while the caller works on batch k.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.batch, batch_index) if batch_index < len(self) else None
            for index in range(batch_index, len(self)):
                batch = pending.result()
                pending = pool.submit(self.batch, index + 1) if index + 1 < len(self) else None
                yield batch

    def batch(self, index: int) -> dict:
        """Batch ``index`` alone (a dict as described in the class docstring)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range: {len(self)} batches")
        start = index * self.batch_size
        rows = self._fetch(start, min(start + self.batch_size, self.num_examples))
        ok = rows.pop("ok")
        images = normalize(rows["pixels"], self.mean, self.std)
        images[~ok] = 0.0
        rows["images"] = images
        rows["labels"] = np.asarray(rows["labels"], np.int32)
        if self.has_masks:
            rows["masks"] = np.asarray(rows["masks"], np.float32)
        batch = pad_batch(rows, self.batch_size)
        batch["valid"][: len(ok)] &= ok
        return batch

    def __repr__(self) -> str:
        return (
            f"Batches(case={self.case!r}, split={self.split!r}, examples={self.num_examples}, "
            f"batches={len(self)}x{self.batch_size}, image_size={self.image_size}, masks={self.has_masks}, "
            f"skipped={len(self.skipped)}, backend={self.backend!r})"
        )


def _check_case(case: str) -> None:
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; cases: {', '.join(CASES)}")


def _case_options(case: str, options: dict) -> dict:
    allowed = _CASE_OPTIONS[case]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise TypeError(f"load_case({case!r}) got unknown option(s) {unknown}; options for {case!r}: {accepted}")
    return {**allowed, **options}


def _listing(case: str, data_dir, split: str, options: dict, max_examples) -> layouts.Listing:
    listing = _LISTERS[case](data_dir, split, **options)
    if max_examples is not None:
        listing = dataclasses.replace(listing, records=listing.records[:max_examples])
    if not listing.records:
        reasons = f"; {len(listing.skipped)} file(s) skipped, first: {listing.skipped[0].path}: {listing.skipped[0].reason}" if listing.skipped else ""
        raise layouts.DatasetLayoutError(
            f"no usable {case} examples for split {split!r} in {listing.root}{reasons}\n"
            f"Expected layout there:\n{LAYOUTS[case].rstrip()}"
        )
    return listing


def _resolve_backend(backend: str) -> str:
    check_choice(backend, "backend", ("auto", "tfds", "files"))
    if backend != "auto":
        return backend
    from gag_jax.data.tfds_builders import missing_requirements

    missing = missing_requirements()
    if not missing:
        return "tfds"
    warnings.warn(
        f"{', '.join(missing)} not installed, so the dataset is read straight from its files with Pillow "
        "(backend='files') instead of a prepared tensorflow-datasets copy; pip install 'gag-jax[data]' for tfds",
        stacklevel=3,
    )
    return "files"


def _files_fetch(listing: layouts.Listing, hw, resize_mode, on_error, skipped: list[SkippedFile]):
    """Row reader for ``backend="files"``: decode each record with Pillow; a bad file -> ok=False."""
    records = listing.records

    def fetch(start: int, stop: int) -> dict:
        n = stop - start
        rows = {
            "pixels": np.zeros((n, *hw, 3), np.uint8),
            "labels": np.array([r.label for r in records[start:stop]], np.int32),
            "names": np.array([r.name for r in records[start:stop]], dtype=str).reshape(n),
            "ok": np.ones((n,), bool),
        }
        if listing.has_masks:
            rows["masks"] = np.zeros((n, *hw), np.uint8)
        for i, record in enumerate(records[start:stop]):
            try:
                rows["pixels"][i] = read_image(record.image_path, hw, resize_mode)
                if listing.has_masks:
                    rows["masks"][i] = read_mask(record.mask_path, hw, resize_mode, kind=record.mask_kind, class_id=record.mask_class)
            except BadImageError as err:
                if on_error == "raise":
                    raise
                rows["pixels"][i] = 0
                rows["ok"][i] = False
                skipped.append(SkippedFile(record.name, err.path, err.reason))
                warnings.warn(f"skipping {err.path}: {err.reason}", stacklevel=2)
        return rows

    return fetch


def _tfds_fetch(builder, split: str, has_masks: bool):
    """Row reader for ``backend="tfds"``: random access into the prepared ArrayRecord files."""
    source = builder.as_data_source(split=split)

    def fetch(start: int, stop: int) -> dict:
        examples = source.__getitems__(list(range(start, stop)))
        rows = {
            "pixels": np.stack([e["image"] for e in examples]),
            "labels": np.array([e["label"] for e in examples], np.int32),
            "names": np.array([e["name"].decode() if isinstance(e["name"], bytes) else e["name"] for e in examples], dtype=str),
            "ok": np.ones((stop - start,), bool),
        }
        if has_masks:
            rows["masks"] = np.stack([e["mask"][..., 0] for e in examples])
        return rows

    return fetch, len(source)


def load_case(
    case: str,
    data_dir=None,
    *,
    split: str | None = None,
    image_size=None,
    batch_size: int = 32,
    model=None,
    mean=None,
    std=None,
    resize_mode: str | None = None,
    backend: str = "auto",
    cache_dir=None,
    on_error: str = "skip",
    max_examples: int | None = None,
    prefetch: bool = True,
    **case_options,
) -> Batches:
    """Load one case as fixed-size numpy batches (ragged last batch padded, with a ``valid`` mask).

    Directory cases are listed from the user's copy (layouts in :data:`LAYOUTS`), then either
    prepared once as a tensorflow-datasets copy at the case size and read back with
    ``as_data_source`` (``backend="tfds"``, needs TensorFlow to prepare) or decoded from the
    files on every pass with Pillow (``backend="files"``). ``"auto"`` picks tfds when TensorFlow
    is installed. Images are resized to ``image_size`` (bilinear; masks nearest) and normalised
    with the model's own input scaling (``model=`` or ``mean=``/``std=``). Only the synthetic case,
    whose model is fixed (the tiny CNN trained on it), has a default: its model's scaling,
    ImageNet's statistics (:data:`~gag_jax.data.synthetic.SYNTHETIC_MEAN` / ``SYNTHETIC_STD``).

    Args:
      case: ``"imagenet_s"``, ``"isic"``, ``"places365"``, ``"synthetic"`` or ``"folder"`` (any
        folder of images: a ``labels.txt``, class subfolders or no labels; optional ``masks/``).
      data_dir: the dataset directory (ignored for ``"synthetic"``).
      split: ImageNet-S ``"validation"`` (default) / ``"train-semi"``; ISIC ``"train"`` (default) /
        ``"validation"`` / ``"test"``; Places365 ``"validation"``; folder ``"all"``.
      image_size: ``int`` or ``(H, W)``; default the paper's (ImageNet-S 256, ISIC 448,
        Places365 224, synthetic 32; folder 224).
      batch_size: ``B``.
      model: the ``gj.ModelFunctions`` the images are for (its ``mean`` / ``std`` normalise them).
      mean, std: explicit per-channel normalisation of ``images`` (pixels in [0, 1]; override the
        model's). Needed (one or the other) for every case but ``"synthetic"``.
      resize_mode: ``"squash"`` (to exactly ``H x W``, the paper's), ``"center_crop"`` (shorter
        side to fit, centre cut out) or ``"imagenet_eval"`` (shorter side to ``side / 0.875``, centre
        cut out); None: the case's (:data:`CASE_RESIZE_MODES`: imagenet_eval for a folder, squash
        for the paper's cases).
      backend: ``"auto"``, ``"tfds"`` or ``"files"``.
      cache_dir: where tfds keeps prepared copies (default tfds' data dir).
      on_error: ``"skip"``: an undecodable file is left out, warned about and listed in
        ``Batches.skipped`` (the run goes on); ``"raise"``: :class:`BadImageError` naming it.
      max_examples: use only the first ``n`` examples (sorted order).
      prefetch: read the next batch in a background thread while the current one is used.
      **case_options: ImageNet-S: ``label_space`` (``"imagenet1k"`` | ``"imagenet_s"``),
        ``synsets`` (wnid list file for the classifier's class order), ``mask_mode``
        (``"class"`` | ``"foreground"``); ISIC: ``labels`` (``"diagnosis"`` | ``"melanoma"`` |
        ``"malignant"``); synthetic: ``num_images`` (64), ``seed`` (0), ``num_classes`` (5);
        folder: ``labels`` (labels file name, ``"labels.txt"``), ``masks`` (mask folder name,
        ``"masks"``), ``synsets`` (wnid order for wnid-named class subfolders), ``class_names``
        (class names, index = class, for class subfolders named by words: a file with one name
        per line or a sequence; default the 1000 ImageNet names, see ``layouts.list_folder``).

    Returns:
      a :class:`Batches` (iterable, ``len()`` = number of batches, ``iter_from(k)`` to resume).

    Raises:
      ValueError: unknown case (the message lists the cases), split or option value; no input
        scaling for a case other than ``"synthetic"`` (the message names the fix).
      TypeError: an option the case does not take.
      DatasetLayoutError: missing directory or unexpected layout (names the directory, shows the
        layout expected there); a folder's bad ``labels.txt`` line, unknown class folder name or
        mask of another aspect ratio than its image (one line naming it).
      BadImageError: ``on_error="raise"`` and a file cannot be decoded.

    Examples:
      >>> batches = load_case("synthetic", batch_size=8, num_images=20)
      >>> len(batches), next(iter(batches))["images"].shape
      (3, (8, 32, 32, 3))
    """
    _check_case(case)
    options = _case_options(case, case_options)
    split = DEFAULT_SPLITS[case] if split is None else split
    hw = as_hw(CASE_IMAGE_SIZES[case] if image_size is None else image_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    resize_mode = CASE_RESIZE_MODES[case] if resize_mode is None else resize_mode
    check_choice(resize_mode, "resize_mode", RESIZE_MODES)
    check_choice(on_error, "on_error", ON_ERROR)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 (or None for all), got {max_examples}")
    if case == "synthetic" and model is None and mean is None and std is None:
        mean, std = SYNTHETIC_MEAN, SYNTHETIC_STD  # the synthetic case's own model (tiny) takes these
    mean, std = input_scaling(model, mean, std, where=f"load_case({case!r})")
    common = {"batch_size": batch_size, "image_size": hw, "case": case, "split": split, "mean": mean, "std": std,
              "prefetch": prefetch}

    if case == "synthetic":
        if hw[0] != hw[1]:
            raise ValueError(f"synthetic images are square, got image_size={hw}")
        num = options["num_images"] if max_examples is None else min(options["num_images"], max_examples)
        data = make_synthetic(num, hw[0], options["seed"], options["num_classes"])

        def fetch(start, stop):
            return {
                "pixels": data["pixels"][start:stop],
                "labels": data["labels"][start:stop],
                "masks": data["masks"][start:stop],
                "names": data["names"][start:stop],
                "ok": np.ones((stop - start,), bool),
            }

        return Batches(
            fetch=fetch, num_examples=num, has_masks=True, source=f"synthetic(seed={options['seed']})",
            num_classes=options["num_classes"], class_names=SHAPES[: options["num_classes"]],
            skipped=[], backend="memory", resize_mode=resize_mode, **common,
        )

    listing = _listing(case, data_dir, split, options, max_examples)
    backend = _resolve_backend(backend)
    if backend == "tfds":
        from gag_jax.data import tfds_builders

        builder, tfds_split = tfds_builders.prepare(listing, hw, resize_mode=resize_mode, on_error=on_error, cache_dir=cache_dir)
        skipped = tfds_builders.skipped_files(builder)
        fetch, num = _tfds_fetch(builder, tfds_split, listing.has_masks)
        if num == 0:
            raise layouts.DatasetLayoutError(f"every {case} example in {listing.root} was skipped; first: {skipped[0].path}: {skipped[0].reason}")
    else:
        skipped = list(listing.skipped)
        fetch, num = _files_fetch(listing, hw, resize_mode, on_error, skipped), len(listing.records)
    warn_skipped(skipped, f"{case} {split} ({listing.root})")
    return Batches(
        fetch=fetch, num_examples=num, has_masks=listing.has_masks, source=listing.root,
        num_classes=listing.num_classes, class_names=listing.class_names, skipped=skipped, backend=backend,
        has_labels=any(r.label >= 0 for r in listing.records), resize_mode=resize_mode, listing=listing, **common,
    )


def load_image_files(
    paths,
    size,
    *,
    model=None,
    mean=None,
    std=None,
    resize_mode: str = "squash",
    on_error: str = "skip",
    skipped: list | None = None,
):
    """Read image files (or every image directly inside a folder) with Pillow, for ``explain``.

    EXIF orientation is applied, images are converted to RGB and resized.

    Args:
      paths: a file or folder path, or a sequence of them (folders expand to their image files,
        sorted, not recursively).
      size: ``int`` or ``(H, W)``.
      model: the ``gj.ModelFunctions`` the images are for (its ``mean`` / ``std`` normalise them).
      mean, std: explicit per-channel normalisation of ``images`` (pixels in [0, 1]; override the
        model's). One of ``model`` / ``mean, std`` is needed (no default).
      resize_mode: ``"squash"`` or ``"center_crop"``.
      on_error: ``"skip"``: an undecodable file is left out with a warning naming it (and appended
        to ``skipped`` as a :class:`SkippedFile`); ``"raise"``: :class:`BadImageError` naming it.
      skipped: optional list that receives the skipped files.

    Returns:
      ``(pixels, images, names)``: uint8 ``(N, H, W, 3)``, float32 ``(N, H, W, 3)`` normalised, and
      the ``N`` file names (base names) of the images read, in order.

    Raises:
      FileNotFoundError: a path that does not exist (named).
      BadImageError: ``on_error="raise"`` and a file cannot be decoded.
      ValueError: no input scaling (the message names the fix).
    """
    mean, std = input_scaling(model, mean, std, where="load_image_files")
    check_choice(on_error, "on_error", ON_ERROR)
    check_choice(resize_mode, "resize_mode", RESIZE_MODES)
    hw = as_hw(size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files += list_image_files(path)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")
    pixels, names, bad = [], [], []
    for path in files:
        try:
            pixels.append(read_image(path, hw, resize_mode, exif_transpose=True))
        except BadImageError as err:
            if on_error == "raise":
                raise
            bad.append(SkippedFile(os.path.basename(path), path, err.reason))
            continue
        names.append(os.path.basename(path))
    warn_skipped(bad, "load_image_files")
    if skipped is not None:
        skipped.extend(bad)
    pixels = np.stack(pixels) if pixels else np.zeros((0, *hw, 3), np.uint8)
    return pixels, normalize(pixels, mean, std), names


UPSCALE_NOTICE_FACTOR = 2.0
"""An image whose shorter side is below ``size / UPSCALE_NOTICE_FACTOR`` gets a notice: it is upscaled
that much, and its maps cannot show detail finer than its own pixels."""


def upscale_notice(files: Sequence[str], size: int, factor: float = UPSCALE_NOTICE_FACTOR) -> str | None:
    """One line naming the images whose shorter side is below ``size / factor`` (they are upscaled at
    least ``factor`` times to ``size``), or None when there is none."""
    small = []
    for path in files:
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Exception:  # noqa: BLE001 - it was decoded once already; a notice is not worth failing for
            continue
        if min(w, h) * factor <= size:
            small.append((os.path.basename(path), w, h, size / min(w, h)))
    if not small:
        return None
    if len(small) == 1:
        name, w, h, up = small[0]
        return (f"{name} is {w}x{h} px, much smaller than the {size}x{size} input: upscaled {up:.1f}x, so its maps "
                "show no detail finer than its own pixels")
    named = ", ".join(f"{name} ({w}x{h})" for name, w, h, _ in small[:3]) + (", ..." if len(small) > 3 else "")
    return (f"{len(small)} images are much smaller than the {size}x{size} input and were upscaled (up to "
            f"{max(t[3] for t in small):.1f}x; their maps show no detail finer than their own pixels): {named}")


def read_images(paths: Sequence[str], size: int, *, report: Callable[[str], None] = print,
                resize_mode: str = "center_crop", model=None, mean=None, std=None,
                notice: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read image files / folders with :func:`load_image_files`, as the commands do (``demo``,
    ``explain``, ``sanity``): each undecodable file reported in one line, a notice for upscaled images.

    Args:
      paths: image files and / or folders (a folder: its images, sorted, not recursively).
      size: input side in pixels.
      report: receives one line per undecodable file.
      resize_mode: ``"center_crop"`` or ``"squash"``.
      model, mean, std: the input scaling, as :func:`load_image_files` (one of them is needed).
      notice: receives one line (:func:`upscale_notice`) when images much smaller than ``size`` are
        upscaled (default: ``report``).

    Returns:
      ``(pixels uint8 (N, S, S, 3), images float32 normalised, names)``; the undecodable files
      are reported through ``report`` and left out.

    Raises:
      FileNotFoundError: a path that does not exist.
    """

    files = []
    for path in map(os.fspath, paths):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file or folder: {path}")
        files += list_image_files(path) if os.path.isdir(path) else [path]
    skipped: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below, one line per file
        pixels, images, names = load_image_files(files, size, resize_mode=resize_mode, skipped=skipped,
                                                 model=model, mean=mean, std=std)
    for s in skipped:
        report(f"skipping {s.path}: {s.reason}")
    bad = {s.path for s in skipped}
    line = upscale_notice([f for f in files if f not in bad], size)
    if line:
        (notice or report)(line)
    return pixels, images, names
