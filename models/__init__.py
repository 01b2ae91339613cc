"""``gag_jax.models``: Flax (linen) ports of the paper's classifiers, the synthetic case's tiny CNN,
one registry of them, and a loader for their checkpoints.

>>> from gag_jax.models import load, model_functions   # doctest: +SKIP
>>> module, variables = load("resnet50", "resnet50-0676ba61.pth")
>>> fns = model_functions(module, variables)             # a gj.ModelFunctions (carries the input scaling)
>>> logits = fns.logits(images)                        # images (B, H, W, 3), normalised

Names: ``"resnet50"``, ``"efficientnet_b0"``, ``"efficientnet_lite0"``, ``"densenet161"``,
``"vit_s16"``, ``"vit_b16"`` and ``"tiny"``. Checkpoints: torch ``.pth`` / ``.pth.tar`` / ``.pt`` (needs
torch, converted by :mod:`gag_jax.models.porter`) or ``.msgpack`` written by
:func:`gag_jax.models.porter.save_variables` (``"tiny"``: :func:`gag_jax.models.tiny.save_tiny`); the
ViTs also timm ``.safetensors`` and Google / big_vision ``.npz`` (:mod:`gag_jax.models.vit`).

The source lives in the repository's top-level ``models/`` folder and is installed as
``gag_jax.models`` (never under the bare name ``models``). It imports only the bottom floor of the
package (``gag_jax.model``: the model contract and the guided activation; ``gag_jax.backend``;
``gag_jax.ops``): the core never imports it.
"""
if __name__ != "gag_jax.models":  # this folder imported by another name, e.g. `import models` from a checkout
    raise ImportError(f"the models install as gag_jax.models, not {__name__!r}: use `from gag_jax import models` "
                      "(pip install -e . in a checkout)")

from . import porter
from .porter import CheckpointMismatchError
from .zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_MEAN,
    LITE0_STD,
    VIT_MEAN,
    VIT_STD,
    MODEL_NAMES,
    TORCH_MODEL_NAMES,
    get_model,
    imagenet_classes,
    input_normalization,
    load,
    model_functions,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LITE0_MEAN", "LITE0_STD", "VIT_MEAN", "VIT_STD", "MODEL_NAMES",
    "TORCH_MODEL_NAMES",
    "CheckpointMismatchError", "get_model", "imagenet_classes", "input_normalization", "load",
    "model_functions", "porter",
]
