"""Model loading for the experiments and the CLI: the registry of ``models/`` plus ``tiny``."""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax import models, user_code
from gag_jax._signature import source_of

TINY = "tiny"
"""Name of the small synthetic-case CNN (:mod:`gag_jax.experiments.tiny`)."""

CASE_MODELS = {"imagenet_s": "resnet50", "isic": "efficientnet_b0", "places365": "densenet161", "synthetic": TINY,
               "folder": "efficientnet_lite0"}
"""The paper's model of each case (``tiny`` for the synthetic one; the shipped Lite0 for a folder)."""


def model_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per RGB channel that the model's inputs are standardised with (pixels in [0, 1]):
    ``gag_jax.models.input_normalization`` (the one registry; the shipped EfficientNet-Lite0 takes
    ``(x - 127) / 128``, the others and the synthetic-case ``tiny`` CNN ImageNet statistics)."""
    if user_code.is_reference(name):
        model = user_code.user_model(name)
        if model.mean is None or model.std is None:
            raise ValueError(f"model {name!r} carries no input scaling: build its ModelFunctions with mean=..., std=... "
                             "(the per-channel normalisation its inputs expect, pixels in [0, 1])")
        return model.mean, model.std
    check_model_name(name)
    scaling = models.input_normalization(name)
    return scaling["mean"], scaling["std"]


def model_names() -> tuple[str, ...]:
    """Every name ``load_model`` accepts: ``gag_jax.models.MODEL_NAMES`` (``"tiny"`` included)."""
    return tuple(models.MODEL_NAMES)


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` (listing the valid names) for an unknown model name; a ``module:attribute``
    reference is imported (one line naming a missing module or attribute)."""
    if user_code.is_reference(name):
        user_code.load_attribute(name, "model")
        return
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(model_names())}")


def load_model(name: str, checkpoint: str | os.PathLike | None = None, *, num_classes: int | None = None,
               dtype: Any = None, image_size: int = 224) -> tuple[gj.ModelFunctions, dict]:
    """Load a model as ``gj.ModelFunctions`` (logits, features, head, guided_logits).

    Args:
      name: ``resnet50``, ``efficientnet_b0``, ``efficientnet_lite0``, ``densenet161``, ``tiny``, or
        ``module:attribute`` naming a factory of your own that returns a ``gj.ModelFunctions``
        (its weights and input scaling are its own; ``checkpoint`` is not used).
      checkpoint: torch ``.pth``/``.pt`` or ``.msgpack`` (``tiny``: a file written by
        :func:`gag_jax.experiments.tiny.save_tiny`); None only for ``efficientnet_lite0``.
      num_classes: classifier outputs (None: inferred from the checkpoint).
      dtype: compute dtype (None: float32).
      image_size: the input side a ``module:attribute`` model's classes are counted at.

    Returns:
      ``(model_functions, info)`` where info has ``name``, ``checkpoint``, ``num_classes``; the
      ``ModelFunctions`` carries the model's input scaling (:func:`model_normalization`).

    Raises:
      ValueError: unknown name, or a checkpoint missing or not a file (:func:`check_model`);
      ``models.CheckpointMismatchError``: a checkpoint for another architecture.
    """
    if user_code.is_reference(name):
        model = user_code.user_model(name)
        model_normalization(name)  # it must carry its input scaling
        shape = jax.eval_shape(model, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)).shape
        if len(shape) != 2:
            raise ValueError(f"model {name!r} must map images (B, H, W, 3) to logits (B, K); got shape {shape}")
        return model, {"name": name, "checkpoint": None, "num_classes": int(shape[1]),
                       "source": source_of(user_code.load_attribute(name, "model")[0])}
    check_model(name, checkpoint)
    module, variables = models.load(name, checkpoint, num_classes=num_classes, dtype=dtype or jnp.float32)
    return models.model_functions(module, variables, **models.input_normalization(name)), {
        "name": name, "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "num_classes": int(module.num_classes)}


BUILT_IN_WEIGHTS = ("efficientnet_lite0",)
"""The models that load without a checkpoint (their weights ship with the package)."""


def check_model(name: str, checkpoint: str | os.PathLike | None = None, *, trains_tiny: bool = False) -> None:
    """The one checkpoint rule, checked before anything is loaded.

    A built-in model loads from a checkpoint file (only :data:`BUILT_IN_WEIGHTS` without one); ``tiny``
    too, unless the command trains it (``trains_tiny``: ``evaluate --case synthetic`` trains it into a
    checkpoint path that does not exist yet); a ``module:attribute`` factory loads its own weights.

    Raises:
      ValueError: an unknown name (the valid ones listed), a checkpoint that is not a file, no
        checkpoint where one is needed, or a checkpoint given to a factory of the user's.
    """
    check_model_name(name)
    if user_code.is_reference(name):
        if checkpoint is not None:
            raise ValueError(f"model {name!r} is your own factory: it loads its own weights (drop --checkpoint)")
        return
    if name == TINY and trains_tiny:
        return  # trained into the checkpoint path (or the run folder) when the file is not there yet
    if checkpoint is None:
        if name == TINY:
            raise ValueError("model 'tiny' needs --checkpoint (a file written by gag_jax.experiments.tiny.save_tiny; "
                             "evaluate --case synthetic trains one for you)")
        if name not in BUILT_IN_WEIGHTS:
            raise ValueError(f"model {name!r} needs --checkpoint (only {', '.join(BUILT_IN_WEIGHTS)} has built-in "
                             "weights)")
    elif not os.path.isfile(checkpoint):
        raise ValueError(f"--checkpoint {os.fspath(checkpoint)}: no such file")


def load_or_train(name: str, checkpoint: str | os.PathLike | None, *, num_classes: int | None = None,
                  train_classes: int | None = None, image_size: int = 32, seed: int = 0, steps: int = 300,
                  report=print) -> tuple[gj.ModelFunctions, dict, dict | None]:
    """:func:`load_model`, except that a ``tiny`` model whose checkpoint does not exist yet is
    first trained on the synthetic case and saved there.

    Args:
      name, checkpoint, num_classes: as :func:`load_model`.
      train_classes, image_size, seed, steps: the tiny model's training (classes, input side, PRNG
        seed, optimisation steps).
      report: receives a line before and after training.

    Returns:
      ``(model_functions, info, training)``: ``training`` is the training record (accuracy,
      seconds, ...) when the model was trained now, else None.
    """
    training = None
    if name == TINY and checkpoint is not None and not os.path.isfile(checkpoint):
        from gag_jax.experiments.tiny import trained_tiny

        classes = train_classes or 5
        report(f"training the tiny synthetic-case CNN ({classes} classes, {image_size}x{image_size}) ...")
        _, _, trained = trained_tiny(checkpoint, classes, image_size, seed=seed, steps=steps)
        report(f"  train accuracy {trained['train_accuracy']:.3f} in {trained['seconds']:.1f} s -> {checkpoint}")
        training = {k: v for k, v in trained.items() if k != "path"}
    model, info = load_model(name, checkpoint, num_classes=num_classes, image_size=image_size)
    return model, info, training


@jax.jit
def _softmax(model: gj.ModelFunctions, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(jnp.asarray(model.logits(images)).astype(jnp.float32), axis=-1)


def class_probabilities(model: gj.ModelFunctions, images, *, batch_size: int | None = None) -> np.ndarray:
    """The model's softmax ``(N, K)`` float32 of ``images (N, H, W, C)``, as every command computes it.

    Fixed-size batches of ``batch_size`` (None: all ``N`` in one) through ``gj.distributed.map_batches``
    (rounded up to the local device count, sharded over the local devices, the last batch padded and
    the padding dropped). One compile per batch shape (the model is a jit argument).
    """
    model = gj.model.as_model_functions(model)
    if int(images.shape[0]) == 0:
        raise ValueError("class_probabilities needs at least one image; got shape " + str(tuple(images.shape)))
    return gj.distributed.map_batches(_softmax, [images], batch_size=batch_size, shared=(model,))


def top_k_of(probs, k: int) -> np.ndarray:
    """``(N, k)`` int32: the ``k`` most probable classes of each row of ``probs (N, K)``, most probable
    first (ties: the lower class index first). The one ranking of ``evaluate --target top-K`` and
    ``explain --labels top-K``.

    Raises:
      ValueError: ``k`` outside ``1 .. K``.
    """
    probs = np.asarray(probs)
    if not 1 <= k <= probs.shape[-1]:
        raise ValueError(f"top-{k} needs 1 <= K <= {probs.shape[-1]} (the model's classes)")
    return np.argsort(-probs, axis=-1, kind="stable")[:, :k].astype(np.int32)


def top1_of(probs) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (N,) int32, probabilities (N,) float32)``: the most probable class of each row of
    ``probs (N, K)`` (the first one on a tie, as :func:`top_k_of`) and its probability."""
    probs = np.asarray(probs)
    classes = top_k_of(probs, 1)[:, 0]
    return classes, np.take_along_axis(probs, classes[:, None], axis=-1)[:, 0]


def predict_top1(model: gj.ModelFunctions, images, *, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's top-1 class of each image and its softmax probability, ``((N,) int32, (N,) float32)``:
    :func:`top1_of` of :func:`class_probabilities` (batched and sharded over the local devices). The
    one top-1 prediction of ``demo``, ``explain`` and ``sanity`` (``evaluate``'s selection applies
    :func:`top1_of` to the :func:`class_probabilities` it also ranks for ``--target top-K``)."""
    return top1_of(class_probabilities(model, images, batch_size=batch_size))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names shipped in ``gag_jax/imagenet_classes.txt`` (index = label)."""
    return models.imagenet_classes()


class InputTooSmallError(ValueError):
    """An input side below the smallest one the model takes (the message names that size)."""


def _takes_size(model: gj.ModelFunctions, size: int, channels: int) -> bool:
    """Whether ``model`` takes a ``(1, size, size, channels)`` input: its ``features`` keep a grid of
    at least 1 x 1 (or, without ``features``, its ``logits`` trace). Traced with
    ``jax.eval_shape``: no arithmetic is done."""
    import jax

    x = jax.ShapeDtypeStruct((1, size, size, channels), jax.numpy.float32)
    try:
        if model.features is not None:
            return min(jax.eval_shape(model.features, x).shape[1:3]) >= 1
        jax.eval_shape(model.logits, x)
    except (ValueError, TypeError, ZeroDivisionError):
        return False
    return True


def smallest_input_size(model: gj.ModelFunctions, *, channels: int = 3, start: int = 1, upper: int = 4096) -> int:
    """The smallest square input side ``S`` the model takes (see :func:`check_input_size`).

    Doubles from ``start`` until a side works, then bisects; every probe is a ``jax.eval_shape``
    trace of ``(1, S, S, channels)``, so nothing is computed.

    Args:
      model: the model's functions.
      channels: input channels.
      start: a side known or suspected to fail (the search starts there).
      upper: give up above this side.

    Raises:
      ValueError: no side up to ``upper`` works.
    """
    lo, hi = 0, max(1, int(start))  # lo fails (or is 0)
    while not _takes_size(model, hi, channels):
        lo, hi = hi, hi * 2
        if hi > upper:
            raise ValueError(f"the model takes no input side up to {upper} px")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _takes_size(model, mid, channels):
            hi = mid
        else:
            lo = mid
    return hi


def check_input_size(model: gj.ModelFunctions, size: int, *, name: str = "the model", option: str = "size") -> None:
    """Raise :class:`InputTooSmallError` naming the smallest side that works when ``size`` is too small.

    A side works when the model's ``features`` keep a grid of at least 1 x 1 (below that its
    convolutions fail or its pooling averages nothing and the logits are NaN) or, for a model
    without ``features``, when its ``logits`` trace.

    Args:
      model: the model's functions.
      size: the requested input side (pixels).
      name: the model's name (for the message).
      option: the option that set ``size`` (for the message, e.g. ``"--size"``).
    """
    if not _takes_size(model, size, 3):
        smallest = smallest_input_size(model, start=size)
        raise InputTooSmallError(f"{option} {size} is too small for {name}: the smallest input side it takes is "
                                 f"{smallest} px")
