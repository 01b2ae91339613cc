"""Randomisation metrics (Quantus 0.6 "randomisation"): does a method's map depend on what the model
learned (its weights, its output class)?

* random logit (Sixt et al. 2020) = SSIM(a, explanation of the same image for another class);
* smooth MPRT (Hedström et al. 2023) = Spearman(|a|, |smoothed explanation of the model with its
  layers randomised|) after each randomisation step (the smoothed explanation: the mean of the
  explanations of ``samples - 1`` noisy copies and the image itself);
* efficient MPRT (Hedström et al. 2023) = the relative rise of the maps' discrete entropy (100
  histogram bins) from the trained model to the fully randomised one.

Lower is better for the first two (the map changed), higher for the last.

**Weights as a pytree.** A ``gj.ModelFunctions`` carries its weights (``model.variables``) as pytree
leaves, so a randomised model is ``model.replace(variables=tree_map(where(randomised, fresh,
trained)))``: no model copies, and every randomisation step runs in the same compiled program (a
``jax.lax.map`` over the steps; the step number is a traced value). The **layers** are the ones
:func:`gag_jax.sanity.layer_blocks` finds (the model's top-level submodules in the order a traced
forward pass reads them, a normalisation layer joined to its conv; only ``params`` are randomised,
``batch_stats`` keep their trained values) for any model whose variables hold a ``"params"``
collection; or any ``layers=[(label, (top-level names, ...)), ...]`` top first. The **fresh values**
are the module's own initialisers (``module.init(PRNGKey(seed))`` for a Flax linen model, as
``gag_jax.sanity``), Flax's default initialisers for another model with ``"params"`` (lecun-normal
kernels, zero biases, unit scales), or ``randomised_variables=`` (a pytree like ``model.variables``:
e.g. the weights torch's ``reset_parameters`` gives, to compare with Quantus exactly).

**Layer order** (``layer_order``, Quantus's option and default ``"bottom_up"``): ``"bottom_up"``
randomises from the input layer up, cumulatively; ``"top_down"`` from the logits down, cumulatively;
``"independent"`` one layer at a time (bottom-up order), the others trained. Quantus 0.6 randomises
torch modules in ``named_modules()`` order (the order they were defined), re-seeding with ``seed + 1``
before each ``reset_parameters()``; the project's order is the traced forward order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax import sanity
from gag_jax.keys import per_image_keys
from gag_jax.metrics import _common as C
from gag_jax.metrics import _sorting
from gag_jax.metrics._explainer import as_explainer
from gag_jax.metrics.robustness import _prepare, check_labels, copy_keys, explain_copies
from gag_jax.model import (
    ModelFunctions,
    _Apply,
    _Linen,
    as_model_functions,
    jit_with_model,
)

__all__ = ["LAYER_ORDERS", "SIMILARITIES", "discrete_entropy", "efficient_mprt", "random_logit",
           "randomisation_layers", "smooth_mprt", "spearman", "ssim"]

LAYER_ORDERS = ("bottom_up", "top_down", "independent")
SIMILARITIES = ("ssim", "spearman")
OTHER_LABEL_SALT = 2
"""Image ``b``'s other class (random logit) comes from ``fold_in(key_b, OTHER_LABEL_SALT)``."""


# ----------------------------------------------------------------------------------------------
# similarities and complexity, batched (one value per row)
# ----------------------------------------------------------------------------------------------

def ssim(a: jax.Array, b: jax.Array, *, win_size: int = 7) -> jax.Array:
    """Structural similarity of the rows of ``a`` and ``b`` ``(n, N)`` -> ``(n,)``, as Quantus's ``ssim``:
    ``skimage.metrics.structural_similarity`` of the **flattened** maps (1-D, uniform window of
    ``win_size``, sample covariance, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the windows that lie
    inside the row) with ``data_range = max - min`` of both rows together. Two equal constant rows
    have ``data_range = 0`` and give NaN, as there."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    if a.shape[-1] < win_size:
        raise ValueError(f"SSIM needs at least win_size={win_size} values per map; got {a.shape[-1]}")
    both = jnp.concatenate([a, b], axis=-1)
    data_range = jnp.abs(jnp.max(both, axis=-1) - jnp.min(both, axis=-1))[:, None]

    def mean(v):
        return jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, win_size), (1, 1), "VALID") / win_size

    ux, uy = mean(a), mean(b)
    uxx, uyy, uxy = mean(a * a), mean(b * b), mean(a * b)
    cov_norm = win_size / (win_size - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=-1)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of the rows of ``a`` and ``b`` ``(n, N)`` -> ``(n,)`` (average ranks for
    ties, as ``scipy.stats.spearmanr``; a constant row gives NaN, as there)."""
    ra, rb = _sorting.average_ranks(a), _sorting.average_ranks(b)
    ra = ra - jnp.mean(ra, axis=-1, keepdims=True)
    rb = rb - jnp.mean(rb, axis=-1, keepdims=True)
    return jnp.sum(ra * rb, axis=-1) / jnp.sqrt(jnp.sum(ra * ra, axis=-1) * jnp.sum(rb * rb, axis=-1))


_SIMILARITY = {"ssim": ssim, "spearman": spearman}


def discrete_entropy(a: jax.Array, n_bins: int = 100) -> jax.Array:
    """Entropy (nats) of the histogram of each row of ``a`` ``(n, N)`` in ``n_bins`` equal bins between its
    minimum and maximum -> ``(n,)``: Quantus's ``discrete_entropy`` (``scipy.stats.entropy`` of
    ``np.histogram(a, bins=n_bins)``, numpy's bin assignment with its edge corrections; a constant row
    falls in one bin: 0)."""
    a = a.astype(jnp.float32)
    lo, hi = jnp.min(a, axis=-1, keepdims=True), jnp.max(a, axis=-1, keepdims=True)
    flat = hi == lo
    lo, hi = jnp.where(flat, lo - 0.5, lo), jnp.where(flat, hi + 0.5, hi)
    steps = jnp.arange(n_bins + 1, dtype=jnp.float32)[None, :]
    edges = jnp.where(steps == n_bins, hi, lo + steps * ((hi - lo) / n_bins))  # np.linspace, last edge exact
    idx = jnp.floor((a - lo) / (hi - lo) * n_bins).astype(jnp.int32)
    idx = jnp.clip(idx, 0, n_bins - 1)
    idx = jnp.where(a < jnp.take_along_axis(edges, idx, axis=-1), idx - 1, idx)
    idx = jnp.where((a >= jnp.take_along_axis(edges, idx + 1, axis=-1)) & (idx != n_bins - 1), idx + 1, idx)
    counts = jnp.sum(jax.nn.one_hot(idx, n_bins, dtype=jnp.float32), axis=-2)  # (n, bins)
    p = counts / jnp.sum(counts, axis=-1, keepdims=True)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


# ----------------------------------------------------------------------------------------------
# layers and randomised weights
# ----------------------------------------------------------------------------------------------

def _path_names(path) -> list[str]:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
    return out


class _ApplyAsModule:
    """``apply(variables, x)`` seen as a linen module (what :func:`gag_jax.sanity.layer_blocks` traces)."""

    def __init__(self, apply):
        self.apply = apply


def randomisation_layers(model, image_shape: Sequence[int], *, layer_order: str = "bottom_up",
                         layers: Sequence[tuple[str, Sequence[str]]] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """The layers in the order they are randomised: ``[(label, (top-level names, ...)), ...]``.

    Args:
      model: a ``gj.ModelFunctions`` (a Flax linen model, or any model whose variables are a mapping
        with a ``"params"`` collection; otherwise pass ``layers``).
      image_shape: an input batch shape, e.g. ``(1, 32, 32, 3)`` (only traced).
      layer_order: ``"bottom_up"`` / ``"independent"`` (input layer first) or ``"top_down"``.
      layers: explicit layers, top (logits) first; names are top-level keys of ``variables["params"]``
        (or of ``variables`` when it has no ``"params"``).

    Raises:
      ValueError: unknown order, a model whose layers cannot be found, bad ``layers``.
    """
    V.check_choice(layer_order, "layer_order", LAYER_ORDERS)
    model = as_model_functions(model)
    variables = model.variables
    top = _top_level(variables)
    if layers is not None:
        spec = sanity._check_blocks(layers, set(top))
    elif isinstance(variables, Mapping) and "params" in variables:
        spec = _traced_layers(model, tuple(int(d) for d in image_shape))
    else:
        raise ValueError("randomising layers needs their names: this model's variables have no 'params' collection "
                         f"(top-level names {sorted(top)[:20]}); pass layers=[(label, (names, ...)), ...] top first "
                         "and randomised_variables=")
    return list(spec) if layer_order == "top_down" else list(spec)[::-1]


_LAYERS: dict = {}
"""(apply functions, weight shapes, image shape) -> the traced layers (a trace per model, not per call)."""


def _traced_layers(model: ModelFunctions, image_shape: tuple[int, ...]) -> list[tuple[str, tuple[str, ...]]]:
    variables = model.variables
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    cache_key = (model._statics, treedef, tuple((np.shape(v), str(np.asarray(v).dtype) if not hasattr(v, "dtype")
                                                 else str(v.dtype)) for v in leaves), image_shape)
    if cache_key not in _LAYERS:
        logits = model._statics.logits
        module = logits.module if isinstance(logits, _Linen) else _ApplyAsModule(logits.fn) \
            if isinstance(logits, _Apply) else None
        if module is None:
            raise ValueError("the model's layers cannot be found: pass layers=[(label, (names, ...)), ...] top first")
        _LAYERS[cache_key] = sanity.layer_blocks(module, dict(variables), image_shape)
    return _LAYERS[cache_key]


def _top_level(variables) -> list[str]:
    if isinstance(variables, Mapping) and "params" in variables:
        return list(variables["params"])
    if isinstance(variables, Mapping) or hasattr(variables, "keys"):
        return [str(k) for k in variables.keys()]
    return []


def _leaf_ranks(variables, order: list[tuple[str, tuple[str, ...]]]) -> tuple[int, ...]:
    """Per leaf of ``variables`` (flattening order): the position of its layer in ``order``, or
    ``len(order)`` (never randomised: not a layer's, e.g. batch statistics)."""
    rank_of = {name: i for i, (_, names) in enumerate(order) for name in names}
    has_params = isinstance(variables, Mapping) and "params" in variables
    ranks = []
    for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]:
        names = _path_names(path)
        if has_params:
            owner = names[1] if len(names) > 1 and names[0] == "params" else None
        else:
            owner = names[0] if names else None
        ranks.append(rank_of.get(owner, len(order)))
    return tuple(ranks)


def _default_fresh(model: ModelFunctions, image_shape, seed: int):
    """Fresh weights of the model's structure: ``module.init`` (linen) or Flax's default initialisers."""
    variables = model.variables
    logits = model._statics.logits
    if isinstance(logits, _Linen):
        # eagerly: XLA:CPU takes seconds to compile a module's init, which runs once here
        init = logits.module.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape[1:]), jnp.float32))
        return {**dict(variables), "params": init["params"]}
    if not (isinstance(variables, Mapping) and "params" in variables):
        raise ValueError("this model has no initialisers the metric knows: pass randomised_variables= (a pytree like "
                         "model.variables holding the re-initialised weights)")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables["params"])
    lecun = jax.nn.initializers.lecun_normal()
    fresh = []
    for i, (path, leaf) in enumerate(leaves):
        name = (_path_names(path) or [""])[-1]
        leaf = jnp.asarray(leaf)
        if leaf.ndim >= 2:
            fresh.append(lecun(jax.random.fold_in(jax.random.PRNGKey(seed), i), leaf.shape, leaf.dtype))
        else:
            fresh.append(jnp.ones_like(leaf) if name == "scale" else jnp.zeros_like(leaf))
    return {**dict(variables), "params": jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(variables["params"]),
                                                                      fresh)}


def _check_fresh(fresh, variables):
    if jax.tree_util.tree_structure(fresh) != jax.tree_util.tree_structure(variables):
        raise ValueError("randomised_variables must have the structure of model.variables; got "
                         f"{jax.tree_util.tree_structure(fresh)} for {jax.tree_util.tree_structure(variables)}")
    for f, v in zip(jax.tree_util.tree_leaves(fresh), jax.tree_util.tree_leaves(variables)):
        if np.shape(f) != np.shape(v):
            raise ValueError(f"randomised_variables has a leaf of shape {np.shape(f)} where model.variables has "
                             f"{np.shape(v)}")
    return jax.tree_util.tree_map(jnp.asarray, fresh)


def _randomised(model: ModelFunctions, fresh, ranks: tuple[int, ...], step, cascading: bool) -> ModelFunctions:
    """The model after randomisation step ``step`` (traced int; -1 = the trained model)."""
    trained, treedef = jax.tree_util.tree_flatten(model.variables)
    new = [jnp.where((r <= step) if cascading else (r == step), f, t)
           for f, t, r in zip(jax.tree_util.tree_leaves(fresh), trained, ranks)]
    return model.replace(variables=jax.tree_util.tree_unflatten(treedef, new))


def _prepare_model(model, images, layer_order, layers, randomised_variables, seed):
    model = as_model_functions(model)
    shape = (1,) + tuple(np.shape(images)[1:])
    order = randomisation_layers(model, shape, layer_order=layer_order, layers=layers)
    if not order:
        raise ValueError("the model has no layers to randomise")
    fresh = (_default_fresh(model, shape, int(seed)) if randomised_variables is None
             else _check_fresh(randomised_variables, model.variables))
    return model, order, fresh, _leaf_ranks(model.variables, order)


# ----------------------------------------------------------------------------------------------
# random logit
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "explainer", "similarity", "normalise", "absolute"))
def _random_logit_core(images, labels, maps, keys, other, *, model_fn, explainer, similarity, normalise, absolute):
    B, H, W, _ = images.shape
    x = images.astype(jnp.float32)
    k = jax.eval_shape(model_fn, x).shape[-1]
    if other is None:
        draw = jax.vmap(lambda key: jax.random.randint(jax.random.fold_in(key, OTHER_LABEL_SALT), (), 0, k - 1))(keys)
        other = draw + (draw >= labels)  # uniform over the K - 1 other classes
    other = other.astype(jnp.int32)
    ap = explain_copies(explainer, model_fn, x[None], other, keys[None])[0]
    a = _prepare(maps, normalise, absolute).reshape(B, H * W)
    ap = _prepare(ap, normalise, absolute).reshape(B, H * W)
    return _SIMILARITY[similarity](a, ap), other


def random_logit(model, images, labels, maps, *, explainer, key=None, other_labels=None, similarity: str = "ssim",
                 normalise: bool = True, absolute: bool = False) -> dict:
    """Random Logit (Sixt et al. 2020; Quantus ``RandomLogit``): the similarity of the map to the map of the
    same image explained for another class. Lower is better (the map depends on the class).

    Image ``b``'s other class is drawn uniformly from the ``K - 1`` classes other than ``labels[b]``
    (``K`` = the model's outputs; Quantus's ``num_classes``) with ``fold_in(key_b, 2)``, or given as
    ``other_labels``. Similarity ``"ssim"`` (Quantus's default: :func:`ssim` of the flattened maps) or
    ``"spearman"``. ``normalise=True`` (Quantus's default) divides each map by its maximum absolute
    value, per image (Quantus: by the batch's maximum, so equal for B = 1; SSIM is not invariant to
    the two maps' different scales). The other class's map is explained with the image's own key.

    Args:
      model, images, labels, maps: as every metric (``maps`` ``(B, H, W)``).
      explainer: see :func:`gag_jax.metrics._explainer.as_explainer`.
      key: one key or one per image (``(B, 2)``); None: ``PRNGKey(0)``.
      other_labels: ``(B,)`` int, the other classes (instead of drawing them).
      similarity, normalise, absolute: as above (Quantus ``similarity_func``, ``normalise``, ``abs``).

    Returns:
      ``{"random_logit": (B,), "random_logit_other_labels": (B,) int}``.

    Raises:
      ValueError: bad shapes or options; ``other_labels`` equal to ``labels`` or out of range.
    """
    V.check_images_labels_saliency(images, labels, maps)
    V.check_choice(similarity, "similarity", SIMILARITIES)
    model = as_model_functions(model)
    images = jnp.asarray(images)
    check_labels(model, images, labels)
    labels = jnp.asarray(labels).astype(jnp.int32)
    keys = per_image_keys(jax.random.PRNGKey(0) if key is None else key, images.shape[0])
    if other_labels is not None:
        other_labels = jnp.asarray(other_labels)
        if other_labels.shape != labels.shape or not jnp.issubdtype(other_labels.dtype, jnp.integer):
            raise ValueError(f"other_labels must be ints of shape {labels.shape}; got {other_labels.dtype} "
                             f"{other_labels.shape}")
        if bool(jnp.any(other_labels == labels)):
            raise ValueError("other_labels must differ from labels")
    score, other = _random_logit_core(images, labels, jnp.asarray(maps), keys, other_labels, model_fn=model,
                                      explainer=as_explainer(explainer), similarity=similarity,
                                      normalise="max" if normalise else None, absolute=bool(absolute))
    return {"random_logit": score, "random_logit_other_labels": other}


# ----------------------------------------------------------------------------------------------
# smooth MPRT
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "explainer", "ranks", "cascading", "steps", "samples", "per_call", "noise_magnitude",
                 "normalise", "absolute", "similarity"))
def _smooth_mprt_core(images, labels, maps, keys, fresh, noise, *, model_fn, explainer, ranks, cascading, steps,
                      samples, per_call, noise_magnitude, normalise, absolute, similarity):
    B, H, W, Ch = images.shape
    x = images.astype(jnp.float32)
    std = noise_magnitude * (jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True))
    a = _prepare(maps, normalise, absolute).reshape(B, H * W)

    def smoothed(step):
        model = _randomised(model_fn, fresh, ranks, step, cascading)

        def chunk(index, *given):
            noise_keys, explain_keys = copy_keys(keys, index)
            if given:
                z = given[0].astype(jnp.float32)
            else:
                z = jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (H, W, Ch), jnp.float32)))(noise_keys)
            last = (index == samples - 1)[:, None, None, None, None]  # the image itself, as Quantus
            xp = x[None] + jnp.where(last, 0.0, z * std[None])
            return explain_copies(explainer, model, xp, labels, explain_keys)  # (c, B, H, W)

        arrays = () if noise is None else (jnp.concatenate([noise, jnp.zeros_like(noise[:1])]),)
        total = _sum_chunks(chunk, samples, per_call, *arrays)
        return _SIMILARITY[similarity](a, _prepare(total / samples, normalise, absolute).reshape(B, H * W))

    return jax.lax.map(smoothed, jnp.asarray(steps, jnp.int32))  # (steps, B)


def _sum_chunks(fn, n: int, per_call: int | None, *arrays):
    """``sum_i fn(chunk_i)`` over the chunks of :func:`gag_jax.metrics._common.chunk_plan`, summed over each chunk's first axis,
    accumulated in a ``lax.scan`` (memory: one chunk)."""
    index = jnp.arange(n)
    size, full, rest = C.chunk_plan(n, per_call)

    def body(carry, args):
        return carry + jnp.sum(fn(*args), axis=0), None

    head = size * full
    first = fn(index[:size], *(a[:size] for a in arrays))
    total = jnp.sum(first, axis=0)
    if full > 1:
        total, _ = jax.lax.scan(body, total, (index[size:head].reshape(full - 1, size),
                                              *(a[size:head].reshape((full - 1, size) + a.shape[1:]) for a in arrays)))
    if rest:
        total = total + jnp.sum(fn(index[head:], *(a[head:] for a in arrays)), axis=0)
    return total


def smooth_mprt(model, images, labels, maps, *, explainer, key=None, samples: int = 50, noise_magnitude: float = 0.1,
                layer_order: str = "bottom_up", skip_layers: bool = False, score: str = "average",
                similarity: str = "spearman", normalise: bool = True, absolute: bool = True, seed: int = 42,
                layers=None, randomised_variables=None, noise=None, copies_per_call="auto") -> dict:
    """Smooth Model Parameter Randomisation Test (Hedström et al. 2023; Quantus ``SmoothMPRT``). Lower is better.

    After each randomisation step (see the module docstring: ``layer_order``, ``layers``,
    ``randomised_variables``, ``seed``), the images are explained ``samples`` times, copy ``s < samples -
    1`` with Gaussian noise of std ``noise_magnitude * (max - min)`` of the image and the last copy
    without noise, and the maps are averaged (SmoothGrad of the explainer); ``normalise`` (root mean
    square per image, Quantus's ``normalise_by_average_second_moment_estimate``) and ``absolute`` are
    applied to it and to the given maps, then ``similarity`` (Spearman by default, or ``"ssim"``).

    Image ``b``'s copy ``s`` draws its noise from ``fold_in(fold_in(key_b, s), 0)`` and is explained with
    ``fold_in(fold_in(key_b, s), 1)``: the same draws at every step (common random numbers; Quantus
    draws new noise from numpy's global RNG at every layer). ``noise=`` gives the standard-normal draws
    ``(samples - 1, B, H, W, C)`` instead.

    Score: ``score="average"`` the mean over the randomised layers (Quantus's
    ``return_average_correlation``; Quantus 0.6 also averages in the trained model's similarity, since
    it skips a key ``"orig"`` while storing it as ``"original"``: that value is
    ``(original + sum(curve)) / (L + 1)`` from the outputs below), or ``"last"`` the last layer's
    (``return_last_correlation``). ``skip_layers=True`` explains only after the last step.

    Args:
      model, images, labels, maps: as every metric.
      explainer: see :func:`gag_jax.metrics._explainer.as_explainer`.
      key: one key or one per image ``(B, 2)``; None: ``PRNGKey(0)``.
      copies_per_call: noisy images per explainer call (whole copies of the batch, at least one).

    Returns:
      ``{"smooth_mprt": (B,), "smooth_mprt_curve": (B, L), "smooth_mprt_original": (B,)}``; the curve's
      columns follow :func:`randomisation_layers` with the same ``layer_order`` (only the last with
      ``skip_layers``).

    Raises:
      ValueError: bad shapes or options, a model whose layers or initialisers are unknown (pass
        ``layers`` / ``randomised_variables``), ``noise`` of the wrong shape.
    """
    V.check_images_labels_saliency(images, labels, maps)
    V.check_positive_int(samples, "samples")
    V.check_choice(score, "score", ("average", "last"))
    V.check_choice(similarity, "similarity", SIMILARITIES)
    images = jnp.asarray(images)
    batch = images.shape[0]
    model, order, fresh, ranks = _prepare_model(model, images, layer_order, layers, randomised_variables, seed)
    check_labels(model, images, labels)
    count = len(order)
    steps = (-1, count - 1) if skip_layers else tuple(range(-1, count))
    if noise is not None:
        noise = jnp.asarray(noise)
        if tuple(noise.shape) != (samples - 1,) + tuple(images.shape):
            raise ValueError(f"noise must be standard-normal draws (samples - 1, B, H, W, C) = "
                             f"{(samples - 1,) + tuple(images.shape)}; got {tuple(noise.shape)}")
    per = C.resolve_batch_size(copies_per_call, images)
    curve = _smooth_mprt_core(
        images, jnp.asarray(labels).astype(jnp.int32), jnp.asarray(maps), per_image_keys(
            jax.random.PRNGKey(0) if key is None else key, batch), fresh, noise, model_fn=model,
        explainer=as_explainer(explainer), ranks=ranks, cascading=layer_order != "independent", steps=steps,
        samples=int(samples), per_call=None if per is None else max(1, per // batch),
        noise_magnitude=float(noise_magnitude), normalise="second_moment" if normalise else None,
        absolute=bool(absolute), similarity=similarity).T  # (B, 1 + steps)
    layers_curve = curve[:, 1:]
    value = jnp.mean(layers_curve, axis=1) if score == "average" else layers_curve[:, -1]
    return {"smooth_mprt": value, "smooth_mprt_curve": layers_curve, "smooth_mprt_original": curve[:, 0]}


# ----------------------------------------------------------------------------------------------
# efficient MPRT
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "explainer", "ranks", "cascading", "steps", "n_bins", "normalise", "absolute"))
def _efficient_mprt_core(images, labels, maps, keys, fresh, *, model_fn, explainer, ranks, cascading, steps, n_bins,
                         normalise, absolute):
    B, H, W, _ = images.shape
    x = images.astype(jnp.float32)

    def complexity(step):
        model = _randomised(model_fn, fresh, ranks, step, cascading)
        ap = explain_copies(explainer, model, x[None], labels, keys[None])[0]
        return discrete_entropy(_prepare(ap, normalise, absolute).reshape(B, H * W), n_bins)

    original = discrete_entropy(_prepare(maps, normalise, absolute).reshape(B, H * W), n_bins)
    return original, jax.lax.map(complexity, jnp.asarray(steps, jnp.int32)).T  # (B,), (B, steps)


def efficient_mprt(model, images, labels, maps, *, explainer, key=None, layer_order: str = "bottom_up",
                   skip_layers: bool = True, n_bins: int = 100, normalise: bool = False, absolute: bool = False,
                   seed: int = 42, layers=None, randomised_variables=None) -> dict:
    """Efficient Model Parameter Randomisation Test (Hedström et al. 2023; Quantus ``EfficientMPRT``). Higher is
    better (randomising the model makes the maps more complex).

    ``(H(a') - H(a)) / H(a)`` with ``H`` the discrete entropy of a map's histogram (:func:`discrete_entropy`,
    ``n_bins`` = 100 as Quantus's default, no binning rule), ``a`` the given maps and ``a'`` the
    explainer's maps of the fully randomised model (the last step of ``layer_order``; the module
    docstring says how layers are randomised). ``skip_layers=False`` also explains after every step
    (the curve). ``normalise`` (root mean square per image) and ``absolute`` as Quantus (both off).

    Differs from Quantus 0.6: ``H(a)`` is the entropy of the **given** maps (Quantus re-explains the
    trained model, which gives the same maps for a deterministic explainer and costs one more
    explanation); the randomised model is explained with each image's own key.

    Returns:
      ``{"efficient_mprt": (B,), "efficient_mprt_original": (B,) H(a), "efficient_mprt_curve": (B, L')}``
      (``L' = 1`` with ``skip_layers``: ``H(a')`` of the fully randomised model; else one column per
      step in :func:`randomisation_layers` order).

    Raises:
      ValueError: bad shapes or options; a model whose layers or initialisers are unknown.
    """
    V.check_images_labels_saliency(images, labels, maps)
    V.check_positive_int(n_bins, "n_bins")
    images = jnp.asarray(images)
    model, order, fresh, ranks = _prepare_model(model, images, layer_order, layers, randomised_variables, seed)
    check_labels(model, images, labels)
    steps = (len(order) - 1,) if skip_layers else tuple(range(len(order)))
    original, curve = _efficient_mprt_core(
        images, jnp.asarray(labels).astype(jnp.int32), jnp.asarray(maps),
        per_image_keys(jax.random.PRNGKey(0) if key is None else key, images.shape[0]), fresh, model_fn=model,
        explainer=as_explainer(explainer), ranks=ranks, cascading=layer_order != "independent", steps=steps,
        n_bins=int(n_bins), normalise="second_moment" if normalise else None, absolute=bool(absolute))
    return {"efficient_mprt": (curve[:, -1] - original) / original, "efficient_mprt_original": original,
            "efficient_mprt_curve": curve}


def cost(metric: str):
    """``forward_passes(options, image_shape=None) -> int`` for the registry. Each explanation is counted
    as one model gradient (2 forwards, Vanilla Gradient's cost; an explainer of ``n`` gradients costs
    ``n`` times as much). The MPRTs' counts are **per randomisation step**: a model of ``L`` layers
    takes ``L + 1`` steps in smooth MPRT (1 + 1 with ``skip_layers``) and ``L`` in efficient MPRT (1 with
    ``skip_layers``, its default), which the record cannot know without the model."""
    counts = {"random_logit": lambda o: 2,
              "smooth_mprt": lambda o: 2 * int(o.get("samples", 50)),
              "efficient_mprt": lambda o: 2}
    count = counts[V.check_choice(metric, "metric", tuple(counts))]

    def forward_passes(options, image_shape=None) -> int:
        return int(count(dict(options or {})))

    forward_passes.__name__ = f"{metric}_forward_passes"
    return forward_passes
