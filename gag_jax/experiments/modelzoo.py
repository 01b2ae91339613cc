"""Model loading for the experiments and the CLI: the registry of ``models/`` plus ``tiny``."""
from __future__ import annotations

import os
from typing import Any

import gag_jax as gj

TINY = "tiny"
"""Name of the small synthetic-case CNN (:mod:`gag_jax.experiments.tiny`)."""

CASE_MODELS = {"imagenet_s": "resnet50", "isic": "efficientnet_b0", "places365": "densenet161", "synthetic": TINY}
"""The paper's model of each case (``tiny`` for the synthetic one)."""


def model_names() -> tuple[str, ...]:
    """Every name ``load_model`` accepts: ``models.MODEL_NAMES`` and ``"tiny"``."""
    from models import MODEL_NAMES

    return tuple(MODEL_NAMES) + (TINY,)


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` (listing the valid names) for an unknown model name."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")


def load_model(name: str, checkpoint: str | os.PathLike | None = None, *, num_classes: int | None = None,
               dtype: Any = None) -> tuple[gj.ModelFunctions, dict]:
    """Load a model as ``gj.ModelFunctions`` (logits, features, head, guided_logits).

    Args:
      name: ``resnet50``, ``efficientnet_b0``, ``efficientnet_lite0``, ``densenet161`` or ``tiny``.
      checkpoint: torch ``.pth``/``.pt`` or ``.msgpack`` (``tiny``: a file written by
        :func:`gag_jax.experiments.tiny.save_tiny`); None only for ``efficientnet_lite0``.
      num_classes: classifier outputs (None: inferred from the checkpoint).
      dtype: compute dtype (None: float32).

    Returns:
      ``(model_functions, info)`` where info has ``name``, ``checkpoint``, ``num_classes``.

    Raises:
      ValueError: unknown name or missing checkpoint; FileNotFoundError: no such checkpoint;
      ``models.CheckpointMismatchError``: a checkpoint for another architecture.
    """
    check_model_name(name)
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    if name == TINY:
        from gag_jax.experiments.tiny import load_tiny, tiny_model_functions

        if checkpoint is None:
            raise ValueError("model 'tiny' needs --checkpoint (evaluate --case synthetic trains one for you)")
        module, variables = load_tiny(checkpoint)
        return gj.ModelFunctions(**tiny_model_functions(module, variables)), {
            "name": name, "checkpoint": os.fspath(checkpoint), "num_classes": module.num_classes}
    import jax.numpy as jnp

    from models import load, model_functions

    module, variables = load(name, checkpoint, num_classes=num_classes, dtype=dtype or jnp.float32)
    return gj.ModelFunctions(**model_functions(module, variables)), {
        "name": name, "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "num_classes": int(module.num_classes)}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names shipped in ``models/imagenet_classes.txt`` (index = label)."""
    import models

    return models.imagenet_classes()
