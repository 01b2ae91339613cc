"""The faithfulness metrics of Quantus 0.6, batched and jit-compiled: faithfulness correlation (Bhatt
et al. 2020), faithfulness estimate (Alvarez-Melis & Jaakkola 2018), infidelity (Yeh et al. 2019), pixel
flipping (Bach et al. 2015), region perturbation (Samek et al. 2016), selectivity (Montavon et al.
2018), IROF (Rieger & Hansen 2020) and monotonicity correlation (Nguyen & Martinez 2020).

Every function has the engine's signature ``fn(model, images (B, H, W, C), labels (B,), maps (B, H, W),
*, key=None, **options) -> {name: (B,), [name_curve: (B, S)]}``. All perturbed copies of a batch are
described by a flat list of items (which image, which step / run / sample) and built and pushed through
the model chunk by chunk inside one compiled program (at most ``copies_per_call`` copies per model call,
the metrics' policy: ``"auto"`` = :func:`gag_jax.metrics.default_batch_size`); memory holds one chunk of
copies. Nothing loops in Python over images or steps.

Shared conventions (Quantus 0.6's, with the differences named):

* **Features.** Quantus broadcasts a ``(H, W)`` map over the channels and perturbs *features* =
  channel values: an image has ``N = H * W * C`` features and a pixel's ``C`` features carry its map
  value. ``features_in_step`` counts these (``features_in_step=224`` on a 224 x 224 RGB image is 74 2/3
  pixels per step, ``3 * 224`` steps; Quantus checks only ``H * W % features_in_step == 0``).
* **Feature order.** Pixels sorted by map value (descending, or ascending where the metric says so)
  with a stable sort, ties by the pixel's row-major index; a pixel's ``C`` features follow each other
  in channel order. Quantus uses numpy's default ``argsort`` (introsort, not stable) on the
  channel-first flattened map: the order among equal values -- including a pixel's own ``C`` copies
  -- is unspecified. The two agree whenever map values are distinct and a step holds whole pixels
  (``features_in_step`` a multiple of ``C``); otherwise they differ only in which of the tied
  features fall on either side of a step boundary.
* **Baselines** (``perturb_baseline``): ``"black"`` = the image's minimum over all pixels and
  channels, ``"white"`` its maximum, ``"mean"`` its mean, or a number -- all in the images' own
  (normalised) space, as Quantus. For the cumulative metrics (pixel flipping, region perturbation,
  selectivity, infidelity) Quantus takes the baseline of the *current* perturbed image at every step;
  for black / white / a number that is the original image's value, and ``"mean"`` (which would drift)
  is not offered there.
* **Maps** are preprocessed as Quantus 0.6: ``normalise`` (divide by ``max|a|``) then ``abs``, with each
  metric's Quantus defaults (see :func:`gag_jax.metrics.complexity.preprocess_attributions`). Quantus
  divides by the maximum of the whole batch; here every map by its own (only :func:`infidelity`'s
  value depends on the scale, and its default does not normalise).
* **Model output** per metric as Quantus's default ``softmax``: the target class's softmax probability
  (pixel flipping, region perturbation, selectivity, IROF, monotonicity correlation) or its logit
  (faithfulness correlation / estimate, infidelity); ``softmax=`` overrides it.
* **AUC** = the trapezoid with unit spacing over the curve's steps (Quantus's ``calculate_auc``:
  ``np.trapz(curve, dx=1)``).
* **Random draws** (faithfulness correlation's subsets, monotonicity correlation's uniform values) come
  from the image's own key: ``key`` is one PRNG key (image ``b`` uses ``fold_in(key, b)``) or a batch of
  keys ``(B, 2)`` (image ``b`` uses ``key[b]``: its value does not depend on its batch). Quantus draws
  from numpy's global RNG; the draws can be given explicitly (``subsets=``, ``baselines=``) to compare
  exactly.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gag_jax import _validation as V
from gag_jax.keys import per_image_keys
from gag_jax.metrics import _common as C
from gag_jax.metrics import _sorting
from gag_jax.metrics._common import ModelFn
from gag_jax.metrics.complexity import preprocess_attributions
from gag_jax.model import jit_with_model

__all__ = [
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity",
    "irof",
    "monotonicity_correlation",
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "slic_segments",
]

def cost(metric: str):
    """``forward_passes(options, image_shape=(224, 224, 3)) -> int``: the model forward passes one map
    costs in ``metric`` with ``options`` (its keyword options; defaults as the function's), for the
    registry's records. IROF's count is a guess (SLIC's default 100 segments; the true count is the
    segmentation's)."""
    def steps(options, shape, fis_default=1):
        h, w, c = tuple(shape)[-3:]
        return -(-h * w * c // int(options.get("features_in_step", fis_default)))

    def blocks(options, shape, patch):
        h, w = tuple(shape)[-3:-1]
        return _block_count(h, w, patch)

    counts = {
        "faithfulness_correlation": lambda o, s: 1 + int(o.get("runs", 100)),
        "faithfulness_estimate": lambda o, s: 1 + steps(o, s),
        "infidelity": lambda o, s: 1 + sum(blocks(o, s, int(p)) for p in o.get("patch_sizes", (4,))),
        "pixel_flipping": lambda o, s: steps(o, s),
        "region_perturbation": lambda o, s: 1 + min(int(o.get("regions", 100)),
                                                    blocks(o, s, int(o.get("patch_size", 8)))),
        "selectivity": lambda o, s: blocks(o, s, int(o.get("patch_size", 8))),
        "irof": lambda o, s: 1 + 100,
        "monotonicity_correlation": lambda o, s: 1 + steps(o, s) * int(o.get("nr_samples", 100)),
    }
    count = counts[V.check_choice(metric, "metric", tuple(counts))]

    def forward_passes(options, image_shape=(224, 224, 3)) -> int:
        return int(count(dict(options or {}), image_shape))

    forward_passes.__name__ = f"{metric}_forward_passes"
    return forward_passes


_FIXED_BASELINES = ("black", "white")
_BASELINES = ("black", "white", "mean")
_ORDERS = ("morf", "lerf")


# ----------------------------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------------------------

def _check_baseline(value, choices: Sequence[str]):
    """A baseline name from ``choices`` or a finite number (returned as float)."""
    if isinstance(value, str):
        return V.check_choice(value, "perturb_baseline", tuple(choices))
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"perturb_baseline must be one of {', '.join(map(repr, choices))} or a finite number; "
                         f"got {value!r}")
    return float(value)


def _baseline_values(images: jax.Array, baseline) -> jax.Array:
    """``(B,)`` the per-image baseline value (over all pixels and channels; Quantus's batched baseline)."""
    if baseline == "black":
        return jnp.min(images, axis=(1, 2, 3))
    if baseline == "white":
        return jnp.max(images, axis=(1, 2, 3))
    if baseline == "mean":
        return jnp.mean(images, axis=(1, 2, 3))
    return jnp.full(images.shape[:1], baseline, images.dtype)


def _scores_of_items(model_fn: ModelFn, make_inputs, items: tuple, labels: jax.Array, batch_size: int | None,
                     softmax: bool):
    """The target class's softmax probability (``softmax``) or logit of each item's copy, the copies
    built chunk by chunk: :func:`gag_jax.metrics._common.target_probs_of_items`.

    Returns:
      ``scores (n,)`` float32 and ``bad_label`` (bool scalar: a label outside ``[0, K)``).
    """
    return C.target_probs_of_items(model_fn, make_inputs, items, labels, batch_size, softmax=softmax)


def _original_scores(model_fn, images, labels, batch_size, softmax):
    """``(B,)`` the unperturbed images' target scores (in calls of at most ``batch_size`` images)."""
    b = images.shape[0]
    return _scores_of_items(model_fn, lambda bi: images[bi], (jnp.arange(b),), labels.astype(jnp.int32),
                            batch_size, softmax)


def _pixel_ranks(a: jax.Array, descending: bool) -> jax.Array:
    """``(B, P)`` int32 rank of every pixel of ``a (B, P)`` (0 = first), stable: ties by index."""
    b, p = a.shape
    key = jnp.where(a == 0, 0.0, a)  # -0.0 and 0.0 are one value
    order = _sorting.argsort(-key if descending else key)
    return jnp.zeros((b, p), jnp.int32).at[jnp.arange(b)[:, None], order].set(jnp.arange(p, dtype=jnp.int32)[None])


def _feature_positions(a: jax.Array, channels: int, descending: bool) -> jax.Array:
    """``(B, P, C)`` position of every feature (pixel, channel) in the perturbation order."""
    ranks = _pixel_ranks(a, descending)
    return ranks[:, :, None] * channels + jnp.arange(channels, dtype=jnp.int32)[None, None, :]


def _step_sums(values: jax.Array, steps_of: jax.Array, steps: int) -> jax.Array:
    """``(B, S)``: per image, the sum of ``values (B, F)`` over the features of each step ``steps_of (B, F)``."""
    return jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=steps))(values, steps_of)


def _trapezoid(curve: jax.Array) -> jax.Array:
    """``np.trapz(curve, dx=1)`` along the last axis."""
    return jnp.sum(curve, axis=-1) - 0.5 * (curve[..., 0] + curve[..., -1])


def pearson(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pearson correlation of each row of ``x`` and ``y`` ``(B, S)`` (NaN for a constant row, as scipy)."""
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = y - jnp.mean(y, axis=-1, keepdims=True)
    nx = jnp.sqrt(jnp.sum(x * x, axis=-1))
    ny = jnp.sqrt(jnp.sum(y * y, axis=-1))
    r = jnp.sum(x * y, axis=-1) / (nx * ny)
    return jnp.clip(r, -1.0, 1.0)


def spearman(x: jax.Array, y: jax.Array) -> jax.Array:
    """Spearman rank correlation of each row of ``x`` and ``y`` ``(B, S)`` (``scipy.stats.spearmanr``)."""
    return pearson(_sorting.average_ranks(x), _sorting.average_ranks(y))


def _prepare(images, labels, maps, abs, normalise):  # noqa: A002
    images = images.astype(jnp.float32)
    a = preprocess_attributions(maps, abs, normalise)  # (B, P)
    return images, labels.astype(jnp.int32), a, V.saliency_flags(maps.astype(jnp.float32))


def _check_common(name, images, labels, maps, copies_per_call):
    V.check_images_labels_saliency(images, labels, maps)
    return C.resolve_batch_size(copies_per_call, images)


def _raise(flags, bad_label):
    V.raise_on_saliency_flags(flags, allow_negative=True)
    V.raise_if(bad_label, V.LABEL_RANGE_MESSAGE)


def _check_features_in_step(features_in_step, shape) -> int:
    V.check_positive_int(features_in_step, "features_in_step")
    h, w = shape[1], shape[2]
    if (h * w) % features_in_step:
        raise ValueError(f"features_in_step must divide H * W = {h * w} (Quantus's check); got {features_in_step}")
    return int(features_in_step)


# ----------------------------------------------------------------------------------------------
# pixel flipping (Bach et al. 2015)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "features_in_step", "baseline", "softmax", "abs", "normalise", "batch_size"))
def _pixel_flipping_core(images, labels, maps, *, model_fn, features_in_step, baseline, softmax, abs,  # noqa: A002
                         normalise, batch_size):
    b, h, w, c = images.shape
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    steps = -(-h * w * c // features_in_step)
    pos = _feature_positions(a, c, descending=True).reshape(b, h, w, c)
    base = _baseline_values(images, baseline)
    b_idx = jnp.tile(jnp.arange(b), steps)
    s_idx = jnp.repeat(jnp.arange(steps), b)

    def make_inputs(bi, si):
        flipped = pos[bi] < ((si + 1) * features_in_step)[:, None, None, None]
        return jnp.where(flipped, base[bi][:, None, None, None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, s_idx), labels[b_idx], batch_size, softmax)
    curve = scores.reshape(steps, b).T
    return {"pixel_flipping": _trapezoid(curve), "pixel_flipping_curve": curve}, flags, bad


def pixel_flipping(model, images, labels, maps, *, key=None, features_in_step: int = 1,
                   perturb_baseline="black", softmax: bool = True, abs: bool = False,  # noqa: A002
                   normalise: bool = True, copies_per_call: int | str | None = "auto") -> dict:
    """Pixel flipping (Bach et al. 2015), Quantus 0.6's ``PixelFlipping``: the target probability as
    the most relevant features are replaced by the baseline, cumulatively, ``features_in_step`` at a
    time; lower AUC is better (a faithful map loses the class fast).

    Step ``s = 0 .. S-1`` (``S = H W C / features_in_step``) sets the first ``(s + 1) *
    features_in_step`` features in descending map order to the baseline (see the module docstring for
    features and their order) and records the target's softmax probability: the curve ``(B, S)``; the
    score is its trapezoid with unit spacing (Quantus's ``return_auc_per_sample=True`` /
    ``get_auc_score``; Quantus returns the curve by default).

    Quantus's defaults: ``features_in_step=1`` (``H W C`` model passes per image: at 224 px pass e.g.
    ``features_in_step=224``), ``perturb_baseline="black"``, ``softmax=True``, ``normalise=True``,
    ``abs=False`` (neither changes the order). ``key`` is accepted and unused (nothing is random).

    Args:
      model: ``gj.ModelFunctions`` or a callable ``images (b, H, W, C) -> logits (b, K)``.
      images: ``(B, H, W, C)`` float, as the model expects them.
      labels: ``(B,)`` int target classes.
      maps: ``(B, H, W)`` float saliency.
      features_in_step: features (channel values) replaced per step; must divide ``H * W``.
      perturb_baseline: ``"black"`` (image minimum), ``"white"`` (maximum) or a number.
      softmax: probability (True) or logit (False) of the target.
      copies_per_call: perturbed copies per model call (``"auto"``, an int, or None = all at once).

    Returns:
      ``{"pixel_flipping": (B,), "pixel_flipping_curve": (B, S)}``.

    Raises:
      ValueError: shapes, non-finite maps, labels outside ``[0, K)``, bad options.
    """
    batch_size = _check_common("pixel_flipping", images, labels, maps, copies_per_call)
    fis = _check_features_in_step(features_in_step, np.shape(images))
    baseline = _check_baseline(perturb_baseline, _FIXED_BASELINES)
    out, flags, bad = _pixel_flipping_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps),
                                           model_fn=model, features_in_step=fis, baseline=baseline,
                                           softmax=bool(softmax), abs=bool(abs), normalise=bool(normalise),
                                           batch_size=batch_size)
    _raise(flags, bad)
    return out


# ----------------------------------------------------------------------------------------------
# faithfulness estimate (Alvarez-Melis & Jaakkola 2018)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "features_in_step", "baseline", "softmax", "abs", "normalise", "batch_size"))
def _faithfulness_estimate_core(images, labels, maps, *, model_fn, features_in_step, baseline, softmax,
                                abs, normalise, batch_size):  # noqa: A002
    b, h, w, c = images.shape
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    steps = -(-h * w * c // features_in_step)
    step_of = (_feature_positions(a, c, descending=True) // features_in_step).reshape(b, -1)  # (B, F)
    att = _step_sums(jnp.repeat(a, c, axis=1), step_of, steps)
    step_img = step_of.reshape(b, h, w, c)
    base = _baseline_values(images, baseline)
    y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)
    b_idx = jnp.tile(jnp.arange(b), steps)
    s_idx = jnp.repeat(jnp.arange(steps), b)

    def make_inputs(bi, si):
        hit = step_img[bi] == si[:, None, None, None]
        return jnp.where(hit, base[bi][:, None, None, None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, s_idx), labels[b_idx], batch_size, softmax)
    deltas = y0[:, None] - scores.reshape(steps, b).T
    return {"faithfulness_estimate": pearson(att, deltas)}, flags, bad | bad0


def faithfulness_estimate(model, images, labels, maps, *, key=None, features_in_step: int = 1,
                          perturb_baseline="black", softmax: bool = False, abs: bool = False,  # noqa: A002
                          normalise: bool = True, copies_per_call: int | str | None = "auto") -> dict:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018), Quantus 0.6's ``FaithfulnessEstimate``:
    the Pearson correlation, over the steps, between the attribution of the features a step removes and
    the drop of the model's output it causes; higher is better.

    Step ``s`` (of ``S = H W C / features_in_step``) replaces only the features ``s * k .. (s + 1) k - 1``
    in descending map order (``k = features_in_step``; not cumulative) by the baseline; ``att_s`` = the
    sum of their (preprocessed) attributions, ``delta_s = f(x) - f(x_s)`` of the target logit
    (``softmax=False``, Quantus's default); the score is ``pearson(att, delta)`` per image (NaN where
    either is constant, as scipy).

    Quantus's defaults: ``features_in_step=1``, ``perturb_baseline="black"``, ``softmax=False``,
    ``normalise=True``, ``abs=False``. ``key`` is accepted and unused.

    Args: as :func:`pixel_flipping` (``perturb_baseline`` may also be ``"mean"``: not cumulative here).

    Returns:
      ``{"faithfulness_estimate": (B,)}``.
    """
    batch_size = _check_common("faithfulness_estimate", images, labels, maps, copies_per_call)
    fis = _check_features_in_step(features_in_step, np.shape(images))
    baseline = _check_baseline(perturb_baseline, _BASELINES)
    out, flags, bad = _faithfulness_estimate_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), model_fn=model, features_in_step=fis,
        baseline=baseline, softmax=bool(softmax), abs=bool(abs), normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return out


# ----------------------------------------------------------------------------------------------
# faithfulness correlation (Bhatt et al. 2020)
# ----------------------------------------------------------------------------------------------

def _draw_subsets(keys: jax.Array, runs: int, subset_size: int, n: int) -> jax.Array:
    """``(B, runs, subset_size)`` distinct feature indices per run, uniformly: the ``subset_size``
    largest of ``n`` uniform numbers drawn from ``fold_in(key_b, run)`` (one run at a time in memory)."""
    def one(k):
        return _sorting.top_k_indices(jax.random.uniform(k, (n,)), subset_size)

    run_keys = jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(runs)))(keys)
    flat = run_keys.reshape((-1,) + run_keys.shape[2:])
    return jax.lax.map(one, flat).reshape(keys.shape[0], runs, subset_size)


@jit_with_model(("model_fn", "baseline", "softmax", "abs", "normalise", "batch_size"))
def _faithfulness_correlation_core(images, labels, maps, subsets, *, model_fn, baseline, softmax, abs, normalise,
                                   batch_size):  # noqa: A002
    b, h, w, c = images.shape
    runs = subsets.shape[1]
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    a_feat = jnp.repeat(a, c, axis=1)  # (B, F) in (pixel, channel) order = images[b].reshape(-1)
    att = jnp.take_along_axis(a_feat, subsets.reshape(b, -1), axis=1).reshape(b, runs, -1).sum(-1)
    base = _baseline_values(images, baseline)
    y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)
    b_idx = jnp.tile(jnp.arange(b), runs)
    r_idx = jnp.repeat(jnp.arange(runs), b)

    def make_inputs(bi, ri):
        def one(x, sub, v):
            return x.reshape(-1).at[sub].set(v).reshape(x.shape)

        return jax.vmap(one)(images[bi], subsets[bi, ri], base[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, r_idx), labels[b_idx], batch_size, softmax)
    deltas = y0[:, None] - scores.reshape(runs, b).T
    return {"faithfulness_correlation": pearson(att, deltas)}, flags, bad | bad0


@functools.partial(jax.jit, static_argnames=("runs", "subset_size", "n"))
def _draw_subsets_jit(keys, *, runs, subset_size, n):
    return _draw_subsets(keys, runs, subset_size, n)


def faithfulness_correlation(model, images, labels, maps, *, key=None, runs: int = 100, subset_size: int = 224,
                             subsets=None, perturb_baseline="black", softmax: bool = False,
                             abs: bool = False, normalise: bool = True,  # noqa: A002
                             copies_per_call: int | str | None = "auto") -> dict:
    """Faithfulness correlation (Bhatt et al. 2020), Quantus 0.6's ``FaithfulnessCorrelation``: the
    Pearson correlation, over ``runs`` random subsets of features, between the subset's summed
    attribution and the drop of the model's output when the subset is set to the baseline; higher is
    better.

    Run ``r`` draws ``subset_size`` distinct features (channel values) uniformly from the ``H W C`` of
    the image, sets them to the baseline, ``delta_r = f(x) - f(x_r)`` (target logit, Quantus's
    ``softmax=False``) and ``att_r`` = the sum of the (preprocessed) map over the subset (a pixel's
    value counted once per channel drawn); score = ``pearson(att, delta)``.

    Draws: image ``b``'s run ``r`` from ``fold_in(key_b, r)`` (``key_b`` = its key, see the module
    docstring). Quantus draws ``np.random.choice(C H W, subset_size, replace=False)`` per image and run
    from numpy's global RNG on the channel-first image. Pass ``subsets`` to use given draws.

    Quantus's defaults: ``nr_runs=100`` (here ``runs``), ``subset_size=224``, ``perturb_baseline="black"``,
    ``softmax=False``, ``normalise=True``, ``abs=False``.

    Args:
      runs, subset_size: the number of subsets and their size (``subset_size < H * W``, Quantus's check).
      subsets: optional ``(B, runs, subset_size)`` int, distinct per row, indices into
        ``images[b].reshape(-1)`` (channel-last: feature ``(i, j, ch)`` is ``(i * W + j) * C + ch``);
        ``runs`` and ``subset_size`` then come from its shape and ``key`` is unused.
      others: as :func:`faithfulness_estimate`.

    Returns:
      ``{"faithfulness_correlation": (B,)}``.
    """
    batch_size = _check_common("faithfulness_correlation", images, labels, maps, copies_per_call)
    b, h, w, c = np.shape(images)
    baseline = _check_baseline(perturb_baseline, _BASELINES)
    if subsets is None:
        V.check_positive_int(runs, "runs")
        V.check_positive_int(subset_size, "subset_size")
        if subset_size >= h * w:
            raise ValueError(f"subset_size must be smaller than H * W = {h * w} (Quantus's check); got {subset_size}")
        subsets = _draw_subsets_jit(per_image_keys(key, b), runs=int(runs), subset_size=int(subset_size), n=h * w * c)
    else:
        subsets = _check_subsets(subsets, b, h * w * c)
    out, flags, bad = _faithfulness_correlation_core(
        jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), subsets, model_fn=model, baseline=baseline,
        softmax=bool(softmax), abs=bool(abs), normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return out


def _check_subsets(subsets, batch: int, n: int) -> jax.Array:
    s = np.asarray(subsets)
    if s.ndim != 3 or s.shape[0] != batch or s.shape[1] < 1 or s.shape[2] < 1:
        raise ValueError(f"subsets must have shape (B={batch}, runs, subset_size); got {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"subsets must be integer feature indices; got dtype {s.dtype}")
    if s.min() < 0 or s.max() >= n:
        raise ValueError(f"subsets must index the H * W * C = {n} features; got values in [{s.min()}, {s.max()}]")
    srt = np.sort(s, axis=-1)
    if np.any(srt[..., 1:] == srt[..., :-1]):
        raise ValueError("subsets must hold distinct features within each run (drawn without replacement)")
    return jnp.asarray(s, jnp.int32)


# ----------------------------------------------------------------------------------------------
# infidelity (Yeh et al. 2019), Quantus's default perturbation
# ----------------------------------------------------------------------------------------------

def _block_ids(h: int, w: int, patch: int) -> np.ndarray:
    """``(H * W,)`` the row-major index of each pixel's ``patch x patch`` block on Quantus's grid
    (the image padded by ``(patch - H % patch) / 2`` rows / columns, floor before, ceil after)."""
    pad_h = (patch - h % patch) // 2 if h % patch else 0
    pad_w = (patch - w % patch) // 2 if w % patch else 0
    nw = -(-w // patch)
    rows = (np.arange(h) + pad_h) // patch
    cols = (np.arange(w) + pad_w) // patch
    return (rows[:, None] * nw + cols[None, :]).reshape(-1).astype(np.int32)


def _block_count(h: int, w: int, patch: int) -> int:
    return -(-h // patch) * -(-w // patch)


@jit_with_model(("model_fn", "patch_sizes", "baseline", "softmax", "abs", "normalise", "batch_size"))
def _infidelity_core(images, labels, maps, *, model_fn, patch_sizes, baseline, softmax, abs, normalise,
                     batch_size):  # noqa: A002
    b, h, w, c = images.shape
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    base = _baseline_values(images, baseline)
    y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)
    # a . (x - x_k) per pixel, then per block; copy k of patch size p removes blocks 0..k (raster order)
    weighted = a * jnp.sum(images - base[:, None, None, None], axis=-1).reshape(b, -1)  # (B, P)
    ids = np.stack([_block_ids(h, w, p) for p in patch_sizes])  # (Np, P)
    counts = [_block_count(h, w, p) for p in patch_sizes]
    p_items = np.concatenate([np.full(n, j) for j, n in enumerate(counts)]).astype(np.int32)
    k_items = np.concatenate([np.arange(n) for n in counts]).astype(np.int32)
    m = len(p_items)
    att = jnp.concatenate([jnp.cumsum(_step_sums(weighted, jnp.broadcast_to(jnp.asarray(ids[j]), (b, h * w)), n), 1)
                           for j, n in enumerate(counts)], axis=1)  # (B, M)
    ids_j = jnp.asarray(ids.reshape(len(patch_sizes), h, w))
    b_idx = jnp.tile(jnp.arange(b), m)
    p_idx = jnp.repeat(jnp.asarray(p_items), b)
    k_idx = jnp.repeat(jnp.asarray(k_items), b)

    def make_inputs(bi, pi, ki):
        removed = (ids_j[pi] <= ki[:, None, None])[..., None]
        return jnp.where(removed, base[bi][:, None, None, None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, p_idx, k_idx), labels[b_idx], batch_size, softmax)
    deltas = y0[:, None] - scores.reshape(m, b).T
    sq = (deltas - att) ** 2
    starts = np.concatenate([[0], np.cumsum(counts)])
    per_patch = jnp.stack([jnp.mean(sq[:, starts[j]:starts[j + 1]], axis=1) for j in range(len(counts))], axis=1)
    return {"infidelity": jnp.mean(per_patch, axis=1)}, flags, bad | bad0


def infidelity(model, images, labels, maps, *, key=None, patch_sizes: Sequence[int] = (4,),
               perturb_baseline="black", softmax: bool = False, abs: bool = False,  # noqa: A002
               normalise: bool = False, copies_per_call: int | str | None = "auto") -> dict:
    """Infidelity (Yeh et al. 2019) with Quantus 0.6's default perturbation (``Infidelity``): the mean
    squared difference between the attribution-predicted and the actual output drop; lower is better.

    Quantus's default perturbation is deterministic: for each patch size ``p`` the image is cut into
    ``p x p`` blocks (raster order), and copy ``k`` has blocks ``0 .. k`` set to the baseline
    (cumulatively). With ``I_k = x - x_k``: ``infidelity_p = mean_k (f(x) - f(x_k) - sum(a * I_k))^2``
    (``a`` broadcast over the channels; target logit, Quantus's ``softmax=False``); the score is the
    mean over the patch sizes.

    Yeh et al. draw the perturbations ``I`` at random (e.g. Gaussian noise); Quantus's default replaces
    patches, and its ``n_perturb_samples`` (default 10) repeats this deterministic computation and
    averages identical values, so it is not an option here. ``key`` is accepted and unused. Quantus's
    defaults: ``perturb_patch_sizes=[4]`` (here ``patch_sizes``), ``perturb_baseline="black"``,
    ``loss_func="mse"``, ``softmax=False``, ``normalise=False``, ``abs=False`` -- the map's scale
    matters here (Quantus normalises by the batch's maximum when asked, here each map by its own).

    Args:
      patch_sizes: block sizes; each must divide ``H`` and ``W`` (Quantus fails otherwise).
      others: as :func:`pixel_flipping`.

    Returns:
      ``{"infidelity": (B,)}``.
    """
    batch_size = _check_common("infidelity", images, labels, maps, copies_per_call)
    _, h, w, _ = np.shape(images)
    sizes = tuple(int(p) for p in np.ravel(np.asarray(patch_sizes)))
    if not sizes:
        raise ValueError("patch_sizes must hold at least one patch size")
    for p in sizes:
        V.check_positive_int(p, "patch size")
        if h % p or w % p:
            raise ValueError(f"each patch size must divide H = {h} and W = {w}; got {p}")
    baseline = _check_baseline(perturb_baseline, _FIXED_BASELINES)
    out, flags, bad = _infidelity_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), model_fn=model,
                                       patch_sizes=sizes, baseline=baseline, softmax=bool(softmax), abs=bool(abs),
                                       normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return out


# ----------------------------------------------------------------------------------------------
# region perturbation (Samek et al. 2016) and selectivity (Montavon et al. 2018)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "patch_size", "regions", "lerf", "delta", "baseline", "softmax", "abs", "normalise",
                 "batch_size"))
def _regions_core(images, labels, maps, *, model_fn, patch_size, regions, lerf, delta, baseline, softmax, abs,
                  normalise, batch_size):  # noqa: A002
    b, h, w, c = images.shape
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    ids = jnp.asarray(_block_ids(h, w, patch_size))
    nb = _block_count(h, w, patch_size)
    sums = _step_sums(a, jnp.broadcast_to(ids, (b, h * w)), nb)  # zero padding outside the image
    rank = _pixel_ranks(sums, descending=not lerf)  # (B, nb)
    pixel_rank = rank[:, ids].reshape(b, h, w)
    base = _baseline_values(images, baseline)
    b_idx = jnp.tile(jnp.arange(b), regions)
    s_idx = jnp.repeat(jnp.arange(regions), b)

    def make_inputs(bi, si):
        removed = (pixel_rank[bi] <= si[:, None, None])[..., None]
        return jnp.where(removed, base[bi][:, None, None, None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, s_idx), labels[b_idx], batch_size, softmax)
    curve = scores.reshape(regions, b).T
    if delta:
        y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)
        curve, bad = y0[:, None] - curve, bad | bad0
    return curve, flags, bad


def region_perturbation(model, images, labels, maps, *, key=None, patch_size: int = 8, regions: int = 100,
                        order: str = "morf", perturb_baseline="black", softmax: bool = True,
                        abs: bool = False, normalise: bool = True,  # noqa: A002
                        copies_per_call: int | str | None = "auto") -> dict:
    """Region perturbation (Samek et al. 2016), Quantus 0.6's ``RegionPerturbation``: the drop of the
    target probability as ``patch_size x patch_size`` regions are set to the baseline, most relevant
    first (``"morf"``) or least relevant first (``"lerf"``), cumulatively.

    The image is cut into non-overlapping blocks on Quantus's grid (padded evenly to a multiple of the
    patch size; blocks at the border are cut), ranked by their summed attribution (stable: ties by the
    block's raster index; Quantus's ``argsort`` leaves ties unspecified); step ``s = 0 .. R-1``
    (``R = min(regions, blocks)``) has the first ``s + 1`` blocks set to the baseline and records
    ``f(x) - f(x_s)`` (target softmax probability): the curve ``(B, R)``; the score is its trapezoid
    with unit spacing (Quantus's ``get_auc_score``; Quantus returns the curve). For MoRF a larger
    area (a faster drop) means a more faithful map: Quantus labels the metric "lower is better", which
    fits LeRF only.

    Quantus's defaults: ``patch_size=8``, ``regions_evaluation=100`` (here ``regions``), ``order="morf"``,
    ``perturb_baseline="black"``, ``softmax=True``, ``normalise=True``, ``abs=False``. Quantus's
    ``order="random"`` is not offered. ``key`` is accepted and unused.

    Returns:
      ``{"region_perturbation": (B,), "region_perturbation_curve": (B, R)}``.
    """
    batch_size = _check_common("region_perturbation", images, labels, maps, copies_per_call)
    _, h, w, _ = np.shape(images)
    V.check_positive_int(patch_size, "patch_size")
    V.check_positive_int(regions, "regions")
    V.check_choice(order, "order", _ORDERS)
    baseline = _check_baseline(perturb_baseline, _FIXED_BASELINES)
    r = min(int(regions), _block_count(h, w, int(patch_size)))
    curve, flags, bad = _regions_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), model_fn=model,
                                      patch_size=int(patch_size), regions=r, lerf=order == "lerf", delta=True,
                                      baseline=baseline, softmax=bool(softmax), abs=bool(abs),
                                      normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return {"region_perturbation": _trapezoid(curve), "region_perturbation_curve": curve}


def selectivity(model, images, labels, maps, *, key=None, patch_size: int = 8, perturb_baseline="black",
                softmax: bool = True, abs: bool = False, normalise: bool = True,  # noqa: A002
                copies_per_call: int | str | None = "auto") -> dict:
    """Selectivity (Montavon et al. 2018), Quantus 0.6's ``Selectivity``: the target probability as
    ``patch_size x patch_size`` blocks are set to the baseline, most relevant first, cumulatively,
    until all are; lower AUC is better.

    Blocks and their order as :func:`region_perturbation` (MoRF); step ``s`` has the first ``s + 1``
    blocks removed and records the target's softmax probability: the curve ``(B, blocks)``; the score
    is its trapezoid with unit spacing (Quantus's ``get_auc_score``; Quantus returns the curve).

    Quantus's defaults: ``patch_size=8``, ``perturb_baseline="black"``, ``softmax=True``,
    ``normalise=True``, ``abs=False``. ``key`` is accepted and unused.

    Returns:
      ``{"selectivity": (B,), "selectivity_curve": (B, blocks)}``.
    """
    batch_size = _check_common("selectivity", images, labels, maps, copies_per_call)
    _, h, w, _ = np.shape(images)
    V.check_positive_int(patch_size, "patch_size")
    baseline = _check_baseline(perturb_baseline, _FIXED_BASELINES)
    curve, flags, bad = _regions_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), model_fn=model,
                                      patch_size=int(patch_size), regions=_block_count(h, w, int(patch_size)),
                                      lerf=False, delta=False, baseline=baseline, softmax=bool(softmax),
                                      abs=bool(abs), normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return {"selectivity": _trapezoid(curve), "selectivity_curve": curve}


# ----------------------------------------------------------------------------------------------
# IROF (Rieger & Hansen 2020)
# ----------------------------------------------------------------------------------------------

def slic_segments(images, **slic_options) -> np.ndarray:
    """``(B, H, W)`` int32 SLIC superpixels of each image, on the host, as Quantus 0.6 computes them:
    ``skimage.segmentation.slic(image.astype(float64), start_label=0, **slic_options)`` on the image as
    given (normalised, channel-last). scikit-image's SLIC is a host algorithm; this is the one per-image
    loop of the faithfulness metrics (pass ``segments=`` to :func:`irof` to compute them elsewhere)."""
    from skimage.segmentation import slic

    x = np.asarray(images, np.float64)
    V.check_images(jnp.asarray(x, jnp.float32))
    return np.stack([slic(img, start_label=0, **slic_options) for img in x]).astype(np.int32)


def _relabel(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``0 .. n_b - 1`` per image in the order of the given labels, and ``n_b``."""
    out = np.empty(segments.shape, np.int32)
    counts = np.empty(segments.shape[0], np.int32)
    for i, s in enumerate(segments):  # host bookkeeping of integer labels, not the metric
        uniq, inv = np.unique(s, return_inverse=True)
        out[i] = inv.reshape(s.shape)
        counts[i] = len(uniq)
    return out, counts


@jit_with_model(("model_fn", "max_segments", "softmax", "abs", "normalise", "batch_size"))
def _irof_core(images, labels, maps, segments, counts, b_idx, k_idx, *, model_fn, max_segments, softmax, abs,
               normalise, batch_size):  # noqa: A002
    b, h, w, c = images.shape
    n_seg = max_segments
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    seg = segments.reshape(b, -1)
    pixels = jax.vmap(lambda s: jax.ops.segment_sum(jnp.ones(h * w, jnp.float32), s, num_segments=n_seg))(seg)
    mean_a = _step_sums(a, seg, n_seg) / jnp.maximum(pixels, 1.0)
    valid = jnp.arange(n_seg)[None, :] < counts[:, None]
    # descending mean attribution, stable; empty (padding) labels last
    rank = _pixel_ranks(jnp.where(valid, mean_a, -jnp.inf), descending=True)  # (B, n_seg): label -> step
    order = _sorting.argsort(rank)  # step -> label
    sums = _step_sums(jnp.sum(images, axis=-1).reshape(b, -1), seg, n_seg)  # sum over pixels and channels
    total = float(h * w * c)

    # baseline of step k = the mean of the image as perturbed by steps < k (Quantus's "mean" of the
    # current array), by the recurrence mean_{k+1} = mean_k + (C n_k mean_k - S_k) / N
    def recur(v, ns):
        n_k, s_k = ns
        return v + (c * n_k * v - s_k) / total, v

    def baselines(x, n_sorted, s_sorted):
        _, vs = jax.lax.scan(recur, jnp.mean(x), (n_sorted, s_sorted))
        return vs

    n_sorted = jnp.take_along_axis(pixels, order, axis=1)
    s_sorted = jnp.take_along_axis(sums, order, axis=1)
    base = jax.vmap(baselines)(images, n_sorted, s_sorted)  # (B, n_seg) by step
    pixel_step = jnp.take_along_axis(rank, seg, axis=1).reshape(b, h, w)
    y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)

    def make_inputs(bi, ki):
        steps = pixel_step[bi]
        value = jnp.take_along_axis(base[bi], steps.reshape(len(bi), -1), axis=1).reshape(steps.shape)
        return jnp.where((steps <= ki[:, None, None])[..., None], value[..., None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, k_idx), labels[b_idx], batch_size, softmax)
    curve = jnp.full((b, n_seg), jnp.nan, jnp.float32).at[b_idx, k_idx].set(scores / y0[b_idx], mode="drop")
    curve = jnp.where(valid, curve, jnp.nan)
    z = jnp.where(valid, curve, 0.0)
    last = jnp.take_along_axis(z, (counts - 1)[:, None], axis=1)[:, 0]
    area = jnp.sum(z, axis=1) - 0.5 * (z[:, 0] + last)
    return {"irof": counts.astype(jnp.float32) - area, "irof_curve": curve}, flags, bad | bad0


def irof(model, images, labels, maps, *, key=None, segments=None, softmax: bool = True,
         abs: bool = False, normalise: bool = True,  # noqa: A002
         copies_per_call: int | str | None = "auto") -> dict:
    """IROF, Iterative Removal Of Features (Rieger & Hansen 2020), Quantus 0.6's ``IROF``: the area over
    the curve of the target probability (relative to the original's) as superpixels are replaced by the
    image's mean, most relevant first, cumulatively; higher is better.

    Segments: ``segments (B, H, W)`` int labels, or None = SLIC on the host as Quantus
    (:func:`slic_segments`). Each image's ``n_b`` segments are ranked by their mean attribution
    (descending; stable, ties by label); step ``k = 0 .. n_b - 1`` replaces segment ``k`` of that order
    in the image perturbed by the steps before, by that image's mean over all pixels and channels
    (Quantus's ``perturb_baseline="mean"`` of the current array), and records
    ``p_k = f(x_k) / f(x)`` (softmax probability of the target). Score = ``n_b - trapz(p, dx=1)``.
    The curve ``(B, max n_b)`` is NaN beyond an image's ``n_b`` steps.

    Differences from Quantus 0.6 (whose batched IROF handles only a batch of one single-channel
    image): its mask ``(B, 1, H, W)`` fails ``baseline_replacement_by_mask``'s shape assertion for
    ``C > 1`` (the "crash on RGB input"); its ``"mean"`` baseline is the mean of the whole *batch*; and
    it pads shorter curves with zeros, which adds ``p_{n_b - 1} / 2`` to an image's area when another
    image of the batch has more segments. Here every image is computed as Quantus computes a batch of
    that one image (with the mask broadcast over the channels). Quantus's defaults:
    ``segmentation_method="slic"``, ``perturb_baseline="mean"``, ``softmax=True``, ``normalise=True``,
    ``abs=False``. ``key`` is accepted and unused.

    Returns:
      ``{"irof": (B,), "irof_curve": (B, S)}`` with ``S`` = the batch's largest segment count rounded
      up to a multiple of 8 (one compiled program for nearby counts).

    Raises:
      ValueError: as the other metrics; segments of the wrong shape or dtype, or an image with fewer
        than 2 segments (Quantus's check).
    """
    batch_size = _check_common("irof", images, labels, maps, copies_per_call)
    b, h, w, _ = np.shape(images)
    if segments is None:
        segments = slic_segments(images)
    seg = np.asarray(segments)
    if seg.shape != (b, h, w):
        raise ValueError(f"segments must have shape (B, H, W) = {(b, h, w)}; got {seg.shape}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segments must be integer labels; got dtype {seg.dtype}")
    seg, counts = _relabel(seg)
    if counts.min() < 2:
        raise ValueError(f"IROF needs at least 2 segments per image; image {int(np.argmin(counts))} has "
                         f"{int(counts.min())}")
    max_segments = int(-(-counts.max() // 8) * 8)
    b_items = np.concatenate([np.full(n, i) for i, n in enumerate(counts)]).astype(np.int32)
    k_items = np.concatenate([np.arange(n) for n in counts]).astype(np.int32)
    total = -(-len(b_items) // 8) * 8  # padded with repeats of the last item (dropped) to few shapes
    pad = total - len(b_items)
    b_items = np.concatenate([b_items, np.full(pad, b_items[-1])]).astype(np.int32)
    k_items = np.concatenate([k_items, np.full(pad, max_segments)]).astype(np.int32)  # out of range: dropped
    out, flags, bad = _irof_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), jnp.asarray(seg),
                                 jnp.asarray(counts), jnp.asarray(b_items), jnp.asarray(k_items), model_fn=model,
                                 max_segments=max_segments, softmax=bool(softmax), abs=bool(abs),
                                 normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return out


# ----------------------------------------------------------------------------------------------
# monotonicity correlation (Nguyen & Martinez 2020)
# ----------------------------------------------------------------------------------------------

@jit_with_model(("model_fn", "features_in_step", "eps", "softmax", "abs", "normalise", "batch_size"))
def _monotonicity_core(images, labels, maps, values, *, model_fn, features_in_step, eps, softmax, abs, normalise,
                       batch_size):  # noqa: A002
    b, h, w, c = images.shape
    steps, samples = values.shape[1], values.shape[2]
    images, labels, a, flags = _prepare(images, labels, maps, abs, normalise)
    step_of = (_feature_positions(a, c, descending=False) // features_in_step).reshape(b, -1)
    att = _step_sums(jnp.repeat(a, c, axis=1), step_of, steps)
    step_img = step_of.reshape(b, h, w, c)
    y0, bad0 = _original_scores(model_fn, images, labels, batch_size, softmax)
    inv = jnp.where(jnp.abs(y0) >= eps, 1.0 / jnp.abs(y0), 1.0) ** 2
    n = steps * samples
    b_idx = jnp.tile(jnp.arange(b), n)
    s_idx = jnp.repeat(jnp.arange(n), b) // samples
    j_idx = jnp.repeat(jnp.arange(n), b) % samples

    def make_inputs(bi, si, ji):
        hit = step_img[bi] == si[:, None, None, None]
        return jnp.where(hit, values[bi, si, ji][:, None, None, None], images[bi])

    scores, bad = _scores_of_items(model_fn, make_inputs, (b_idx, s_idx, j_idx), labels[b_idx], batch_size, softmax)
    preds = scores.reshape(steps, samples, b).transpose(2, 0, 1)
    var = jnp.mean((preds - y0[:, None, None]) ** 2, axis=2) * inv[:, None]
    return {"monotonicity_correlation": spearman(att, var)}, flags, bad | bad0


@functools.partial(jax.jit, static_argnames=("steps", "samples"))
def _draw_uniform(keys, *, steps, samples):
    return jax.vmap(lambda k: jax.random.uniform(k, (steps, samples)))(keys)


def monotonicity_correlation(model, images, labels, maps, *, key=None, features_in_step: int = 1,
                             nr_samples: int = 100, eps: float = 1e-5, baselines=None, softmax: bool = True,
                             abs: bool = True, normalise: bool = True,  # noqa: A002
                             copies_per_call: int | str | None = "auto") -> dict:
    """Monotonicity correlation (Nguyen & Martinez 2020), Quantus 0.6's ``MonotonicityCorrelation``:
    the Spearman correlation, over the steps, between the attribution of the features a step perturbs
    and the variance of the output it causes; higher is better.

    Features in *ascending* map order (least relevant first); step ``s`` (of ``S = H W C /
    features_in_step``) sets only its ``features_in_step`` features (not cumulative) to one value
    ``u ~ U(0, 1)`` per sample (Quantus's ``perturb_baseline="uniform"``: one value per image and
    sample, in the images' own space), ``nr_samples`` times; ``var_s = mean_j (f(x_sj) - f(x))^2 /
    f(x)^2`` (``/ 1`` where ``|f(x)| < eps``; target softmax probability), ``att_s`` = the step's summed
    attribution; score = ``spearman(att, var)`` (average ranks for ties, as scipy).

    Draws: image ``b``'s values ``uniform(key_b, (S, nr_samples))``; Quantus draws them from numpy's
    global RNG (``np.random.uniform`` per step and sample). Pass ``baselines`` to use given values.
    Quantus's defaults: ``features_in_step=1`` and ``nr_samples=100`` (``100 H W C`` model passes per
    image: at 224 px pass e.g. ``features_in_step=3136, nr_samples=10``), ``eps=1e-5``, ``softmax=True``,
    ``normalise=True``, ``abs=True``.

    Args:
      baselines: optional ``(B, S, nr_samples)`` float values each perturbed copy's features are set to
        (``nr_samples`` then comes from its shape and ``key`` is unused).
      others: as :func:`pixel_flipping`.

    Returns:
      ``{"monotonicity_correlation": (B,)}``.
    """
    batch_size = _check_common("monotonicity_correlation", images, labels, maps, copies_per_call)
    b, h, w, c = np.shape(images)
    fis = _check_features_in_step(features_in_step, np.shape(images))
    steps = -(-h * w * c // fis)
    if not (float(eps) >= 0):
        raise ValueError(f"eps must be >= 0; got {eps!r}")
    if baselines is None:
        V.check_positive_int(nr_samples, "nr_samples")
        values = _draw_uniform(per_image_keys(key, b), steps=steps, samples=int(nr_samples))
    else:
        values = jnp.asarray(baselines, jnp.float32)
        if values.ndim != 3 or values.shape[:2] != (b, steps) or values.shape[2] < 1:
            raise ValueError(f"baselines must have shape (B={b}, S={steps}, nr_samples); got {values.shape}")
    out, flags, bad = _monotonicity_core(jnp.asarray(images), jnp.asarray(labels), jnp.asarray(maps), values,
                                         model_fn=model, features_in_step=fis, eps=float(eps), softmax=bool(softmax),
                                         abs=bool(abs), normalise=bool(normalise), batch_size=batch_size)
    _raise(flags, bad)
    return out
