"""Find the examples of each case in a directory the user already has (no decoding, pure Python).

Each ``list_*`` function checks the layout, and returns a :class:`Listing`: one :class:`Record`
per example (image file, mask file or none, label) plus the files it had to leave out and why.
A missing directory or an unrecognised layout raises :class:`DatasetLayoutError` that names the
directory looked at and draws the layout expected there.

Layouts (the public distributions):

ImageNet-S (https://github.com/LUSSeg/ImageNet-S; any of ImageNet-S50 / -S300 / -S919)::

    ImageNetS50/                       <- data_dir (or its parent holding exactly one ImageNetS*)
      validation/<wnid>/<stem>.JPEG                 split "validation"
      validation-segmentation/<wnid>/<stem>.png
      train-semi/<wnid>/<stem>.JPEG                 split "train-semi"
      train-semi-segmentation/<wnid>/<stem>.png

  A segmentation PNG is RGB with class id ``R + 256 G``: 0 = other, 1000 = ignored, ``k`` = the
  k-th category (1-based) in the sorted list of the variant's wnids (= its sorted category folders).

ISIC 2018 (Task 1 segmentation, Task 3 classification) and ISIC 2019 (classification)::

    isic/                                                   <- data_dir
      ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
      ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
      ISIC2018_Task3_Training_Input/ISIC_0024306.jpg
      ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
      ISIC_2019_Training_Input/ISIC_0000000.jpg
      ISIC_2019_Training_GroundTruth.csv
    (``Validation`` / ``Test`` in place of ``Training`` for the other splits.)

  With the Task 1 folders present the split is the segmentation set (images + masks; labels joined
  from any ground-truth CSV by image id, ``-1`` when an image has none). Otherwise it is the
  classification set (Task 3 and/or 2019 images with their CSV labels, no masks).

Places365 validation (http://places2.csail.mit.edu)::

    places365/                          <- data_dir
      val_256/Places365_val_00000001.jpg      (or val_large/)
      places365_val.txt                       "Places365_val_00000001.jpg 165" per line
                                              (also found in filelist_places365-standard/ or meta/)
      categories_places365.txt                optional: "/a/airfield 0" per line (class names)
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Sequence

from gag_jax.ops import imagenet_classes
from gag_jax.data._common import (
    BadImageError,
    DatasetLayoutError,
    SkippedFile,
    aspect_matches,
    image_hw_of,
    list_image_files,
)


@dataclasses.dataclass(frozen=True)
class Record:
    """One example on disk.

    Attributes:
      name: unique example name: the image path relative to its image folder.
      image_path: the image file.
      label: class index, ``-1`` when unknown.
      mask_path: the segmentation file, or None.
      mask_kind: how to read the mask (see ``_common.read_mask``).
      mask_class: ImageNet-S class id of the object (``mask_kind="imagenet_s"``).
    """

    name: str
    image_path: str
    label: int
    mask_path: str | None = None
    mask_kind: str = "binary"
    mask_class: int = 0


@dataclasses.dataclass(frozen=True)
class Listing:
    """All examples of one (case, split) found on disk.

    Attributes:
      case: the case name.
      split: the split name.
      root: the directory the examples were found in.
      records: the usable examples, in a deterministic (sorted) order.
      has_masks: whether every record has a mask.
      num_classes: size of the label space (None when unknown).
      class_names: names of the classes, index = label (may be empty).
      skipped: files left out, with the reason.
      label_origins: ``(label, where)`` for the first example of each label, in the order they
        were given: ``"<labels file>:<line>"`` or ``"<data_dir>/<class folder>/"`` (a folder case;
        empty for the public datasets). :func:`check_model_classes` names these.
      imagenet_named: class folders whose label was found by their ImageNet class name (in
        ``gag_jax/imagenet_classes.txt``): valid only for a model with exactly 1000 outputs.
    """

    case: str
    split: str
    root: str
    records: tuple[Record, ...]
    has_masks: bool
    num_classes: int | None
    class_names: tuple[str, ...]
    skipped: tuple[SkippedFile, ...] = ()
    label_origins: tuple[tuple[int, str], ...] = ()
    imagenet_named: tuple[str, ...] = ()


def _layout_error(problem: str, directory: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{problem}: {directory}\nExpected layout there:\n{layout.rstrip()}")


def _require_dir(data_dir, layout: str) -> str:
    if data_dir is None:
        raise _layout_error("no data directory given", "(data_dir=None)", layout)
    path = os.path.abspath(os.path.expanduser(str(data_dir)))
    if not os.path.isdir(path):
        raise _layout_error("data directory does not exist" if not os.path.exists(path) else "not a directory", path, layout)
    return path


def _split_key(split: str, aliases: dict[str, str], case: str) -> str:
    if split not in aliases:
        raise ValueError(f"unknown split {split!r} for case {case!r}; splits: {sorted(set(aliases.values()))}")
    return aliases[split]


# ----------------------------------------------------------------------------------------- ImageNet-S

IMAGENET_S_LAYOUT = """\
  ImageNetS50/                     (ImageNetS300/, ImageNetS919/ alike; or their parent directory)
    validation/<wnid>/<name>.JPEG
    validation-segmentation/<wnid>/<name>.png
    train-semi/<wnid>/<name>.JPEG              (split "train-semi")
    train-semi-segmentation/<wnid>/<name>.png
"""
_IMAGENET_S_SPLITS = {"validation": "validation", "val": "validation", "train-semi": "train-semi", "train_semi": "train-semi"}


def _imagenet1k_wnids(synsets) -> list[str]:
    """The classifier's wnids in logit order: from ``synsets`` (a file whose lines start with a
    wnid, e.g. ``LOC_synset_mapping.txt``, or a sequence of wnids) or, by default, the sorted
    ImageNet-1k wnids shipped with tensorflow-datasets (the torchvision class order)."""
    if synsets is None:
        from tensorflow_datasets.core import utils as tfds_utils

        path = tfds_utils.tfds_path() / "datasets" / "imagenet2012" / "labels.txt"
        return path.read_text().split()
    if isinstance(synsets, (str, os.PathLike)):
        with open(synsets) as f:
            return [line.split()[0] for line in f if line.strip()]
    return [str(s) for s in synsets]


def list_imagenet_s(
    data_dir,
    split: str = "validation",
    *,
    label_space: str = "imagenet1k",
    synsets=None,
    mask_mode: str = "class",
) -> Listing:
    """List ImageNet-S examples (images + segmentation masks of the image's class).

    Args:
      data_dir: an ``ImageNetS50`` / ``ImageNetS300`` / ``ImageNetS919`` directory, or a parent
        holding exactly one of them.
      split: ``"validation"`` or ``"train-semi"``.
      label_space: ``"imagenet1k"``: the label is the wnid's index among the classifier's classes
        (``synsets``, default the 1000 sorted ImageNet-1k wnids); ``"imagenet_s"``: the 0-based
        ImageNet-S class (index among the sorted category folders).
      synsets: optional wnid list (file or sequence) giving the classifier's class order.
      mask_mode: ``"class"``: the mask is the pixels of the image's own class (id == ImageNet-S
        class id, taken from the sorted category folders, so the copy must hold all of them);
        ``"foreground"``: every annotated object (ids other than 0 and 1000).

    Returns:
      a :class:`Listing` with ``has_masks=True``; images without a mask file are skipped.
    """
    split = _split_key(split, _IMAGENET_S_SPLITS, "imagenet_s")
    root = _require_dir(data_dir, IMAGENET_S_LAYOUT)
    if not os.path.isdir(os.path.join(root, split)):
        variants = sorted(d for d in os.listdir(root) if d.startswith("ImageNetS") and os.path.isdir(os.path.join(root, d)))
        if len(variants) == 1:
            root = os.path.join(root, variants[0])
        elif len(variants) > 1:
            raise DatasetLayoutError(
                f"{root} holds several ImageNet-S variants ({', '.join(variants)}); pass one of them as data_dir"
            )
    image_dir, mask_dir = os.path.join(root, split), os.path.join(root, f"{split}-segmentation")
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise _layout_error(f"ImageNet-S split {split!r}: missing folder", folder, IMAGENET_S_LAYOUT)
    wnids = sorted(d for d in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, d)))
    if not wnids:
        raise _layout_error("ImageNet-S: no <wnid> class folders in", image_dir, IMAGENET_S_LAYOUT)
    if label_space == "imagenet1k":
        classes = _imagenet1k_wnids(synsets)
        index = {w: i for i, w in enumerate(classes)}
        unknown = [w for w in wnids if w not in index]
        if unknown:
            raise ValueError(
                f"ImageNet-S folders {unknown[:5]}{'...' if len(unknown) > 5 else ''} in {image_dir} are not in "
                f"the classifier's {len(classes)} classes; pass synsets= (the model's wnid list) or "
                "label_space='imagenet_s'"
            )
        labels = {w: index[w] for w in wnids}
        class_names = tuple(classes)
    elif label_space == "imagenet_s":
        labels = {w: i for i, w in enumerate(wnids)}
        class_names = tuple(wnids)
    else:
        raise ValueError(f"label_space must be 'imagenet1k' or 'imagenet_s', got {label_space!r}")
    if mask_mode not in ("class", "foreground"):
        raise ValueError(f"mask_mode must be 'class' or 'foreground', got {mask_mode!r}")
    kind = "imagenet_s" if mask_mode == "class" else "imagenet_s_foreground"
    records, skipped = [], []
    for k, wnid in enumerate(wnids):
        for path in list_image_files(os.path.join(image_dir, wnid)):
            name = f"{wnid}/{os.path.basename(path)}"
            mask_path = os.path.join(mask_dir, wnid, os.path.splitext(os.path.basename(path))[0] + ".png")
            if not os.path.isfile(mask_path):
                skipped.append(SkippedFile(name, path, f"no segmentation mask {mask_path}"))
                continue
            records.append(Record(name, path, labels[wnid], mask_path, kind, k + 1))
    return Listing("imagenet_s", split, root, tuple(records), True, len(class_names), class_names, tuple(skipped))


# ----------------------------------------------------------------------------------------------- ISIC

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
"""ISIC 2019 diagnosis classes (2018 Task 3 uses the first seven, with AKIEC for AK)."""
_ISIC_ALIASES = {"AKIEC": "AK"}
_ISIC_MALIGNANT = ("MEL", "BCC", "AK", "SCC")
_ISIC_COLUMNS = (*ISIC_CLASSES, *_ISIC_ALIASES, "UNK")
ISIC_LABELS = ("diagnosis", "melanoma", "malignant")
ISIC_LAYOUT = """\
  <data_dir>/
    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg                    (segmentation set)
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png
    ISIC2018_Task3_Training_Input/ISIC_0024306.jpg                      (classification sets)
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
    ISIC_2019_Training_Input/ISIC_0000000.jpg
    ISIC_2019_Training_GroundTruth.csv
  (Validation / Test in place of Training for those splits)
"""
_ISIC_SPLITS = {"train": "Training", "training": "Training", "validation": "Validation", "val": "Validation", "test": "Test"}


def _isic_dir(root: str, name: str) -> str | None:
    """``root/name`` if it exists (descending once into ``root/name/name``, as some archives unpack)."""
    path = os.path.join(root, name)
    if not os.path.isdir(path):
        return None
    nested = os.path.join(path, name)
    return nested if os.path.isdir(nested) else path


def _isic_csv_labels(paths: Sequence[str], labels: str) -> dict[str, int]:
    """image id -> label from ISIC ground-truth CSVs (one-hot columns); UNK / no class -> -1."""
    out: dict[str, int] = {}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames:
                raise DatasetLayoutError(f"{path}: not an ISIC ground-truth CSV (needs an 'image' column)")
            for row in reader:
                hot = [c for c, v in row.items() if c in _ISIC_COLUMNS and v and float(v) >= 0.5]
                diagnosis = _ISIC_ALIASES.get(hot[0], hot[0]) if len(hot) == 1 else None
                if diagnosis not in ISIC_CLASSES:
                    label = -1
                elif labels == "diagnosis":
                    label = ISIC_CLASSES.index(diagnosis)
                elif labels == "melanoma":
                    label = int(diagnosis == "MEL")
                else:
                    label = int(diagnosis in _ISIC_MALIGNANT)
                out.setdefault(row["image"], label)
    return out


def list_isic(data_dir, split: str = "train", *, labels: str = "diagnosis") -> Listing:
    """List ISIC 2018 / 2019 examples.

    Args:
      data_dir: the directory holding the ISIC folders (see the module docstring).
      split: ``"train"``, ``"validation"`` or ``"test"``.
      labels: ``"diagnosis"`` (8 classes :data:`ISIC_CLASSES`), ``"melanoma"`` (MEL = 1, else 0) or
        ``"malignant"`` (MEL, BCC, AK, SCC = 1, else 0). Unknown diagnosis -> ``-1``.

    Returns:
      a :class:`Listing`: the Task 1 segmentation set when its folders exist (images without a mask
      are skipped), else the Task 3 / 2019 classification set without masks (images without a
      label are skipped).
    """
    tag = _split_key(split, _ISIC_SPLITS, "isic")
    if labels not in ISIC_LABELS:
        raise ValueError(f"labels must be one of {ISIC_LABELS}, got {labels!r}")
    root = _require_dir(data_dir, ISIC_LAYOUT)
    csvs = []
    for candidate in (
        os.path.join(root, f"ISIC_2019_{tag}_GroundTruth.csv"),
        os.path.join(root, f"ISIC2018_Task3_{tag}_GroundTruth", f"ISIC2018_Task3_{tag}_GroundTruth.csv"),
        os.path.join(root, f"ISIC2018_Task3_{tag}_GroundTruth.csv"),
    ):
        if os.path.isfile(candidate):
            csvs.append(candidate)
    label_of = _isic_csv_labels(csvs, labels)
    seg_images, seg_masks = _isic_dir(root, f"ISIC2018_Task1-2_{tag}_Input"), _isic_dir(root, f"ISIC2018_Task1_{tag}_GroundTruth")
    records, skipped = [], []
    if seg_images or seg_masks:
        for name, folder in (("images", seg_images), ("masks", seg_masks)):
            if folder is None:
                missing = os.path.join(root, f"ISIC2018_Task1-2_{tag}_Input" if name == "images" else f"ISIC2018_Task1_{tag}_GroundTruth")
                raise _layout_error(f"ISIC Task 1 {name} folder missing", missing, ISIC_LAYOUT)
        for path in list_image_files(seg_images):
            stem = os.path.splitext(os.path.basename(path))[0]
            mask_path = os.path.join(seg_masks, f"{stem}_segmentation.png")
            if not os.path.isfile(mask_path):
                skipped.append(SkippedFile(os.path.basename(path), path, f"no lesion mask {mask_path}"))
                continue
            records.append(Record(os.path.basename(path), path, label_of.get(stem, -1), mask_path, "binary"))
        has_masks = True
    else:
        folders = [f for f in (_isic_dir(root, f"ISIC2018_Task3_{tag}_Input"), _isic_dir(root, f"ISIC_2019_{tag}_Input")) if f]
        if not folders:
            raise _layout_error(f"no ISIC {tag} image folder found in", root, ISIC_LAYOUT)
        if not csvs:
            raise _layout_error(f"no ISIC {tag} ground-truth CSV found in", root, ISIC_LAYOUT)
        seen = set()
        for folder in folders:
            for path in list_image_files(folder):
                stem = os.path.splitext(os.path.basename(path))[0]
                if stem in seen:
                    continue
                seen.add(stem)
                label = label_of.get(stem, -1)
                if label < 0:
                    skipped.append(SkippedFile(os.path.basename(path), path, "no diagnosis label in the ground-truth CSV"))
                    continue
                records.append(Record(os.path.basename(path), path, label))
        records.sort(key=lambda r: r.name)
        has_masks = False
    class_names = ISIC_CLASSES if labels == "diagnosis" else (("other", "melanoma") if labels == "melanoma" else ("benign", "malignant"))
    return Listing("isic", split, root, tuple(records), has_masks, len(class_names), class_names, tuple(skipped))


# ------------------------------------------------------------------------------------------ Places365

PLACES365_LAYOUT = """\
  <data_dir>/
    val_256/Places365_val_00000001.jpg        (or val_large/)
    places365_val.txt                         lines "Places365_val_00000001.jpg 165"
                                              (or filelist_places365-standard/places365_val.txt, meta/places365_val.txt)
    categories_places365.txt                  optional, lines "/a/airfield 0"
"""
_PLACES_SPLITS = {"validation": "validation", "val": "validation"}


def _find_file(root: str, name: str) -> str | None:
    for sub in ("", "filelist_places365-standard", "meta"):
        path = os.path.join(root, sub, name)
        if os.path.isfile(path):
            return path
    return None


def list_places365(data_dir, split: str = "validation") -> Listing:
    """List the Places365 validation images with their labels from ``places365_val.txt``.

    Args:
      data_dir: the directory holding ``val_256/`` (or ``val_large/``) and the label file.
      split: ``"validation"``.

    Returns:
      a :class:`Listing` without masks; labels listed for missing image files are skipped.
    """
    _split_key(split, _PLACES_SPLITS, "places365")
    root = _require_dir(data_dir, PLACES365_LAYOUT)
    image_dir = next((os.path.join(root, d) for d in ("val_256", "val_large") if os.path.isdir(os.path.join(root, d))), None)
    if image_dir is None:
        raise _layout_error("no Places365 validation image folder (val_256/ or val_large/) in", root, PLACES365_LAYOUT)
    label_file = _find_file(root, "places365_val.txt")
    if label_file is None:
        raise _layout_error("no places365_val.txt label file in", root, PLACES365_LAYOUT)
    records, skipped = [], []
    with open(label_file) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetLayoutError(f"{label_file}:{line_no}: expected '<file name> <label>', got {line.strip()!r}")
            name, label = parts[0].lstrip("/"), int(parts[1])
            path = os.path.join(image_dir, name)
            if not os.path.isfile(path):
                skipped.append(SkippedFile(name, path, f"listed in {os.path.basename(label_file)} but not found"))
                continue
            records.append(Record(name, path, label))
    records.sort(key=lambda r: r.name)
    class_names: tuple[str, ...] = ()
    categories = _find_file(root, "categories_places365.txt")
    if categories is not None:
        with open(categories) as f:
            pairs = [line.split() for line in f if line.strip()]
        class_names = tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))
    return Listing("places365", "validation", root, tuple(records), False, 365, class_names, tuple(skipped))



# --------------------------------------------------------------------------------------------- folder

FOLDER_LAYOUT = """\
  <data_dir>/                           any folder of images, in one of three forms:
    labels.txt                          (a) lines "<file><TAB><class index>[<TAB><class name>]",
    photo_001.jpg                           <file> relative to data_dir, each file once, index >= 0
    ...
  or
    <class>/photo_001.jpg               (b) one subfolder per class, named by its class index
                                            ("281"), by an ImageNet wnid ("n02123045"), or by a
                                            class name of gag_jax/imagenet_classes.txt ("tabby",
                                            "Egyptian_cat"; any case, "_" = " "; for 1000-class
                                            models) or of --case-option class_names=FILE (one name
                                            per line, line k = class k)
  or
    photo_001.jpg                       (c) images alone: unlabelled (evaluate --target predicted)
  and optionally
    masks/photo_001.png                 a binary mask per image, same path and stem (grey > 127 =
                                        object), the image's aspect ratio (any resolution: it is
                                        resized); then Dice and MAE are computed too
"""
_FOLDER_SPLITS = {"all": "all"}
_IMAGENET_NAMES = "gag_jax/imagenet_classes.txt"
_CLASS_NAMES_HINT = "--case-option class_names=FILE (one class name per line, line k = class k)"


def _some(items: Sequence[str], limit: int = 8) -> str:
    """``"a, b, c"``, cut after ``limit`` items with ``"... (N in all)"``."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def _parse_labels_file(path: str) -> list[tuple[str, int, str | None, int]]:
    """``(file, class index, class name or None, line number)`` per line of a ``labels.txt``.

    Raises:
      DatasetLayoutError: ``"<path>:<line>: ..."`` for a line that is not ``<file> <index>
        [<name>]``, a negative class index, or a file listed a second time (the message names the
        line of its first listing too).
    """
    entries = []
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            text = line.rstrip("\n\r")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            parts = text.split("\t") if "\t" in text else text.split(None, 2)
            parts = [p.strip() for p in parts]
            if len(parts) < 2 or not re.fullmatch(r"[+-]?\d+", parts[1]):
                raise DatasetLayoutError(
                    f"{path}:{line_no}: expected '<file><TAB><class index>[<TAB><class name>]', got {text!r}")
            file, label = parts[0], int(parts[1])
            if label < 0:
                raise DatasetLayoutError(
                    f"{path}:{line_no}: class index {label} of {file} is negative; class indices are 0 or more "
                    f"(leave an image without a label out of {os.path.basename(path)})")
            key = os.path.normpath(file)
            if key in first_line:
                raise DatasetLayoutError(
                    f"{path}:{line_no}: {file} is listed again (first at line {first_line[key]}); list each image "
                    "once, with one class index")
            first_line[key] = line_no
            entries.append((file, label, parts[2] if len(parts) > 2 and parts[2] else None, line_no))
    return entries


def _find_mask(mask_dir: str, name: str) -> str | None:
    """The mask of example ``name`` (a path relative to data_dir): same relative stem, any image
    extension, or the same stem directly in ``mask_dir``. None when there is none."""
    stem = os.path.splitext(name)[0]
    candidates = [stem, os.path.basename(stem)]
    for candidate in candidates:
        for ext in (".png", ".PNG", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"):
            path = os.path.join(mask_dir, candidate + ext)
            if os.path.isfile(path):
                return path
    return None


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()


def _name_key(name: str) -> str:
    """How class names are compared: case-insensitive, ``_`` = space, runs of spaces as one."""
    return " ".join(name.replace("_", " ").split()).casefold()


def _class_name_list(class_names) -> tuple[list[str], str]:
    """``(names, where they come from)``: index = class. ``class_names`` is a file (one name per
    line, blank lines ignored), a sequence of names, or None: the 1000 ImageNet class names."""
    if class_names is None:
        return imagenet_classes(), _IMAGENET_NAMES
    if isinstance(class_names, (str, os.PathLike)):
        path = os.path.abspath(os.path.expanduser(os.fspath(class_names)))
        if not os.path.isfile(path):
            raise DatasetLayoutError(f"class_names file not found: {path} (one class name per line, line k = class k)")
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()], path
    return [str(n) for n in class_names], "class_names"


def _subfolder_labels(root: str, names: Sequence[str], synsets, class_names
                      ) -> tuple[dict[str, int], tuple[str, ...], int, tuple[str, ...]]:
    """Labels of the class subfolders ``names`` of ``root``, each resolved on its own.

    A folder named by digits is that class index; by an ImageNet wnid, the wnid's index in the
    classifier's class order (``synsets``, default the 1000 sorted ImageNet-1k wnids); by anything
    else, the index of the class of that name in ``class_names`` (default the 1000 ImageNet names
    of ``gag_jax/imagenet_classes.txt``), compared case-insensitively with ``_`` = space.

    Returns:
      ``(labels, class names, num_classes, imagenet_named)``: folder -> class index; the names of
      the label space (index = label; empty for index-named folders); its size; the folders
      resolved by ImageNet class name (``class_names`` None), which hold only for a 1000-class model.

    Raises:
      DatasetLayoutError: one line naming every folder whose name is no class name and every one
        that matches several classes (with their indices).
      ValueError: wnid folders that are not among the classifier's wnids.
    """
    labels = {n: int(n) for n in names if n.isdigit()}
    wnids = [n for n in names if _is_wnid(n)]
    words = [n for n in names if not n.isdigit() and not _is_wnid(n)]
    space: tuple[str, ...] = ()
    if wnids:
        classes = _imagenet1k_wnids(synsets)
        index = {w: i for i, w in enumerate(classes)}
        unknown = [n for n in wnids if n not in index]
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} are not among the classifier's {len(classes)} wnids; "
                             "pass synsets= (the model's wnid list)")
        labels.update({n: index[n] for n in wnids})
        space = tuple(classes)
    if words:
        known, where = _class_name_list(class_names)
        by_key: dict[str, list[int]] = {}
        for i, name in enumerate(known):
            by_key.setdefault(_name_key(name), []).append(i)
        unknown = [w for w in words if _name_key(w) not in by_key]
        ambiguous = [w for w in words if len(by_key.get(_name_key(w), ())) > 1]
        if unknown or ambiguous:
            problems = []
            if unknown:
                problems.append(f"class folder(s) {_some([w + '/' for w in unknown])} name no class of {where}")
            for w in ambiguous:
                candidates = ", ".join(f"{i} {known[i]!r}" for i in by_key[_name_key(w)])
                problems.append(f"class folder {w}/ matches several classes of {where} ({candidates}): "
                                "name it by its class index")
            hint = ("a class folder is named by a class index ('281'), an ImageNet wnid ('n02123045') or a class "
                    "name (any case, '_' = ' ')")
            if class_names is None:
                hint += f"; for a model whose classes are not ImageNet's, give their names: {_CLASS_NAMES_HINT}"
            raise DatasetLayoutError(f"{root}: {'; '.join(problems)}; {hint}")
        labels.update({w: by_key[_name_key(w)][0] for w in words})
        space = tuple(known)
    num_classes = max(len(space), max(labels.values()) + 1)
    return labels, space, num_classes, tuple(words) if class_names is None else ()


def list_folder(data_dir, split: str = "all", *, labels: str = "labels.txt", masks: str = "masks",
                synsets=None, class_names=None) -> Listing:
    """List a folder of images, labelled by a ``labels.txt``, by class subfolders, or not at all.

    Class subfolders are resolved each on its own: digits = the class index, an ImageNet wnid =
    its index among ``synsets``, any other name = the index of that class name (case-insensitive,
    ``_`` = space) in ``class_names``, by default the 1000 ImageNet names of
    ``gag_jax/imagenet_classes.txt``; such ImageNet-named folders hold for a 1000-class model only
    (:func:`check_model_classes` refuses another model). A name that matches no class, or
    several (``cardigan``: the dog and the sweater), stops the listing naming it.

    A mask may have another resolution than its image (it is resized with the image, nearest
    neighbour) but not another aspect ratio (up to one pixel of rounding): that is refused,
    naming the mask, since it cannot outline the image. A mask that cannot be decoded leaves its
    image out (named in ``skipped``); the other images go on.

    Args:
      data_dir: the folder (layouts in :data:`FOLDER_LAYOUT`).
      split: ``"all"`` (the only split of a folder).
      labels: name of the labels file inside ``data_dir`` (used when it exists).
      masks: name of the optional mask folder inside ``data_dir``.
      synsets: for wnid-named class subfolders: the classifier's wnid order (file or sequence;
        default the 1000 sorted ImageNet-1k wnids).
      class_names: for class subfolders named by words: the classifier's class names, index =
        class (a file with one name per line, or a sequence of str); None: ImageNet's 1000.

    Returns:
      a :class:`Listing` sorted by name; labels ``-1`` for an unlabelled folder; with a mask
      folder, ``has_masks=True`` and images without a (decodable) mask are skipped (named);
      ``label_origins`` name the labels file line or class folder of each class.

    Raises:
      DatasetLayoutError: a missing folder; a bad ``labels.txt`` line (malformed, negative class
        index, file listed twice: ``"<labels.txt>:<line>: ..."``); class folders whose names are no
        class (or several); a mask whose aspect ratio is not its image's. Each one line naming it.
    """
    _split_key(split, _FOLDER_SPLITS, "folder")
    root = _require_dir(data_dir, FOLDER_LAYOUT)
    mask_dir = os.path.join(root, masks)
    has_masks = os.path.isdir(mask_dir)
    labels_file = os.path.join(root, labels)
    entries: list[tuple[str, int]] = []
    skipped: list[SkippedFile] = []
    names_out: tuple[str, ...] = ()
    num_classes: int | None = None
    origins: dict[int, str] = {}
    imagenet_named: tuple[str, ...] = ()
    if os.path.isfile(labels_file):
        named: dict[int, str] = {}
        for file, label, name, line_no in _parse_labels_file(labels_file):
            path = os.path.join(root, file)
            if not os.path.isfile(path):
                skipped.append(SkippedFile(file, path, f"listed in {labels} but not found"))
                continue
            entries.append((file, label))
            origins.setdefault(label, f"{labels_file}:{line_no}")
            if name is not None:
                named.setdefault(label, name)
        known = [label for _, label in entries]
        num_classes = max(known) + 1 if known else None
        if named and num_classes:
            names_out = tuple(named.get(i, str(i)) for i in range(num_classes))
    else:
        subdirs = sorted(d for d in os.listdir(root) if d != masks and os.path.isdir(os.path.join(root, d))
                         and list_image_files(os.path.join(root, d)))
        if subdirs:
            label_of, names_out, num_classes, imagenet_named = _subfolder_labels(root, subdirs, synsets, class_names)
            for d in subdirs:
                origins.setdefault(label_of[d], os.path.join(root, d) + os.sep)
                entries += [(f"{d}/{os.path.basename(p)}", label_of[d]) for p in list_image_files(os.path.join(root, d))]
        else:
            entries = [(os.path.basename(p), -1) for p in list_image_files(root)]
    records, mismatched = [], []
    for name, label in sorted(entries):
        path = os.path.join(root, name)
        mask_path = _find_mask(mask_dir, name) if has_masks else None
        if has_masks:
            if mask_path is None:
                skipped.append(SkippedFile(name, path, f"no mask for it in {mask_dir}"))
                continue
            try:
                image_hw, mask_hw = image_hw_of(path, "image"), image_hw_of(mask_path, "mask")
            except BadImageError as err:
                skipped.append(SkippedFile(name, err.path, err.reason))
                continue
            if not aspect_matches(image_hw, mask_hw):
                mismatched.append((mask_path, mask_hw, path, image_hw))
                continue
        records.append(Record(name, path, label, mask_path, "binary"))
    if mismatched:
        mask_path, (mh, mw), path, (ih, iw) = mismatched[0]
        more = f"; {len(mismatched) - 1} more mask(s) like it" if len(mismatched) > 1 else ""
        raise DatasetLayoutError(
            f"mask {mask_path} is {mw}x{mh} px (width x height) but its image {path} is {iw}x{ih} px: another aspect "
            f"ratio ({mw / mh:.3f} vs {iw / ih:.3f}), so it cannot be laid onto the image; give each mask its "
            f"image's aspect ratio (another resolution is resized){more}")
    return Listing("folder", "all", root, tuple(records), has_masks, num_classes, names_out, tuple(skipped),
                   tuple(origins.items()), imagenet_named)


def check_model_classes(listing: Listing, model_classes: int) -> None:
    """Check that a listing's labels are classes of a model with ``model_classes`` outputs.

    Only what :func:`list_folder` records is checked (``label_origins``, ``imagenet_named``);
    the public datasets' listings pass.

    Args:
      listing: a :class:`Listing`.
      model_classes: ``K``, the classifier's number of outputs (logits ``(B, K)``).

    Raises:
      DatasetLayoutError: one line: for ``K != 1000``, the class folders named by ImageNet class
        names; else the first ``labels.txt`` line (``"<file>:<line>"``) or class folder whose class
        index is ``K`` or more.
    """
    if listing.imagenet_named and model_classes != 1000:
        raise DatasetLayoutError(
            f"{listing.root}: class folder(s) {_some([f + '/' for f in listing.imagenet_named])} are named by "
            f"ImageNet class names ({_IMAGENET_NAMES}), but the model has {model_classes} outputs, not ImageNet's "
            f"1000: name the folders by class index (0..{model_classes - 1}) or give the model's class names: "
            f"{_CLASS_NAMES_HINT}")
    beyond = [(label, where) for label, where in listing.label_origins if label >= model_classes]
    if beyond:
        label, where = beyond[0]
        more = f"; {len(beyond) - 1} more class(es) beyond it" if len(beyond) > 1 else ""
        raise DatasetLayoutError(f"{where}: class {label} is beyond the model's {model_classes} outputs "
                                 f"(classes 0..{model_classes - 1}){more}")
