"""gag-jax: Guided AbsoluteGrad and the gradient-saliency family in JAX.

Public API::

    import gag_jax as gj
    maps = gj.explain("gag", model_fn, images, labels, key=jax.random.PRNGKey(0))
    maps = gj.guided_absolute_grad(model_fn, images, labels, key)
    gj.aggregations.guided(grads, 0.85)         # stacked reference form of eq. 2-5
    gj.metrics.rcap(model_fn, images, labels, maps)
    gj.reverse(maps, key)                       # reversed "R" variants

The four seams live in ``gj.modifications``, ``gj.gradients``, ``gj.interpretations`` and
``gj.aggregations``; ``gj.chain`` composes them.
"""
from gag_jax import aggregations, gradients, interpretations, modifications, ops, postprocess
from gag_jax.explainers import DEFAULTS, METHODS, ModelFunctions, explain, explainer, guided_absolute_grad
from gag_jax.gradcam import gradcam
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD
from gag_jax.pipeline import Explainer, chain
from gag_jax.postprocess import normalize, reverse, to_saliency

from gag_jax import data, distributed, metrics
from gag_jax import sanity

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS", "METHODS", "Explainer", "IMAGENET_MEAN", "IMAGENET_STD", "ModelFunctions", "aggregations",
    "chain", "data", "distributed", "explain", "explainer", "gradcam", "gradients", "guided_absolute_grad", "interpretations",
    "metrics", "modifications", "normalize", "ops", "postprocess", "reverse", "to_saliency",
]
