"""Port PyTorch ``state_dict`` checkpoints to Flax (linen) variables, and refuse mismatches.

The porter is architecture-agnostic. An architecture module provides a Flax module and a
``torch_prefix(flax_module_path) -> str`` function mapping the path of a Flax submodule
(e.g. ``("layer1_0", "conv1")``) to the name of the matching torch module
(``"layer1.0.conv1"``). Leaves are then mapped by name:

=============================  ==========================  ==========================================
Flax leaf                      torch key suffix            layout change
=============================  ==========================  ==========================================
``params/.../kernel`` rank 4   ``.weight`` (OIHW)          ``transpose(2, 3, 1, 0)`` -> HWIO
                                                           (depthwise ``(C,1,kh,kw)`` -> ``(kh,kw,1,C)``)
``params/.../kernel`` rank 2   ``.weight`` ``(out, in)``   transpose -> ``(in, out)``
``params/.../scale``           ``.weight``                 none
``params/.../bias``            ``.bias``                   none
``batch_stats/.../mean``       ``.running_mean``           none
``batch_stats/.../var``        ``.running_var``            none
=============================  ==========================  ==========================================

Every mismatch raises :class:`CheckpointMismatchError` naming the first missing, unexpected or
mis-shaped key, so a checkpoint for another architecture or class count never loads silently.
"""
from __future__ import annotations

import os
import re
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
from flax import serialization, traverse_util

__all__ = [
    "CheckpointMismatchError",
    "read_torch_checkpoint",
    "normalize_state_dict",
    "convert",
    "template",
    "classifier_path",
    "save_variables",
    "load_variables",
    "restore_variables",
    "read_msgpack",
]

TorchPrefix = Callable[[tuple[str, ...]], str]

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# Old torchvision DenseNet checkpoints (and the Places365 ones) name dense-layer parts
# ``norm.1`` / ``relu.1`` / ``conv.1`` instead of ``norm1`` / ``relu1`` / ``conv1``;
# this is the same pattern torchvision's ``densenet._load_state_dict`` rewrites.
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the model: missing, unexpected or mis-shaped key, or unreadable file."""


def _to_numpy(value: Any) -> np.ndarray:
    """Torch tensor / jax array / numpy array -> numpy array (no copy when possible)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Clean a torch ``state_dict`` into ``{key: numpy array}``.

    Strips a leading ``module.`` (``nn.DataParallel`` checkpoints, e.g. Places365), drops
    ``num_batches_tracked`` counters and rewrites legacy DenseNet keys (``norm.1`` -> ``norm1``).

    Args:
      state_dict: mapping from torch key to tensor/array of any shape.

    Returns:
      A new dict, same order, values as numpy arrays of unchanged shape and dtype.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointMismatchError(f"state_dict key {key!r} is not a string")
        if key.startswith("module."):
            key = key[len("module."):]
        if key.endswith("num_batches_tracked"):
            continue
        match = _DENSENET_LEGACY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        if key in out:
            raise CheckpointMismatchError(f"state_dict holds key {key!r} twice after normalisation")
        out[key] = _to_numpy(value)
    return out


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint file into a normalised ``{key: numpy array}`` state_dict.

    Accepts a bare ``state_dict`` or a dict holding it under ``"state_dict"`` or ``"model"``
    (e.g. ``densenet161_places365.pth.tar``), zip or legacy (pre-1.6) serialisation. Loads with
    ``weights_only=True`` (no arbitrary code runs). See :func:`normalize_state_dict` for the
    key clean-up.

    Args:
      path: ``.pth`` / ``.pth.tar`` / ``.pt`` file.

    Returns:
      ``{torch key: numpy array}`` with the torch shapes (e.g. conv weights ``(O, I, kh, kw)``).

    Raises:
      ImportError: torch is not installed.
      FileNotFoundError: ``path`` does not exist.
      CheckpointMismatchError: the file is not a readable torch checkpoint, or holds no state_dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading PyTorch checkpoints needs torch: in the repository root run pip install -e \".[torch]\" "
            "(or convert the checkpoint to .msgpack once, with gag-jax port, on a machine that has torch)"
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointMismatchError(
            f"{path!r} is not a readable torch checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    state_dict = obj
    if isinstance(obj, Mapping):
        for holder in ("state_dict", "model"):
            if holder in obj and isinstance(obj[holder], Mapping):
                state_dict = obj[holder]
                break
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointMismatchError(
            f"{path!r} is a torch file but holds no state_dict (got {type(obj).__name__}); "
            "save `model.state_dict()`, not the whole model"
        )
    tensors = {k: v for k, v in state_dict.items() if hasattr(v, "shape")}
    if not tensors:
        raise CheckpointMismatchError(f"{path!r} holds a dict without tensors; not a state_dict")
    non_tensor = [k for k, v in state_dict.items() if not hasattr(v, "shape")]
    if non_tensor:
        raise CheckpointMismatchError(
            f"{path!r}: state_dict entry {non_tensor[0]!r} is not a tensor; not a state_dict"
        )
    return normalize_state_dict(state_dict)


def template(module: Any, input_shape: Sequence[int] = (1, 224, 224, 3)) -> dict:
    """Abstract variables of ``module`` (``jax.ShapeDtypeStruct`` leaves), no compute, no memory.

    Args:
      module: a Flax linen module taking ``(B, H, W, C)`` images.
      input_shape: ``(B, H, W, C)`` used to trace ``module.init``.

    Returns:
      Nested dict ``{"params": ..., "batch_stats": ...}`` of ``ShapeDtypeStruct``.
    """
    return _template_and_order(module, input_shape)[0]


def _template_and_order(module: Any, input_shape: Sequence[int]) -> tuple[dict, dict[tuple[str, ...], int]]:
    """Template plus the order in which submodules are first called (= torch definition order
    for sequential nets), used to report "the first missing key" the way torch lists keys."""
    order: dict[tuple[str, ...], int] = {}

    def record(next_fun, args, kwargs, context):
        try:
            order.setdefault(tuple(context.module.path), len(order))
        except Exception:  # noqa: BLE001 - ordering is cosmetic; never fail on it
            pass
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    return dict(variables), order


def _flat(variables: Mapping) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(dict(variables), keep_empty_nodes=False)


def _torch_key(path: tuple[str, ...], torch_prefix: TorchPrefix) -> str:
    collection, module_path, leaf = path[0], tuple(path[1:-1]), path[-1]
    try:
        suffix = _LEAF_TO_TORCH[(collection, leaf)]
    except KeyError:
        raise CheckpointMismatchError(
            f"the porter does not know how to map Flax leaf {'/'.join(path)!r} to a torch key"
        ) from None
    prefix = torch_prefix(module_path)
    return f"{prefix}.{suffix}" if prefix else suffix


def _to_flax_layout(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def _torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(flax_shape) == 4:
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if leaf == "kernel" and len(flax_shape) == 2:
        return (flax_shape[1], flax_shape[0])
    return tuple(flax_shape)


_LEAF_RANK = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}


def _torch_order(flat: Mapping[tuple[str, ...], Any], call_order: Mapping[tuple[str, ...], int]) -> list:
    """Template paths in torch ``state_dict`` order: module by module (in call order), then
    weight, bias, running_mean, running_var; so "the first missing key" reads naturally."""
    n = len(call_order)
    return sorted(flat, key=lambda p: (call_order.get(tuple(p[1:-1]), n), _LEAF_RANK.get(p[-1], 9), p))


def classifier_path(variables_template: Mapping, num_classes: int) -> tuple[str, ...] | None:
    """Path of the classifier (last rank-2 ``kernel`` with ``num_classes`` outputs) in a template.

    Args:
      variables_template: nested variables (arrays or ``ShapeDtypeStruct``).
      num_classes: the module's class count.

    Returns:
      e.g. ``("params", "fc", "kernel")``, or ``None`` if there is no such Dense layer.
    """
    found = None
    for path, leaf in _flat(variables_template).items():
        if path[0] == "params" and path[-1] == "kernel" and len(leaf.shape) == 2 and leaf.shape[1] == num_classes:
            found = path
    return found


def convert(
    state_dict: Mapping[str, Any],
    module: Any,
    torch_prefix: TorchPrefix,
    input_shape: Sequence[int] = (1, 224, 224, 3),
) -> dict:
    """Convert a torch ``state_dict`` into Flax variables for ``module``, checking every key.

    Args:
      state_dict: ``{torch key: tensor or array}`` (e.g. from :func:`read_torch_checkpoint` or
        ``torch_model.state_dict()``; it is normalised with :func:`normalize_state_dict`).
      module: the Flax linen module (its field values, e.g. ``num_classes``, fix the shapes).
      torch_prefix: ``flax module path (tuple of names) -> torch module name``.
      input_shape: ``(B, H, W, C)`` used only to trace the variable template.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` nested dict of float32 numpy arrays with the
      template's structure and shapes (conv kernels HWIO, dense kernels ``(in, out)``).

    Raises:
      CheckpointMismatchError: naming the first torch key the model needs but the checkpoint
        lacks, else the first checkpoint key the model does not use, else the first key whose
        shape differs (both shapes in torch layout; a classifier with another class count is
        reported as ``classifier has K classes, model expects N``).
    """
    sd = normalize_state_dict(state_dict)
    tmpl_tree, call_order = _template_and_order(module, input_shape)
    tmpl = _flat(tmpl_tree)
    keys = {path: _torch_key(path, torch_prefix) for path in _torch_order(tmpl, call_order)}

    seen: dict[str, tuple[str, ...]] = {}
    for path, key in keys.items():
        if key in seen:
            raise CheckpointMismatchError(
                f"torch_prefix maps both {'/'.join(seen[key])!r} and {'/'.join(path)!r} to {key!r}"
            )
        seen[key] = path

    missing = [key for key in keys.values() if key not in sd]
    if missing:
        raise CheckpointMismatchError(
            f"checkpoint is missing key {missing[0]!r} needed by {type(module).__name__}"
            f" ({len(missing)} missing in all)"
        )
    unexpected = [key for key in sd if key not in seen]
    if unexpected:
        raise CheckpointMismatchError(
            f"checkpoint has unexpected key {unexpected[0]!r} that {type(module).__name__} does not use"
            f" ({len(unexpected)} unexpected in all)"
        )

    num_classes = getattr(module, "num_classes", None)
    head = classifier_path(dict(traverse_util.unflatten_dict(tmpl)), num_classes) if num_classes else None
    head_modules = {head[:-1]} if head else set()

    out: dict[tuple[str, ...], np.ndarray] = {}
    for path, key in keys.items():
        leaf = tmpl[path]
        array = np.asarray(sd[key])
        expected = _torch_shape(tuple(leaf.shape), path[-1])
        if tuple(array.shape) != expected:
            if path[:-1] in head_modules:
                got = array.shape[0] if array.ndim >= 1 else "?"
                raise CheckpointMismatchError(
                    f"key {key!r} has shape {tuple(array.shape)}, model expects {expected}: "
                    f"classifier has {got} classes, model expects {num_classes} "
                    "(pass num_classes= to match the checkpoint)"
                )
            raise CheckpointMismatchError(
                f"key {key!r} has shape {tuple(array.shape)}, model expects {expected}"
            )
        if not (np.issubdtype(array.dtype, np.floating)):
            raise CheckpointMismatchError(f"key {key!r} has dtype {array.dtype}, expected a float tensor")
        out[path] = np.ascontiguousarray(_to_flax_layout(array, path[-1]), dtype=np.float32)
    return traverse_util.unflatten_dict(out)


def save_variables(variables: Mapping, path: str | os.PathLike) -> None:
    """Write Flax variables to a ``.msgpack`` file (``flax.serialization.msgpack_serialize``).

    Args:
      variables: nested ``{"params": ..., "batch_stats": ...}`` of arrays (any shapes).
      path: destination file; parent directories are created.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    host = jax.tree_util.tree_map(lambda a: np.asarray(a), dict(variables))
    data = serialization.msgpack_serialize(serialization.to_state_dict(host))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def restore_variables(raw: Mapping, module: Any, input_shape: Sequence[int] = (1, 224, 224, 3),
                      source: str = "variables") -> dict:
    """Check a raw nested dict of arrays against ``module``'s template and return it as float32.

    Args:
      raw: nested dict as produced by ``msgpack_restore``.
      module: the Flax module the variables are for.
      input_shape: ``(B, H, W, C)`` used to trace the template.
      source: name used in error messages (e.g. the file path).

    Returns:
      Nested dict of float32 numpy arrays with the template's structure.

    Raises:
      CheckpointMismatchError: naming the first missing, unexpected or mis-shaped variable.
    """
    tmpl = _flat(template(module, input_shape))
    flat = _flat(raw) if isinstance(raw, Mapping) else None
    if flat is None:
        raise CheckpointMismatchError(f"{source}: not a nested dict of variables")
    missing = [p for p in tmpl if p not in flat]
    if missing:
        raise CheckpointMismatchError(
            f"{source} is missing variable {'/'.join(missing[0])!r} needed by {type(module).__name__}"
        )
    unexpected = [p for p in flat if p not in tmpl]
    if unexpected:
        raise CheckpointMismatchError(
            f"{source} has unexpected variable {'/'.join(unexpected[0])!r}"
        )
    out = {}
    for p, leaf in tmpl.items():
        arr = np.asarray(flat[p])
        if tuple(arr.shape) != tuple(leaf.shape):
            raise CheckpointMismatchError(
                f"{source}: variable {'/'.join(p)!r} has shape {tuple(arr.shape)}, model expects {tuple(leaf.shape)}"
            )
        out[p] = arr.astype(np.float32, copy=False)
    return traverse_util.unflatten_dict(out)


def load_variables(path: str | os.PathLike, module: Any, input_shape: Sequence[int] = (1, 224, 224, 3)) -> dict:
    """Read variables written by :func:`save_variables`, checked against ``module``'s template.

    Args:
      path: ``.msgpack`` file.
      module: the Flax module the variables are for.
      input_shape: ``(B, H, W, C)`` used to trace the template.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      CheckpointMismatchError: unreadable file, or a missing/unexpected/mis-shaped variable.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"variables file not found: {path!r}")
    raw = read_msgpack(path)
    return restore_variables(raw, module, input_shape, source=repr(path))


def read_msgpack(path: str | os.PathLike) -> dict:
    """Raw nested dict of numpy arrays from a ``.msgpack`` file, unchecked.

    Raises:
      CheckpointMismatchError: the file is not a readable msgpack variables file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as err:  # noqa: BLE001 - msgpack raises several kinds for bad bytes
        raise CheckpointMismatchError(
            f"{path!r} is not a readable .msgpack variables file ({type(err).__name__})"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointMismatchError(f"{path!r} is not a readable .msgpack variables file")
    return raw
