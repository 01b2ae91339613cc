"""Every method as one function, the ``PRESETS`` table, and the one entry point ``explain``.

A method is one of two kinds of function:

* a **preset**: its signature holds the method's options and their defaults, its body is its
  composition of the four seams (like ``optax``'s ``alias.py``)::

      def gag(n=20, noise_level=0.15, noise_range="image", percentile=0.85, guide_axes="channel",
              chunk_size=None):
          return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                       interpretations.absolute(), aggregations.guide(percentile, guide_axes),
                       chunk_size=chunk_size)

* an **attribution function**, for a method that is not a composition (Grad-CAM; occlusion, RISE,
  XRAI in ``gag_jax.perturbation_methods``):
  ``fn(model, images (B, H, W, C), labels (B,), key, *, option=default, ...) -> (B, H, W, C')``,
  ``model`` a ``ModelFunctions`` (callable as its logits). A key parameter without a default means
  the method needs a key. A function that cannot be traced by ``jax.jit`` (host code) sets
  ``fn.jittable = False``; ``explain`` then calls it eagerly. ``fn.reduce`` sets the method's default
  channel reduction (``"sum"`` for signed one-channel maps; otherwise ``"abs_sum"``).

Everything else is derived from these functions: ``DEFAULTS`` (the option names and defaults, from
``inspect.signature``, plus ``reduce``), whether a method needs a key (an attribution function's
``key`` has no default; a preset's modification reads its key) and the valid option names. Values
are checked once, by the seam factories (``modifications.gaussian_noise`` checks ``n`` and
``noise_level``, ``aggregations.guide`` the percentile ...), when the preset is called.

To add a method, write one such function: ``gj.explain(my_method, model_fn, images, labels, ...)``
takes the function itself as well as a name in ``PRESETS``.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gag_jax import aggregations, backend, gradients, interpretations, modifications
from gag_jax._validation import check_images, check_labels
from gag_jax.gradcam import gradcam, layer_gradcam
from gag_jax.model import ModelFunctions, as_model_functions, resolve_scaling, warn_if_closed_over
from gag_jax.perturbation_methods import occlusion, rise, xrai
from gag_jax.pipeline import Explainer, chain, reads_key
from gag_jax.postprocess import to_saliency


# ---------------------------------------------------------------------------------------------
# the presets: one function per method, its signature its options, its body its composition

# ``mean=None, std=None``: the model's input scaling (``ModelFunctions.mean`` / ``.std``), read by
# ``explain`` / ``explainer_fn`` when the method runs; explicit values override it.
_FROM_MODEL = None


def _guide_or(aggregation: aggregations.Aggregation, guide: bool, percentile: float,
              guide_axes: str) -> aggregations.Aggregation:
    """The variance-guided sum (Table 3 "G") when ``guide``, else ``aggregation``."""
    return aggregations.guide(percentile, guide_axes) if guide else aggregation


def vg(interpretation="raw", guide=False, percentile=0.85, guide_axes="channel", n=20, noise_level=0.15,
       noise_range="image", chunk_size=None) -> Explainer:
    """Vanilla Gradient; with ``guide=True``, n noisy gradients for the variance guide (Table 3 "G")."""
    modification = modifications.gaussian_noise(n, noise_level, noise_range) if guide else modifications.identity()
    return chain(modification, gradients.logit_gradient(), interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def gb(interpretation="raw", guide=False, percentile=0.85, guide_axes="channel", n=20, noise_level=0.15,
       noise_range="image", chunk_size=None) -> Explainer:
    """Guided Backprop: Vanilla Gradient through guided ReLUs (``gradients.guided_logit_gradient``)."""
    modification = modifications.gaussian_noise(n, noise_level, noise_range) if guide else modifications.identity()
    return chain(modification, gradients.guided_logit_gradient(), interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def sg(n=20, noise_level=0.15, noise_range="image", interpretation="raw", guide=False, percentile=0.85,
       guide_axes="channel", chunk_size=None) -> Explainer:
    """SmoothGrad: mean of the gradients at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.by_name(interpretation),
                 _guide_or(aggregations.mean(), guide, percentile, guide_axes), chunk_size=chunk_size)


def vargrad(n=20, noise_level=0.15, noise_range="image", interpretation="raw", chunk_size=None) -> Explainer:
    """VarGrad: variance (ddof=1) of the gradients at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.by_name(interpretation), aggregations.variance(), chunk_size=chunk_size)


def ig(n=20, baseline="black", rule="riemann_right", mean=_FROM_MODEL, std=_FROM_MODEL, interpretation="raw",
       guide=False, percentile=0.85, guide_axes="channel", chunk_size=None) -> Explainer:
    """Integrated Gradients on the straight path from ``baseline`` (black in pixel space), n steps."""
    return chain(modifications.straight_path(n, baseline, rule, mean, std), gradients.logit_gradient(),
                 interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def guided_ig(n=20, baseline="black", fraction=0.25, max_dist=0.02, mean=_FROM_MODEL, std=_FROM_MODEL,
              interpretation="raw", guide=False, percentile=0.85, guide_axes="channel", chunk_size=None) -> Explainer:
    """Guided Integrated Gradients (Kapishnikov et al. 2021): the adaptive path, n steps."""
    return chain(modifications.guided_ig_path(n, baseline, fraction, max_dist, mean, std), gradients.logit_gradient(),
                 interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def blur_ig(n=20, max_sigma=50.0, grad_step=0.01, sqrt=False, mode="constant", radius=None, interpretation="raw",
            guide=False, percentile=0.85, guide_axes="channel", chunk_size=None) -> Explainer:
    """Blur Integrated Gradients (Xu et al. 2020) as published, n steps from ``max_sigma``."""
    return chain(modifications.blur_path(n, max_sigma, grad_step, sqrt, mode, radius), gradients.logit_gradient(),
                 interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def ag(n=20, noise_level=0.15, noise_range="image", chunk_size=None) -> Explainer:
    """AbsoluteGrad (GAG-0): sum of the gradient magnitudes at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.absolute(), aggregations.total(), chunk_size=chunk_size)


def gag(n=20, noise_level=0.15, noise_range="image", percentile=0.85, guide_axes="channel",
        chunk_size=None) -> Explainer:
    """Guided AbsoluteGrad (Algorithm 1): ``sum_i |g_i| * G`` with the variance guide G (eq. 2-5)."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.absolute(), aggregations.guide(percentile, guide_axes), chunk_size=chunk_size)


def gradcam_attribution(model, images, labels, key=None, layer=None) -> jax.Array:
    """Grad-CAM ``(B, H, W, 1)`` (see ``gag_jax.gradcam``): on the output of the submodule ``layer``
    (its path in a linen or NNX model, e.g. ``"layer4"``, ``"conv2"``) or, without ``layer``, on the
    model's ``features``/``head`` split."""
    if layer is not None:
        return layer_gradcam(model, images, labels, layer)
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if features is None or head is None:
        raise ValueError("method 'gradcam' needs a layer: pass layer='<submodule path>' for a Flax linen or NNX "
                         "model (gj.ModelFunctions.from_module / from_nnx), or a model split into 'features' and "
                         "'head' functions (models.model_functions(module, variables))")
    return gradcam(features, head, images, labels)


_PAPER = {"vg": vg, "sg": sg, "vargrad": vargrad, "ig": ig, "guided_ig": guided_ig, "blur_ig": blur_ig, "gb": gb,
          "gradcam": gradcam_attribution, "ag": ag, "gag": gag}
_BEYOND_THE_PAPER: dict[str, Callable] = {"occlusion": occlusion, "rise": rise, "xrai": xrai}

PRESETS: dict[str, Callable] = {**_PAPER, **_BEYOND_THE_PAPER}
"""Method name -> preset (returns an ``Explainer``) or attribution function; see the module docstring."""

METHODS: tuple[str, ...] = tuple(_PAPER)
"""The methods of the paper's Table 2, in its order."""

# options every method takes on top of its own: how ``explain`` reduces the channels
_COMMON_OPTIONS = {"reduce": "abs_sum"}


def _method_function(method) -> Callable:
    if isinstance(method, str):
        if method not in PRESETS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PRESETS)}")
        return PRESETS[method]
    if callable(method):
        return method
    raise ValueError(f"method must be a name in gj.PRESETS or a preset / attribution function; got {method!r}")


def _method_name(method) -> str:
    return method if isinstance(method, str) else getattr(method, "__name__", repr(method))


def is_attribution_function(fn: Callable) -> bool:
    """True for an attribution function ``fn(model, images, labels, key, *, ...)``, False for a preset."""
    first = next(iter(inspect.signature(fn).parameters.values()), None)
    return first is not None and first.default is inspect.Parameter.empty and first.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def method_defaults(method) -> dict[str, Any]:
    """Options of ``method`` (a name or a function) and their defaults, read from its signature.

    Includes ``reduce`` (the channel reduction of ``explain``). For an attribution function the
    options are its parameters after ``(model, images, labels, key)``.

    Raises:
      ValueError: unknown method, or an option without a default.
    """
    fn = _method_function(method)
    parameters = list(inspect.signature(fn).parameters.values())
    if is_attribution_function(fn):
        parameters = parameters[4:]
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"method {_method_name(method)!r}: every option needs a default; {missing} have none")
    return {**{p.name: p.default for p in parameters}, **_COMMON_OPTIONS,
            "reduce": getattr(fn, "reduce", _COMMON_OPTIONS["reduce"])}


DEFAULTS: dict[str, dict[str, Any]] = {name: method_defaults(name) for name in PRESETS}
"""Method name -> its options and their defaults (derived from ``PRESETS``)."""


def _hashable(value):
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _hashable(value.tolist())
    return value


def resolve_options(method, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Check option names for ``method`` and merge them with its defaults.

    Only names are checked here; values are checked by the seam factories when the method is built.

    Returns:
      A sorted, hashable tuple of ``(name, value)`` pairs (every option, ``reduce`` included).

    Raises:
      ValueError: unknown method, or an unknown option (named, with the valid ones listed).
    """
    defaults = method_defaults(method)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {_method_name(method)!r}; "
                         f"valid options: {', '.join(sorted(defaults))}")
    return tuple(sorted({**defaults, **{k: _hashable(v) for k, v in options.items()}}.items()))


def _split(options: tuple) -> tuple[dict[str, Any], str]:
    method_options = dict(options)
    reduce = method_options.pop("reduce")
    return method_options, reduce


def _needs_pixel_space(function: Callable, method_options: Mapping[str, Any]) -> bool:
    """Whether the method puts values in pixel space, so that it needs the model's input scaling:
    a ``"black"`` baseline (IG, Guided IG, occlusion, RISE) or XRAI's segmentation of the pixels."""
    return function is xrai or method_options.get("baseline") == "black"


def _with_scaling(function: Callable, name: str, method_options: dict, model: ModelFunctions,
                  channels: int | None) -> dict:
    """``method_options`` with ``mean``/``std`` filled from the model where the method takes them and
    they are not given (explicit values win); ValueError when the method needs them and none is known."""
    if "mean" not in method_options:
        return method_options
    what = f"method {name!r}" + (f" (baseline {method_options['baseline']!r})" if "baseline" in method_options else "")
    mean, std = resolve_scaling(model, method_options.get("mean"), method_options.get("std"),
                                needed=_needs_pixel_space(function, method_options), what=what, channels=channels)
    return {**method_options, "mean": mean, "std": std}


_PLACEHOLDER_SCALING = {"mean": (0.0,), "std": (1.0,)}


def _check_values(function: Callable, method_options: dict) -> None:
    """Let the seam factories check the option values now, on the host (a scaling still to be read
    from the model is checked when it is)."""
    if is_attribution_function(function):
        return
    if "mean" in method_options and method_options["mean"] is None:
        method_options = {**method_options, **_PLACEHOLDER_SCALING}
    function(**method_options)


def _attributions(fn: Callable, method_options: dict, model: ModelFunctions, images, labels, key,
                  platform: str | None = None) -> jax.Array:
    if is_attribution_function(fn):
        return fn(model, images, labels, key, **method_options)
    # the ModelFunctions itself: callable as its logits; gb's gradient seam uses its guided_logits if any
    return fn(**method_options)(model, images, labels, key, platform=platform)


def explainer_fn(method, *, postprocess: bool = True, **options) -> Callable:
    """A pure, un-jitted explain function, for use inside your own ``jax.jit``/``vmap``/sharding.

    Args:
      method: a name in ``PRESETS`` or a preset / attribution function.
      postprocess: True returns ``(B, H, W)`` maps in [0, 1]; False the raw ``(B, H, W, C)``.
      **options: method options (see ``DEFAULTS``); ``mean``/``std`` default to the model's scaling.

    Returns:
      A plain closure ``fn(model, images (B,H,W,C), labels (B,), key) -> maps`` (not an ``Explainer``);
      ``model`` a ``gj.ModelFunctions`` (a pytree: pass it as an ordinary jit argument, its weights
      are traced) or a plain callable (then mark it static).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> fn = explainer_fn("gag", n=4)
      >>> model_fn = lambda x: jnp.stack([jnp.sum(x ** 2, axis=(1, 2, 3)), jnp.sum(x, axis=(1, 2, 3))], -1)
      >>> jax.jit(fn, static_argnums=0)(model_fn, jnp.ones((2, 8, 8, 3)), jnp.zeros(2, jnp.int32),
      ...                               jax.random.PRNGKey(0)).shape
      (2, 8, 8)
    """
    function = _method_function(method)
    name = _method_name(method)
    method_options, reduce = _split(resolve_options(method, options))
    _check_values(function, method_options)

    def fn(model, images, labels, key):
        model = as_model_functions(model)
        resolved = _with_scaling(function, name, method_options, model, images.shape[-1])
        raw = _attributions(function, resolved, model, images, labels, key)
        return to_saliency(raw, reduce) if postprocess else raw

    return fn


def explainer(method, *, postprocess: bool = True, **options) -> Callable:
    """Deprecated alias of :func:`explainer_fn` (SPEC section 8's first name); warns."""
    import warnings

    warnings.warn("gj.explainer is deprecated; use gj.explainer_fn", DeprecationWarning, stacklevel=2)
    return explainer_fn(method, postprocess=postprocess, **options)


def needs_key(method, options: Mapping[str, Any] = (), images_shape=(1, 8, 8, 3), key_shape=(2,)) -> bool:
    """Whether ``method`` with ``options`` draws random numbers, so that ``explain`` needs a key.

    An attribution function needs one when its ``key`` parameter has no default; a preset when its
    modification reads the key (e.g. Gaussian noise; a guide-free ``vg`` does not).
    """
    function = _method_function(method)
    if is_attribution_function(function):
        return list(inspect.signature(function).parameters.values())[3].default is inspect.Parameter.empty
    method_options, _ = _split(resolve_options(method, dict(options)))
    if "mean" in method_options and method_options["mean"] is None:
        method_options = {**method_options, **_PLACEHOLDER_SCALING}
    return _preset_reads_key(function, tuple(sorted(method_options.items())), tuple(images_shape), tuple(key_shape))


@functools.lru_cache(maxsize=256)
def _preset_reads_key(function, method_options: tuple, images_shape: tuple, key_shape: tuple) -> bool:
    return reads_key(function(**dict(method_options)).modification, images_shape, key_shape)


# ---------------------------------------------------------------------------------------------
# explain: the one entry point


def _explain(images, labels, key, model, *, function, options, postprocess, platform):
    method_options, reduce = _split(options)
    raw = _attributions(function, method_options, model, images, labels, key, platform)
    return to_saliency(raw, reduce) if postprocess else raw


# the model is an ordinary argument (a pytree): its weights are traced, its apply functions static
_explain_jit = jax.jit(_explain, static_argnames=("function", "options", "postprocess", "platform"))


def _num_classes(model: ModelFunctions, images) -> int:
    shape = jax.eval_shape(model, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape
    if len(shape) != 2 or shape[0] != images.shape[0]:
        raise ValueError(f"model_fn must map images {tuple(images.shape)} to logits (B, K); got shape {shape}")
    return shape[1]


def explain(method, model_fn, images, labels, *, key=None, postprocess: bool = True,
            validate: bool = True, **options) -> jax.Array:
    """Explain ``images`` with ``method``: the one entry point for every method.

    Args:
      method: a name in ``PRESETS``: ``"vg"``, ``"sg"``, ``"vargrad"``, ``"ig"``, ``"guided_ig"``,
        ``"blur_ig"``, ``"gb"``, ``"gradcam"``, ``"ag"`` (AbsoluteGrad, GAG-0), ``"gag"`` (Guided
        AbsoluteGrad) ...; or a preset / attribution function of your own (see the module docstring).
      model_fn: a ``gj.ModelFunctions`` (``from_module`` / ``from_nnx`` / ``from_apply``: its weights
        are arguments of the compiled program, so changed weights give new maps; it carries the
        input scaling that ``ig``/``guided_ig``/occlusion/RISE/XRAI need for pixel-space black), an
        NNX module (taken as ``from_nnx(module)`` at every call), or a plain callable
        ``images -> logits (B, K)`` / mapping of functions: compiled once per function object, so
        weights it reads from outside are those of its first call (pass them as a ModelFunctions).
      images: ``(B, H, W, C)`` float, normalised as the model expects.
      labels: ``(B,)`` int target classes.
      key: PRNG key; required by the methods that draw random numbers (sg, vargrad, ag, gag; vg/gb
        with a guide; see ``needs_key``). A batch of keys (one per image) makes each image's noise
        independent of its batch.
      postprocess: True: ``(B, H, W)`` float32 maps in [0, 1] (sum over channels of ``|A|``, per-image
        min-max, constant map -> zeros; ``reduce="sum"`` for the signed sum). False: raw ``(B, H, W, C)``.
      validate: check shapes, dtypes, NaN and label range first (a host sync); False skips it.
      **options: the method's options, e.g. ``n``, ``noise_level``, ``noise_range``, ``percentile``,
        ``guide_axes``, ``interpretation`` ("raw", "positive", "negative", "absolute", "square"),
        ``guide`` (variance guide, Table 3 "G"), ``baseline``, ``rule``, ``max_sigma``,
        ``fraction``, ``max_dist``, ``chunk_size``, ``layer`` (Grad-CAM), ``mean``/``std`` (override
        the model's input scaling); and ``reduce``. See ``DEFAULTS[method]``.

    Returns:
      ``(B, H, W)`` maps (or ``(B, H, W, C)`` with ``postprocess=False``).

    Raises:
      ValueError: unknown method or option, an option value out of range, bad shapes/dtypes, NaN
        input, labels out of range, missing key or model functions, a method that needs pixel-space
        black on a model whose input scaling is unknown.

    The computation is jit-compiled once per (shapes, method, options, apply functions); repeated
    calls reuse it, with whatever weights the ModelFunctions holds.
    """
    function = _method_function(method)
    name = _method_name(method)
    method_options, reduce = _split(resolve_options(method, options))
    attribution = is_attribution_function(function)
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    model = as_model_functions(model_fn)
    method_options = _with_scaling(function, name, method_options, model,
                                   images.shape[-1] if images.ndim == 4 else None)
    _check_values(function, method_options)  # the seam factories check the values now, on the host
    if key is None:
        shape = images.shape if images.ndim == 4 else (1, 8, 8, 3)
        if needs_key(function, method_options, shape):
            raise ValueError(f"method {name!r} draws random numbers: pass key=jax.random.PRNGKey(...)")
        key = jax.random.PRNGKey(0)
    if modifications.is_key_batch(key) and key.shape[0] != images.shape[0]:
        raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for "
                         f"{images.shape[0] if images.ndim else 0} images")
    if validate:
        check_images(images)
        check_labels(labels, images.shape[0], _num_classes(model, images))
        warn_if_closed_over(model, images)
    if attribution and not getattr(function, "jittable", True):  # host code: run eagerly
        raw = _attributions(function, method_options, model, images, labels, key)
        return to_saliency(raw, reduce) if postprocess else raw
    options = tuple(sorted({**method_options, "reduce": reduce}.items()))
    return _explain_jit(images, labels, key, model, function=function, options=options, postprocess=postprocess,
                        platform=backend.platform_of(images))


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
