"""The job layer under the commands: one options object, one model loader, one key function, one
batch loop.

The command line builds a :class:`Job` once from its flags (each flag declared once in
``gag_jax.cli``); ``demo``, ``explain``, ``evaluate`` and ``sanity`` take it and share what it
knows how to do:

* :meth:`Job.load_model`: the model as a ``gj.ModelFunctions`` (a built-in name, a checkpoint or
  ``module:attribute``; ``modelzoo.load_model``) with the methods and the input size checked;
* :meth:`Job.keys`: one PRNG key per image from the seed and the image's file name
  (``gj.keys.file_keys``), so the same image, seed and method give the same map in every command;
* :meth:`Job.method_options`: ``n`` / ``chunk_size`` where a method takes them (the input scaling is
  never among them: the model carries it);
* :meth:`Job.explain`: maps in fixed-size batches sharded over the local devices
  (``gj.distributed.map_batches``, the one host-side batch loop: pad, shard, call, un-pad).

``evaluate``'s resumable stages (``experiments.stages``) stream their batches from the dataset, write a
record per (method, batch) and split the batches between hosts, so they keep their own loop; they
take the job's options through ``runner.evaluate_case`` and key each image with the same
``gj.keys.file_keys``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

import gag_jax as gj


class BadInputError(ValueError):
    """An input that cannot be explained as given (no readable image, labels that do not fit the
    images or the model); the message names it. The command line reports it in one line, exit 2."""


# the command-line flag behind each field (``--out`` is ``out_dir``, ``--model`` ``model_name`` ...)
_FLAG_OF_FIELD = {"out_dir": "out", "model_name": "model", "checkpoint": "checkpoint", "methods": "methods",
                  "n": "n", "chunk_size": "chunk_size", "seed": "seed", "batch_size": "batch_size",
                  "metric_batch_size": "metric_batch_size"}


@dataclasses.dataclass(frozen=True)
class Job:
    """The options the commands share, built once by the command line (:meth:`from_args`).

    Attributes:
      out_dir: where the command writes.
      methods: method (or, for ``evaluate``, row) names; None: the command's default.
      model_name: a built-in model, ``module:attribute``, or None (the command's default).
      checkpoint: the model's weights (None: its built-in ones, where it has them).
      n: modifications per method (None: the method's default).
      chunk_size: modifications per vmapped chunk (None: the method's default).
      seed: PRNG seed of every image's key.
      batch_size: images per explainer call (None: the command's default).
      metric_batch_size: perturbed copies per model call in the metrics (``"auto"``: per backend).
      progress: tqdm bars.
    """

    out_dir: str
    methods: tuple[str, ...] | None = None
    model_name: str | None = None
    checkpoint: str | None = None
    n: int | None = None
    chunk_size: int | None = None
    seed: int = 0
    batch_size: int | None = None
    metric_batch_size: int | str | None = "auto"
    progress: bool = True

    @classmethod
    def from_args(cls, args: Any, **overrides) -> Job:
        """The job of a parsed command line (``argparse.Namespace``): each field from its flag where
        the command has it (``--no-progress`` -> ``progress``), else its default; ``overrides`` win."""
        values = {field: getattr(args, flag) for field, flag in _FLAG_OF_FIELD.items() if hasattr(args, flag)}
        if hasattr(args, "no_progress"):
            values["progress"] = not args.no_progress
        values = {k: v for k, v in values.items() if v is not None}  # None: the field's default
        values.update(overrides)
        if values.get("methods") is not None:
            values["methods"] = tuple(values["methods"])
        return cls(**values)

    def method_options(self, method: str, *, default_n: int | None = None) -> dict:
        """The options passed to ``gj.explain`` for ``method``: ``n`` (else ``default_n``) and
        ``chunk_size`` where the method takes them (None keeps the method's default). The input
        scaling is not among them: ``gj.explain`` reads it from the model."""
        options = {"n": self.n if self.n is not None else default_n, "chunk_size": self.chunk_size}
        return {k: v for k, v in options.items() if v is not None and k in gj.METHOD_RECORDS[method].defaults}

    def keys(self, files: Sequence[str]) -> jax.Array:
        """``(N, 2)`` keys from the seed and each image's file name (``gj.keys.file_keys``): the same
        image, seed and method give the same map from ``demo``, ``explain``, ``evaluate`` and ``sanity``."""
        return gj.keys.file_keys(self.seed, files)

    def load_model(self, size: int, *, methods: Sequence[str] = (), default: str = "efficientnet_lite0",
                   option: str = "--size") -> tuple[gj.ModelFunctions, dict]:
        """The model every command starts with: ``methods`` checked, the model loaded
        (``modelzoo.load_model``: built-in name, checkpoint or ``module:attribute``; ``default`` when
        the job names none) and ``size`` checked against it. The model carries its input scaling.

        Returns:
          ``(model, info)`` as ``modelzoo.load_model``.

        Raises:
          ValueError: an unknown method or model (the valid ones named); ``modelzoo.InputTooSmallError``.
        """
        from gag_jax.experiments.modelzoo import check_input_size, load_model

        for m in methods:
            if m not in gj.METHOD_RECORDS:
                raise ValueError(f"unknown method {m!r}; expected one of {', '.join(gj.METHOD_RECORDS)}")
        name = self.model_name or default
        model, info = load_model(name, self.checkpoint, image_size=size)
        check_input_size(model, size, name=name, option=option)
        return model, info

    def explain(self, model: gj.ModelFunctions, images, targets, keys, method: str, *,
                options: Mapping[str, Any] | None = None, batch_size: int | None = None,
                batches: Sequence[int] | None = None, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Maps of ``images (N, H, W, C)`` for ``targets`` (``(N,)`` classes, or ``(N, K)``: K maps per
        image) in fixed-size batches sharded over the local devices (``gj.distributed.map_batches``:
        one compile per method; the last batch padded).

        Args:
          model, images, targets: as ``gj.explain``.
          keys: ``(N, 2)``, one per image (:meth:`keys`): an image's map does not depend on its batch.
          method: a ``gj.PRESETS`` name.
          options: method options (default :meth:`method_options`).
          batch_size: images per call (default the job's, else all).
          batches: only these batch indices (their images' maps, in order).
          on_batch: receives the number of images of each finished batch (progress).

        Returns:
          ``(M, H, W)`` (or ``(M, K, H, W)``) float32 maps in [0, 1].

        Raises:
          BadInputError: an option that does not fit the images or the model (one line, naming the method).
        """
        options = self.method_options(method) if options is None else dict(options)

        def explain_batch(m, x, y, k):
            return gj.explain(method, m, x, y, key=k, **options)

        try:
            return gj.distributed.map_batches(
                explain_batch, [np.asarray(images), np.asarray(targets, np.int32), keys],
                batch_size=batch_size or self.batch_size, shared=(model,), batches=batches, on_batch=on_batch)
        except ValueError as err:  # gj.explain: an option that does not fit the images or the model
            raise BadInputError(f"method {method!r}: {' '.join(str(err).split())}") from None
