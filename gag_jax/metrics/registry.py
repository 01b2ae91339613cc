"""Every metric as one :class:`Metric` record, and the registry the engine reads.

A record says what the package knows about a metric: its function, display label, category
(Quantus's six: faithfulness, robustness, randomisation, localisation, complexity, axiomatic),
direction, what it needs (ground-truth masks, a PRNG key, an explainer), its curves and its cost in
model forward passes per map. :func:`gag_jax.metrics.score`, ``gag-jax evaluate``, the tables, the
figures and the run manifest read these records and nothing else: adding a metric is its module,
its test and one line in ``_BUILTIN`` (or, from outside the package, :func:`register`).

Every record's function is called the same way::

    function(model, images (B, H, W, C), labels (B,), maps (B, H, W), **options)
        -> (B,) array, or {name: (B,), curve: (B, S), ...}

with ``masks=`` / ``key=`` / ``explainer=`` added when the record ``needs`` them.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gag_jax._signature import source_of
from gag_jax._validation import check_choice
from gag_jax.metrics import axioms as _ax
from gag_jax.metrics import faithfulness as _fa
from gag_jax.metrics import localisation as _lo
from gag_jax.metrics import randomisation as _ra
from gag_jax.metrics import robustness as _ro
from gag_jax.metrics.complexity import complexity, effective_complexity, sparseness
from gag_jax.metrics.deletion_insertion import DEFAULT_FRACTIONS, deletion_insertion
from gag_jax.metrics.rcap import rcap, rcap_percentiles
from gag_jax.metrics.road import ROAD_FRACTIONS, road
from gag_jax.metrics.segmentation import log_cosh_dice, mae, pointing_game

CATEGORIES: tuple[str, ...] = ("faithfulness", "robustness", "randomisation", "localisation", "complexity",
                               "axiomatic")
"""What a metric tests (Quantus's grouping, Hedstrom et al. 2023), in the order of the summary figure."""

NEEDS: tuple[str, ...] = ("masks", "key", "explainer")
"""What a metric may need beyond the model, images, labels and maps (passed as keywords)."""

SHARED_OPTIONS: tuple[str, ...] = ("copies_per_call", "mean", "std")
"""Engine-wide options ``score`` passes to every metric whose function takes them."""


@dataclasses.dataclass(frozen=True)
class Metric:
    """What the package knows about one metric.

    Attributes:
      name: the metric's name (a column of the run's records and tables).
      function: ``function(model, images, labels, maps, **options) -> (B,)`` or a dict holding
        ``name`` ``(B,)`` and any curves ``(B, S)``.
      label: column title in tables and figures.
      category: one of :data:`CATEGORIES`.
      higher_is_better: direction (tables mark it with an arrow; ranks follow it).
      needs: subset of :data:`NEEDS`; each is passed as a keyword (``masks=``, ``key=``,
        ``explainer=``).
      curves: names of the curve outputs ``(B, S)`` stored beside the value.
      forward_passes: model forward passes one map costs (a model gradient counts as 2):
        an int, or ``callable(options: dict) -> int`` of the metric's options.
      options_key: the key of ``score``'s ``options`` that holds this metric's keyword options
        (``"deletion_insertion"`` for DAUC and IAUC, which one call computes); default the name.
      paper: one of the paper's metrics (the default set).
      aliases: other names accepted on the command line (``dice``).
      source: ``module:attribute`` and a hash of the module's source for a user's metric.
    """

    name: str
    function: Callable
    label: str
    category: str
    higher_is_better: bool
    needs: frozenset = frozenset()
    curves: tuple[str, ...] = ()
    forward_passes: int | Callable[[Mapping[str, Any]], int] = 0
    options_key: str | None = None
    paper: bool = False
    aliases: tuple[str, ...] = ()
    source: Mapping[str, str] | None = None

    def __post_init__(self):
        check_choice(self.category, "Metric.category", CATEGORIES)
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown needs {unknown}; choose from {', '.join(NEEDS)}")
        if not callable(self.function):
            raise ValueError(f"metric {self.name!r}: function must be callable; got {type(self.function).__name__}")
        object.__setattr__(self, "curves", tuple(self.curves))
        object.__setattr__(self, "aliases", tuple(self.aliases))

    @property
    def option_group(self) -> str:
        """The key of ``score``'s ``options`` that holds this metric's options."""
        return self.options_key or self.name

    @property
    def named_options(self) -> frozenset:
        """Keyword names the function's signature names beyond its four arguments."""
        return _named(self.function)

    def cost(self, options: Mapping[str, Any] | None = None, image_shape: Sequence[int] | None = None) -> int:
        """Model forward passes one map costs with ``options`` on images of ``image_shape`` ``(H, W, C)``
        (None: the function's default, 224 x 224 x 3 for the metrics whose count depends on it)."""
        if callable(self.forward_passes):
            if image_shape is None:
                return int(self.forward_passes(dict(options or {})))
            return int(self.forward_passes(dict(options or {}), tuple(image_shape)))
        return int(self.forward_passes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly description (stored in the run manifest)."""
        return {"name": self.name, "label": self.label, "category": self.category,
                "higher_is_better": self.higher_is_better, "needs": sorted(self.needs), "curves": list(self.curves),
                **({"source": dict(self.source)} if self.source else {})}


def _named(function: Callable) -> frozenset:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in parameters[4:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


# ------------------------------------------------------------------ the built-in metrics' adapters
# (one call each: DAUC and IAUC share deletion_insertion, as each ROAD order its curve)

def _rcap(model, images, labels, maps, *, copies_per_call="auto", mean=None, std=None, **options):
    """RCAP, ReCover And Predict (the paper's eq. 5/6): recovered-ratio-weighted target probability of the
    images recovered at the map's top 10 ... 50 %."""
    out = rcap(model, images, labels, maps, copies_per_call=copies_per_call, mean=mean, std=std, **options)
    return {"rcap": out["rcap"], "rcap_ratios": out["ratios"], "rcap_probs": out["probs"]}


def _deletion_insertion(model, images, labels, maps, *, copies_per_call="auto", **options):
    """Deletion / Insertion AUC (Petsiuk et al. 2018, as the paper computed them): the target probability
    as the most salient pixels are deleted (set to the channel mean) / inserted into a blurred copy."""
    return deletion_insertion(model, images, labels, maps, copies_per_call=copies_per_call, **options)


def _road(order: str):
    def road_order(model, images, labels, maps, *, copies_per_call="auto", std=None, **options):
        """ROAD (Rong et al. 2022): the target probability as the most (MoRF) / least (LeRF) salient pixels are
        removed by noisy linear imputation."""
        out = road(model, images, labels, maps, order=order, copies_per_call=copies_per_call, std=std, **options)
        return {f"road_{order}": out["auc"], f"road_{order}_curve": out["curve"]}

    road_order.__name__ = f"road_{order}"
    return road_order


def _masked(function: Callable) -> Callable:
    def with_masks(model, images, labels, maps, *, masks, **options):
        return function(maps, masks, **options)

    with_masks.__name__, with_masks.__doc__ = function.__name__, function.__doc__
    return with_masks


def _map_only(function: Callable) -> Callable:
    def of_maps(model, images, labels, maps):
        return function(maps)

    of_maps.__name__, of_maps.__doc__ = function.__name__, function.__doc__
    return of_maps


def _rcap_cost(options, image_shape=None) -> int:
    return len(rcap_percentiles(options.get("lower_bound", 50), options.get("interval", 10)))


def _curve_cost(default: Sequence[float], per_fraction: int) -> Callable:
    return lambda options, image_shape=None: per_fraction * len(options.get("fractions", default))


_DI = _deletion_insertion
_BUILTIN: tuple[Metric, ...] = (
    Metric("log_cosh_dice", _masked(log_cosh_dice), "L_lc-dce", "localisation", False, {"masks"}, paper=True,
           aliases=("dice", "lcd", "l_lc-dce")),
    Metric("mae", _masked(mae), "MAE", "localisation", False, {"masks"}, paper=True),
    Metric("pointing_game", _masked(pointing_game), "Pointing", "localisation", True, {"masks"},
           aliases=("pointing",)),
    Metric("rcap", _rcap, "RCAP", "faithfulness", True, curves=("rcap_ratios", "rcap_probs"),
           forward_passes=_rcap_cost, paper=True),
    Metric("dauc", _DI, "DAUC", "faithfulness", False, curves=("deletion_curve",),
           forward_passes=_curve_cost(DEFAULT_FRACTIONS, 2), options_key="deletion_insertion", paper=True),
    Metric("iauc", _DI, "IAUC", "faithfulness", True, curves=("insertion_curve",),
           forward_passes=_curve_cost(DEFAULT_FRACTIONS, 2), options_key="deletion_insertion", paper=True),
    Metric("road_morf", _road("morf"), "ROAD-MoRF", "faithfulness", False, curves=("road_morf_curve",),
           forward_passes=_curve_cost(ROAD_FRACTIONS, 1), options_key="road"),
    Metric("road_lerf", _road("lerf"), "ROAD-LeRF", "faithfulness", True, curves=("road_lerf_curve",),
           forward_passes=_curve_cost(ROAD_FRACTIONS, 1), options_key="road"),
    Metric("faithfulness_correlation", _fa.faithfulness_correlation, "Faithfulness corr.", "faithfulness", True,
           {"key"}, forward_passes=_fa.cost("faithfulness_correlation")),
    Metric("faithfulness_estimate", _fa.faithfulness_estimate, "Faithfulness est.", "faithfulness", True,
           forward_passes=_fa.cost("faithfulness_estimate")),
    Metric("infidelity", _fa.infidelity, "Infidelity", "faithfulness", False, forward_passes=_fa.cost("infidelity")),
    Metric("pixel_flipping", _fa.pixel_flipping, "Pixel flipping", "faithfulness", False,
           curves=("pixel_flipping_curve",), forward_passes=_fa.cost("pixel_flipping")),
    Metric("region_perturbation", _fa.region_perturbation, "Region pert.", "faithfulness", True,  # MoRF drop
           curves=("region_perturbation_curve",), forward_passes=_fa.cost("region_perturbation")),
    Metric("selectivity", _fa.selectivity, "Selectivity", "faithfulness", False, curves=("selectivity_curve",),
           forward_passes=_fa.cost("selectivity")),
    Metric("irof", _fa.irof, "IROF", "faithfulness", True, forward_passes=_fa.cost("irof")),  # curve length varies
    Metric("monotonicity_correlation", _fa.monotonicity_correlation, "Monotonicity corr.", "faithfulness", True,
           {"key"}, forward_passes=_fa.cost("monotonicity_correlation")),
    Metric("max_sensitivity", _ro.max_sensitivity, "Max-Sens.", "robustness", False, {"key", "explainer"},
           forward_passes=_ro.cost("max_sensitivity")),
    Metric("avg_sensitivity", _ro.avg_sensitivity, "Avg-Sens.", "robustness", False, {"key", "explainer"},
           forward_passes=_ro.cost("avg_sensitivity")),
    Metric("local_lipschitz_estimate", _ro.local_lipschitz_estimate, "Local Lipschitz", "robustness", False,
           {"key", "explainer"}, forward_passes=_ro.cost("local_lipschitz_estimate")),
    Metric("relative_input_stability", _ro.relative_input_stability, "RIS", "robustness", False, {"key", "explainer"},
           forward_passes=_ro.cost("relative_input_stability")),
    Metric("relative_output_stability", _ro.relative_output_stability, "ROS", "robustness", False,
           {"key", "explainer"}, forward_passes=_ro.cost("relative_output_stability")),
    Metric("random_logit", _ra.random_logit, "Random logit", "randomisation", False, {"key", "explainer"},
           forward_passes=_ra.cost("random_logit")),
    Metric("smooth_mprt", _ra.smooth_mprt, "sMPRT", "randomisation", False, {"key", "explainer"},
           curves=("smooth_mprt_curve",), forward_passes=_ra.cost("smooth_mprt")),  # per randomisation step
    Metric("efficient_mprt", _ra.efficient_mprt, "eMPRT", "randomisation", True, {"key", "explainer"},
           forward_passes=_ra.cost("efficient_mprt")),  # per randomisation step
    Metric("sparseness", _map_only(sparseness), "Sparseness", "complexity", True, aliases=("gini",)),
    Metric("complexity", _map_only(complexity), "Complexity", "complexity", False, aliases=("entropy",)),
    Metric("attribution_localisation", _lo.attribution_localisation, "Attr. loc.", "localisation", True, {"masks"}),
    Metric("top_k_intersection", _lo.top_k_intersection, "Top-k inter.", "localisation", True, {"masks"}),
    Metric("relevance_rank_accuracy", _lo.relevance_rank_accuracy, "Rank acc.", "localisation", True, {"masks"}),
    Metric("relevance_mass_accuracy", _lo.relevance_mass_accuracy, "Mass acc.", "localisation", True, {"masks"}),
    Metric("localisation_auc", _lo.localisation_auc, "Loc. AUC", "localisation", True, {"masks"}),
    Metric("effective_complexity", effective_complexity, "Eff. complexity", "complexity", False),
    Metric("completeness", _ax.completeness, "Completeness", "axiomatic", True, forward_passes=2),  # x, baseline
    Metric("non_sensitivity", _ax.non_sensitivity, "Non-sensitivity", "axiomatic", False,
           forward_passes=_ax.non_sensitivity_forward_passes),
)

_REGISTRY: dict[str, Metric] = {m.name: m for m in _BUILTIN}


# ------------------------------------------------------------------ the registry


def metric_names() -> tuple[str, ...]:
    """Every registered metric, built-in first (in table order), then the user's in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Metric:
    """The record of a metric by name or alias.

    Raises:
      ValueError: an unknown name (the message lists the known ones).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    for record in _REGISTRY.values():
        if name in record.aliases:
            return record
    raise ValueError(f"unknown metric {name!r}; choose from {', '.join(_REGISTRY)} (or register your own: "
                     "gj.metrics.register(name, fn), or module:attribute on the command line)")


def register(name: str, fn: Callable | Metric, *, label: str | None = None, higher_is_better: bool = True,
             category: str = "faithfulness", needs: Sequence[str] = (), curves: Sequence[str] = (),
             forward_passes: int | Callable = 0, replace: bool = False) -> Metric:
    """Register a metric of your own so that ``score``, ``gag-jax evaluate``, the tables and the
    figures take it by name.

    Args:
      name: its name (a column of records and tables); must not shadow a built-in metric.
      fn: ``fn(model, images (B, H, W, C), labels (B,), maps (B, H, W), **options)`` returning a
        ``(B,)`` array or a dict with ``name`` ``(B,)`` (and curves ``(B, S)``); or a ready ``Metric``.
      label: column title (default: ``name``).
      higher_is_better: direction.
      category: one of :data:`CATEGORIES`.
      needs: subset of :data:`NEEDS` (passed as keywords ``masks=``, ``key=``, ``explainer=``).
      curves: names of curve outputs to store.
      forward_passes: model forward passes per map (for the run's cost).
      replace: allow re-registering a user metric of the same name.

    Returns:
      the :class:`Metric` record.

    Raises:
      ValueError: a built-in name, a name taken (without ``replace``), a function that is not callable.

    Example::

      def centre_mass(model, images, labels, maps):
          h, w = maps.shape[1:]
          return maps[:, h // 4:3 * h // 4, w // 4:3 * w // 4].sum((1, 2)) / maps.sum((1, 2))
      gj.metrics.register("centre_mass", centre_mass, label="Centre mass")
      gj.metrics.score(model, images, labels, maps, metrics=("rcap", "centre_mass"))
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a metric name must be letters, digits, '_' or '-'; got {name!r}")
    if name in {m.name for m in _BUILTIN} or any(name in m.aliases for m in _BUILTIN):
        raise ValueError(f"metric {name!r} is built in; choose another name")
    if name in _REGISTRY and not replace:
        raise ValueError(f"metric {name!r} is already registered (pass replace=True to replace it)")
    if isinstance(fn, Metric):
        record = dataclasses.replace(fn, name=name)
    else:
        if not callable(fn):
            raise ValueError(f"metric {name!r}: fn must be callable; got {type(fn).__name__}")
        record = Metric(name, fn, label or name, category, bool(higher_is_better), frozenset(needs), tuple(curves),
                        forward_passes, source=source_of(fn))
    _REGISTRY[name] = record
    return record


def unregister(name: str) -> None:
    """Remove a user's metric (built-in ones stay)."""
    if name in {m.name for m in _BUILTIN}:
        raise ValueError(f"metric {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def mask_metrics() -> tuple[str, ...]:
    """The registered metrics that need ground-truth masks."""
    return tuple(n for n, m in _REGISTRY.items() if "masks" in m.needs)


def default_metrics(has_masks: bool) -> tuple[str, ...]:
    """The paper's metrics: RCAP, DAUC, IAUC, plus Log-Cosh Dice and MAE when there are masks."""
    return tuple(n for n, m in _REGISTRY.items() if m.paper and (has_masks or "masks" not in m.needs))


def check_metrics(metrics: Sequence[str] | str | None, has_masks: bool) -> tuple[str, ...]:
    """Canonical metric names in registry order (comma-separated strings and aliases allowed).

    Raises:
      ValueError: an unknown name, or a metric that needs masks without masks.
    """
    if metrics is None:
        return default_metrics(has_masks)
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted = [_canonical(p.strip()) for m in metrics for p in str(m).split(",") if p.strip()]
    without = [m for m in wanted if "masks" in _REGISTRY[m].needs and not has_masks]
    if without:
        raise ValueError(f"metrics {without} need ground-truth masks, which this data does not have")
    return tuple(m for m in _REGISTRY if m in wanted)


def _canonical(name: str) -> str:
    """The registered name of ``name`` or of its lower-case form (``Dice`` -> ``log_cosh_dice``)."""
    try:
        return get(name).name
    except ValueError:
        if name.lower() == name:
            raise
        return get(name.lower()).name


def forward_passes_per_map(metrics: Sequence[str], options: Mapping[str, Mapping] | None = None,
                           image_shape: Sequence[int] | None = None) -> int:
    """Model forward passes :func:`score` spends on one map: each distinct metric function once
    (DAUC and IAUC are one call), with the options of its group, on images of ``image_shape``."""
    seen, count = set(), 0
    for name in metrics:
        record = get(name)
        if record.function in seen:
            continue
        seen.add(record.function)
        count += record.cost((options or {}).get(record.option_group) or {}, image_shape)
    return count


def result_keys(metrics: Sequence[str]) -> tuple[str, ...]:
    """The per-image values and curves ``score`` returns for ``metrics``."""
    return tuple(k for name in metrics for k in (name, *get(name).curves))


def compute(records: Sequence[Metric], model, images, labels, maps, *, masks=None, key=None, explainer=None,
            options: Mapping[str, Mapping] | None = None, shared: Mapping[str, Any] | None = None
            ) -> dict[str, np.ndarray]:
    """Run ``records`` on one batch: each distinct function once, its needs and options passed.

    Returns:
      ``{metric: (B,), curve: (B, S)}`` numpy arrays.
    """
    options = dict(options or {})
    batch = int(np.shape(maps)[0])
    out: dict[str, np.ndarray] = {}
    done: dict[Any, dict] = {}
    for record in records:
        group = record.option_group
        identity = (record.function, group)
        if identity not in done:
            kwargs = {k: v for k, v in (shared or {}).items() if k in SHARED_OPTIONS and k in record.named_options}
            kwargs.update(options.get(group) or {})
            if "masks" in record.needs:
                if masks is None:
                    raise ValueError(f"metric {record.name!r} needs ground-truth masks")
                kwargs["masks"] = masks
            if "key" in record.needs:
                kwargs["key"] = key
            if "explainer" in record.needs:
                if explainer is None:
                    raise ValueError(f"metric {record.name!r} needs an explainer (explainer=...)")
                kwargs["explainer"] = explainer
            value = record.function(model, images, labels, maps, **kwargs)
            done[identity] = dict(value) if isinstance(value, Mapping) else {record.name: value}
        result = done[identity]
        if record.name not in result:
            raise ValueError(f"metric {record.name!r} returned {sorted(result)}; expected a (B,) array or a dict "
                             f"with the key {record.name!r}")
        for k in (record.name, *record.curves):
            if k not in result:
                raise ValueError(f"metric {record.name!r} did not return its curve {k!r}")
            array = np.asarray(result[k])
            if array.ndim < 1 or array.shape[0] != batch or (k == record.name and array.ndim != 1):
                want = f"({batch},)" if k == record.name else f"({batch}, S)"
                raise ValueError(f"metric {record.name!r} returned {k!r} of shape {array.shape}; expected {want}")
            out[k] = array
    return out


def reference(record: Metric) -> str:
    """The one-line reference of a metric: the first sentence of its function's docstring, up to the
    colon that starts its definition (e.g. "Pixel flipping (Bach et al. 2015), Quantus 0.6's ``PixelFlipping``")."""
    doc = " ".join((inspect.getdoc(record.function) or record.label).split("\n\n")[0].split())
    doc = re.split(r":\s|(?<!\bal)(?<!\beq)(?<!\be\.g)\.\s", doc)[0]
    return doc.rstrip(".")


def catalogue_markdown(image_shape: Sequence[int] = (224, 224, 3)) -> str:
    """The registered metrics as a Markdown table, grouped by category: name, label, direction, needs,
    model forward passes per map (default options, images of ``image_shape``) and reference."""
    lines = [f"| category | metric | column | better | needs | passes / map at {image_shape[0]}² | reference |",
             "|---|---|---|---|---|---:|---|"]
    for category in CATEGORIES:
        for name in metric_names():
            record = get(name)
            if record.category != category:
                continue
            needs = ", ".join(sorted(record.needs)) or "\u2013"
            lines.append(f"| {category} | `{name}` | {record.label} | {'higher' if record.higher_is_better else 'lower'}"
                         f" | {needs} | {record.cost({}, image_shape)} | {reference(record)} |")
    return "\n".join(lines) + "\n"
