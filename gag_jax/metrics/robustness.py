"""Robustness metrics (Quantus 0.6 "robustness"): how much a method's maps change when the input is
perturbed slightly. Each re-explains ``samples`` perturbed copies of every image.

One line each (``a`` the given map of ``x``, ``a'`` the explainer's map of a perturbed copy ``x'``,
``h`` logits, flattened arrays, norms Frobenius unless named):

* max / avg sensitivity (Yeh et al. 2019) = max / mean over copies of ``||a - a'|| / ||a||``,
  ``x' = x + U(-radius, radius)``;
* local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018) = max over copies of
  ``||a - a'||_2 / (||x - x'||_2 + 1e-10)``, ``x' = x + N(0, 0.1^2)``;
* relative input stability (Agarwal et al. 2022) = max over copies of
  ``||(a - a') / a|| / max(||(x - x') / x||, eps)``, ``x' = x + U(0.02, 0.2)``;
* relative output stability = max over copies of ``||(a - a') / a|| / max(||h - h'||, eps)``.

All re-explanations of a batch run in one compiled program: the ``(samples, B, H, W, C)`` perturbed
copies are never held at once; a ``jax.lax.map`` over chunks of copies builds each chunk from the
images' keys and explains it as one batch of ``chunk * B`` images (``copies_per_call``). Image
``b``'s copy ``s`` draws its noise from ``fold_in(fold_in(key_b, s), 0)`` and is explained with the key
``fold_in(fold_in(key_b, s), 1)``, so with one key per image a score does not depend on the batch.

Where the project differs from Quantus 0.6 (each also said in the function's docstring):

* ``normalise=True`` divides each map by *its own* maximum (LLE's default; Quantus divides the whole
  batch by the batch's maximum, which makes an image's score depend on its batch). Same for B = 1.
* The noise comes from per-image JAX keys, not numpy's global RNG; pass ``perturbations=`` (the
  additive noise) to reproduce given draws exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gag_jax import _validation as V
from gag_jax.keys import per_image_keys
from gag_jax.metrics import _common as C
from gag_jax.metrics._explainer import as_explainer
from gag_jax.model import as_model_functions, jit_with_model

__all__ = ["avg_sensitivity", "local_lipschitz_estimate", "max_sensitivity", "relative_input_stability",
           "relative_output_stability"]

NOISE_SALT = 0
"""Copy ``s`` of image ``b`` draws its perturbation from ``fold_in(fold_in(key_b, s), NOISE_SALT)``."""
EXPLAIN_SALT = 1
"""... and is explained with the key ``fold_in(fold_in(key_b, s), EXPLAIN_SALT)``."""

SENSITIVITY_NORMS = ("fro", "l2", "linf")
DISTANCES = ("euclidean", "manhattan", "chebyshev")


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------

def check_labels(model, images, labels) -> None:
    """ValueError unless ``labels`` are ints ``(B,)`` in ``[0, K)``, ``K`` the model's outputs (read by
    ``jax.eval_shape``: no model call)."""
    shape = jax.eval_shape(model, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape
    V.check_labels(jnp.asarray(labels), images.shape[0], shape[-1])


def normalise_by_max(maps: jax.Array) -> jax.Array:
    """Each ``(H, W)`` map of ``(n, H, W)`` divided by its maximum absolute value (all-zero maps as they
    are): Quantus's ``normalise_by_max``, per image (Quantus: over the whole batch)."""
    top = jnp.max(jnp.abs(maps), axis=(-2, -1), keepdims=True)
    return jnp.where(top > 0, maps / jnp.where(top > 0, top, 1.0), maps)


def normalise_by_second_moment(maps: jax.Array) -> jax.Array:
    """Each map divided by ``sqrt(mean(a^2))`` (all-zero maps as they are): Quantus's
    ``normalise_by_average_second_moment_estimate``, per image (Quantus: over the whole batch)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(maps), axis=(-2, -1), keepdims=True))
    return jnp.where(rms > 0, maps / jnp.where(rms > 0, rms, 1.0), maps)


_NORMALISERS = {"max": normalise_by_max, "second_moment": normalise_by_second_moment}


def _prepare(maps, normalise: str | None, absolute: bool):
    """Quantus's order: normalise, then absolute value."""
    maps = maps.astype(jnp.float32)
    if normalise is not None:
        maps = _NORMALISERS[normalise](maps)
    return jnp.abs(maps) if absolute else maps


def _norm(v, name: str):
    """Norm of the last axis: ``fro`` / ``l2`` / ``euclidean`` = 2-norm, ``linf`` / ``chebyshev`` = max
    abs, ``manhattan`` = sum abs."""
    if name in ("fro", "l2", "euclidean"):
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=-1))
    if name in ("linf", "chebyshev"):
        return jnp.max(jnp.abs(v), axis=-1)
    return jnp.sum(jnp.abs(v), axis=-1)


def _objective(kind: str, a, ap, x, xp, h, hp, *, norms: tuple[str, str], eps: float):
    """The value of each copy, ``(c, B)``: ``a (B, N)``, ``ap (c, B, N)``, ``x (B, D)``, ``xp (c, B, D)``,
    ``h (B, K)`` / ``hp (c, B, K)`` (or None)."""
    if kind == "sensitivity":  # Quantus: norm_numerator(difference(a, a')) / norm_denominator(a)
        return _norm(a[None] - ap, norms[0]) / _norm(a, norms[1])[None]
    if kind == "lipschitz":  # Quantus's lipschitz_constant: d1(a, a') / (d2(x, x') + 1e-10)
        return _norm(a[None] - ap, norms[0]) / (_norm(x[None] - xp, norms[1]) + 1e-10)
    relative_a = (a[None] - ap) / (a + (a == 0) * eps)[None]
    numerator = _norm(relative_a, "fro")
    if kind == "ris":
        denominator = _norm((x[None] - xp) / (x + (x == 0) * eps)[None], "fro")
    else:  # "ros"
        denominator = _norm(h[None] - hp, "fro")
    denominator = denominator + (denominator == 0) * eps
    return numerator / denominator


def _draw(key, shape, noise: tuple):
    """One copy's additive noise: ``("uniform", low, high)`` or ``("normal", mean, std)``."""
    kind, p, q = noise
    if kind == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, p, q)
    return p + q * jax.random.normal(key, shape, jnp.float32)


def _map_chunks(fn, n: int, per_call: int | None, *arrays):
    """``fn(index_chunk, *array_chunks) -> (c, ...)`` over ``n`` items in the chunks of
    :func:`gag_jax.metrics._common.chunk_plan` (full chunks in a ``jax.lax.map``); concatenated."""
    index = jnp.arange(n)
    size, full, rest = C.chunk_plan(n, per_call)
    if full == 1 and rest == 0:
        return fn(index, *arrays)
    head = size * full
    out = jax.lax.map(lambda args: fn(*args),
                      (index[:head].reshape(full, size), *(a[:head].reshape((full, size) + a.shape[1:]) for a in arrays)))
    out = jax.tree_util.tree_map(lambda o: o.reshape((head,) + o.shape[2:]), out)
    if rest:
        tail = fn(index[head:], *(a[head:] for a in arrays))
        out = jax.tree_util.tree_map(lambda o, t: jnp.concatenate([o, t]), out, tail)
    return out


def explain_copies(explainer, model, copies, labels, keys):
    """Explain ``copies (c, B, H, W, C)`` as one batch of ``c * B`` images (labels tiled, one key per
    copy) -> ``(c, B, H, W)`` float32; ValueError if the explainer returns another shape."""
    c, b, height, width, channels = copies.shape
    out = explainer(model, copies.reshape(c * b, height, width, channels), jnp.tile(labels, c),
                    keys.reshape((c * b,) + keys.shape[2:]))
    if tuple(out.shape) != (c * b, height, width):
        raise ValueError(f"the explainer must return maps (n, H, W) = {(c * b, height, width)} for images "
                         f"{(c * b, height, width, channels)}; got shape {tuple(out.shape)}")
    return out.astype(jnp.float32).reshape(c, b, height, width)


# ----------------------------------------------------------------------------------------------
# the one compiled program
# ----------------------------------------------------------------------------------------------


def copy_keys(keys: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(noise keys, explain keys)``, each ``(c, B, 2)``, of copies ``index (c,)`` of every image: copy ``s``
    of image ``b`` draws its noise from ``fold_in(fold_in(key_b, s), NOISE_SALT)`` and is explained with
    ``fold_in(fold_in(key_b, s), EXPLAIN_SALT)`` (the one key policy of the re-explaining metrics)."""
    per_copy = jax.vmap(lambda s: jax.vmap(lambda k: jax.random.fold_in(k, s))(keys))(index)

    def salted(salt):
        return jax.vmap(jax.vmap(lambda k: jax.random.fold_in(k, salt)))(per_copy)

    return salted(NOISE_SALT), salted(EXPLAIN_SALT)


@jit_with_model(("model_fn", "explainer", "kind", "samples", "per_call", "noise", "normalise", "absolute",
                 "nan_changed", "norms", "eps", "aggregate"))
def _robustness_core(images, labels, maps, keys, perturbations, *, model_fn, explainer, kind, samples, per_call,
                     noise, normalise, absolute, nan_changed, norms, eps, aggregate):
    B, H, W, Ch = images.shape
    x = images.astype(jnp.float32)
    a = _prepare(maps, normalise, absolute).reshape(B, H * W)
    need_logits = nan_changed or kind == "ros"
    h = model_fn(x).astype(jnp.float32) if need_logits else None

    def chunk(index, *given):
        noise_keys, explain_keys = copy_keys(keys, index)
        if given:
            delta = given[0].astype(jnp.float32)
        else:
            delta = jax.vmap(jax.vmap(lambda k: _draw(k, (H, W, Ch), noise)))(noise_keys)
        xp = x[None] + delta  # (c, B, H, W, C)
        ap = _prepare(explain_copies(explainer, model_fn, xp, labels, explain_keys), normalise, absolute)
        c = xp.shape[0]
        hp = model_fn(xp.reshape(c * B, H, W, Ch)).astype(jnp.float32).reshape(c, B, -1) if need_logits else None
        values = _objective(kind, a, ap.reshape(c, B, H * W), x.reshape(B, -1), xp.reshape(c, B, -1), h, hp,
                            norms=norms, eps=eps)
        if nan_changed:
            changed = jnp.argmax(hp, axis=-1) != jnp.argmax(h, axis=-1)[None]
            values = jnp.where(changed, jnp.nan, values)
        return values

    arrays = () if perturbations is None else (perturbations,)
    values = _map_chunks(chunk, samples, per_call, *arrays).T  # (B, S)
    if aggregate == "max":
        score = jnp.max(values, axis=1) if nan_changed else jnp.nanmax(values, axis=1)
    else:
        score = jnp.mean(values, axis=1) if nan_changed else jnp.nanmean(values, axis=1)
    return score, values


def _check_perturbations(perturbations, samples: int, shape: tuple) -> jax.Array | None:
    if perturbations is None:
        return None
    p = jnp.asarray(perturbations)
    if p.ndim != 5 or tuple(p.shape[1:]) != tuple(shape) or p.shape[0] < 1:
        raise ValueError(f"perturbations must be the additive noise (S, B, H, W, C) with (B, H, W, C) = {tuple(shape)}; "
                         f"got shape {tuple(p.shape)}")
    if samples is not None and p.shape[0] != samples:
        raise ValueError(f"perturbations hold {p.shape[0]} copies but samples={samples}")
    return p


def _copies_per_batch(copies_per_call, images, batch: int) -> int | None:
    """``copies_per_call`` counts perturbed images per explainer call; the chunks hold whole copies of
    the batch, so it becomes ``max(1, copies_per_call // B)`` copies of the batch (None: all)."""
    per = C.resolve_batch_size(copies_per_call, images)
    return None if per is None else max(1, per // batch)


def _run(name: str, kind: str, model, images, labels, maps, *, explainer, key, samples, noise, normalise, absolute,
         nan_changed, norms, eps, aggregate, perturbations, copies_per_call) -> dict:
    V.check_images_labels_saliency(images, labels, maps)
    V.check_positive_int(samples, "samples")
    model = as_model_functions(model)
    fn = as_explainer(explainer)
    images = jnp.asarray(images)
    batch = images.shape[0]
    check_labels(model, images, labels)
    p = _check_perturbations(perturbations, samples, images.shape)
    keys = per_image_keys(jax.random.PRNGKey(0) if key is None else key, batch)
    per_call = _copies_per_batch(copies_per_call, images, batch)
    maps = jnp.asarray(maps)
    V.raise_on_saliency_flags(V.saliency_flags(maps), allow_negative=True)
    score, values = _robustness_core(
        images, jnp.asarray(labels).astype(jnp.int32), maps, keys, p, model_fn=model, explainer=fn, kind=kind,
        samples=int(samples), per_call=per_call, noise=noise, normalise=normalise, absolute=bool(absolute),
        nan_changed=bool(nan_changed), norms=norms, eps=float(eps), aggregate=aggregate)
    return {name: score, f"{name}_per_copy": values}


def _uniform(low: float, high: float | None) -> tuple:
    """Quantus's ``uniform_noise``: ``U(-low, low)`` when ``high`` is None, else ``U(low, high)``."""
    low = float(low)
    if high is None:
        if not low > 0:
            raise ValueError(f"the noise bound must be > 0; got {low}")
        return ("uniform", -low, low)
    if not float(high) > low:
        raise ValueError(f"upper_bound must be larger than lower_bound; got {high} <= {low}")
    return ("uniform", low, float(high))


_COMMON_DOC = """
    Args:
      model: a ``gj.ModelFunctions`` (or what ``gag_jax.model.as_model_functions`` accepts).
      images: ``(B, H, W, C)`` float, normalised as the model expects.
      labels: ``(B,)`` int target classes (the perturbed copies are explained for the same class).
      maps: ``(B, H, W)`` the explainer's maps of ``images`` (any sign; finite).
      explainer: what re-explains the copies (see :func:`gag_jax.metrics._explainer.as_explainer`): a
        method name, ``(name, {options})``, ``gj.Method``, composed ``gj.Explainer`` or a traceable
        callable ``(model, images, labels, keys) -> (n, H, W)``.
      key: one PRNG key or one per image ``(B, 2)`` (then a score does not depend on the batch);
        None: ``PRNGKey(0)``.
      samples: perturbed copies per image (Quantus ``nr_samples``).
      normalise, absolute: applied to the given and the re-explained maps, normalisation first
        (Quantus ``normalise`` / ``abs``); the normalisation is per image (see the module docstring).
      nan_when_prediction_changes: a copy whose predicted class (argmax of the logits) differs from the
        image's counts as NaN; as in Quantus, the score is then NaN (max / mean over copies with NaN)
        while ``<name>_per_copy`` keeps the other copies' values.
      perturbations: the additive noise ``(samples, B, H, W, C)`` instead of drawing it (exact
        comparisons with other implementations).
      copies_per_call: perturbed images per explainer call, rounded down to whole copies of the batch
        (at least one): ``"auto"`` (the metrics' policy), an int, or None (all copies at once).

    Returns:
      ``{"<name>": (B,), "<name>_per_copy": (B, samples)}`` float32.

    Raises:
      ValueError: bad shapes, non-finite maps, bad options, an explainer that is not traceable (XRAI)
        or returns another shape.
"""


# ----------------------------------------------------------------------------------------------
# the metrics
# ----------------------------------------------------------------------------------------------

def _sensitivity(name, aggregate, model, images, labels, maps, explainer, key, samples, radius, upper_bound,
                 norm_numerator, norm_denominator, normalise, absolute, nan_when_prediction_changes, perturbations,
                 copies_per_call):
    V.check_choice(norm_numerator, "norm_numerator", SENSITIVITY_NORMS)
    V.check_choice(norm_denominator, "norm_denominator", SENSITIVITY_NORMS)
    return _run(name, "sensitivity", model, images, labels, maps, explainer=explainer, key=key, samples=samples,
                noise=_uniform(radius, upper_bound), normalise="max" if normalise else None, absolute=absolute,
                nan_changed=nan_when_prediction_changes, norms=(norm_numerator, norm_denominator), eps=0.0,
                aggregate=aggregate, perturbations=perturbations, copies_per_call=copies_per_call)


def max_sensitivity(model, images, labels, maps, *, explainer, key=None, samples: int = 200, radius: float = 0.2,
                    upper_bound: float | None = None, norm_numerator: str = "fro", norm_denominator: str = "fro",
                    normalise: bool = False, absolute: bool = False, nan_when_prediction_changes: bool = False,
                    perturbations=None, copies_per_call="auto") -> dict:
    """Max-Sensitivity (Yeh et al. 2019; Quantus ``MaxSensitivity``): the largest relative change of the map
    under small uniform input noise. Lower is more robust.

    ``max_s ||a - a'_s|| / ||a||`` over ``samples`` copies ``x + U(-radius, radius)`` (every pixel and
    channel; ``U(radius, upper_bound)`` when ``upper_bound`` is given, as Quantus's ``lower_bound`` /
    ``upper_bound``); norms ``"fro"`` (= ``"l2"``, the default) or ``"linf"`` of the flattened maps. An
    all-zero map ``a`` gives inf / NaN, as in Quantus. Without ``nan_when_prediction_changes`` NaN copies
    are ignored (Quantus's ``np.nanmax``).

    Model passes per image: ``samples`` explanations (plus ``samples`` forwards with
    ``nan_when_prediction_changes``).
    """
    return _sensitivity("max_sensitivity", "max", model, images, labels, maps, explainer, key, samples, radius,
                        upper_bound, norm_numerator, norm_denominator, normalise, absolute,
                        nan_when_prediction_changes, perturbations, copies_per_call)


def avg_sensitivity(model, images, labels, maps, *, explainer, key=None, samples: int = 200, radius: float = 0.2,
                    upper_bound: float | None = None, norm_numerator: str = "fro", norm_denominator: str = "fro",
                    normalise: bool = False, absolute: bool = False, nan_when_prediction_changes: bool = False,
                    perturbations=None, copies_per_call="auto") -> dict:
    """Avg-Sensitivity (Yeh et al. 2019; Quantus ``AvgSensitivity``): as :func:`max_sensitivity` with the
    mean over the copies instead of the max (``np.nanmean`` without ``nan_when_prediction_changes``).
    Lower is more robust."""
    return _sensitivity("avg_sensitivity", "mean", model, images, labels, maps, explainer, key, samples, radius,
                        upper_bound, norm_numerator, norm_denominator, normalise, absolute,
                        nan_when_prediction_changes, perturbations, copies_per_call)


def local_lipschitz_estimate(model, images, labels, maps, *, explainer, key=None, samples: int = 200,
                             perturb_mean: float = 0.0, perturb_std: float = 0.1, norm_numerator: str = "euclidean",
                             norm_denominator: str = "euclidean", normalise: bool = True, absolute: bool = False,
                             nan_when_prediction_changes: bool = False, perturbations=None,
                             copies_per_call="auto") -> dict:
    """Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018; Quantus ``LocalLipschitzEstimate``). Lower is
    more robust.

    ``max_s d1(a, a'_s) / (d2(x, x'_s) + 1e-10)`` over ``samples`` copies ``x + N(perturb_mean,
    perturb_std^2)``; ``d1`` / ``d2`` ``"euclidean"`` (default), ``"manhattan"`` or ``"chebyshev"`` of
    the flattened maps / images. ``normalise=True`` (Quantus's default) divides each map by its maximum
    absolute value, per image; Quantus divides the batch by the batch's maximum, so its value depends
    on the batch (equal for B = 1, or with ``normalise=False``).
    """
    V.check_choice(norm_numerator, "norm_numerator", DISTANCES)
    V.check_choice(norm_denominator, "norm_denominator", DISTANCES)
    if not float(perturb_std) > 0:
        raise ValueError(f"perturb_std must be > 0; got {perturb_std}")
    return _run("local_lipschitz_estimate", "lipschitz", model, images, labels, maps, explainer=explainer, key=key,
                samples=samples, noise=("normal", float(perturb_mean), float(perturb_std)),
                normalise="max" if normalise else None, absolute=absolute, nan_changed=nan_when_prediction_changes,
                norms=(norm_numerator, norm_denominator), eps=0.0, aggregate="max", perturbations=perturbations,
                copies_per_call=copies_per_call)


def relative_input_stability(model, images, labels, maps, *, explainer, key=None, samples: int = 200,
                             lower_bound: float = 0.02, upper_bound: float = 0.2, eps_min: float = 1e-6,
                             normalise: bool = False, absolute: bool = False,
                             nan_when_prediction_changes: bool = True, perturbations=None,
                             copies_per_call="auto") -> dict:
    """Relative Input Stability (Agarwal et al. 2022; Quantus ``RelativeInputStability``). Lower is more robust.

    ``max_s ||(a - a'_s) / a|| / max(||(x - x'_s) / x||, eps_min)`` (element-wise ratios, a zero in the
    divisor replaced by ``eps_min``; Frobenius norms) over copies ``x + U(lower_bound, upper_bound)``
    (Quantus's defaults 0.02 and 0.2: positive noise only). As Quantus: a copy that changes the
    predicted class is NaN and the score is NaN when any copy does (``nan_when_prediction_changes=False``
    keeps them); ``normalise`` divides by the root mean square of each map (Quantus's
    ``normalise_by_average_second_moment_estimate``, per image here, per batch there).
    Note the element-wise ratio: a map pixel that is exactly 0 (min-max maps have one) weighs
    ``1 / eps_min``.
    """
    return _run("relative_input_stability", "ris", model, images, labels, maps, explainer=explainer, key=key,
                samples=samples, noise=_uniform(lower_bound, upper_bound),
                normalise="second_moment" if normalise else None, absolute=absolute,
                nan_changed=nan_when_prediction_changes, norms=("fro", "fro"), eps=float(eps_min), aggregate="max",
                perturbations=perturbations, copies_per_call=copies_per_call)


def relative_output_stability(model, images, labels, maps, *, explainer, key=None, samples: int = 200,
                              lower_bound: float = 0.02, upper_bound: float = 0.2, eps_min: float = 1e-6,
                              normalise: bool = False, absolute: bool = False,
                              nan_when_prediction_changes: bool = True, perturbations=None,
                              copies_per_call="auto") -> dict:
    """Relative Output Stability (Agarwal et al. 2022; Quantus ``RelativeOutputStability``). Lower is more robust.

    ``max_s ||(a - a'_s) / a|| / max(||h(x) - h(x'_s)||_2, eps_min)`` with ``h`` the model's **logits**
    (Quantus's default ``softmax=False``); perturbations, NaN rule and ``normalise`` as
    :func:`relative_input_stability`.
    """
    return _run("relative_output_stability", "ros", model, images, labels, maps, explainer=explainer, key=key,
                samples=samples, noise=_uniform(lower_bound, upper_bound),
                normalise="second_moment" if normalise else None, absolute=absolute,
                nan_changed=nan_when_prediction_changes, norms=("fro", "fro"), eps=float(eps_min), aggregate="max",
                perturbations=perturbations, copies_per_call=copies_per_call)


for _fn in (max_sensitivity, avg_sensitivity, local_lipschitz_estimate, relative_input_stability,
            relative_output_stability):
    _fn.__doc__ = _fn.__doc__.rstrip() + "\n" + _COMMON_DOC.replace("<name>", _fn.__name__)
del _fn


def forward_passes(explainer_cost: int, *, samples: int, extra_forward: bool) -> int:
    """Model forward passes per image of a robustness metric: ``samples`` re-explanations of
    ``explainer_cost`` forwards each (a gradient counts as 2), plus one forward per copy (and one of
    the image) when the logits are read."""
    return int(samples) * (int(explainer_cost) + int(extra_forward)) + int(extra_forward)



def cost(metric: str):
    """``forward_passes(options, image_shape=None) -> int`` for the registry: model forward passes one map
    costs in ``metric`` with ``options``. Each re-explanation is counted as one model gradient (= 2
    forwards: Vanilla Gradient's cost); an explainer of ``n`` gradients (SmoothGrad, IG) costs ``n``
    times that part. One forward per copy (and one of the image) is added where the logits are read
    (the output stability, or ``nan_when_prediction_changes``)."""
    defaults = {"max_sensitivity": False, "avg_sensitivity": False, "local_lipschitz_estimate": False,
                "relative_input_stability": True, "relative_output_stability": True}
    nan_default = defaults[V.check_choice(metric, "metric", tuple(defaults))]

    def forward_passes(options, image_shape=None) -> int:
        options = dict(options or {})
        samples = int(options.get("samples", 200))
        logits = metric == "relative_output_stability" or bool(options.get("nan_when_prediction_changes",
                                                                           nan_default))
        return samples * (2 + int(logits)) + int(logits)

    forward_passes.__name__ = f"{metric}_forward_passes"
    return forward_passes
