"""One scoring path: every metric of a batch by name, as per-image numpy arrays.

``score`` is what the runner (``gag-jax evaluate``), the streaming evaluator and the demo call; it
reads the metric records (:mod:`gag_jax.metrics.registry`) and nothing else, so a metric registered
with :func:`gag_jax.metrics.register` is scored like a built-in one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gag_jax.metrics._common import ModelFn
from gag_jax.metrics.registry import check_metrics, compute, get


def score(model_fn: ModelFn, images, labels, maps, masks=None, *, metrics: Sequence[str] | str | None = None,
          copies_per_call: int | str | None = "auto", mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, options: Mapping[str, Mapping] | None = None, key=None,
          explainer=None) -> dict[str, np.ndarray]:
    """Per-image values of the chosen metrics for one batch of maps.

    Each metric record's function runs once per batch (DAUC and IAUC are one call), batched and
    jitted; calling again with the same shapes, ``model_fn`` and options does not re-trace; pad a
    ragged last batch with :func:`gag_jax.data.pad_rows` and drop the padded rows afterwards.

    Args:
      model_fn: a ``gj.ModelFunctions`` (or ``images (b, H, W, C) -> logits (b, K)``).
      images: ``(B, H, W, C)`` float, normalised as the model expects.
      labels: ``(B,)`` int target classes.
      maps: ``(B, H, W)`` saliency maps (non-negative for RCAP).
      masks: ``(B, H, W)`` ground truth, for the metrics that need masks.
      metrics: registered names or aliases (``gj.metrics.metric_names()``; a comma-separated string
        too); None: the paper's metrics (:func:`default_metrics`).
      copies_per_call: max perturbed copies per model call of the model metrics (``"auto"``: see
        :func:`default_batch_size`); None: all at once. Passed to every metric that takes it.
      mean, std: the normalisation of ``images`` (RCAP's baseline, ROAD's noise scale); None: the
        model's input scaling (``gj.ModelFunctions.mean`` / ``.std``).
      options: keyword options per metric, keyed by the record's ``option_group`` (its name;
        ``"deletion_insertion"`` for DAUC / IAUC, ``"road"`` for both ROAD orders), e.g.
        ``{"rcap": {"lower_bound": 50, "interval": 10}, "road": {"fractions": (0.1, 0.5, 0.9)},
        "mae": {"sqrt": True}}``; they take precedence over ``copies_per_call`` / ``mean`` / ``std``.
      key: PRNG key (one, or one per image) for the metrics that need one.
      explainer: for the metrics that re-explain (robustness, randomisation): a method name, a
        ``(name, options)`` pair or ``explainer(model, images, labels, key) -> (B, H, W)``.

    Returns:
      dict of numpy arrays with leading axis ``B``: one ``(B,)`` entry per metric asked for, plus
      each metric's curves (``"rcap_ratios"`` / ``"rcap_probs"`` ``(B, j)``, ``"deletion_curve"`` /
      ``"insertion_curve"`` ``(B, T)``, ``"road_morf_curve"`` ...).

    Raises:
      ValueError: unknown metric or option group, a mask metric without ``masks``, a metric whose
        result is not ``(B,)``, and whatever the metric functions raise.

    Examples::

      values = gm.score(model_fn, images, labels, maps, masks, metrics=("rcap", "pointing_game"))
      values["rcap"].shape, values["rcap_ratios"].shape       # (B,), (B, 5)
    """
    wanted = check_metrics(metrics, masks is not None)
    records = [get(name) for name in wanted]
    options = dict(options or {})
    groups = {r.option_group for r in records}
    unknown = sorted(set(options) - groups)
    if unknown:
        raise ValueError(f"options for {unknown}, which are not among the metrics asked for "
                         f"(option groups: {', '.join(sorted(groups))})")
    if "order" in (options.get("road") or {}):
        raise ValueError("options['road'] must not set 'order': ask for the metrics road_morf / road_lerf")
    return compute(records, model_fn, images, labels, maps, masks=masks, key=key, explainer=explainer,
                   options=options, shared={"copies_per_call": copies_per_call, "mean": mean, "std": std})
