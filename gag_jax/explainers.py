"""Presets for every method of the paper's Tables 2 and 3, and the ``explain`` dispatch."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gag_jax import aggregations, gradients, interpretations, modifications, ops
from gag_jax._lifting import join_function, split_function
from gag_jax._validation import (
    check_fraction,
    check_images,
    check_labels,
    check_positive_int,
)
from gag_jax.gradcam import gradcam
from gag_jax.pipeline import Explainer, chain
from gag_jax.postprocess import REDUCTIONS, to_saliency


class ModelFunctions(NamedTuple):
    """A model as the explainers need it.

    Attributes:
      logits: ``images (B, H, W, C) -> logits (B, K)``.
      features: ``images -> activations (B, h, w, D)`` of the last conv block (Grad-CAM).
      head: ``activations -> logits`` (Grad-CAM).
      guided_logits: optional hand-built copy of the model with Guided-Backprop activations, for
        models whose activations ``gradients.guided_backprop`` cannot rewrite (SiLU, GELU, ...);
        without it ``gb`` rewrites the ReLUs of ``logits``.

    ``explain`` also accepts a plain callable (used as ``logits``) or a mapping with these keys
    (what ``models.model_functions`` returns). Build it once and reuse it: jit caches are keyed
    on these functions.
    """

    logits: Callable[[jax.Array], jax.Array]
    features: Callable[[jax.Array], jax.Array] | None = None
    head: Callable[[jax.Array], jax.Array] | None = None
    guided_logits: Callable[[jax.Array], jax.Array] | None = None

    def __call__(self, images):
        return self.logits(images)


def as_model_functions(model) -> ModelFunctions:
    """Normalise a callable, a mapping or a ``ModelFunctions`` into ``ModelFunctions``."""
    if isinstance(model, ModelFunctions):
        return model
    if isinstance(model, Mapping):
        unknown = set(model) - set(ModelFunctions._fields)
        if unknown:
            raise ValueError(f"unknown model function(s) {sorted(unknown)}; expected keys {ModelFunctions._fields}")
        if "logits" not in model:
            raise ValueError("a model mapping needs a 'logits' function")
        return ModelFunctions(**model)
    if callable(model):
        return ModelFunctions(model)
    raise ValueError(f"model_fn must be a callable images -> logits or a mapping of model functions; got {type(model)}")


METHODS = ("vg", "sg", "vargrad", "ig", "guided_ig", "blur_ig", "gb", "gradcam", "ag", "gag")

_NOISE = {"n": 20, "noise_level": 0.15, "noise_range": "image"}
_GUIDE = {"guide": False, "percentile": 0.85, "guide_axes": "channel"}
_PATH = {"baseline": "black", "mean": ops.IMAGENET_MEAN, "std": ops.IMAGENET_STD}
_COMMON = {"chunk_size": None, "reduce": "abs_sum"}

# Default options of each method. Single-gradient methods (vg, gb) take noisy samples only
# when a variance guide is asked for: a variance needs n >= 2 gradients.
DEFAULTS: dict[str, dict[str, Any]] = {
    "vg": {"interpretation": "raw", **_GUIDE, **_NOISE},
    "gb": {"interpretation": "raw", **_GUIDE, **_NOISE},
    "sg": {"interpretation": "raw", **_GUIDE, **_NOISE},
    "vargrad": {"interpretation": "raw", **_NOISE},
    "ig": {"interpretation": "raw", "rule": "riemann_right", **_GUIDE, **_PATH, "n": 20},
    "guided_ig": {"interpretation": "raw", "fraction": 0.25, "max_dist": 0.02, **_GUIDE, **_PATH, "n": 20},
    "blur_ig": {"interpretation": "raw", "max_sigma": 50.0, "grad_step": 0.01, "sqrt": False, **_GUIDE, "n": 20},
    "gradcam": {},
    "ag": {**_NOISE, "guide_axes": "channel"},
    "gag": {**_NOISE, "percentile": 0.85, "guide_axes": "channel"},
}
for _options in DEFAULTS.values():
    _options.update(_COMMON)

STOCHASTIC = ("sg", "vargrad", "ag", "gag")


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _hashable(value.tolist())
    return value


def resolve_options(method: str, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Validate ``options`` for ``method`` and merge them with its defaults.

    Returns a sorted, hashable tuple of ``(name, value)`` pairs.

    Raises:
      ValueError: unknown method, unknown option (named, with the valid ones listed) or an
        out-of-range value (named).
    """
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    defaults = DEFAULTS[method]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: {', '.join(sorted(defaults))}"
        )
    merged = {**defaults, **{k: _hashable(v) for k, v in options.items()}}
    if "n" in merged:
        check_positive_int(merged["n"], "n")
    if "percentile" in merged:
        check_fraction(merged["percentile"], "percentile")
    if "noise_level" in merged and merged["noise_level"] < 0:
        raise ValueError(f"noise_level must be >= 0; got {merged['noise_level']}")
    if "interpretation" in merged and merged["interpretation"] not in interpretations.NAMES:
        raise ValueError(
            f"unknown interpretation {merged['interpretation']!r}; expected one of {', '.join(interpretations.NAMES)}"
        )
    if "guide_axes" in merged and merged["guide_axes"] not in aggregations.GUIDE_AXES:
        raise ValueError(f"unknown guide_axes {merged['guide_axes']!r}; expected one of {aggregations.GUIDE_AXES}")
    if merged.get("noise_range", "image") not in modifications.NOISE_RANGES:
        raise ValueError(f"unknown noise_range {merged['noise_range']!r}; expected one of {modifications.NOISE_RANGES}")
    if merged.get("guide") and merged.get("n", 2) < 2:
        raise ValueError("a variance guide needs n >= 2 gradient samples")
    if merged["chunk_size"] is not None:
        check_positive_int(merged["chunk_size"], "chunk_size")
    if merged["reduce"] not in REDUCTIONS:
        raise ValueError(f"unknown reduce {merged['reduce']!r}; expected one of {', '.join(REDUCTIONS)}")
    return tuple(sorted(merged.items()))


def build(method: str, options: Mapping[str, Any]) -> Explainer:
    """The four-seam ``Explainer`` of a gradient method (every method but ``gradcam``).

    ``options`` must be complete (see ``resolve_options``).
    """
    o = dict(options)
    chunk = o["chunk_size"]
    noise = lambda: modifications.gaussian_noise(o["n"], o["noise_level"], o["noise_range"])
    logit_gradient = gradients.logit_gradient()
    if method == "gag":
        return chain(noise(), logit_gradient, interpretations.absolute(),
                     aggregations.guide(o["percentile"], o["guide_axes"]), chunk_size=chunk)
    if method == "ag":
        return chain(noise(), logit_gradient, interpretations.absolute(), aggregations.total(), chunk_size=chunk)
    if method == "vargrad":
        return chain(noise(), logit_gradient, interpretations.by_name(o["interpretation"]),
                     aggregations.variance(), chunk_size=chunk)
    if method == "vg" or method == "gb":
        modification = noise() if o["guide"] else modifications.identity()
    elif method == "sg":
        modification = noise()
    elif method == "ig":
        modification = modifications.straight_path(o["n"], o["baseline"], o["rule"], o["mean"], o["std"])
    elif method == "guided_ig":
        modification = modifications.guided_ig_path(
            o["n"], o["baseline"], o["fraction"], o["max_dist"], o["mean"], o["std"])
    elif method == "blur_ig":
        modification = modifications.blur_path(o["n"], o["max_sigma"], o["grad_step"], o["sqrt"])
    else:
        raise ValueError(f"method {method!r} has no four-seam form")
    if o["guide"]:
        aggregation = aggregations.guide(o["percentile"], o["guide_axes"])
    elif method == "sg":
        aggregation = aggregations.mean()
    else:
        aggregation = aggregations.total()
    gradient = gradients.guided_logit_gradient() if method == "gb" else logit_gradient
    return chain(modification, gradient, interpretations.by_name(o["interpretation"]), aggregation,
                 chunk_size=chunk)


def _attributions(method: str, options: tuple, model: ModelFunctions, images, labels, key):
    if method == "gradcam":
        if model.features is None or model.head is None:
            raise ValueError("method 'gradcam' needs the model split into 'features' and 'head' functions "
                             "(pass models.model_functions(module, variables) or a gj.ModelFunctions)")
        return gradcam(model.features, model.head, images, labels)
    # the ModelFunctions itself: callable as its logits; gb's gradient seam uses its guided_logits if any
    return build(method, options)(model, images, labels, key)


def explainer(method: str, *, postprocess: bool = True, **options) -> Callable:
    """A pure, un-jitted explainer function for use inside your own ``jax.jit``/``vmap``/sharding.

    Args:
      method: one of ``METHODS``.
      postprocess: True returns ``(B, H, W)`` maps in [0, 1]; False the raw ``(B, H, W, C)``.
      **options: method options (see ``DEFAULTS``).

    Returns:
      ``fn(model, images (B,H,W,C), labels (B,), key) -> maps``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> fn = explainer("gag", n=4)
      >>> model_fn = lambda x: jnp.stack([jnp.sum(x ** 2, axis=(1, 2, 3)), jnp.sum(x, axis=(1, 2, 3))], -1)
      >>> jax.jit(fn, static_argnums=0)(model_fn, jnp.ones((2, 8, 8, 3)), jnp.zeros(2, jnp.int32),
      ...                               jax.random.PRNGKey(0)).shape
      (2, 8, 8)
    """
    resolved = resolve_options(method, options)
    reduce = dict(resolved)["reduce"]

    def fn(model, images, labels, key):
        raw = _attributions(method, resolved, as_model_functions(model), images, labels, key)
        return to_saliency(raw, reduce) if postprocess else raw

    return fn



def _lift_parameters(model: ModelFunctions) -> tuple[tuple, tuple]:
    """Static parts and array arguments of the model functions (see ``gag_jax._lifting``)."""
    parts = [split_function(fn) for fn in model]
    return tuple(p[0] for p in parts), tuple(p[1] for p in parts)


def _rebuild(statics: tuple, dynamics: tuple) -> ModelFunctions:
    return ModelFunctions(*(join_function(s, a) for s, a in zip(statics, dynamics)))


@functools.partial(jax.jit, static_argnames=("method", "options", "model_statics", "postprocess"))
def _explain_jit(images, labels, key, model_args, *, method, options, model_statics, postprocess):
    model = _rebuild(model_statics, model_args)
    raw = _attributions(method, options, model, images, labels, key)
    return to_saliency(raw, dict(options)["reduce"]) if postprocess else raw


def _num_classes(model: ModelFunctions, images) -> int:
    shape = jax.eval_shape(model.logits, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape
    if len(shape) != 2 or shape[0] != images.shape[0]:
        raise ValueError(f"model_fn must map images {tuple(images.shape)} to logits (B, K); got shape {shape}")
    return shape[1]


def explain(method: str, model_fn, images, labels, *, key=None, postprocess: bool = True,
            validate: bool = True, **options) -> jax.Array:
    """Explain ``images`` with ``method``: the one entry point for every method.

    Args:
      method: ``"vg"``, ``"sg"``, ``"vargrad"``, ``"ig"``, ``"guided_ig"``, ``"blur_ig"``, ``"gb"``,
        ``"gradcam"``, ``"ag"`` (AbsoluteGrad, GAG-0) or ``"gag"`` (Guided AbsoluteGrad).
      model_fn: ``images -> logits (B, K)``, or a ``ModelFunctions``/mapping (needed by ``gradcam``;
        ``gb`` uses its ``guided_logits`` if given). Parameters are closed over.
      images: ``(B, H, W, C)`` float, normalised as the model expects.
      labels: ``(B,)`` int target classes.
      key: PRNG key; required by the noise-based methods (sg, vargrad, ag, gag; vg/gb with a guide).
        A batch of keys (one per image) makes each image's noise independent of its batch.
      postprocess: True: ``(B, H, W)`` float32 maps in [0, 1] (sum over channels of ``|A|``, per-image
        min-max, constant map -> zeros; ``reduce="sum"`` for the signed sum). False: raw aggregated ``(B, H, W, C)``.
      validate: check shapes, dtypes, NaN and label range first (a host sync); False skips it.
      **options: method options, e.g. ``n``, ``noise_level``, ``noise_range``, ``percentile``,
        ``guide_axes``, ``interpretation`` ("raw", "positive", "negative", "absolute", "square"),
        ``guide`` (variance guide, Table 3 "G"), ``baseline``, ``rule``, ``max_sigma``,
        ``fraction``, ``max_dist``, ``chunk_size``, ``reduce``. See ``DEFAULTS[method]``.

    Returns:
      ``(B, H, W)`` maps (or ``(B, H, W, C)`` with ``postprocess=False``).

    Raises:
      ValueError: unknown method or option, bad shapes/dtypes, NaN input, labels out of range,
        percentile outside [0, 1), missing key or model functions.

    The computation is jit-compiled once per (shapes, method, options, model functions); repeated
    calls reuse it.
    """
    resolved = resolve_options(method, options)
    model = as_model_functions(model_fn)
    # vg and gb draw noisy samples only when a variance guide is asked for
    needs_key = method in STOCHASTIC or (method in ("vg", "gb") and dict(resolved).get("guide", False))
    if key is None:
        if needs_key:
            raise ValueError(f"method {method!r} draws random noise: pass key=jax.random.PRNGKey(...)")
        key = jax.random.PRNGKey(0)
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    if modifications.is_key_batch(key) and key.shape[0] != images.shape[0]:
        raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for "
                         f"{images.shape[0] if images.ndim else 0} images")
    if validate:
        check_images(images)
        check_labels(labels, images.shape[0], _num_classes(model, images))
    model_statics, model_args = _lift_parameters(model)
    return _explain_jit(images, labels, key, model_args, method=method, options=resolved,
                        model_statics=model_statics, postprocess=postprocess)


def guided_absolute_grad(model_fn, images, labels, key, *, n: int = 20, noise_level: float = 0.15,
                         percentile: float = 0.85, **options) -> jax.Array:
    """Guided AbsoluteGrad (Algorithm 1): ``(B, H, W)`` saliency in [0, 1].

    ``g_i = grad(x + noise_i)``, ``M = sum |g_i|``, ``V = var_i(g_i)`` (ddof=1, per image and
    channel), ``G = where(V >= quantile_p(V), 1, V)``, map = min-max(sum_channels(M * G)).

    Args:
      model_fn: ``images -> logits (B, K)``.
      images: ``(B, H, W, C)`` normalised float images.
      labels: ``(B,)`` int targets.
      key: PRNG key for the noise.
      n: number of noisy samples (20).
      noise_level: noise std as a fraction of each image's value range (0.15).
      percentile: p of the variance guide in [0, 1) (0.85); 0 gives AbsoluteGrad.
      **options: ``noise_range``, ``guide_axes``, ``chunk_size``, ``postprocess``, ``validate``, ``reduce``.

    Returns:
      ``(B, H, W)`` float32 saliency maps.
    """
    return explain("gag", model_fn, images, labels, key=key, n=n, noise_level=noise_level,
                   percentile=percentile, **options)
