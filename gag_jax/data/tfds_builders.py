"""tensorflow-datasets builders for the paper's cases, fed by :mod:`gag_jax.data.layouts`.

Preparation decodes every image once with Pillow, resizes it (and its mask) to the case size and
stores uint8 examples as ArrayRecord files; reading goes through ``builder.as_data_source(split)``
(random access, numpy, no TensorFlow at read time). Encoding ``tfds.features.Image`` needs
TensorFlow, so preparing needs the ``data`` extra (``pip install 'gag-jax[data]'``).

One prepared dataset per (case, split, size, resize mode, source listing): the config name ends in
a digest of the listing (file names, sizes, modification times, labels), so a changed copy on disk
is prepared afresh instead of reading a stale cache. Files that cannot be decoded are skipped and
recorded in ``builder.info.metadata["skipped"]`` (``on_error="skip"``) or stop the preparation
with an error naming the file (``on_error="raise"``).

Example features: ``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W, 1) in {0, 1} (cases with masks),
``label`` int64 (``-1`` = unknown), ``name`` text (the file path relative to its image folder).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from gag_jax.data._common import BadImageError, SkippedFile, read_image, read_mask
from gag_jax.data.layouts import Listing

log = logging.getLogger(__name__)


# module -> pip package. TensorFlow encodes the image features; tensorflow-datasets 4.9 also
# imports importlib_resources for builders defined in a package, without declaring it.
_TFDS_REQUIREMENTS = {"tensorflow": "tensorflow-cpu", "importlib_resources": "importlib_resources"}


def missing_requirements() -> list[str]:
    """The pip packages that preparing a tfds copy needs and that are not installed (empty: ready)."""
    return [pkg for module, pkg in _TFDS_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]


@dataclasses.dataclass
class CaseConfig(tfds.core.BuilderConfig):
    """Builder config of one prepared case.

    Attributes:
      split: tfds split name (the case split with ``-`` replaced by ``_``).
      image_size: ``(H, W)`` stored size.
      resize_mode: ``"squash"`` or ``"center_crop"``.
      on_error: ``"skip"`` (record bad files) or ``"raise"``.
      has_masks: whether examples carry a ``mask``.
    """

    split: str = "validation"
    image_size: tuple = (224, 224)
    resize_mode: str = "squash"
    on_error: str = "skip"
    has_masks: bool = False


class _CaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Builds one case from a :class:`~gag_jax.data.layouts.Listing` (no download: data is local)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "First release."}
    BUILDER_CONFIGS: ClassVar[list] = []

    def __init__(self, *, listing: Listing, **kwargs):
        self._listing = listing
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        height, width = cfg.image_size
        features = {
            "image": tfds.features.Image(shape=(height, width, 3)),
            "label": tfds.features.Scalar(np.int64),
            "name": tfds.features.Text(),
        }
        if cfg.has_masks:
            features["mask"] = tfds.features.Image(shape=(height, width, 1))
        listing = self._listing
        metadata = tfds.core.MetadataDict(
            source=listing.root,
            num_classes=listing.num_classes,
            class_names=list(listing.class_names),
            skipped=[dataclasses.astuple(s) for s in listing.skipped],
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"gag-jax case {listing.case!r}, split {listing.split!r}, read from {listing.root}",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            metadata=metadata,
            # Keep the listing's sorted order: batch k is the same examples on every run (resumable runs).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data is the user's local copy
        return {self.builder_config.split: self._generate_examples()}

    def _generate_examples(self):
        cfg = self.builder_config
        for index, record in enumerate(self._listing.records):
            try:
                example = {
                    "image": read_image(record.image_path, cfg.image_size, cfg.resize_mode),
                    "label": record.label,
                    "name": record.name,
                }
                if cfg.has_masks:
                    mask = read_mask(record.mask_path, cfg.image_size, cfg.resize_mode, kind=record.mask_kind, class_id=record.mask_class)
                    example["mask"] = mask[..., None]
            except BadImageError as err:
                if cfg.on_error == "raise":
                    raise
                log.warning("skipping %s: %s", err.path, err.reason)
                self.info.metadata["skipped"].append([record.name, err.path, err.reason])
                continue
            yield f"{index:09d}", example


class GagImagenetS(_CaseBuilder):
    """ImageNet-S (50 / 300 / 919): images, class labels, segmentation masks of the image's class."""


class GagIsic(_CaseBuilder):
    """ISIC 2018 / 2019: lesion images, diagnosis labels, lesion masks (Task 1 sets)."""


class GagPlaces365(_CaseBuilder):
    """Places365 validation images with their scene labels."""


class GagFolder(_CaseBuilder):
    """A user's folder of images (labels from ``labels.txt`` or class subfolders, optional masks)."""


BUILDERS = {"imagenet_s": GagImagenetS, "isic": GagIsic, "places365": GagPlaces365, "folder": GagFolder}


def listing_digest(listing: Listing, **settings) -> str:
    """Short hex digest of a listing (names, files' sizes and mtimes, labels, masks) and settings."""
    h = hashlib.sha1()
    h.update(json.dumps([listing.case, listing.root, listing.split, sorted(settings.items())], default=str).encode())
    for r in listing.records:
        stats = []
        for path in (r.image_path, r.mask_path):
            if path is not None:
                st = os.stat(path)
                stats += [st.st_size, st.st_mtime_ns]
        h.update(json.dumps([r.name, r.image_path, r.label, r.mask_path, r.mask_kind, r.mask_class, stats]).encode())
    return h.hexdigest()[:12]


def prepare(listing: Listing, image_size, *, resize_mode: str = "squash", on_error: str = "skip", cache_dir=None):
    """Prepare (once) and return the tfds builder of a listing.

    Args:
      listing: what :mod:`gag_jax.data.layouts` found on disk.
      image_size: ``(H, W)`` stored size.
      resize_mode: ``"squash"`` or ``"center_crop"``.
      on_error: ``"skip"`` bad files (recorded in ``info.metadata["skipped"]``) or ``"raise"``.
      cache_dir: tfds data dir for the prepared files (default: tfds' own, ``~/tensorflow_datasets``
        or ``$TFDS_DATA_DIR``).

    Returns:
      ``(builder, split)``: a prepared ``tfds.core.DatasetBuilder`` and its split name; read with
      ``builder.as_data_source(split)`` or ``tfds.as_numpy(builder.as_dataset(split=split))``.

    Raises:
      ImportError: TensorFlow (or importlib_resources) missing and the dataset is not prepared yet.
      BadImageError: ``on_error="raise"`` and a file cannot be decoded (the error names it).
    """
    height, width = image_size
    split = listing.split.replace("-", "_")
    if split == "all":  # a folder's one split; tfds reserves the name "all"
        split = "all_images"
    digest = listing_digest(listing, image_size=(height, width), resize_mode=resize_mode, on_error=on_error)
    config = CaseConfig(
        name=f"{split}_{height}x{width}_{resize_mode}_{digest}",
        description=f"{listing.case} {listing.split} from {listing.root}",
        split=split,
        image_size=(height, width),
        resize_mode=resize_mode,
        on_error=on_error,
        has_masks=listing.has_masks,
    )
    kwargs = {"config": config}
    if cache_dir is not None:
        kwargs["data_dir"] = os.fspath(cache_dir)
    builder = BUILDERS[listing.case](listing=listing, **kwargs)
    if not builder.is_prepared():
        missing = missing_requirements()
        if missing:
            raise ImportError(
                f"preparing the tensorflow-datasets copy of this case needs {', '.join(missing)}, not installed: "
                "pip install 'gag-jax[data]', or read the files directly with backend='files'"
            )
        builder.download_and_prepare(file_format="array_record")
    return builder, split


def skipped_files(builder) -> list[SkippedFile]:
    """The files a prepared builder left out, with reasons (listing skips and undecodable files)."""
    return [SkippedFile(*entry) for entry in builder.info.metadata.get("skipped", [])]
