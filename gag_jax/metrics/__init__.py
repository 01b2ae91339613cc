"""Saliency-map metrics: the paper's RCAP (eq. 5/6), Deletion / Insertion AUC, Log-Cosh Dice loss
and MAE; ROAD, the pointing game, sparseness and complexity; confident-sample selection, one
``score`` entry for all of them and a streaming dataset evaluator.

All model-calling metrics are batched and jit-compiled: every perturbed copy of a batch goes
through ``model_fn`` in chunks of at most ``copies_per_call`` copies (``"auto"``: :func:`default_batch_size`,
measured on CPU), percentiles are computed per image on device, and repeated calls with the same shapes, the same
``model_fn`` object and the same options reuse the compiled function.

One line each (``M`` saliency ``(H, W)``, ``G`` mask, ``sigma`` softmax of the target class):

* RCAP = (1/j) sum_k [sum(M[M >= q_k]) / sum(M)] * sigma(f(I_k)),  q_k = percentile_{100 - k*interval}(M)
* DAUC / IAUC = trapezoid over f of sigma(f(x with M > quantile_{1-f}(M) deleted / inserted))
* ROAD MoRF / LeRF = trapezoid over f of sigma(f(x with the f most / least salient pixels imputed))
* Log-Cosh Dice = log cosh(1 - (2 sum(M G) + 1) / (sum(M) + sum(G) + 1));  MAE = mean |M - G|
* pointing game = 1 if argmax(M) lies within 15 px of G;  sparseness = Gini(|M|);  complexity = entropy(|M| / sum|M|)

Example::

    import gag_jax.metrics as gm
    out = gm.rcap(model_fn, images, labels, saliency)          # out["rcap"]: (B,)
    di = gm.deletion_insertion(model_fn, images, labels, saliency, copies_per_call=64)
    values = gm.score(model_fn, images, labels, saliency, masks, metrics=("rcap", "road_morf", "pointing_game"))
    res = gm.evaluate_stream(model_fn, batches, confidence_threshold=0.9)
    res["rcap"]["mean"], res["rcap"]["sem"]
"""
from gag_jax.metrics._common import (
    ACCELERATOR_BATCH_SIZE,
    CPU_BATCH_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    default_batch_size,
)
from gag_jax.metrics.axioms import completeness, non_sensitivity
from gag_jax.metrics.complexity import complexity, effective_complexity, sparseness
from gag_jax.metrics.deletion_insertion import deletion_insertion
from gag_jax.metrics.faithfulness import (
    faithfulness_correlation,
    faithfulness_estimate,
    infidelity,
    irof,
    monotonicity_correlation,
    pixel_flipping,
    region_perturbation,
    selectivity,
)
from gag_jax.metrics.localisation import (
    attribution_localisation,
    localisation_auc,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from gag_jax.metrics.randomisation import (
    efficient_mprt,
    random_logit,
    randomisation_layers,
    smooth_mprt,
)
from gag_jax.metrics.rcap import rcap, rcap_percentiles
from gag_jax.metrics.registry import (
    CATEGORIES,
    Metric,
    check_metrics,
    default_metrics,
    forward_passes_per_map,
    mask_metrics,
    metric_names,
    register,
    unregister,
)
from gag_jax.metrics.registry import get as metric
from gag_jax.metrics.road import noisy_linear_impute, road
from gag_jax.metrics.robustness import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
)
from gag_jax.metrics.scoring import score
from gag_jax.metrics.segmentation import (
    log_cosh_dice,
    mae,
    pointing_game,
    select_confident,
    target_probs,
)
from gag_jax.metrics.streaming import RunningStat, StreamingEvaluator, evaluate_stream

__all__ = [
    "ACCELERATOR_BATCH_SIZE",
    "CPU_BATCH_SIZE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RunningStat",
    "StreamingEvaluator",
    "CATEGORIES",
    "Metric",
    "check_metrics",
    "forward_passes_per_map",
    "mask_metrics",
    "metric",
    "metric_names",
    "register",
    "unregister",
    "attribution_localisation",
    "completeness",
    "complexity",
    "effective_complexity",
    "localisation_auc",
    "non_sensitivity",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
    "faithfulness_correlation",
    "faithfulness_estimate",
    "infidelity",
    "irof",
    "monotonicity_correlation",
    "pixel_flipping",
    "region_perturbation",
    "selectivity",
    "avg_sensitivity",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "relative_input_stability",
    "relative_output_stability",
    "efficient_mprt",
    "random_logit",
    "randomisation_layers",
    "smooth_mprt",
    "default_batch_size",
    "default_metrics",
    "deletion_insertion",
    "evaluate_stream",
    "log_cosh_dice",
    "mae",
    "noisy_linear_impute",
    "pointing_game",
    "rcap",
    "rcap_percentiles",
    "road",
    "score",
    "select_confident",
    "sparseness",
    "target_probs",
]
