"""Axiomatic metrics of Quantus 0.6: completeness (Sundararajan et al. 2017) and non-sensitivity
(Nguyen & Martinez 2020), batched and jit-compiled.

Both call the model: the perturbed copies of a batch (the baseline image for completeness, one copy per
group of ``features_in_step`` features for non-sensitivity) are built inside the compiled program and
pushed through the model in chunks of at most ``copies_per_call`` copies (memory for one chunk; the
policy of the other metrics, :func:`gag_jax.metrics.default_batch_size`). Neither draws random
numbers (Quantus 0.6 perturbs the features in order), so ``key`` is accepted and unused.

The baseline (Quantus's ``perturb_baseline``, in the space of ``images``, i.e. normalised as the model
expects): ``"black"`` = the image's minimum over all its values, ``"white"`` = its maximum, ``"mean"``
= its mean (Quantus's ``get_baseline_dict``), a number = that constant, or an array broadcastable to
``(B, H, W, C)``. Note that Quantus's ``"black"`` is *not* the package's ``"black"`` of IG and RCAP
(zero in pixel space): IG's ``baseline="min"`` is Quantus's ``"black"``.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax.metrics import _common as C
from gag_jax.metrics.complexity import preprocess_attributions
from gag_jax.metrics.faithfulness import (
    _baseline_values,
    _check_baseline,
    _scores_of_items,
)
from gag_jax.model import as_model_functions, jit_with_model

_BASELINES = ("black", "white", "mean")  # Quantus's names
_NON_FINITE = "maps contain NaN or inf; an attribution map must be finite"


def _baseline_images(images: jax.Array, perturb_baseline, custom) -> jax.Array:
    """``(B, H, W, C)`` baseline: Quantus's per-image min / max / mean, a constant, or ``custom``."""
    if custom is not None:
        return jnp.broadcast_to(custom.astype(jnp.float32), images.shape)
    return jnp.broadcast_to(_baseline_values(images, perturb_baseline)[:, None, None, None], images.shape)


def _split_baseline(perturb_baseline, images):
    """Static part (a name or a number, checked) and traced part (an array) of ``perturb_baseline``."""
    if isinstance(perturb_baseline, (str, bool, int, float, np.integer, np.floating)):
        return _check_baseline(perturb_baseline, _BASELINES), None
    custom = jnp.asarray(perturb_baseline)
    if not (jnp.issubdtype(custom.dtype, jnp.floating) or jnp.issubdtype(custom.dtype, jnp.integer)):
        raise ValueError(f"perturb_baseline must be one of {_BASELINES}, a number or a numeric array; got "
                         f"{perturb_baseline!r}")
    try:
        np.broadcast_shapes(custom.shape, np.shape(images))
    except ValueError as err:
        raise ValueError(f"perturb_baseline of shape {custom.shape} does not broadcast to the images' shape "
                         f"{tuple(np.shape(images))}") from err
    if custom.ndim > 4:
        raise ValueError(f"perturb_baseline must have at most 4 axes (B, H, W, C); got shape {custom.shape}")
    return None, custom


def _check_inputs(images, labels, maps):
    V.check_images_labels_saliency(images, labels, maps)
    V.check_images(images)


# ----------------------------------------------------------------------------------------------
# completeness (Sundararajan et al. 2017)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "perturb_baseline", "abs", "normalise", "softmax", "output_func", "rtol", "atol",
                 "batch_size"))
def _completeness_core(images, labels, maps, custom, *, model_fn, perturb_baseline, abs, normalise,  # noqa: A002
                       softmax, output_func, rtol, atol, batch_size):
    B = images.shape[0]
    x = images.astype(jnp.float32)
    base = _baseline_images(x, perturb_baseline, custom)
    b_idx = jnp.tile(jnp.arange(B), 2)
    is_base = jnp.repeat(jnp.asarray([False, True]), B)

    def make_inputs(bi, ib):
        return jnp.where(ib[:, None, None, None], base[bi], x[bi])

    out, bad_label = _scores_of_items(model_fn, make_inputs, (b_idx, is_base),
                                              labels[b_idx].astype(jnp.int32), batch_size, softmax)
    delta = out[:B] - out[B:]
    if output_func is not None:
        delta = jnp.asarray(output_func(delta), jnp.float32)
    total = jnp.sum(preprocess_attributions(maps, abs, normalise), axis=1)
    gap = total - delta
    holds = (jnp.abs(gap) <= atol + rtol * jnp.abs(delta)).astype(jnp.float32)
    return ({"completeness": holds, "completeness_gap": gap, "attribution_sum": total, "output_difference": delta},
            jnp.any(~jnp.isfinite(maps)), bad_label)


def completeness(model, images, labels, maps, *, key=None, masks=None, perturb_baseline="black",
                 softmax: bool = False, output_func: Callable | None = None, rtol: float = 1e-4,
                 atol: float = 1e-5, abs: bool = False, normalise: bool = False,  # noqa: A002
                 copies_per_call: int | str | None = "auto") -> dict:
    """Completeness (Sundararajan et al. 2017; summation to delta, conservation), Quantus 0.6's
    ``Completeness``: does the attribution sum to the change of the model's output between the image
    and a baseline? 1.0 if it does, else 0.0 (higher is better).

    ``S = sum_{h,w} a``, ``D = output_func(f_c(x) - f_c(x_0))`` with ``f_c`` the target class's *logit*
    (Quantus's default ``softmax=False``), ``x_0`` the baseline (Quantus's ``perturb_baseline="black"``:
    every value set to the image's minimum; see the module docstring), ``output_func`` the identity;
    ``completeness = |S - D| <= atol + rtol |D|``.

    Which maps: the metric is meaningful only for an attribution in the model's output units, whose
    pixels sum to the output change, e.g. raw Integrated Gradients summed over channels with the
    same baseline: ``gj.explain("ig", model, images, labels, baseline="min", postprocess=False).sum(-1)``
    (IG's ``"min"`` is Quantus's ``"black"``; for IG's default ``baseline="black"``, zero in pixel space,
    pass that baseline image as ``perturb_baseline``). A saliency map in ``[0, 1]`` (every explainer's
    default output) has no reason to sum to ``D``: it scores 0 whatever the method.

    Differences from Quantus 0.6, both because its defaults make the test fail for every attribution,
    exact ones included: (1) Quantus compares with ``==`` on floats; here within ``rtol`` / ``atol``
    (``rtol=0, atol=0`` is Quantus's test); (2) Quantus's default ``normalise=True`` divides the
    attribution by its maximum before summing it, which breaks the sum the metric tests; the default
    here is ``normalise=False`` (``normalise=True`` divides each map by its own ``max|a|``, Quantus by
    the batch's). ``completeness_gap`` ``S - D`` is returned too: it says by how much. Also, given a
    channel-summed ``(B, 1, H, W)`` map, Quantus 0.6 builds its baseline by replacing only the first
    ``H W`` values of the flattened ``(C, H, W)`` input (the first channel); here the whole image is the
    baseline, which is what Quantus computes when given ``(B, C, H, W)`` attributions (tested).

    Args:
      model: a ``gj.ModelFunctions`` or ``images -> logits`` callable.
      images: ``(B, H, W, C)`` float, normalised as the model expects. labels: ``(B,)`` int.
      maps: ``(B, H, W)`` float, finite, signed allowed: the channel-summed raw attribution.
      perturb_baseline: ``"black"`` / ``"white"`` / ``"mean"`` (the image's min / max / mean), a number,
        or an array broadcastable to ``(B, H, W, C)`` (the baseline image itself).
      softmax: compare softmax probabilities instead of logits.
      output_func: ``jnp`` function applied to ``f_c(x) - f_c(x_0)`` (hashable: a new function object
        compiles anew); None = identity.
      rtol, atol: tolerance of the test (non-negative).
      abs, normalise: Quantus's preprocessing switches (Quantus: ``abs=False``, ``normalise=True``).
      copies_per_call: max images per model call (``"auto"``, an int, or None = all ``2B`` at once).

    Returns:
      ``{"completeness": (B,) 1.0 / 0.0, "completeness_gap": (B,) S - D, "attribution_sum": (B,) S,
      "output_difference": (B,) D}``, float32.

    Raises:
      ValueError: shapes, non-finite images or maps, labels outside ``[0, K)``, an unknown
        ``perturb_baseline``, negative ``rtol`` / ``atol``, a bad ``copies_per_call``.
    """
    _check_inputs(images, labels, maps)
    static_base, custom = _split_baseline(perturb_baseline, images)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not (float(value) >= 0) or not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if output_func is not None and not callable(output_func):
        raise ValueError(f"output_func must be a callable or None; got {output_func!r}")
    batch_size = C.resolve_batch_size(copies_per_call, images)
    out, bad, bad_label = _completeness_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), custom, model_fn=as_model_functions(model),
        perturb_baseline=static_base, abs=bool(abs), normalise=bool(normalise), softmax=bool(softmax),
        output_func=output_func, rtol=float(rtol), atol=float(atol), batch_size=batch_size)
    V.raise_if(bad, _NON_FINITE)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)
    return out


# ----------------------------------------------------------------------------------------------
# non-sensitivity (Nguyen & Martinez 2020)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "eps", "features_in_step", "perturb_baseline", "abs", "normalise", "softmax",
                 "batch_size"))
def _non_sensitivity_core(images, labels, maps, custom, *, model_fn, eps, features_in_step, perturb_baseline,
                          abs, normalise, softmax, batch_size):  # noqa: A002
    B, H, W, Ch = images.shape
    x = images.astype(jnp.float32)
    base = _baseline_images(x, perturb_baseline, custom)
    f = features_in_step
    steps = Ch * H * W // f
    # Quantus's features: the channel-first flattening of (C, H, W); the map is broadcast over C
    chw = (jnp.arange(Ch)[None, None, :] * (H * W) + jnp.arange(H)[:, None, None] * W
           + jnp.arange(W)[None, :, None])  # (H, W, C): the feature index of each value
    step_of = chw // f
    a = jnp.tile(preprocess_attributions(maps, abs, normalise), (1, Ch))  # (B, C*H*W), channel-major
    zero_attributed = a < eps

    # items: step -1 (the image itself), then steps 0..S-1, step-major
    b_idx = jnp.tile(jnp.arange(B), steps + 1)
    step_items = jnp.repeat(jnp.arange(-1, steps), B)

    def make_inputs(bi, st):
        return jnp.where(step_of[None] == st[:, None, None, None], base[bi], x[bi])

    out, bad_label = _scores_of_items(model_fn, make_inputs, (b_idx, step_items),
                                              labels[b_idx].astype(jnp.int32), batch_size, softmax)
    out = out.reshape(steps + 1, B).T
    unchanged = jnp.abs(out[:, 1:] - out[:, :1]) < eps  # (B, S)
    insensitive = jnp.repeat(unchanged, f, axis=1)  # (B, C*H*W): feature i belongs to step i // f
    count = jnp.sum(insensitive ^ zero_attributed, axis=1).astype(jnp.float32)
    return {"non_sensitivity": count}, jnp.any(~jnp.isfinite(maps)), bad_label


def non_sensitivity(model, images, labels, maps, *, key=None, masks=None, eps: float = 1e-5,
                    features_in_step: int = 1, perturb_baseline="black", softmax: bool = True,
                    abs: bool = True, normalise: bool = True,  # noqa: A002
                    copies_per_call: int | str | None = "auto") -> dict:
    """Non-sensitivity (Nguyen & Martinez 2020), Quantus 0.6's ``NonSensitivity``: how many features
    break "zero attribution if and only if the model does not depend on it"; lower is better (0: none).

    As Quantus 0.6: the features are the ``C*H*W`` values of the image in channel-first order, the map
    broadcast over the channels (so each pixel counts ``C`` times). ``a = |M / max|M||`` (defaults
    ``normalise=True``, ``abs=True``); a feature is *zero-attributed* when ``a < eps``. The features are
    replaced by the baseline ``features_in_step`` at a time, in order (step ``s`` replaces features
    ``s f .. (s+1) f - 1``: with ``f`` dividing ``H W``, a run of pixels of one channel); a feature is
    *non-influential* when replacing its step changes the target's softmax probability (Quantus's
    default ``softmax=True``) by less than ``eps``. The score is the number of features that are
    exactly one of the two (``zero_attributed XOR non_influential``).

    Cost: ``1 + C H W / features_in_step`` forward passes per image; with Quantus's default
    ``features_in_step=1`` that is ``150529`` at 224 x 224 x 3: pass a larger step for real images.

    Differences from Quantus 0.6: with ``features_in_step > 1`` Quantus compares a ``(B, steps)``
    array with a ``(B, features)`` one and fails; here every feature takes its step's outcome (for
    ``features_in_step=1`` both are the same). Each map is normalised by its own maximum (Quantus: by the
    batch's). Nothing is random (Quantus 0.6 perturbs in order): ``key`` is unused.

    Args:
      model: a ``gj.ModelFunctions`` or ``images -> logits`` callable.
      images: ``(B, H, W, C)`` float, normalised as the model expects. labels: ``(B,)`` int.
      maps: ``(B, H, W)`` float, finite.
      eps: threshold of both tests.
      features_in_step: features per perturbation; must divide ``H W`` (Quantus's check).
      perturb_baseline: as :func:`completeness` (Quantus: ``"black"``, the image's minimum).
      softmax: compare softmax probabilities (Quantus's default) or logits.
      abs, normalise: Quantus's preprocessing switches (and defaults).
      copies_per_call: max perturbed copies per model call (``"auto"``, an int, or None = all at once).

    Returns:
      ``{"non_sensitivity": (B,) float32}`` (a count of features).

    Raises:
      ValueError: shapes, non-finite images or maps, labels outside ``[0, K)``, ``features_in_step`` not a
        positive int dividing ``H W``, ``eps`` not finite, an unknown ``perturb_baseline``, a bad
        ``copies_per_call``.
    """
    _check_inputs(images, labels, maps)
    V.check_positive_int(features_in_step, "features_in_step")
    _, h, w, _ = np.shape(images)
    if (h * w) % features_in_step:
        raise ValueError(f"features_in_step={features_in_step} must divide H*W = {h * w} (Quantus's check: "
                         f"a step must not straddle two channels)")
    if isinstance(eps, bool) or not np.isfinite(float(eps)):
        raise ValueError(f"eps must be a finite number; got {eps!r}")
    static_base, custom = _split_baseline(perturb_baseline, images)
    batch_size = C.resolve_batch_size(copies_per_call, images)
    out, bad, bad_label = _non_sensitivity_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), custom, model_fn=as_model_functions(model),
        eps=float(eps), features_in_step=int(features_in_step), perturb_baseline=static_base, abs=bool(abs),
        normalise=bool(normalise), softmax=bool(softmax), batch_size=batch_size)
    V.raise_if(bad, _NON_FINITE)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)
    return out


def non_sensitivity_forward_passes(options=None, image_shape=(224, 224, 3)) -> int:
    """Model forward passes :func:`non_sensitivity` costs per map with ``options`` (its keyword options)
    on images of ``image_shape`` ``(H, W, C)``: ``1 + C H W / features_in_step``."""
    h, w, c = tuple(image_shape)[-3:]
    return 1 + c * h * w // int(dict(options or {}).get("features_in_step", 1))
