"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A saliency method that explains the *model* must change its maps when the model's learned
parameters are destroyed. The test re-initialises the parameters block by block from the top
(logits) down, re-explains the same images after each step and measures how similar each new map
is to the map of the trained model::

    import gag_jax as gj
    from gag_jax.models import load
    module, variables = load("efficientnet_lite0")
    result = gj.sanity.model_randomisation("gag", module, variables, images, labels, key, n=10)
    result["steps"]          # ["fc", "conv_head", "blocks_15", ..., "blocks_0", "conv_stem"]
    result["spearman_abs"]   # (S, B): similarity after each step, per image

Choices (each an option, documented where it is taken):

- **Blocks** are the module's top-level submodules in forward order (the order in which a traced
  forward pass first reads their parameters), top first. A top-level normalisation layer
  (parameters ``scale``/``bias`` only, with running statistics) joins the conv it normalises
  (found by following the traced data flow, folded into the kernel or not): Lite0 gives ``fc, conv_head (+bn1), blocks_15, ..., blocks_0,
  conv_stem (+bn0)``. ``by="stage"`` merges consecutive list members ``name_0, name_1, ...`` into
  one stage ``name`` (ResNet ``layer1..4``, DenseNet ``denseblock1..4``, EfficientNet-B0
  ``features_1..7``); ``blocks=`` takes any explicit grouping.
- **Re-initialisation** uses the module's own initialisers: ``module.init`` with a fresh key, then
  the re-initialised leaves of the blocks randomised so far replace the trained ones. Every
  ``params`` leaf of a block is re-drawn (batch-norm ``scale``/``bias`` go back to 1/0); the
  batch-norm running statistics (``batch_stats``) keep their trained values. This is what the
  authors' code does: it re-runs the initialisers of the block's *trainable* TensorFlow variables,
  and the moving mean/variance are not trainable.
- **Targets** stay the given ``labels`` at every step (the authors explain the randomised model's
  own top-1 class instead; pass that as ``labels`` per step yourself if you need it).
- **Noise**: the same key drives the method at every step, so the noisy samples / paths are the
  same and only the model changes.
- **Similarities** (per image, on the host): Spearman rank correlation of the signed maps
  (channel sum of the raw attribution) and of the absolute maps (channel sum of ``|A|``, the
  project's saliency before min-max); SSIM (``skimage.metrics.structural_similarity``,
  ``data_range=1``) and HOG similarity (Pearson correlation of ``skimage.feature.hog``
  descriptors) of the min-max normalised absolute maps. A correlation that is undefined because a
  map is constant counts as 1 when the two maps are equal and 0 otherwise.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax.distributed import map_batches
from gag_jax.explainers import DEFAULTS, PRESETS, ModelFunctions, explain

__all__ = ["METRICS", "layer_blocks", "model_randomisation", "passes", "randomised_variables", "similarities"]

METRICS = ("spearman", "spearman_abs", "ssim", "hog")
"""The similarity curves ``model_randomisation`` returns, each ``(S, B)``."""

GROUPINGS = ("layer", "stage")

_SANITY_OPTIONS = ("by", "blocks", "steps", "batch_size", "threshold", "hog_orientations",
                   "hog_pixels_per_cell", "hog_cells_per_block", "report", "image_keys")
_NORM_PARAMS = {"scale", "bias"}


# ----------------------------------------------------------------------------------------------
# blocks and re-initialised variables
# ----------------------------------------------------------------------------------------------


_SUB_JAXPRS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_NONE: frozenset = frozenset()


def _walk(jaxpr, taint: dict, first: dict, meet: dict, clock: list) -> list:
    """Propagate parameter *taint* (which top-level submodules' parameters a value depends on)
    through ``jaxpr`` in execution order, into nested call jaxprs. Records ``first[name]``, the
    index of the first equation reading a value derived from ``name``'s parameters, and
    ``meet[name]``, the other names at the first equation that combines ``name`` with any of
    them. Returns the taints of the outputs."""
    for eqn in jaxpr.eqns:
        clock[0] += 1
        ins = [_NONE if hasattr(v, "val") else taint.get(v, _NONE) for v in eqn.invars]
        union = frozenset().union(*ins)
        for name in union:
            first.setdefault(name, clock[0])
            if len(union) > 1 and name not in meet:
                meet[name] = union - {name}
        inner = next((eqn.params[k] for k in _SUB_JAXPRS if k in eqn.params), None)
        inner = getattr(inner, "jaxpr", inner)
        if union and inner is not None and hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars):
            outs = _walk(inner, dict(zip(inner.invars, ins)), first, meet, clock)
            if len(outs) == len(eqn.outvars):
                taint.update(zip(eqn.outvars, outs))
                continue
        if union:
            taint.update((v, union) for v in eqn.outvars)
    return [_NONE if hasattr(v, "val") else taint.get(v, _NONE) for v in jaxpr.outvars]


def _trace_parameters(module, variables: Mapping, shape: tuple[int, ...], dtype) -> tuple[dict, dict]:
    """``(first, meet)`` of :func:`_walk` for a forward pass of ``module`` (traced, not run).

    Parameters count however the model reads them: calling the submodule, or folding a batch norm
    into a conv kernel by hand.
    """
    from flax.errors import FlaxError

    leaves, _ = jax.tree_util.tree_flatten_with_path(dict(variables))
    owners = [path[1].key if path[0].key == "params" else None for path, _ in leaves]
    try:
        closed = jax.make_jaxpr(module.apply)(dict(variables), jax.ShapeDtypeStruct(shape, dtype))
    except FlaxError as err:
        raise ValueError(f"the variables do not fit the module (wrong shape or structure): {err}") from None
    jaxpr = closed.jaxpr
    taint = {v: frozenset([name]) for v, name in zip(jaxpr.invars[: len(owners)], owners) if name is not None}
    first: dict = {}
    meet: dict = {}
    _walk(jaxpr, taint, first, meet, [0])
    return first, meet


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _is_norm(name: str, variables: Mapping) -> bool:
    params = variables["params"].get(name)
    stats = variables.get("batch_stats", {})
    return (isinstance(params, Mapping) and name in stats and set(params) <= _NORM_PARAMS
            and not any(isinstance(v, Mapping) for v in params.values()))


def layer_blocks(module, variables: Mapping, image_shape: Sequence[int], *, by: str = "layer",
                 dtype=jnp.float32) -> list[tuple[str, tuple[str, ...]]]:
    """The randomisation blocks of a Flax module, **top (logits) first**.

    Args:
      module: a Flax linen module (any model in ``models/``, the tiny CNN, your own).
      variables: its variables; needs ``"params"`` (``"batch_stats"`` optional).
      image_shape: shape of an input batch, e.g. ``(1, 224, 224, 3)`` (only traced).
      by: ``"layer"``: each top-level submodule in the order a forward pass first reads its
        parameters, a normalisation layer (``scale``/``bias`` with running statistics) joined to
        the conv it normalises (the most recent layer whose values it is first combined with,
        whether it scales the conv's output or is folded into its kernel);
        ``"stage"``: consecutive list members ``name_<i>`` merged into one stage ``name``.
      dtype: input dtype for the trace.

    Returns:
      ``[(label, (top-level param names, ...)), ...]`` from the output layer down to the stem.

    Raises:
      ValueError: unknown ``by``, or variables without ``"params"``.
    """
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping by={by!r}; expected one of {GROUPINGS}")
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection; got {sorted(variables)}")
    names = list(variables["params"])
    ticks, meet = _trace_parameters(module, variables, tuple(image_shape), dtype)
    never = max(ticks.values(), default=0) + 1  # parameters a forward pass does not read: last
    tick = {n: ticks.get(n, never) for n in names}
    order = sorted(names, key=lambda n: (tick[n], _natural_key(n)))
    # A normalisation layer joins the conv it normalises: the most recent layer whose values it is
    # first combined with (the conv output it scales, or the kernel it is folded into).
    layers = [n for n in order if not _is_norm(n, variables)] or order
    members: dict[str, list[str]] = {n: [n] for n in layers}
    for name in order:
        if name in members:
            continue
        candidates = [n for n in meet.get(name, ()) if n in members]
        if not candidates:  # never combined with a layer: the layer before it, or the first one
            candidates = [n for n in order[: order.index(name)] if n in members] or layers[:1]
        members[max(candidates, key=lambda n: (tick[n], _natural_key(n)))].append(name)
    groups = [members[n] for n in order if n in members]
    labelled = [(g[0], tuple(g)) for g in groups]
    if by == "stage":  # runs of list members name_0, name_1, ... -> one stage "name"
        runs: list[tuple[str, list[tuple[str, tuple[str, ...]]]]] = []
        for label, keys in labelled:
            stage = re.sub(r"_\d+$", "", label)
            if stage != label and runs and runs[-1][0] == stage:
                runs[-1][1].append((label, keys))
            else:
                runs.append((stage, [(label, keys)]))
        labelled, used = [], set()
        for stage, run in runs:
            label = stage if len(run) > 1 else run[0][0]
            if label in used:
                label = f"{run[0][0]}..{run[-1][0]}"
            used.add(label)
            labelled.append((label, tuple(k for _, keys in run for k in keys)))
    return labelled[::-1]


def _check_blocks(spec, names: set) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for item in spec:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError(f"blocks must be (label, (param names, ...)) pairs, top first; got {item!r}")
        label, keys = item[0], (item[1],) if isinstance(item[1], str) else tuple(item[1])
        unknown = [k for k in keys if k not in names]
        if unknown or not keys:
            raise ValueError(f"block {label!r} names {unknown or 'no'} top-level parameter(s); "
                             f"the variables have {sorted(names, key=_natural_key)}")
        out.append((label, keys))
    labels = [b[0] for b in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"block labels must be unique; got {labels}")
    return out


def randomised_variables(module, variables: Mapping, key: jax.Array, image_shape: Sequence[int], *,
                         cascading: bool = True, by: str = "layer",
                         blocks: Sequence[tuple[str, Sequence[str]]] | None = None,
                         ) -> Iterator[tuple[str, dict]]:
    """Yield ``(label, variables)`` after each randomisation step, top block first.

    Cascading: step ``k`` re-initialises blocks ``0..k`` (everything above and including block
    ``k``); independent (``cascading=False``): only block ``k``, the rest trained. Fresh values
    come from ``module.init(key, zeros(image_shape))`` (the module's own initialisers, one draw
    shared by all steps); ``batch_stats`` and any other collection keep the trained values.

    Args:
      module: Flax linen module.
      variables: trained variables (``"params"`` required).
      key: PRNG key of the re-initialisation.
      image_shape: input batch shape for ``module.init`` and the block trace.
      cascading: cascading (True) or independent (False) randomisation.
      by: automatic grouping (see :func:`layer_blocks`).
      blocks: explicit ``[(label, (top-level param names, ...)), ...]``, top first.

    Raises:
      ValueError: the fresh parameters do not have the structure of ``variables["params"]``, or a
        bad ``blocks``.
    """
    if "params" not in variables:
        raise ValueError(f"variables need a 'params' collection; got {sorted(variables)}")
    spec = (layer_blocks(module, variables, image_shape, by=by) if blocks is None
            else _check_blocks(blocks, set(variables["params"])))
    fresh = jax.jit(module.init)(key, jnp.zeros(tuple(image_shape), jnp.float32))["params"]
    trained = variables["params"]
    if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(dict(trained)):
        raise ValueError("module.init gives parameters of another structure than variables['params']: "
                         "the variables do not belong to this module")
    for (a, b) in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(dict(trained))):
        if a.shape != b.shape:
            raise ValueError(f"module.init gives a parameter of shape {a.shape} where the variables have {b.shape}")
    done: list[str] = []
    for label, keys in spec:
        done = done + list(keys) if cascading else list(keys)
        params = {name: (fresh[name] if name in done else trained[name]) for name in trained}
        yield label, {**variables, "params": params}


# ----------------------------------------------------------------------------------------------
# similarity of maps
# ----------------------------------------------------------------------------------------------


def _safe_corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(fn(a, b)[0])


def _minmax(m: np.ndarray) -> np.ndarray:
    low, span = m.min(), np.ptp(m)
    return (m - low) / span if span > 0 else np.zeros_like(m)


def _split(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(B, H, W, C)`` or ``(B, H, W)`` -> (signed, absolute) ``(B, H, W)`` float64 maps."""
    raw = np.asarray(raw, np.float64)
    if raw.ndim == 4:
        return raw.sum(-1), np.abs(raw).sum(-1)
    if raw.ndim == 3:
        return raw, np.abs(raw)
    raise ValueError(f"maps must be (B, H, W) or (B, H, W, C); got shape {raw.shape}")


def similarities(original, randomised, *, hog_orientations: int = 9, hog_pixels_per_cell=(8, 8),
                 hog_cells_per_block=(3, 3)) -> dict[str, np.ndarray]:
    """Per-image similarity of two batches of attributions.

    Args:
      original, randomised: ``(B, H, W, C)`` raw attributions or ``(B, H, W)`` maps, same shape.
      hog_orientations, hog_pixels_per_cell, hog_cells_per_block: ``skimage.feature.hog`` options.

    Returns:
      ``{"spearman", "spearman_abs", "ssim", "hog"}``, each ``(B,)`` float64: Spearman of the
      signed channel sums, Spearman of the absolute channel sums, SSIM and HOG-Pearson of the
      min-max normalised absolute maps.

    Raises:
      ValueError: shapes differ, a map is not 3-/4-D, or too small for the HOG cells / SSIM window.
    """
    from scipy.stats import pearsonr, spearmanr
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    o_signed, o_abs = _split(original)
    r_signed, r_abs = _split(randomised)
    if o_signed.shape != r_signed.shape:
        raise ValueError(f"original maps {np.shape(original)} and randomised maps {np.shape(randomised)} differ")
    height, width = o_signed.shape[1:]
    cells = (height // hog_pixels_per_cell[0], width // hog_pixels_per_cell[1])
    if min(cells[0] - hog_cells_per_block[0], cells[1] - hog_cells_per_block[1]) < 0:
        raise ValueError(f"maps of {height}x{width} have {cells[0]}x{cells[1]} HOG cells of {hog_pixels_per_cell} "
                         f"pixels, fewer than one block of {hog_cells_per_block}: lower hog_pixels_per_cell")
    if min(height, width) < 7:
        raise ValueError(f"SSIM needs maps of at least 7x7 pixels; got {height}x{width}")
    hog_options = {"orientations": hog_orientations, "pixels_per_cell": tuple(hog_pixels_per_cell),
                   "cells_per_block": tuple(hog_cells_per_block)}
    out = {m: np.zeros(o_signed.shape[0]) for m in METRICS}
    for i in range(o_signed.shape[0]):
        out["spearman"][i] = _safe_corr(spearmanr, o_signed[i].ravel(), r_signed[i].ravel())
        out["spearman_abs"][i] = _safe_corr(spearmanr, o_abs[i].ravel(), r_abs[i].ravel())
        a, b = _minmax(o_abs[i]), _minmax(r_abs[i])
        out["ssim"][i] = float(structural_similarity(a, b, data_range=1.0))
        out["hog"][i] = _safe_corr(pearsonr, hog(a, **hog_options), hog(b, **hog_options))
    return out


# ----------------------------------------------------------------------------------------------
# the test
# ----------------------------------------------------------------------------------------------


class _NnxView:
    """An NNX model (a ``gj.ModelFunctions`` of :meth:`ModelFunctions.from_nnx`: an eval-mode copy,
    its state the pytree leaves), seen by the block trace and the re-initialisation as the dicts a
    linen model has: ``variables = {"params": {...}, "batch_stats": {...}}`` (top-level names = the
    module's attributes; everything that is not an ``nnx.Param`` goes to ``"batch_stats"`` and keeps
    its trained value). ``apply(variables, x)`` runs the model with them; ``init`` returns the
    parameters of ``fresh``, a freshly constructed instance of the same class (its own initialisers:
    Adebayo et al.'s re-initialisation). Each step's model is ``model.replace(variables=...)``: the
    same compiled programs as ``gj.explain``, layers and input scaling included."""

    def __init__(self, model: ModelFunctions, fresh):
        from flax import nnx

        if not isinstance(fresh, nnx.Module):
            raise ValueError("for an NNX model, fresh must be an nnx.Module: a newly constructed instance of the "
                             f"same class (e.g. MyCNN(rngs=nnx.Rngs(1))); got {type(fresh)}")
        self.model = model
        self._params, self._rest = nnx.split_state(self.model.variables, nnx.Param, ...)
        self.variables = {"params": self._params.to_pure_dict(), "batch_stats": self._rest.to_pure_dict()}
        fresh_model = ModelFunctions.from_nnx(fresh)
        if jax.tree_util.tree_structure(fresh_model.variables) != jax.tree_util.tree_structure(model.variables):
            raise ValueError("the fresh NNX module does not have the structure of the trained one: build it "
                             "with the same class and arguments")
        self._fresh = nnx.split_state(fresh_model.variables, nnx.Param, ...)[0].to_pure_dict()

    def model_of(self, variables) -> ModelFunctions:
        from flax import nnx

        params = jax.tree_util.tree_map(lambda a: a, self._params)
        nnx.replace_by_pure_dict(params, variables["params"])
        rest = jax.tree_util.tree_map(lambda a: a, self._rest)
        nnx.replace_by_pure_dict(rest, variables["batch_stats"])
        return self.model.replace(variables=nnx.merge_state(params, rest))

    def apply(self, variables, x):
        return self.model_of(variables)(x)

    def init(self, key, x):
        del key, x
        return {"params": self._fresh}


def _randomisation_view(model, fresh) -> tuple[Any, Mapping, Callable[[Mapping], ModelFunctions]]:
    """``(module, variables, model_of)`` for the test: the linen module (or an NNX model seen as one,
    :class:`_NnxView`), its trained variables as dicts, and ``model_of(variables)``, the model with
    other weights (same apply functions and input scaling: no new compilation)."""
    from flax import nnx

    if isinstance(model, nnx.Module):
        model = ModelFunctions.from_nnx(model)
    if not isinstance(model, ModelFunctions):
        raise ValueError("model must be a gj.ModelFunctions built with from_module (linen) or from_nnx, or an "
                         f"nnx.Module; got {type(model).__name__}")
    if model.kind == "linen":
        if fresh is not None:
            raise ValueError("fresh is for NNX models; a linen model is re-initialised by its module's own init")
        module, variables = model.linen_parts()
        return module, variables, lambda v: model.replace(variables=v)
    if model.kind == "nnx":
        if fresh is None:
            raise ValueError("an NNX model needs fresh=: a newly constructed instance of the same class, whose "
                             "parameters (its own initialisers) are the re-initialisation")
        view = _NnxView(model, fresh)
        return view, view.variables, view.model_of
    built = "with from_apply" if model.kind == "apply" else "from a plain function"
    raise ValueError(f"the layer randomisation needs the model's layers, and a model built {built} has none: "
                     "build it with gj.ModelFunctions.from_module (linen) or from_nnx")


def _attributions(method, model: ModelFunctions, images, labels, key, options: dict, batch_size: int) -> np.ndarray:
    """Raw maps of every image, ``batch_size`` per call (``gj.distributed.map_batches``: padded,
    sharded over the local devices); one key per image, so a map does not depend on the batching."""

    def explain_batch(m, x, y, k):
        if callable(method):
            return method(m, x, y, k)
        return explain(method, m, x, y, key=k, postprocess=False, **options)

    raw = map_batches(explain_batch, [images, labels, key], batch_size=batch_size, shared=(model,))
    if raw.ndim not in (3, 4) or raw.shape[:3] != tuple(images.shape[:3]):
        raise ValueError(f"the method returned shape {raw.shape}; expected (B, H, W) or (B, H, W, C) with "
                         f"(B, H, W) = {tuple(images.shape[:3])}")
    return raw.astype(np.float32)


def passes(result: Mapping, *, threshold: float = 0.5, metric: str = "spearman_abs", summary: str = "mean") -> bool:
    """Verdict of the test: True when randomising the model changes the maps.

    The per-step curve is the mean over images of ``metric``. ``summary="mean"`` (default) averages
    it over the steps (the normalised area under the similarity curve) and passes below
    ``threshold``: a method has to change its maps along the whole cascade, not only once the
    input layers are random. A map that survives the randomisation of the top half of the network
    (Guided Backprop, in Adebayo et al.) or all of it (an edge detector) fails. ``summary="min"``
    passes as soon as any step falls below ``threshold`` (a weaker check).

    Args:
      result: a :func:`model_randomisation` result (``metric`` of shape ``(S, B)``).
      threshold: similarity below which the maps count as changed.
      metric: one of :data:`METRICS`.
      summary: ``"mean"`` or ``"min"`` over steps.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if summary not in ("mean", "min"):
        raise ValueError(f"unknown summary {summary!r}; expected 'mean' or 'min'")
    curve = np.asarray(result[metric], np.float64).mean(axis=1)
    if curve.size == 0:
        raise ValueError("the result has no steps")
    value = curve.mean() if summary == "mean" else curve.min()
    return bool(value < threshold)


def model_randomisation(method: str | Callable, model, images, labels, key, *, fresh=None,
                        cascading: bool = True, **options) -> dict[str, Any]:
    """Cascading (or independent) model-parameter randomisation test of a saliency method.

    Args:
      method: a name in ``gj.PRESETS`` (explained with ``gj.explain(..., postprocess=False)``) or a
        callable ``method(model: gj.ModelFunctions, images, labels, key) -> (B, H, W[, C])`` raw maps.
      model: the trained model, a ``gj.ModelFunctions`` built with ``from_module`` (Flax linen, e.g.
        ``modelzoo.load_model``) or ``from_nnx``, or a trained ``nnx.Module``. Its input scaling is
        the methods' (IG's black baseline); the model itself is not changed.
      images: ``(B, H, W, C)`` images in the model's input scaling.
      labels: ``(B,)`` int target classes (kept at every step).
      key: PRNG key; split into the method's key (the same at every step) and the re-initialisation key.
      fresh: NNX models only: a freshly constructed instance of the same class
        (``MyCNN(rngs=nnx.Rngs(1))``): its parameters, drawn by the model's own initialisers, are the
        re-initialisation (a linen model's is its module's ``init``).
      cascading: True: randomise from the top down, cumulatively; False: one block at a time.
      **options: the test's own options, then the method's (``n``, ``noise_level``, ...):

        - ``by`` (``"layer"``) / ``blocks`` (explicit ``[(label, names)]``): see :func:`layer_blocks`.
        - ``steps``: labels of the blocks after whose randomisation the images are re-explained
          (default all); the cascade still randomises every block above them.
        - ``batch_size``: images per explainer call (default all).
        - ``image_keys``: ``(B, 2)`` keys of the method, one per image (``gj.keys.image_keys``: the
          command passes the images' names); default ``fold_in(explain key, image index)``.
        - ``threshold`` (0.5): verdict threshold on the Spearman (abs) correlation averaged over
          images and steps (:func:`passes`).
        - ``hog_orientations`` (9), ``hog_pixels_per_cell`` ((8, 8)), ``hog_cells_per_block`` ((3, 3)).
        - ``report``: a callable receiving one line per step (progress).

    Returns:
      ``{"steps": [labels, top first], "spearman": (S, B), "spearman_abs": (S, B), "ssim": (S, B),
      "hog": (S, B), "original": (B, H, W), "maps": (S, B, H, W), "blocks": {label: names},
      "cascading": bool, "passed": bool, "threshold": float}``; ``original`` and ``maps`` are the
      min-max normalised absolute maps in [0, 1].

    Raises:
      ValueError: unknown method or option, bad shapes, an unknown step label, a model without layers
        (a plain function), an NNX model without ``fresh``.
    """
    test_options = {k: options.pop(k) for k in list(options) if k in _SANITY_OPTIONS}
    by = test_options.get("by", "layer")
    blocks_spec = test_options.get("blocks")
    steps = test_options.get("steps")
    threshold = float(test_options.get("threshold", 0.5))
    report = test_options.get("report") or (lambda line: None)
    hog_options = {k: test_options[k] for k in ("hog_orientations", "hog_pixels_per_cell", "hog_cells_per_block")
                   if k in test_options}
    if callable(method):
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for a callable method; "
                             f"test options: {', '.join(_SANITY_OPTIONS)}")
    elif method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PRESETS)} or a callable")
    else:
        unknown = sorted(set(options) - set(DEFAULTS[method]))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for the randomisation test of {method!r}; test options: "
                             f"{', '.join(_SANITY_OPTIONS)}; method options: {', '.join(sorted(DEFAULTS[method]))}")
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C); got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},) for {images.shape[0]} images; got {labels.shape}")
    batch_size = int(test_options.get("batch_size") or images.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")

    explain_key, init_key = jax.random.split(key)
    explain_keys = test_options.get("image_keys")
    if explain_keys is None:  # one key per image, from its index
        explain_keys = jax.vmap(jax.random.fold_in, (None, 0))(explain_key, jnp.arange(images.shape[0]))
    elif np.shape(explain_keys)[0] != images.shape[0]:
        raise ValueError(f"image_keys needs one key per image: got {np.shape(explain_keys)[0]} for {images.shape[0]}")
    module, variables, model_of = _randomisation_view(model, fresh)
    shape = (1,) + tuple(images.shape[1:])
    spec = (layer_blocks(module, variables, shape, by=by) if blocks_spec is None
            else _check_blocks(blocks_spec, set(variables.get("params", {}))))
    labels_all = [label for label, _ in spec]
    wanted = labels_all if steps is None else list(steps)
    missing = [s for s in wanted if s not in labels_all]
    if missing:
        raise ValueError(f"unknown step(s) {missing}; the blocks are {labels_all}")
    def explain_with(v):  # same apply functions at every step: one compilation, the weights traced
        return _attributions(method, model_of(v), images, labels, explain_keys, options, batch_size)

    original = explain_with(variables)
    name = method if isinstance(method, str) else getattr(method, "__name__", "method")
    report(f"{name}: original model explained")
    curves = {m: [] for m in METRICS}
    maps, done = [], []
    for label, v in randomised_variables(module, variables, init_key, shape, cascading=cascading,
                                         blocks=spec):
        if label not in wanted:
            continue
        raw = explain_with(v)
        for metric, values in similarities(original, raw, **hog_options).items():
            curves[metric].append(values)
        maps.append(_minmax_batch(raw))
        done.append(label)
        report(f"{name}: randomised {'up to ' if cascading else ''}{label} "
               f"(spearman_abs {np.mean(curves['spearman_abs'][-1]):.3f})")
    result: dict[str, Any] = {"steps": done, **{m: np.stack(v) for m, v in curves.items()},
                              "original": _minmax_batch(original), "maps": np.stack(maps).astype(np.float32),
                              "blocks": dict(spec), "cascading": bool(cascading), "threshold": threshold}
    result["passed"] = passes(result, threshold=threshold)
    return result


def _minmax_batch(raw: np.ndarray) -> np.ndarray:
    _, absolute = _split(raw)
    return np.stack([_minmax(m) for m in absolute]).astype(np.float32)
