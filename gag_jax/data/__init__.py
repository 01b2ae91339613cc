"""Datasets for the paper's cases and the synthetic set, as fixed-size numpy batches.

- :func:`load_case`: ``"imagenet_s"``, ``"isic"``, ``"places365"`` (a copy the user has; read via a
  prepared tensorflow-datasets copy, or straight from the files), ``"folder"`` (any folder of
  images, labelled by a ``labels.txt`` or class subfolders, or unlabelled) or ``"synthetic"``.
- :func:`make_synthetic`: shapes on textured backgrounds with exact masks, from a seed.
- :func:`load_image_files`: image files / a folder -> pixels, normalised images, names;
  :func:`read_images`: the same as the commands read it (each bad file reported in one line, a
  notice for upscaled images, :func:`upscale_notice`); :func:`prepare_pixels`: in-memory photos
  -> a model batch.

Images are normalised with the model's own input scaling: pass ``model=`` (a ``gj.ModelFunctions``)
or ``mean=`` / ``std=``; there is no ImageNet default (only the synthetic case, whose model is
fixed, defaults to its model's scaling: :data:`SYNTHETIC_MEAN` / :data:`SYNTHETIC_STD`).

Every loader records the files it leaves out (:class:`SkippedFile`) instead of dropping them
silently; layout problems raise :class:`DatasetLayoutError`, undecodable files
:class:`BadImageError` (both name the path).
"""
from gag_jax.data._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImageError,
    DatasetLayoutError,
    SkippedFile,
    iterate_batches,
    normalize,
    pad_batch,
    pad_rows,
    prepare_pixels,
)
from gag_jax.data.layouts import (
    ISIC_CLASSES,
    list_folder,
    list_imagenet_s,
    list_isic,
    list_places365,
)
from gag_jax.data.loader import (
    UPSCALE_NOTICE_FACTOR,
    read_images,
    upscale_notice,
    CASE_IMAGE_SIZES,
    CASES,
    LAYOUTS,
    Batches,
    load_case,
    load_image_files,
)
from gag_jax.data.synthetic import SHAPES, SYNTHETIC_MEAN, SYNTHETIC_STD, make_synthetic, shape_mask, synthetic_batches

__all__ = [
    "CASES",
    "CASE_IMAGE_SIZES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC_CLASSES",
    "LAYOUTS",
    "SHAPES",
    "SYNTHETIC_MEAN",
    "SYNTHETIC_STD",
    "BadImageError",
    "Batches",
    "DatasetLayoutError",
    "SkippedFile",
    "iterate_batches",
    "list_folder",
    "list_imagenet_s",
    "list_isic",
    "list_places365",
    "load_case",
    "load_image_files",
    "make_synthetic",
    "normalize",
    "pad_batch",
    "pad_rows",
    "prepare_pixels",
    "read_images",
    "shape_mask",
    "synthetic_batches",
    "upscale_notice",
    "UPSCALE_NOTICE_FACTOR",
]
