"""gag-jax: Guided AbsoluteGrad and the gradient-saliency family in JAX.

Public API::

    import gag_jax as gj
    maps = gj.explain("gag", model_fn, images, labels, key=jax.random.PRNGKey(0))
    maps = gj.guided_absolute_grad(model_fn, images, labels, key)
    gj.aggregations.guided(grads, 0.85)         # stacked reference form of eq. 2-5
    gj.metrics.rcap(model_fn, images, labels, maps)
    gj.reverse(maps, key)                       # reversed "R" variants

The four seams live in ``gj.modifications``, ``gj.gradients``, ``gj.interpretations`` and
``gj.aggregations``; ``gj.chain`` composes them. ``gj.PRESETS`` holds every method as one function
(its composition, or an attribution function such as Grad-CAM); see ``gag_jax.explainers``.
"""
from gag_jax import (
    aggregations,
    backend,
    data,
    distributed,
    gradients,
    interpretations,
    keys,
    metrics,
    modifications,
    ops,
    pixels,
    postprocess,
    sanity,
)
from gag_jax.explainers import (
    DEFAULTS,
    METHOD_RECORDS,
    METHODS,
    PRESETS,
    Method,
    explain,
    explain_many,
    explainer_fn,
    guided_absolute_grad,
    per_image_cost,
    register_method,
    unregister_method,
    variant,
)
from gag_jax.gradcam import gradcam, layer_gradcam
from gag_jax.model import BoundFunction, ModelFunctions
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD
from gag_jax.pipeline import Explainer, chain
from gag_jax.postprocess import min_max, reverse, to_saliency

__version__ = "0.1.0"


def __getattr__(name):
    """``gj.models`` on first use: the model zoo imports Flax's model code, which the core does not need."""
    if name == "models":
        import importlib

        return importlib.import_module("gag_jax.models")
    raise AttributeError(f"module 'gag_jax' has no attribute {name!r}")


__all__ = [
    "DEFAULTS", "IMAGENET_MEAN", "IMAGENET_STD", "METHOD_RECORDS", "METHODS", "Method", "PRESETS", "BoundFunction", "Explainer",
    "ModelFunctions", "layer_gradcam",
    "aggregations", "backend", "chain", "data", "distributed", "explain", "explain_many", "explainer_fn", "gradcam", "gradients",
    "guided_absolute_grad", "interpretations", "keys", "metrics", "min_max", "modifications", "ops", "pixels", "postprocess",
    "per_image_cost", "register_method", "reverse", "sanity", "to_saliency", "unregister_method", "variant",
]
