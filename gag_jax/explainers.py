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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gag_jax import aggregations, gradients, interpretations, modifications, ops
from gag_jax._lifting import join_function, split_function
from gag_jax._validation import check_images, check_labels
from gag_jax.gradcam import gradcam
from gag_jax.perturbation_methods import occlusion, rise, xrai
from gag_jax.pipeline import Explainer, chain, reads_key
from gag_jax.postprocess import to_saliency


class ModelFunctions(NamedTuple):
    """A model as the explainers need it.

    Attributes:
      logits: ``images (B, H, W, C) -> logits (B, K)``.
      features: ``images -> activations (B, h, w, D)`` of the last conv block (Grad-CAM).
      head: ``activations -> logits`` (Grad-CAM).
      guided_logits: optional hand-built copy of the model with Guided-Backprop activations, for
        models whose activations ``gradients.guided_backprop`` cannot rewrite (SiLU, GELU, ...);
        without it ``gb`` rewrites the ReLUs of ``logits``.

    ``explain`` also accepts a plain callable (used as ``logits``) or a mapping with these keys.
    Build it once and reuse it: jit caches are keyed on these functions.
    """

    logits: Callable[[jax.Array], jax.Array]
    features: Callable[[jax.Array], jax.Array] | None = None
    head: Callable[[jax.Array], jax.Array] | None = None
    guided_logits: Callable[[jax.Array], jax.Array] | None = None

    def __call__(self, images):
        return self.logits(images)

    @classmethod
    def from_module(cls, module, variables, *, jit: bool = True) -> ModelFunctions:
        """The functions of a Flax linen module with its variables bound.

        ``logits`` is ``module.apply``; ``features``/``head`` if the module defines both methods
        (Grad-CAM); ``guided_logits`` if it has a ``guided_backprop`` field (a copy of the module with
        guided activations).

        Args:
          module: a ``flax.linen.Module`` mapping images ``(B, H, W, C)`` to logits ``(B, K)``.
          variables: its variables (``{"params", ...}``), arrays or traced values.
          jit: wrap ``apply`` in ``jax.jit`` (the variables are then jit arguments, not constants).

        Returns:
          ``ModelFunctions`` of ``functools.partial(apply, variables, ...)`` functions.
        """
        def bound(m, **keywords):
            apply = jax.jit(m.apply, static_argnames="method") if jit else m.apply
            return functools.partial(apply, variables, **keywords)

        split = callable(getattr(module, "features", None)) and callable(getattr(module, "head", None))
        guided = "guided_backprop" in getattr(module, "__dataclass_fields__", {})
        return cls(bound(module), bound(module, method="features") if split else None,
                   bound(module, method="head") if split else None,
                   bound(module.clone(guided_backprop=True)) if guided else None)


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


# ---------------------------------------------------------------------------------------------
# the presets: one function per method, its signature its options, its body its composition

_IMAGENET_MEAN, _IMAGENET_STD = ops.IMAGENET_MEAN, ops.IMAGENET_STD


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


def ig(n=20, baseline="black", rule="riemann_right", mean=_IMAGENET_MEAN, std=_IMAGENET_STD, interpretation="raw",
       guide=False, percentile=0.85, guide_axes="channel", chunk_size=None) -> Explainer:
    """Integrated Gradients on the straight path from ``baseline`` (black in pixel space), n steps."""
    return chain(modifications.straight_path(n, baseline, rule, mean, std), gradients.logit_gradient(),
                 interpretations.by_name(interpretation),
                 _guide_or(aggregations.total(), guide, percentile, guide_axes), chunk_size=chunk_size)


def guided_ig(n=20, baseline="black", fraction=0.25, max_dist=0.02, mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
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


def gradcam_attribution(model, images, labels, key=None) -> jax.Array:
    """Grad-CAM on the model's ``features``/``head`` split: ``(B, H, W, 1)`` (see ``gag_jax.gradcam``)."""
    features, head = getattr(model, "features", None), getattr(model, "head", None)
    if features is None or head is None:
        raise ValueError("method 'gradcam' needs the model split into 'features' and 'head' functions "
                         "(pass models.model_functions(module, variables) or a gj.ModelFunctions)")
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


def _attributions(fn: Callable, method_options: dict, model: ModelFunctions, images, labels, key) -> jax.Array:
    if is_attribution_function(fn):
        return fn(model, images, labels, key, **method_options)
    # the ModelFunctions itself: callable as its logits; gb's gradient seam uses its guided_logits if any
    return fn(**method_options)(model, images, labels, key)


def explainer_fn(method, *, postprocess: bool = True, **options) -> Callable:
    """A pure, un-jitted explain function, for use inside your own ``jax.jit``/``vmap``/sharding.

    Args:
      method: a name in ``PRESETS`` or a preset / attribution function.
      postprocess: True returns ``(B, H, W)`` maps in [0, 1]; False the raw ``(B, H, W, C)``.
      **options: method options (see ``DEFAULTS``).

    Returns:
      A plain closure ``fn(model, images (B,H,W,C), labels (B,), key) -> maps`` (not an ``Explainer``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> fn = explainer_fn("gag", n=4)
      >>> model_fn = lambda x: jnp.stack([jnp.sum(x ** 2, axis=(1, 2, 3)), jnp.sum(x, axis=(1, 2, 3))], -1)
      >>> jax.jit(fn, static_argnums=0)(model_fn, jnp.ones((2, 8, 8, 3)), jnp.zeros(2, jnp.int32),
      ...                               jax.random.PRNGKey(0)).shape
      (2, 8, 8)
    """
    function = _method_function(method)
    method_options, reduce = _split(resolve_options(method, options))
    if not is_attribution_function(function):
        function(**method_options)  # the seam factories check the values now

    def fn(model, images, labels, key):
        raw = _attributions(function, method_options, as_model_functions(model), images, labels, key)
        return to_saliency(raw, reduce) if postprocess else raw

    return fn


explainer = explainer_fn  # the name of SPEC section 8's first version


def needs_key(method, options: Mapping[str, Any] = (), images_shape=(1, 8, 8, 3), key_shape=(2,)) -> bool:
    """Whether ``method`` with ``options`` draws random numbers, so that ``explain`` needs a key.

    An attribution function needs one when its ``key`` parameter has no default; a preset when its
    modification reads the key (e.g. Gaussian noise; a guide-free ``vg`` does not).
    """
    function = _method_function(method)
    if is_attribution_function(function):
        return list(inspect.signature(function).parameters.values())[3].default is inspect.Parameter.empty
    method_options, _ = _split(resolve_options(method, dict(options)))
    return _preset_reads_key(function, tuple(sorted(method_options.items())), tuple(images_shape), tuple(key_shape))


@functools.lru_cache(maxsize=256)
def _preset_reads_key(function, method_options: tuple, images_shape: tuple, key_shape: tuple) -> bool:
    return reads_key(function(**dict(method_options)).modification, images_shape, key_shape)


# ---------------------------------------------------------------------------------------------
# explain: the one entry point


def _lift_parameters(model: ModelFunctions) -> tuple[tuple, tuple]:
    """Static parts and array arguments of the model functions (see ``gag_jax._lifting``)."""
    parts = [split_function(fn) for fn in model]
    return tuple(p[0] for p in parts), tuple(p[1] for p in parts)


def _rebuild(statics: tuple, dynamics: tuple) -> ModelFunctions:
    return ModelFunctions(*(join_function(s, a) for s, a in zip(statics, dynamics)))


def _explain(images, labels, key, model_args, *, function, options, model_statics, postprocess):
    method_options, reduce = _split(options)
    model = _rebuild(model_statics, model_args)
    raw = _attributions(function, method_options, model, images, labels, key)
    return to_saliency(raw, reduce) if postprocess else raw


_explain_jit = jax.jit(_explain, static_argnames=("function", "options", "model_statics", "postprocess"))


def _num_classes(model: ModelFunctions, images) -> int:
    shape = jax.eval_shape(model.logits, jax.ShapeDtypeStruct(images.shape, images.dtype)).shape
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
      model_fn: ``images -> logits (B, K)``, or a ``ModelFunctions``/mapping (needed by ``gradcam``;
        ``gb`` uses its ``guided_logits`` if given). Parameters are closed over.
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
        ``fraction``, ``max_dist``, ``chunk_size``; and ``reduce``. See ``DEFAULTS[method]``.

    Returns:
      ``(B, H, W)`` maps (or ``(B, H, W, C)`` with ``postprocess=False``).

    Raises:
      ValueError: unknown method or option, an option value out of range, bad shapes/dtypes, NaN
        input, labels out of range, missing key or model functions.

    The computation is jit-compiled once per (shapes, method, options, model functions); repeated
    calls reuse it.
    """
    function = _method_function(method)
    options = resolve_options(method, options)
    options_dict = dict(options)
    method_options, _ = _split(options)
    attribution = is_attribution_function(function)
    if not attribution:
        function(**method_options)  # the seam factories check the values now, on the host
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    if key is None:
        shape = images.shape if images.ndim == 4 else (1, 8, 8, 3)
        if needs_key(function, method_options, shape):
            raise ValueError(f"method {_method_name(method)!r} draws random numbers: "
                             "pass key=jax.random.PRNGKey(...)")
        key = jax.random.PRNGKey(0)
    if modifications.is_key_batch(key) and key.shape[0] != images.shape[0]:
        raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for "
                         f"{images.shape[0] if images.ndim else 0} images")
    model = as_model_functions(model_fn)
    if validate:
        check_images(images)
        check_labels(labels, images.shape[0], _num_classes(model, images))
    if attribution and not getattr(function, "jittable", True):  # host code: run eagerly
        raw = _attributions(function, method_options, model, images, labels, key)
        return to_saliency(raw, options_dict["reduce"]) if postprocess else raw
    model_statics, model_args = _lift_parameters(model)
    return _explain_jit(images, labels, key, model_args, function=function, options=options,
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
