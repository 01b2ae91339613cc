"""Streaming dataset evaluation: per-image metrics batch by batch, running mean and standard error."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from gag_jax.metrics._common import ModelFn
from gag_jax.metrics.perturbation import deletion_insertion
from gag_jax.metrics.rcap import rcap
from gag_jax.metrics.segmentation import log_cosh_dice, mae, target_probs

METRICS = ("rcap", "dauc", "iauc", "log_cosh_dice", "mae")
_MASK_METRICS = ("log_cosh_dice", "mae")


class RunningStat:
    """Count, mean and sum of squared deviations of a stream of numbers, merged batch by batch
    with Chan et al.'s parallel update (float64; stable, order independent up to rounding)."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0):
        self.n, self.mean, self.m2 = int(n), float(mean), float(m2)

    def update(self, values) -> None:
        """Add a batch of values (any shape, flattened)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        self.merge(RunningStat(v.size, v.mean(), float(np.sum((v - v.mean()) ** 2))))

    def merge(self, other: "RunningStat") -> None:
        """Fold another stream's statistics into this one (Chan's pairwise update)."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1); NaN for fewer than 2 values."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of the mean, ``std / sqrt(n)``; NaN for fewer than 2 values."""
        return self.std / math.sqrt(self.n) if self.n > 1 else float("nan")

    def as_dict(self) -> dict:
        """``{"mean", "sem", "std", "n"}`` of the stream so far (mean NaN when empty)."""
        return {"mean": self.mean if self.n else float("nan"), "sem": self.sem, "std": self.std,
                "n": self.n}


class StreamingEvaluator:
    """Accumulates per-image metrics over batches; memory for one batch plus a few floats.

    ``update(batch)`` takes a mapping with ``"images"`` ``(B, H, W, C)``, ``"labels"`` ``(B,)``,
    ``"saliency"`` ``(B, H, W)`` and optionally ``"masks"`` ``(B, H, W)``; it computes the requested
    metrics for the whole batch (batched, jitted), keeps only the images that pass
    ``confidence_threshold`` (if set; the paper keeps target probability > 0.9), and folds the
    per-image values into running means / standard errors. ``result()`` returns
    ``{metric: {"mean", "sem", "std", "n"}}`` plus ``"_counts"`` (images seen / kept).

    A batch smaller than the first one (the last batch of a dataset) is padded by repeating its
    last image and the padding dropped, so the jitted metrics are not re-compiled for it.

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)``.
      metrics: names from ``("rcap", "dauc", "iauc", "log_cosh_dice", "mae")``; ``None`` = RCAP,
        DAUC, IAUC always, Log-Cosh Dice and MAE for batches that carry ``"masks"``. A mask metric
        asked for explicitly with a batch lacking masks raises ``ValueError``.
      confidence_threshold: ``None`` (keep all) or keep images with target probability above it.
      rcap_options, auc_options: keyword options for :func:`rcap` / :func:`deletion_insertion`.
      mae_sqrt, dice_smooth: options of :func:`mae` / :func:`log_cosh_dice`.
      batch_size: forwarded to the model-calling metrics (copies per model call).
    """

    def __init__(self, model_fn: ModelFn, *, metrics: Sequence[str] | None = None,
                 confidence_threshold: float | None = None, rcap_options: Mapping | None = None,
                 auc_options: Mapping | None = None, mae_sqrt: bool = False,
                 dice_smooth: float = 1.0, batch_size: int | None = None):
        if metrics is not None:
            unknown = [m for m in metrics if m not in METRICS]
            if unknown:
                raise ValueError(f"unknown metrics {unknown}; choose from {METRICS}")
        self.model_fn = model_fn
        self.metrics = None if metrics is None else tuple(metrics)
        self.confidence_threshold = confidence_threshold
        self.rcap_options = dict(rcap_options or {})
        self.auc_options = dict(auc_options or {})
        self.mae_sqrt = bool(mae_sqrt)
        self.dice_smooth = float(dice_smooth)
        self.batch_size = batch_size
        self.stats: dict[str, RunningStat] = {}
        self.n_seen = 0
        self.n_kept = 0
        self._full = None  # batch size of the first batch

    def _wanted(self, has_masks: bool) -> tuple[str, ...]:
        if self.metrics is None:
            return ("rcap", "dauc", "iauc") + (_MASK_METRICS if has_masks else ())
        if not has_masks and any(m in _MASK_METRICS for m in self.metrics):
            raise ValueError(f"metrics {[m for m in self.metrics if m in _MASK_METRICS]} need "
                             f"batch['masks']")
        return self.metrics

    def update(self, batch: Mapping) -> dict:
        """Evaluate one batch; returns the per-image values kept (numpy, by metric) and ``"kept"``."""
        # device arrays stay on device; host arrays are transferred once
        images = jnp.asarray(batch["images"])
        labels = jnp.asarray(batch["labels"])
        saliency = jnp.asarray(batch["saliency"])
        masks = batch.get("masks")
        masks = None if masks is None else jnp.asarray(masks)
        wanted = self._wanted(masks is not None)
        b = images.shape[0]
        if self._full is None:
            self._full = b
        if b < self._full:  # pad to the compiled batch size
            pad = self._full - b

            def rep(a):
                return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)

            images, labels, saliency = rep(images), rep(labels), rep(saliency)
            masks = None if masks is None else rep(masks)

        keep = np.ones(images.shape[0], bool)
        if self.confidence_threshold is not None:
            p = np.asarray(target_probs(self.model_fn, images, labels, batch_size=self.batch_size))
            keep = p > self.confidence_threshold
        keep[b:] = False

        values: dict[str, np.ndarray] = {}
        if "rcap" in wanted:
            values["rcap"] = np.asarray(rcap(self.model_fn, images, labels, saliency,
                                             batch_size=self.batch_size, **self.rcap_options)["rcap"])
        if "dauc" in wanted or "iauc" in wanted:
            di = deletion_insertion(self.model_fn, images, labels, saliency,
                                    batch_size=self.batch_size, **self.auc_options)
            for name in ("dauc", "iauc"):
                if name in wanted:
                    values[name] = np.asarray(di[name])
        if "log_cosh_dice" in wanted:
            values["log_cosh_dice"] = np.asarray(log_cosh_dice(saliency, masks, smooth=self.dice_smooth))
        if "mae" in wanted:
            values["mae"] = np.asarray(mae(saliency, masks, sqrt=self.mae_sqrt))

        kept = {k: v[keep] for k, v in values.items()}
        for k, v in kept.items():
            self.stats.setdefault(k, RunningStat()).update(v)
        self.n_seen += b
        self.n_kept += int(keep.sum())
        kept["kept"] = keep[:b]
        return kept

    def result(self) -> dict:
        """``{metric: {"mean", "sem", "std", "n"}}`` over everything seen, plus ``"_counts"``."""
        out = {k: s.as_dict() for k, s in self.stats.items()}
        out["_counts"] = {"seen": self.n_seen, "kept": self.n_kept}
        return out


def evaluate_stream(model_fn: ModelFn, batches: Iterable[Mapping], **options) -> dict:
    """Evaluate an iterator of batches with a :class:`StreamingEvaluator` built from ``options``.

    Consumes ``batches`` lazily (one batch in memory at a time) and returns
    ``StreamingEvaluator.result()``: ``{metric: {"mean", "sem", "std", "n"}, "_counts": {...}}``.
    """
    ev = StreamingEvaluator(model_fn, **options)
    for batch in batches:
        ev.update(batch)
    return ev.result()
