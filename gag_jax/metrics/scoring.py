"""One scoring path: every metric of a batch by name, as per-image numpy arrays.

``score`` is what the runner (``gag-jax evaluate``), the streaming evaluator and the demo call;
the metric names below are the ones they accept and store.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gag_jax.metrics._common import UNSET, ModelFn, copies_argument
from gag_jax.metrics.complexity import complexity, sparseness
from gag_jax.metrics.deletion_insertion import DEFAULT_FRACTIONS, deletion_insertion
from gag_jax.metrics.rcap import rcap, rcap_percentiles
from gag_jax.metrics.road import ROAD_FRACTIONS, road
from gag_jax.metrics.segmentation import log_cosh_dice, mae, pointing_game

METRIC_NAMES: tuple[str, ...] = ("log_cosh_dice", "mae", "pointing_game", "rcap", "dauc", "iauc",
                                 "road_morf", "road_lerf", "sparseness", "complexity")
"""Every metric ``score`` computes, in table order (mask metrics, then model metrics, then map-only)."""

MASK_METRICS: tuple[str, ...] = ("log_cosh_dice", "mae", "pointing_game")
"""The metrics that need ground-truth masks."""

PAPER_METRICS: tuple[str, ...] = ("log_cosh_dice", "mae", "rcap", "dauc", "iauc")
"""The paper's five metrics: the default (without the mask metrics when there are no masks)."""

METRIC_LABELS: dict[str, str] = {
    "log_cosh_dice": "L_lc-dce", "mae": "MAE", "pointing_game": "Pointing", "rcap": "RCAP", "dauc": "DAUC",
    "iauc": "IAUC", "road_morf": "ROAD-MoRF", "road_lerf": "ROAD-LeRF", "sparseness": "Sparseness",
    "complexity": "Complexity",
}
"""Column titles of the metrics in tables."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "log_cosh_dice": False, "mae": False, "pointing_game": True, "rcap": True, "dauc": False, "iauc": True,
    "road_morf": False, "road_lerf": True, "sparseness": True, "complexity": False,
}
"""Direction of each metric (a faithful, focused map has high RCAP / IAUC / LeRF / pointing / sparseness)."""

OPTION_GROUPS: tuple[str, ...] = ("rcap", "deletion_insertion", "road", "log_cosh_dice", "mae", "pointing_game")
"""Keys of ``score``'s ``options``: the metric functions whose keyword options they hold."""


def forward_passes_per_map(metrics: Sequence[str]) -> int:
    """Model forward passes :func:`score` spends on one map with the default options: RCAP one per
    partition (5), DAUC and IAUC one per fraction of each curve (one call computes both: 20), ROAD
    one per fraction and order (9 each); the mask and map-only metrics none."""
    wanted = set(metrics)
    count = len(rcap_percentiles()) if "rcap" in wanted else 0
    count += 2 * len(DEFAULT_FRACTIONS) if wanted & {"dauc", "iauc"} else 0
    count += len(ROAD_FRACTIONS) * len(wanted & {"road_morf", "road_lerf"})
    return count


def default_metrics(has_masks: bool) -> tuple[str, ...]:
    """The paper's metrics: RCAP, DAUC, IAUC, plus Log-Cosh Dice and MAE when there are masks."""
    return tuple(m for m in PAPER_METRICS if has_masks or m not in MASK_METRICS)


def check_metrics(metrics: Sequence[str] | str | None, has_masks: bool) -> tuple[str, ...]:
    """Canonical metric names in :data:`METRIC_NAMES` order (comma-separated strings allowed).

    Args:
      metrics: names from :data:`METRIC_NAMES`; None: :func:`default_metrics`.
      has_masks: whether ground-truth masks are available.

    Raises:
      ValueError: an unknown name, or a mask metric without masks.
    """
    if metrics is None:
        return default_metrics(has_masks)
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted = [p.strip() for m in metrics for p in str(m).split(",") if p.strip()]
    unknown = [m for m in wanted if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_NAMES)}")
    if not has_masks and any(m in MASK_METRICS for m in wanted):
        raise ValueError(f"metrics {[m for m in wanted if m in MASK_METRICS]} need ground-truth masks")
    return tuple(m for m in METRIC_NAMES if m in wanted)


def score(model_fn: ModelFn, images, labels, maps, masks=None, *, metrics: Sequence[str] | str | None = None,
          copies_per_call: int | str | None = "auto", mean: Sequence[float] | None = None,
          std: Sequence[float] | None = None, options: Mapping[str, Mapping] | None = None,
          batch_size=UNSET) -> dict[str, np.ndarray]:
    """Per-image values of the chosen metrics for one batch of maps.

    Each model metric is one batched, jitted call (:func:`rcap`, one :func:`deletion_insertion`
    for DAUC and IAUC, one :func:`road` per order); the mask and map-only metrics are jitted too.
    Calling again with the same shapes, ``model_fn`` and options does not re-trace; pad a ragged
    last batch with :func:`gag_jax.data.pad_rows` and drop the padded rows afterwards.

    Args:
      model_fn: ``images (b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` float, normalised with ``mean`` / ``std``.
      labels: ``(B,)`` int target classes.
      maps: ``(B, H, W)`` saliency maps (non-negative for RCAP).
      masks: ``(B, H, W)`` ground truth, needed by :data:`MASK_METRICS`.
      metrics: names from :data:`METRIC_NAMES` (a comma-separated string too); None: the paper's
        metrics (:func:`default_metrics`).
      copies_per_call: max perturbed copies per model call of the model metrics (``"auto"``: see
        :func:`default_batch_size`); None: all at once.
      mean, std: the normalisation of ``images`` (RCAP's baseline, ROAD's noise scale); None: the
        model's input scaling (``gj.ModelFunctions.mean`` / ``.std``).
      options: keyword options per metric function, keyed by :data:`OPTION_GROUPS`, e.g.
        ``{"rcap": {"lower_bound": 50, "interval": 10, "baseline": "black"},
        "road": {"fractions": (0.1, 0.5, 0.9), "key": key}, "mae": {"sqrt": True}}``; they take
        precedence over ``copies_per_call`` / ``mean`` / ``std``.

    Returns:
      dict of numpy arrays with leading axis ``B``: one ``(B,)`` entry per metric asked for, plus
      the curves of the model metrics computed: ``"rcap_ratios"`` / ``"rcap_probs"`` ``(B, j)``,
      ``"deletion_curve"`` / ``"insertion_curve"`` ``(B, T)``, ``"road_morf_curve"`` /
      ``"road_lerf_curve"`` ``(B, F)``.

    Raises:
      ValueError: unknown metric or option group, a mask metric without ``masks``, and whatever
        the metric functions raise (shapes, NaN maps, labels outside the model's classes).

    Examples::

      values = gm.score(model_fn, images, labels, maps, masks, metrics=("rcap", "pointing_game"))
      values["rcap"].shape, values["rcap_ratios"].shape       # (B,), (B, 5)
    """
    copies_per_call = copies_argument(copies_per_call, batch_size, "score")
    wanted = check_metrics(metrics, masks is not None)
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_GROUPS))
    if unknown:
        raise ValueError(f"unknown option groups {unknown}; choose from {', '.join(OPTION_GROUPS)}")

    if "order" in (options.get("road") or {}):
        raise ValueError("options['road'] must not set 'order': ask for the metrics road_morf / road_lerf")

    def opts(group: str, **defaults) -> dict:
        return {**defaults, **dict(options.get(group) or {})}

    out: dict[str, np.ndarray] = {}
    if "rcap" in wanted:
        r = rcap(model_fn, images, labels, maps, **opts("rcap", mean=mean, std=std, copies_per_call=copies_per_call))
        out["rcap"], out["rcap_ratios"], out["rcap_probs"] = (np.asarray(r[k]) for k in ("rcap", "ratios", "probs"))
    if "dauc" in wanted or "iauc" in wanted:
        d = deletion_insertion(model_fn, images, labels, maps, **opts("deletion_insertion", copies_per_call=copies_per_call))
        out.update({k: np.asarray(d[k]) for k in ("dauc", "iauc", "deletion_curve", "insertion_curve")
                    if k in wanted or k.endswith("curve")})
    for order in ("morf", "lerf"):
        if f"road_{order}" in wanted:
            r = road(model_fn, images, labels, maps, order=order, **opts("road", std=std, copies_per_call=copies_per_call))
            out[f"road_{order}"], out[f"road_{order}_curve"] = np.asarray(r["auc"]), np.asarray(r["curve"])
    if "log_cosh_dice" in wanted:
        out["log_cosh_dice"] = np.asarray(log_cosh_dice(maps, masks, **opts("log_cosh_dice")))
    if "mae" in wanted:
        out["mae"] = np.asarray(mae(maps, masks, **opts("mae")))
    if "pointing_game" in wanted:
        out["pointing_game"] = np.asarray(pointing_game(maps, masks, **opts("pointing_game")))
    if "sparseness" in wanted:
        out["sparseness"] = np.asarray(sparseness(maps))
    if "complexity" in wanted:
        out["complexity"] = np.asarray(complexity(maps))
    return out
