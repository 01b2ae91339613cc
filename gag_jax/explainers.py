"""Every method as one record, the ``PRESETS`` table, and the one entry point ``explain``.

A method is a :class:`Method` record: its function and what the package needs to know about it,
said explicitly (nothing is guessed from the function):

* ``kind="composition"``: the function is a **preset**: its signature holds the method's options
  and their defaults, its body is its composition of the four seams (like ``optax``'s ``alias.py``)::

      def gag(n=20, noise_level=0.15, noise_range="image", percentile=0.85, guide_axes="channel",
              chunk_size=None):
          return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                       interpretations.absolute(), aggregations.guide(percentile, guide_axes),
                       chunk_size=chunk_size)

  It is random when its modification is (``Modification.random``: Gaussian noise is).
* ``kind="attribution"``: an **attribution function**, for a method that is not a composition
  (Grad-CAM; occlusion, RISE, XRAI in ``gag_jax.perturbation_methods``):
  ``fn(model, images (B, H, W, C), labels (B,), key, *, option=default, ...) -> (B, H, W, C')``,
  ``model`` a ``ModelFunctions``; the record says whether it is ``random`` (needs a key) and
  whether it is ``jittable`` (XRAI segments on the host and is called eagerly).

Every record also holds its default channel ``reduce`` (``"sum"`` for signed one-channel maps,
otherwise ``"abs_sum"``) and whether it always ``needs_scaling`` (the model's input scaling: XRAI
segments pixels; a ``"black"`` baseline needs it too). ``DEFAULTS`` (option names and defaults) is
read from the functions' signatures, the one place the options are written. Values are checked
once, by the seam factories (``modifications.gaussian_noise`` checks ``n`` and ``noise_level``,
``aggregations.guide`` the percentile ...), when the preset is called.

To add a method, pass ``gj.Method("mine", my_function, kind=..., random=...)`` (or a composed
``Explainer``) to ``gj.explain`` as the method.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gag_jax import aggregations, backend, gradients, interpretations, modifications
from gag_jax import perturbation_methods
from gag_jax._signature import option_defaults, source_of
from gag_jax._validation import check_images, check_labels
from gag_jax.attention import attention_rollout, generic_attention
from gag_jax.gradcam import model_gradcam
from gag_jax import pixels
from gag_jax.model import ModelFunctions, as_model_functions, warn_if_closed_over
from gag_jax.perturbation_methods import occlusion, rise
from gag_jax.pipeline import Explainer, chain, per_target, run_sweep, shares_sweep
from gag_jax.postprocess import to_saliency


# ---------------------------------------------------------------------------------------------
# the presets: one function per method, its signature its options, its body its composition

# ``mean=None, std=None``: the model's input scaling (``ModelFunctions.mean`` / ``.std``), read by
# ``explain`` / ``explainer_fn`` when the method runs; explicit values override it.
_FROM_MODEL = None


def variant(explainer: Explainer, *, interpretation: str = "raw", guide: bool = False, percentile: float = 0.85,
            guide_axes: str = "channel", n: int = 20, noise_level: float = 0.15,
            noise_range: str = "image") -> Explainer:
    """Table 3's gradient processing as one wrapper over any composition (as Captum's ``NoiseTunnel``
    wraps any attribution method).

    The interpretation seam is replaced by ``interpretation`` ("raw", "positive" (+), "negative" (-),
    "absolute" (A), "square"); with ``guide=True`` the aggregation becomes the variance-guided sum of
    eq. 2-5 (G; GA with ``interpretation="absolute"``) over the explainer's own samples, or, for a
    single-sample modification (VG's and GB's one gradient, which has no variance), over ``n`` noisy
    copies (``gaussian_noise(n, noise_level, noise_range)``). ``n`` / ``noise_*`` are used for that
    case only.

    Args:
      explainer: a composition (``gj.chain(...)``, a preset's result).
      interpretation, guide, percentile, guide_axes: the processing; defaults leave ``explainer``'s
        aggregation and put the raw interpretation in.
      n, noise_level, noise_range: the noise of a guided single-sample method.

    Returns:
      the processed ``Explainer`` (same gradient seam and chunk size).

    Example::

      gj.explain(gj.variant(gj.PRESETS["ig"](n=20), interpretation="absolute", guide=True), model, x, y)
      gj.explain("ig", model, x, y, interpretation="absolute", guide=True)   # the same, by options
    """
    if not isinstance(explainer, Explainer):
        raise ValueError(f"variant() wraps a composition (gj.Explainer); got {type(explainer).__name__}")
    modification, aggregation = explainer.modification, explainer.aggregation
    if guide:
        if modification.num_samples == 1:
            modification = modifications.gaussian_noise(n, noise_level, noise_range)
        aggregation = aggregations.guide(percentile, guide_axes)
    return dataclasses.replace(explainer, modification=modification,
                               interpretation=interpretations.by_name(interpretation), aggregation=aggregation)


VARIANT_OPTIONS: dict[str, Any] = option_defaults(variant, skip=1, name="variant")
"""The options :func:`variant` adds to a method whose record has ``variants=True``."""


def vg(chunk_size=None) -> Explainer:
    """Vanilla Gradient: the gradient of the target logit (with a guide: n noisy copies, see :func:`variant`)."""
    return chain(modifications.identity(), gradients.logit_gradient(), interpretations.raw(), aggregations.total(),
                 chunk_size=chunk_size)


def gb(chunk_size=None) -> Explainer:
    """Guided Backprop: Vanilla Gradient through guided ReLUs (``gradients.guided_logit_gradient``)."""
    return chain(modifications.identity(), gradients.guided_logit_gradient(), interpretations.raw(),
                 aggregations.total(), chunk_size=chunk_size)


def sg(n=20, noise_level=0.15, noise_range="image", chunk_size=None) -> Explainer:
    """SmoothGrad: mean of the gradients at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.raw(), aggregations.mean(), chunk_size=chunk_size)


def vargrad(n=20, noise_level=0.15, noise_range="image", chunk_size=None) -> Explainer:
    """VarGrad: variance (ddof=1) of the gradients at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.raw(), aggregations.variance(), chunk_size=chunk_size)


def ig(n=20, baseline="black", rule="riemann_right", mean=_FROM_MODEL, std=_FROM_MODEL, chunk_size=None) -> Explainer:
    """Integrated Gradients on the straight path from ``baseline`` (black in pixel space), n steps."""
    return chain(modifications.straight_path(n, baseline, rule, mean, std), gradients.logit_gradient(),
                 interpretations.raw(), aggregations.total(), chunk_size=chunk_size)


def guided_ig(n=20, baseline="black", fraction=0.25, max_dist=0.02, mean=_FROM_MODEL, std=_FROM_MODEL,
              chunk_size=None) -> Explainer:
    """Guided Integrated Gradients (Kapishnikov et al. 2021): the adaptive path, n steps."""
    return chain(modifications.guided_ig_path(n, baseline, fraction, max_dist, mean, std), gradients.logit_gradient(),
                 interpretations.raw(), aggregations.total(), chunk_size=chunk_size)


def blur_ig(n=20, max_sigma=50.0, grad_step=0.01, sqrt=False, mode="constant", radius=None,
            chunk_size=None) -> Explainer:
    """Blur Integrated Gradients (Xu et al. 2020) as published, n steps from ``max_sigma``."""
    return chain(modifications.blur_path(n, max_sigma, grad_step, sqrt, mode, radius), gradients.logit_gradient(),
                 interpretations.raw(), aggregations.total(), chunk_size=chunk_size)


def ag(n=20, noise_level=0.15, noise_range="image", chunk_size=None) -> Explainer:
    """AbsoluteGrad (GAG-0): sum of the gradient magnitudes at n noisy copies."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.absolute(), aggregations.total(), chunk_size=chunk_size)


def gag(n=20, noise_level=0.15, noise_range="image", percentile=0.85, guide_axes="channel",
        chunk_size=None) -> Explainer:
    """Guided AbsoluteGrad (Algorithm 1): ``sum_i |g_i| * G`` with the variance guide G (eq. 2-5)."""
    return chain(modifications.gaussian_noise(n, noise_level, noise_range), gradients.logit_gradient(),
                 interpretations.absolute(), aggregations.guide(percentile, guide_axes), chunk_size=chunk_size)


def gradcam_attribution(model, images, labels, key=None, layer=None, prefix_tokens=None, grid=None) -> jax.Array:
    """Grad-CAM ``(B, H, W, 1)`` (see ``gag_jax.gradcam``): on the output of the submodule ``layer``
    (its path in a linen or NNX model, e.g. ``"layer4"``, ``"conv2"``, ``"blocks_11/norm1"``) or,
    without ``layer``, on the model's ``features``/``head`` split, else a ViT's last ``blocks_{i}/norm1``.
    A token layer ``(B, T, D)`` drops ``prefix_tokens`` (None: the model's, else 1) and lays the rest
    on ``grid=(h, w)`` (None: inferred)."""
    return model_gradcam(model, images, labels, layer, prefix_tokens, grid)


def xrai(model, images, labels, key=None, *, base="ig", base_options=None, baselines=("min", "max"),
         scales=perturbation_methods.XRAI_SCALES, sigma=perturbation_methods.XRAI_SIGMA,
         min_size=perturbation_methods.XRAI_MIN_SIZE, segment_size=perturbation_methods.XRAI_SEGMENT_SIZE,
         dilation=perturbation_methods.XRAI_DILATION, min_pixel_diff=perturbation_methods.XRAI_MIN_PIXEL_DIFF,
         area_threshold=1.0, mean=_FROM_MODEL, std=_FROM_MODEL) -> jax.Array:
    """XRAI (see :func:`gag_jax.perturbation_methods.xrai`) on the attribution of the gradient method
    ``base`` with ``base_options``; a path method (``"ig"``, ``"guided_ig"``) without its own
    ``baseline`` is averaged over ``baselines`` (the reference: IG from the image's minimum and maximum)."""
    runs = _xrai_base_runs(base, base_options, baselines)

    def base_attribution(model, images, labels, key):
        return jnp.mean(jnp.stack([explain(base, model, images, labels, key=key, postprocess=False, validate=False,
                                           **run) for run in runs]), axis=0)

    return perturbation_methods.xrai(model, images, labels, key, base=base_attribution, scales=scales, sigma=sigma,
                                     min_size=min_size, segment_size=segment_size, dilation=dilation,
                                     min_pixel_diff=min_pixel_diff, area_threshold=area_threshold, mean=mean, std=std)


def _xrai_base_runs(base, base_options, baselines) -> list[dict[str, Any]]:
    """The option sets of XRAI's base attribution, averaged: a path method (``"ig"``, ``"guided_ig"``)
    without its own ``baseline`` runs once per entry of ``baselines`` (the reference: the image's
    minimum and maximum), any other gradient method once."""
    options = dict(base_options) if isinstance(base_options, Mapping) else dict(base_options or ())
    if base not in PRESETS or METHOD_RECORDS[base].kind != "composition":
        raise ValueError(f"xrai's base must be a gradient method (a composition in gj.PRESETS), not {base!r}")
    if base in ("ig", "guided_ig") and "baseline" not in options:
        return [{**options, "baseline": b} for b in baselines]
    return [options]


@dataclasses.dataclass(frozen=True)
class Method:
    """What the package knows about one method, said explicitly.

    Attributes:
      name: the method's name (a key of ``PRESETS`` for the built-in ones).
      function: ``kind="composition"``: a preset ``function(**options) -> Explainer``;
        ``kind="attribution"``: ``function(model, images, labels, key, **options) -> (B, H, W, C')``.
      kind: ``"composition"`` or ``"attribution"``.
      random: attribution functions: whether they draw random numbers (then ``explain`` needs a
        key). Compositions: None, their modification says (``Modification.random``).
      reduce: default channel reduction of ``explain`` (``"abs_sum"`` or ``"sum"``).
      jittable: False for host code (called eagerly, outside ``jax.jit``).
      needs_scaling: always needs the model's input scaling (a ``"black"`` baseline always does).
      label: display label in tables and figures (default: the name).
      paper: one of the paper's ten methods (Table 2's rows, ``gj.METHODS``).
      variants: a composition that takes Table 3's gradient processing (:func:`variant`): its options
        ``interpretation``, ``guide``, ``percentile``, ``guide_axes`` (and ``n`` / ``noise_*`` for a
        guided single-sample method) are added to the function's own.
      cost: attribution functions: ``cost(options, image_shape) -> {"gradients": g, "forward_passes": f}``
        per image (model gradient evaluations and forward passes) for the run's manifest; None: 0.
        Compositions count their sweep's samples (``Modification.num_samples``) as gradients.
      source: a user's method loaded as ``module:attribute``: ``{"module", "attribute", "sha256"}``.
    """

    name: str
    function: Callable
    kind: str = "composition"
    random: bool | None = None
    reduce: str = "abs_sum"
    jittable: bool = True
    needs_scaling: bool = False
    label: str | None = None
    paper: bool = False
    variants: bool = False
    cost: Callable | None = dataclasses.field(default=None, compare=False)
    source: Any = dataclasses.field(default=None, compare=False, hash=False)

    def __post_init__(self):
        if self.kind not in ("composition", "attribution"):
            raise ValueError(f"Method.kind must be 'composition' or 'attribution'; got {self.kind!r}")
        if self.kind == "attribution" and self.random is None:
            raise ValueError(f"method {self.name!r}: an attribution function must say whether it is random")
        if self.reduce not in ("abs_sum", "sum"):
            raise ValueError(f"Method.reduce must be 'abs_sum' or 'sum'; got {self.reduce!r}")
        if self.label is None:
            object.__setattr__(self, "label", self.name)

    def per_image_cost(self, method_options: Mapping[str, Any], image_shape=None) -> dict[str, int]:
        """Model gradient evaluations and forward passes one image costs with these options:
        a composition's sweep samples (gradients); an attribution function's ``cost``."""
        if self.kind == "composition":
            built = self.build(_with_placeholder_scaling(method_options))
            return {"gradients": int(built.modification.num_samples), "forward_passes": 0}
        if self.cost is None:
            return {"gradients": 0, "forward_passes": 0}
        counted = self.cost(dict(method_options), image_shape)
        return {"gradients": int(counted.get("gradients", 0)), "forward_passes": int(counted.get("forward_passes", 0))}

    @property
    def defaults(self) -> dict[str, Any]:
        """Option names and defaults (from the function's signature; with ``variants``, those of
        :func:`variant` too) plus ``reduce``."""
        skip = 4 if self.kind == "attribution" else 0
        own = option_defaults(self.function, skip=skip, name=self.name)
        extra = {k: v for k, v in VARIANT_OPTIONS.items() if k not in own} if self.variants else {}
        return {**own, **extra, "reduce": self.reduce}

    def build(self, method_options: Mapping[str, Any]) -> Explainer:
        """A composition's ``Explainer`` for these options (no ``reduce``): the function called with its
        own options, then :func:`variant` with the processing options when the record has ``variants``."""
        own = option_defaults(self.function, name=self.name)
        built = self.function(**{k: v for k, v in method_options.items() if k in own})
        if not self.variants:
            return built
        return variant(built, **{k: v for k, v in method_options.items() if k in VARIANT_OPTIONS})

    def is_random(self, method_options: Mapping[str, Any]) -> bool:
        """Whether the method with these options draws random numbers (so that it needs a key)."""
        if self.kind == "attribution":
            return bool(self.random)
        return bool(self.build(_with_placeholder_scaling(method_options)).modification.random)


def _occlusion_cost(options, image_shape) -> dict[str, int]:
    if image_shape is None:
        return {"forward_passes": 0}
    positions = perturbation_methods.occlusion_positions(tuple(image_shape[:2]), options["window"], options["stride"])
    return {"forward_passes": 1 + len(positions)}


def _xrai_cost(options, image_shape) -> dict[str, int]:
    runs = _xrai_base_runs(options["base"], options["base_options"], options["baselines"])
    return {"gradients": sum(per_image_cost(options["base"], run, image_shape)["gradients"] for run in runs)}


_RECORDS = (
    Method("vg", vg, label="VG", paper=True, variants=True), Method("sg", sg, label="SG", paper=True, variants=True),
    Method("vargrad", vargrad, label="VarGrad", paper=True, variants=True),
    Method("ig", ig, label="IG", paper=True, variants=True),
    Method("guided_ig", guided_ig, label="Guided IG", paper=True, variants=True),
    Method("blur_ig", blur_ig, label="BlurIG", paper=True, variants=True),
    Method("gb", gb, label="GB", paper=True, variants=True),
    Method("gradcam", gradcam_attribution, "attribution", random=False, label="Grad-CAM", paper=True,
           cost=lambda options, shape: {"gradients": 1}),
    Method("ag", ag, label="AG", paper=True), Method("gag", gag, label="GAG", paper=True),
    # beyond the paper: signed one-channel maps (scaled as they are); XRAI segments on the host
    Method("occlusion", occlusion, "attribution", random=False, reduce="sum", label="Occlusion", cost=_occlusion_cost),
    Method("rise", rise, "attribution", random=True, reduce="sum", label="RISE",
           cost=lambda options, shape: {"forward_passes": int(options["n"])}),
    Method("xrai", xrai, "attribution", random=False, reduce="sum", jittable=False, needs_scaling=True, label="XRAI",
           cost=_xrai_cost),
    # transformers: read the attention probabilities (gag_jax.attention)
    Method("attention_rollout", attention_rollout, "attribution", random=False, label="Attention rollout",
           cost=lambda options, shape: {"forward_passes": 1}),
    Method("generic_attention", generic_attention, "attribution", random=False, label="Generic attention",
           cost=lambda options, shape: {"gradients": 1}),
)

BUILT_IN_METHODS: tuple[str, ...] = tuple(m.name for m in _RECORDS)
"""The package's own methods (a user's are added by :func:`register_method`)."""

METHOD_RECORDS: dict[str, Method] = {m.name: m for m in _RECORDS}
"""Method name -> its :class:`Method` record."""

PRESETS: dict[str, Callable] = {m.name: m.function for m in _RECORDS}
"""Method name -> preset (returns an ``Explainer``) or attribution function; see the module docstring."""

METHODS: tuple[str, ...] = tuple(m.name for m in _RECORDS if m.paper)
"""The methods of the paper's Table 2 (``Method.paper``)."""


@dataclasses.dataclass(frozen=True)
class _Composed:
    """A composed ``Explainer`` as a preset without options (hashable: same explainer, same record)."""

    explainer: Explainer

    def __call__(self) -> Explainer:
        return self.explainer


def _explainer_method(explainer: Explainer) -> Method:
    return Method("explainer", _Composed(explainer))


def as_method(method) -> Method:
    """The :class:`Method` record of a name in ``PRESETS``, a ``Method``, or a composed ``Explainer``.

    Your own function: wrap it in a record, ``gj.Method(name, fn, kind="composition" | "attribution",
    random=...)`` (a bare function is refused: the record says what it is).

    Raises:
      ValueError: an unknown name, a bare function (the message names ``gj.Method``) or something
        that is not a method.
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        if method not in METHOD_RECORDS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHOD_RECORDS)}")
        return METHOD_RECORDS[method]
    if isinstance(method, Explainer):
        return _explainer_method(method)
    for record in _RECORDS:  # a built-in function passed as itself
        if method is record.function:
            return record
    if callable(method):
        name = getattr(method, "__name__", "my_method")
        raise ValueError(f"a bare function is not a method: wrap it in a record, gj.Method({name!r}, {name}, "
                         "kind='composition' (returns a gj.Explainer) | 'attribution' (fn(model, images, labels, key)), "
                         "random=...), or pass a composed gj.Explainer")
    raise ValueError(f"method must be a name in gj.PRESETS, a gj.Method or a composed gj.Explainer; got {method!r}")


def method_defaults(method) -> dict[str, Any]:
    """Options of ``method`` (a name, a ``Method`` or a function) and their defaults, ``reduce`` included.

    Raises:
      ValueError: unknown method, or an option without a default.
    """
    return as_method(method).defaults


DEFAULTS: dict[str, dict[str, Any]] = {m.name: m.defaults for m in _RECORDS}
"""Method name -> its options and their defaults (derived from ``PRESETS``)."""


def per_image_cost(method, options: Mapping[str, Any] | None = None, image_shape=None) -> dict[str, int]:
    """``{"gradients", "forward_passes"}`` one image costs with ``method`` and ``options`` (defaults
    filled in), read from its record (:meth:`Method.per_image_cost`)."""
    record = as_method(method)
    method_options, _ = _split(resolve_options(record, dict(options or {})))
    return record.per_image_cost(method_options, image_shape)


def register_method(name: str, factory, *, label: str | None = None, replace: bool = False) -> Method:
    """Register a method of your own so that ``gj.explain``, ``gj.explain_many``, ``gag-jax evaluate`` /
    ``explain`` / ``demo`` / ``sanity``, the tables and the figures take it by name.

    Args:
      name: its name (a row of tables and records); must not shadow a built-in method.
      factory: what a preset is: ``factory(**options) -> gj.Explainer`` (a composition of the four
        seams; every option needs a default, e.g. ``def edge_grad(n=20, noise_level=0.15): ...``);
        or a composed ``gj.Explainer``; or a ready ``gj.Method`` (an attribution function, say).
        Compositions share gradient sweeps with the built-in rows whose modification and gradient seam
        are equal (``gj.explain_many``).
      label: display label (default: the name, or the record's label).
      replace: allow re-registering a user method of the same name.

    Returns:
      the :class:`Method` record.

    Raises:
      ValueError: a built-in name, a name taken (without ``replace``), a factory that does not build
        a ``gj.Explainer`` with its defaults.

    Example::

      def edge_grad(n=20, noise_level=0.15, chunk_size=None):
          return gj.chain(gj.modifications.gaussian_noise(n, noise_level), gj.gradients.logit_gradient(),
                          gj.interpretations.square(), gj.aggregations.mean(), chunk_size=chunk_size)
      gj.register_method("edge_grad", edge_grad, label="EdgeGrad")
      gj.explain_many(["gag", "edge_grad"], model, images, labels, key=key)   # one noise sweep
    """
    if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"a method name must be letters, digits, '_' or '-'; got {name!r}")
    if any(name == m.name for m in _RECORDS):
        raise ValueError(f"method {name!r} is built in; choose another name")
    if name in METHOD_RECORDS and not replace:
        raise ValueError(f"method {name!r} is already registered (pass replace=True to replace it)")
    if isinstance(factory, Method):
        record = dataclasses.replace(factory, name=name, label=label or factory.label)
    elif isinstance(factory, Explainer):
        record = Method(name, _Composed(factory), label=label)
    elif callable(factory):
        record = Method(name, factory, label=label, source=source_of(factory))
    else:
        raise ValueError(f"method {name!r}: factory must be a function returning a gj.Explainer, a gj.Explainer or "
                         f"a gj.Method; got {type(factory).__name__}")
    if record.kind == "composition":
        try:
            built = record.function(**_with_placeholder_scaling(option_defaults(record.function, name=name)))
        except TypeError as err:
            raise ValueError(f"method {name!r}: calling its factory with its defaults failed: {err}") from None
        if not isinstance(built, Explainer):
            raise ValueError(f"method {name!r}: its factory must return a gj.Explainer (gj.chain(...)); got "
                             f"{type(built).__name__}")
    METHOD_RECORDS[name] = record
    PRESETS[name] = record.function
    DEFAULTS[name] = record.defaults
    return record


def unregister_method(name: str) -> None:
    """Remove a user's method (built-in ones stay)."""
    if any(name == m.name for m in _RECORDS):
        raise ValueError(f"method {name!r} is built in and cannot be removed")
    for table in (METHOD_RECORDS, PRESETS, DEFAULTS):
        table.pop(name, None)


def hashable(value):
    """An option value as a hashable, comparable one: mappings -> sorted (key, value) tuples, lists and
    arrays -> tuples (recursively); everything else as it is."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return hashable(value.tolist())
    return value


def resolve_options(method, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Check option names for ``method`` and merge them with its defaults.

    Only names are checked here; values are checked by the seam factories when the method is built.

    Returns:
      A sorted, hashable tuple of ``(name, value)`` pairs (every option, ``reduce`` included).

    Raises:
      ValueError: unknown method, or an unknown option (named, with the valid ones listed).
    """
    record = as_method(method)
    defaults = record.defaults
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {record.name!r}; "
                         f"valid options: {', '.join(sorted(defaults))}")
    return tuple(sorted({**defaults, **{k: hashable(v) for k, v in options.items()}}.items()))


def _split(options: tuple) -> tuple[dict[str, Any], str]:
    method_options = dict(options)
    reduce = method_options.pop("reduce")
    return method_options, reduce


def _with_scaling(record: Method, method_options: dict, model: ModelFunctions, channels: int | None) -> dict:
    """``method_options`` with ``mean``/``std`` filled from the model where the method takes them and
    they are not given (explicit values win); ValueError when the method needs them and none is known:
    a ``"black"`` baseline (IG, Guided IG, occlusion, RISE) or a method that always does (XRAI)."""
    if "mean" not in method_options:
        return method_options
    baseline = method_options.get("baseline")
    what = f"method {record.name!r}" + (f" (baseline {baseline!r})" if baseline is not None else "")
    needed = record.needs_scaling or baseline == "black"
    mean, std = pixels.resolve(model, method_options.get("mean"), method_options.get("std"),
                               needed=needed, what=what, channels=channels)
    return {**method_options, "mean": mean, "std": std}


_PLACEHOLDER_SCALING = {"mean": (0.0,), "std": (1.0,)}


def _with_placeholder_scaling(method_options: Mapping[str, Any]) -> dict:
    """A scaling to build a preset with before the model's is known (only its structure is used)."""
    if "mean" in method_options and method_options["mean"] is None:
        return {**method_options, **_PLACEHOLDER_SCALING}
    return dict(method_options)


def _check_values(record: Method, method_options: dict) -> None:
    """Let the seam factories check the option values now, on the host (a scaling still to be read
    from the model is checked when it is)."""
    if record.kind == "composition":
        record.build(_with_placeholder_scaling(method_options))


def _attributions(record: Method, method_options: dict, model: ModelFunctions, images, labels, key,
                  platform: str | None = None) -> jax.Array:
    if record.kind == "attribution":
        if not callable(labels) and jnp.ndim(labels) == 2:
            # labels (B, K): one call per target inside the same program (K static), each with the same
            # key, so each map equals the single-target call; nothing is shared between the targets
            return jnp.stack([record.function(model, images, labels[:, k], key, **method_options)
                              for k in range(labels.shape[1])], axis=1)
        return record.function(model, images, labels, key, **method_options)
    # the ModelFunctions itself: callable as its logits; gb's gradient seam uses its guided_logits if any
    return record.build(method_options)(model, images, labels, key, platform=platform)


def explainer_fn(method, *, postprocess: bool = True, **options) -> Callable:
    """A pure, un-jitted explain function, for use inside your own ``jax.jit``/``vmap``/sharding.

    Args:
      method: a name in ``PRESETS``, a ``gj.Method`` or a composed ``Explainer``.
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
    record = as_method(method)
    method_options, reduce = _split(resolve_options(record, options))
    _check_values(record, method_options)

    def fn(model, images, labels, key):
        model = as_model_functions(model)
        resolved = _with_scaling(record, method_options, model, images.shape[-1])
        raw = _attributions(record, resolved, model, images, labels, key)
        return per_target(lambda a: to_saliency(a, reduce), raw) if postprocess else raw  # per (image, target)

    return fn


def needs_key(method, options: Mapping[str, Any] = ()) -> bool:
    """Whether ``method`` with ``options`` draws random numbers, so that ``explain`` needs a key.

    Read from its record: an attribution function says so; a composition is random when its
    modification is (Gaussian noise; a guide-free ``vg`` is not).
    """
    record = as_method(method)
    method_options, _ = _split(resolve_options(record, dict(options)))
    return record.is_random(method_options)


# ---------------------------------------------------------------------------------------------
# explain: the one entry point


def _explain(images, labels, key, model, *, record, options, postprocess, platform, target=None):

    method_options, reduce = _split(options)
    # labels (B,) / (B, K), or the target function (static) in their place
    raw = _attributions(record, method_options, model, images, labels if target is None else target, key, platform)
    return per_target(lambda a: to_saliency(a, reduce), raw) if postprocess else raw


# the model is an ordinary argument (a pytree): its weights are traced, its apply functions static
_explain_jit = jax.jit(_explain, static_argnames=("record", "options", "postprocess", "platform", "target"))


def _check_inputs(model: ModelFunctions, images, labels, key, validate: bool, target=None, record=None) -> None:
    """One key or one per image; labels ``(B,)`` / ``(B, K)`` or a hashable ``target`` function (not
    both; an attribution function ``record`` takes labels only); with ``validate``, shapes, dtypes,
    NaN, label range (a host sync) or the target function's output shape, a warning for a plain model
    function that closes over its weights and one for images far outside the range the model's
    scaling implies (:func:`gag_jax.pixels.warn_if_out_of_range`)."""
    if modifications.is_key_batch(key) and key.shape[0] != images.shape[0]:
        raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for "
                         f"{images.shape[0] if images.ndim else 0} images")
    if target is not None:
        if labels is not None:
            raise ValueError("give labels or target=, not both (target=fn explains fn(logits) instead of class logits)")
        if not callable(target):
            raise ValueError(f"target must be a function logits -> (B,) or (B, K); got {type(target).__name__}")
        try:
            hash(target)
        except TypeError:
            raise ValueError("target must be hashable (it is a static argument of the compiled program): pass a "
                             "module-level function or a functools.partial of one") from None
        if record is not None and record.kind != "composition":
            raise ValueError(f"method {record.name!r} is an attribution function: it explains class labels "
                             "(B,) or (B, K), not target=fn; target= works with the gradient methods (compositions)")
    elif labels is None:
        raise ValueError("labels are required: (B,) or (B, K) int class indices, or labels=None with target=fn")
    if validate:
        check_images(images)
        if target is None:
            check_labels(labels, images.shape[0], _num_classes(model, images), many=True)
        else:
            _num_classes(model, images, target)
        warn_if_closed_over(model, images)
        pixels.warn_if_out_of_range(images, model.mean, model.std, where="images", stacklevel=3)


def _num_classes(model: ModelFunctions, images, target=None) -> int:
    """The model's number of classes (its logits must be ``(B, classes)``); with ``target``, the
    target function's output must be ``(B,)`` or ``(B, K)`` (returns K, 1 for ``(B,)``)."""
    image_shape = jax.ShapeDtypeStruct(images.shape, images.dtype)
    if target is not None:
        try:
            shape = jax.eval_shape(lambda x: target(model(x)), image_shape).shape
        except Exception as err:  # noqa: BLE001 - a target that does not fit the model's output: say so
            out = jax.eval_shape(model, image_shape).shape
            raise ValueError(f"target= failed on the model's output of shape {out}: {err}") from None
        if len(shape) not in (1, 2) or shape[0] != images.shape[0]:
            raise ValueError(f"target must map the model's output to (B,) or (B, K) with B = {images.shape[0]}; "
                             f"got shape {shape}")
        return 1 if len(shape) == 1 else shape[1]
    shape = jax.eval_shape(model, image_shape).shape
    if len(shape) != 2 or shape[0] != images.shape[0]:
        raise ValueError(f"model_fn must map images {tuple(images.shape)} to logits (B, K); got shape {shape}"
                         + (" (explain another output with target=fn)" if len(shape) > 2 else ""))
    return shape[1]


def explain(method, model_fn, images, labels=None, *, key=None, target=None, postprocess: bool = True,
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
      labels: ``(B,)`` int target classes; or ``(B, K)``: K targets per image (e.g. the top-5
        classes), maps ``(B, K, H, W)`` from one compiled program. Gradient methods share the forward
        passes and the noise / path sweep and run one backward pass per target (each map equals the
        single-target call with the same key, to float rounding; Guided IG's adaptive path is one path
        per target); attribution functions (Grad-CAM, occlusion, RISE, XRAI, attention methods) run
        once per target inside the same program.
      key: PRNG key; required by the methods that draw random numbers (sg, vargrad, ag, gag; vg/gb
        with a guide; see ``needs_key``). A batch of keys (one per image) makes each image's noise
        independent of its batch.
      target: with ``labels=None``, explain ``target(output)`` instead of class logits:
        ``target(model output) -> (B,)`` (maps ``(B, H, W)``) or ``(B, K)`` (maps ``(B, K, H, W)``),
        e.g. a sigmoid model's class, a detection score, one class's logits summed over a region of a
        segmentation output. Gradient methods only. It is a static argument of the compiled program,
        so it must be hashable: a module-level function or a ``functools.partial`` of one, made once
        and reused (a new function object compiles again).
      postprocess: True: ``(B, H, W)`` float32 maps in [0, 1] (sum over channels of ``|A|``, per-image
        min-max, constant map -> zeros; ``reduce="sum"`` for the signed sum). False: raw ``(B, H, W, C)``
        (several targets: ``(B, K, H, W)`` / ``(B, K, H, W, C)``, min-max per image and target).
      validate: check shapes, dtypes, NaN and label range (or the target's output shape) first (a host
        sync); False skips it.
      **options: the method's options, e.g. ``n``, ``noise_level``, ``noise_range``, ``percentile``,
        ``guide_axes``, ``interpretation`` ("raw", "positive", "negative", "absolute", "square"),
        ``guide`` (variance guide, Table 3 "G"), ``baseline``, ``rule``, ``max_sigma``,
        ``fraction``, ``max_dist``, ``chunk_size``, ``layer`` (Grad-CAM), ``mean``/``std`` (override
        the model's input scaling); and ``reduce``. See ``DEFAULTS[method]``.

    Returns:
      ``(B, H, W)`` maps (or ``(B, H, W, C)`` with ``postprocess=False``); K targets per image
      (``labels (B, K)`` or a target returning ``(B, K)``): ``(B, K, H, W)`` (``(B, K, H, W, C)``).

    Raises:
      ValueError: unknown method or option, an option value out of range, bad shapes/dtypes, NaN
        input, labels out of range (the entry named), missing key or model functions, a method that
        needs pixel-space black on a model whose input scaling is unknown; both or neither of
        ``labels`` and ``target``, a target that is not hashable or does not give ``(B,)`` / ``(B, K)``,
        ``target`` with an attribution function.

    The computation is jit-compiled once per (shapes, method, options, apply functions, target);
    repeated calls reuse it, with whatever weights the ModelFunctions holds.
    """
    record = as_method(method)
    method_options, reduce = _split(resolve_options(record, options))
    images = jnp.asarray(images)
    labels = None if labels is None else jnp.asarray(labels)
    model = as_model_functions(model_fn)
    method_options = _with_scaling(record, method_options, model, images.shape[-1] if images.ndim == 4 else None)
    _check_values(record, method_options)  # the seam factories check the values now, on the host
    if key is None:
        if record.is_random(method_options):
            raise ValueError(f"method {record.name!r} draws random numbers: pass key=jax.random.PRNGKey(...)")
        key = jax.random.PRNGKey(0)
    _check_inputs(model, images, labels, key, validate, target, record)
    options = tuple(sorted({**method_options, "reduce": reduce}.items()))
    if not record.jittable:  # host code: run eagerly
        return _explain(images, labels, key, model, record=record, options=options, postprocess=postprocess,
                        platform=None)
    return _explain_jit(images, labels, key, model, record=record, options=options, postprocess=postprocess,
                        platform=backend.platform_of(images), target=target)


def _many(images, labels, key, model, *, group, postprocess, platform, target=None):
    """One sweep of ``group``'s first explainer, read by every member: ``[(record, options), ...]``
    (``target``: a target function in place of the labels)."""

    explainers, reduces = [], []
    for record, options in group:
        method_options, reduce = _split(options)
        explainers.append(record.build(method_options))
        reduces.append(reduce)
    raws = run_sweep(explainers[0], [(e.interpretation, e.aggregation) for e in explainers], model, images,
                     labels if target is None else target, key, platform=platform)
    return [per_target(lambda a, r=reduce: to_saliency(a, r), raw) if postprocess else raw
            for raw, reduce in zip(raws, reduces)]


_many_jit = jax.jit(_many, static_argnames=("group", "postprocess", "platform", "target"))


def method_key(name: str, options: Mapping[str, Any] | None = None) -> str:
    """The key of ``(name, options)`` in :func:`explain_many`'s result: ``name``, or
    ``name[k=v,...]`` with the options sorted."""
    if not options:
        return name
    return f"{name}[{','.join(f'{k}={v!r}' for k, v in sorted(options.items()))}]"


def _entry(item, options: Mapping[str, Any]) -> tuple[str, Method, dict[str, Any], str]:
    """``(result key, record, method options, reduce)`` of one item of :func:`explain_many`'s
    ``methods``: a name / record / explainer, or a ``(method, {options})`` pair; ``options`` apply
    where the method takes them, the pair's own win."""
    method, own = (item if isinstance(item, tuple) else (item, {}))
    record = as_method(method)
    merged = {**{k: v for k, v in options.items() if k in record.defaults}, **dict(own)}
    method_options, reduce = _split(resolve_options(record, merged))
    return method_key(method if isinstance(method, str) else record.name, dict(own)), record, method_options, reduce


def _sweep_groups(compositions: list[tuple[Method, Mapping[str, Any]]]) -> list[tuple[Explainer, list[int]]]:
    """``(first member's explainer, indices)`` of ``compositions`` grouped by shared sweep
    (:func:`gag_jax.pipeline.shares_sweep` of the built presets), in first-seen order."""
    groups: list[tuple[Explainer, list[int]]] = []
    for index, (record, method_options) in enumerate(compositions):
        built = record.build(_with_placeholder_scaling(method_options))
        match = next((members for first, members in groups if shares_sweep(first, built)), None)
        if match is not None:
            match.append(index)
        else:
            groups.append((built, [index]))
    return groups


def explain_many(methods, model_fn, images, labels=None, *, key=None, target=None, postprocess: bool = True,
                 validate: bool = True, **options) -> dict[str, jax.Array]:
    """Explain ``images`` with several methods, computing each gradient sweep once.

    A *sweep* is one pass of a modification and a gradient seam over the batch (n noisy copies;
    the straight IG path; the Guided IG path; the blur path; the single gradient; the guided
    gradient), a *reading* the interpretation and aggregation applied to it. Methods whose sweeps
    are equal (same modification and options, same gradient seam, same ``chunk_size``) are read
    from one ``lax.scan`` that feeds every reading's streaming state: SG, VarGrad, AG, GAG at any
    percentile and the guided (Table 3 "G") variants of VG / GB share the noise sweep of their
    ``n`` / ``noise_level``; IG and its +, -, A, G, GA variants share the straight path (the guide
    of a path method is the variance of its path gradients); the same for Guided IG and BlurIG.
    Equal (method, options) pairs are computed once. Attribution functions (Grad-CAM, occlusion,
    RISE, XRAI) run as in :func:`explain`.

    Common random numbers: rows of one family see the same noise (the same ``key``), so their
    differences carry less Monte Carlo error than with independent draws; each map equals, to
    float rounding, ``gj.explain(method, ..., key=key, **options)`` for that method.

    Args:
      methods: sequence of method names, ``gj.Method`` records, or ``(method, {options})`` pairs
        (e.g. ``("gag", {"percentile": 0.45})``).
      model_fn, images, labels, key, target, postprocess, validate: as :func:`explain` (one key, or
        one key per image: then every image's maps depend only on its own key; labels ``(B, K)`` or a
        target function returning ``(B, K)``: K maps per image, each sweep still run once).
      **options: applied to every method that takes them (e.g. ``n=20``, ``chunk_size=4``); a
        pair's own options win.

    Returns:
      ``{method_key(name, options): maps}``: ``(B, H, W)`` (or raw ``(B, H, W, C)``; K targets:
      ``(B, K, H, W)`` / ``(B, K, H, W, C)``) per entry, in the order given.

    Raises:
      ValueError: as :func:`explain`, for any entry; two entries with the same key.
    """
    images = jnp.asarray(images)
    labels = None if labels is None else jnp.asarray(labels)
    model = as_model_functions(model_fn)
    channels = images.shape[-1] if images.ndim == 4 else None
    entries: list[tuple[str, Method, tuple]] = []
    for item in methods:
        out_key, record, method_options, reduce = _entry(item, options)
        method_options = _with_scaling(record, method_options, model, channels)
        _check_values(record, method_options)
        if key is None and record.is_random(method_options):
            raise ValueError(f"method {record.name!r} draws random numbers: pass key=jax.random.PRNGKey(...)")
        if any(out_key == k for k, _, _ in entries):
            raise ValueError(f"method {out_key!r} is listed twice")
        entries.append((out_key, record, tuple(sorted({**method_options, "reduce": reduce}.items()))))
    key = jax.random.PRNGKey(0) if key is None else key
    for _, record, _ in entries:  # labels or target (not both); target= with an attribution function, named
        _check_inputs(model, images, labels, key, False, target, record)
    _check_inputs(model, images, labels, key, validate, target)
    unique = list(dict.fromkeys((record, options) for _, record, options in entries))
    results: dict[tuple, jax.Array] = {}
    for record, options in unique:
        if record.kind != "composition":
            method_options, reduce = _split(options)
            results[(record, options)] = explain(record, model, images, labels, key=key, postprocess=postprocess,
                                                 validate=False, **method_options, reduce=reduce)
    compositions = [(record, options) for record, options in unique if record.kind == "composition"]
    platform = backend.platform_of(images)
    for _, indices in _sweep_groups([(record, _split(options)[0]) for record, options in compositions]):
        members = tuple(compositions[i] for i in indices)
        for member, maps in zip(members, _many_jit(images, labels, key, model, group=members,
                                                   postprocess=postprocess, platform=platform, target=target)):
            results[member] = maps
    return {out_key: results[(record, options)] for out_key, record, options in entries}


def sweeps_of(methods, **options) -> list[list[str]]:
    """How :func:`explain_many` groups ``methods`` into gradient sweeps: a list of groups of method keys
    (attribution functions each alone). Builds the presets only (nothing is computed)."""
    return [group["methods"] for group in sweep_plan(methods, **options)]


def sweep_plan(methods, **options) -> list[dict[str, Any]]:
    """:func:`sweeps_of` with each group's model gradient evaluations per image: ``[{"methods": [...],
    "gradients": n}]`` (a composition's sweep: its n samples; Grad-CAM: 1; XRAI: its base method's,
    twice for a path method without its own baseline; occlusion and RISE: 0, they only run the model
    forward: each record's ``cost``). Builds the presets only (nothing is computed)."""
    entries = [_entry(item, options) for item in methods]
    compositions = [i for i, (_, record, _, _) in enumerate(entries) if record.kind == "composition"]
    groups = {}  # first entry index -> {"methods", "gradients"}, kept in the order of the methods
    for built, indices in _sweep_groups([entries[i][1:3] for i in compositions]):
        members = [compositions[i] for i in indices]
        groups[members[0]] = {"methods": [entries[m][0] for m in members],
                              "gradients": int(built.modification.num_samples)}
    for index, (name, record, method_options, _) in enumerate(entries):
        if record.kind != "composition":
            groups[index] = {"methods": [name], "gradients": record.per_image_cost(method_options)["gradients"]}
    return [groups[index] for index in sorted(groups)]


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
