"""Saliency-map metrics: RCAP (the paper's eq. 5/6), Deletion / Insertion AUC, Log-Cosh Dice loss,
MAE, confident-sample selection and a streaming dataset evaluator.

All model-calling metrics are batched and jit-compiled: every perturbed copy of a batch goes
through ``model_fn`` in large (optionally chunked) batches, percentiles are computed per image on
device, and repeated calls with the same shapes, the same ``model_fn`` object and the same options
reuse the compiled function.

One line each (``M`` saliency ``(H, W)``, ``G`` mask, ``sigma`` softmax of the target class):

* RCAP = (1/j) sum_k [sum(M[M >= q_k]) / sum(M)] * sigma(f(I_k)),  q_k = percentile_{100 - k*interval}(M)
* DAUC / IAUC = trapezoid over f of sigma(f(x with M > quantile_{1-f}(M) deleted / inserted))
* Log-Cosh Dice = log cosh(1 - (2 sum(M G) + 1) / (sum(M) + sum(G) + 1));  MAE = mean |M - G|

Example::

    import gag_jax.metrics as gm
    out = gm.rcap(model_fn, images, labels, saliency)          # out["rcap"]: (B,)
    di = gm.deletion_insertion(model_fn, images, labels, saliency, batch_size=64)
    res = gm.evaluate_stream(model_fn, batches, confidence_threshold=0.9)
    res["rcap"]["mean"], res["rcap"]["sem"]
"""
from gag_jax.metrics._common import IMAGENET_MEAN, IMAGENET_STD
from gag_jax.metrics.perturbation import deletion_insertion
from gag_jax.metrics.rcap import rcap, rcap_percentiles
from gag_jax.metrics.segmentation import log_cosh_dice, mae, select_confident, target_probs
from gag_jax.metrics.streaming import RunningStat, StreamingEvaluator, evaluate_stream

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RunningStat",
    "StreamingEvaluator",
    "deletion_insertion",
    "evaluate_stream",
    "log_cosh_dice",
    "mae",
    "rcap",
    "rcap_percentiles",
    "select_confident",
    "target_probs",
]
