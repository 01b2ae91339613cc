"""The tiny CNN of the synthetic case (trained by ``gag_jax.experiments.tiny``), and its checkpoint file.

Architecture (NHWC, ReLU, no normalisation layers): conv3x3(16) - conv3x3(32, stride 2) -
conv3x3(32) = ``features`` (Grad-CAM's layer); global average pool - dense(K) = ``head``.
With ``guided_backprop=True`` every ReLU uses the guided ReLU of ``gag_jax.model``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import serialization

from gag_jax.model import guided_relu


class TinyCNN(nn.Module):
    """Three 3x3 conv layers, global average pooling and a linear classifier.

    Attributes:
      num_classes: outputs (5 for the synthetic shapes).
      width: channels of the first layer (doubled after it).
      guided_backprop: Guided-Backprop ReLUs (same forward values).
    """

    num_classes: int = 5
    width: int = 16
    guided_backprop: bool = False

    def setup(self):
        """Create the three conv layers and the classifier."""
        self.conv1 = nn.Conv(self.width, (3, 3), padding="SAME")
        self.conv2 = nn.Conv(2 * self.width, (3, 3), strides=(2, 2), padding="SAME")
        self.conv3 = nn.Conv(2 * self.width, (3, 3), padding="SAME")
        self.dense = nn.Dense(self.num_classes)

    def _act(self, x):
        return guided_relu(x) if self.guided_backprop else jax.nn.relu(x)

    def features(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` -> ``(B, H/2, W/2, 2 * width)`` activations of the last conv layer."""
        x = self._act(self.conv1(x))
        x = self._act(self.conv2(x))
        return self._act(self.conv3(x))

    def head(self, f: jax.Array) -> jax.Array:
        """Global average pool and dense: activations -> ``(B, num_classes)`` float32 logits."""
        return self.dense(f.mean(axis=(1, 2))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, 3)`` normalised images -> ``(B, num_classes)`` logits."""
        return self.head(self.features(x))


def save_tiny(variables: dict, path: str | os.PathLike, *, num_classes: int, width: int = 16) -> None:
    """Write trained tiny-model variables (and its shape settings) to a ``.msgpack`` file, atomically."""
    state = {"variables": serialization.to_state_dict(jax.device_get(variables)),
             "config": {"num_classes": num_classes, "width": width}}
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(serialization.msgpack_serialize(state))
    os.replace(tmp, path)


def load_tiny(path: str | os.PathLike) -> tuple[TinyCNN, dict]:
    """Read a file written by :func:`save_tiny`; returns ``(module, variables)``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a tiny-model checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tiny-model checkpoint not found: {path}")
    with open(path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except Exception:  # noqa: BLE001 - msgpack raises several kinds for bad bytes
            raise ValueError(f"{path} is not a tiny-model checkpoint (unreadable msgpack)") from None
    if not isinstance(state, dict) or "variables" not in state or "config" not in state:
        raise ValueError(f"{path} is not a tiny-model checkpoint (written by gag_jax.models.tiny.save_tiny)")
    config = state["config"]
    module = TinyCNN(num_classes=int(config["num_classes"]), width=int(config["width"]))
    variables = jax.tree_util.tree_map(jnp.asarray, state["variables"])
    return module, variables
