"""Streaming dataset evaluation: per-image metrics batch by batch, running mean and standard error."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from gag_jax.data._common import pad_rows
from gag_jax.metrics._common import ModelFn
from gag_jax.metrics.registry import check_metrics, get
from gag_jax.metrics.scoring import score
from gag_jax.metrics.segmentation import target_probs


class RunningStat:
    """Count, mean and sum of squared deviations of a stream of numbers, merged batch by batch
    with Chan et al.'s parallel update (float64; stable, order independent up to rounding)."""

    __slots__ = ("m2", "mean", "n")

    def __init__(self, n: int = 0, mean: float = 0.0, m2: float = 0.0):
        self.n, self.mean, self.m2 = int(n), float(mean), float(m2)

    def update(self, values) -> None:
        """Add a batch of values (any shape, flattened)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        self.merge(RunningStat(v.size, v.mean(), float(np.sum((v - v.mean()) ** 2))))

    def merge(self, other: RunningStat) -> None:
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
    last image (:func:`gag_jax.data.pad_rows`) and the padding dropped, so the jitted metrics are
    not re-compiled for it. The values come from :func:`gag_jax.metrics.score`.

    Args:
      model_fn: ``(b, H, W, C) -> logits (b, K)``.
      metrics: names from :data:`gag_jax.metrics.METRIC_NAMES`; ``None`` = RCAP, DAUC, IAUC always,
        Log-Cosh Dice and MAE for batches that carry ``"masks"``. A mask metric asked for
        explicitly with a batch lacking masks raises ``ValueError``.
      confidence_threshold: ``None`` (keep all) or keep images with target probability above it.
      rcap_options, auc_options: keyword options for :func:`rcap` / :func:`deletion_insertion`.
      mae_sqrt, dice_smooth: options of :func:`mae` / :func:`log_cosh_dice`.
      copies_per_call: forwarded to the model-calling metrics (perturbed copies per model call; ``"auto"``
        as theirs).
      options: more per-metric options, as ``score``'s ``options`` (e.g. ``{"road": {...}}``).
    """

    def __init__(self, model_fn: ModelFn, *, metrics: Sequence[str] | None = None,
                 confidence_threshold: float | None = None, rcap_options: Mapping | None = None,
                 auc_options: Mapping | None = None, mae_sqrt: bool = False,
                 dice_smooth: float = 1.0, copies_per_call: int | str | None = "auto",
                 options: Mapping[str, Mapping] | None = None):
        self.model_fn = model_fn
        self.metrics = None if metrics is None else check_metrics(metrics, has_masks=True)
        self.confidence_threshold = confidence_threshold
        self.options = {"rcap": dict(rcap_options or {}), "deletion_insertion": dict(auc_options or {}),
                        "mae": {"sqrt": bool(mae_sqrt)}, "log_cosh_dice": {"smooth": float(dice_smooth)},
                        **dict(options or {})}
        self.copies_per_call = copies_per_call
        self.stats: dict[str, RunningStat] = {}
        self.n_seen = 0
        self.n_kept = 0
        self._full = None  # batch size of the first batch

    def _wanted(self, has_masks: bool) -> tuple[str, ...]:
        return check_metrics(self.metrics, has_masks)

    def update(self, batch: Mapping) -> dict:
        """Evaluate one batch; returns the per-image values kept (numpy, by metric) and ``"kept"``."""
        # device arrays stay on device; host arrays are transferred once
        arrays = {k: jnp.asarray(batch[k]) for k in ("images", "labels", "saliency", "masks")
                  if batch.get(k) is not None}
        wanted = self._wanted("masks" in arrays)
        b = arrays["images"].shape[0]
        if self._full is None:
            self._full = b
        if b < self._full:  # pad to the compiled batch size
            arrays, _ = pad_rows(arrays, self._full)

        keep = np.ones(arrays["images"].shape[0], bool)
        if self.confidence_threshold is not None:
            p = np.asarray(target_probs(self.model_fn, arrays["images"], arrays["labels"],
                                        batch_size=self.copies_per_call))
            keep = p > self.confidence_threshold
        keep[b:] = False

        groups = {get(m).option_group for m in wanted}  # the options of the metrics this batch scores
        values = score(self.model_fn, arrays["images"], arrays["labels"], arrays["saliency"], arrays.get("masks"),
                       metrics=wanted, copies_per_call=self.copies_per_call,
                       options={g: o for g, o in self.options.items() if g in groups and o})
        kept = {k: values[k][keep] for k in wanted}
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
