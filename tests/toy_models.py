"""Small models with known behaviour, shared by the core tests."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class TinyConvNet(nn.Module):
    """Two 3x3 convs (smooth activation), global mean pool, dense head; ``features``/``head`` split."""

    num_classes: int = 3
    activation: str = "softplus"

    def setup(self):
        self.conv1 = nn.Conv(6, (3, 3))
        self.conv2 = nn.Conv(5, (3, 3))
        self.dense = nn.Dense(self.num_classes)

    def _act(self, x):
        return nn.softplus(x) if self.activation == "softplus" else nn.relu(x)

    def features(self, x):
        return self._act(self.conv2(self._act(self.conv1(x))))

    def head(self, f):
        return self.dense(f.mean(axis=(1, 2)))

    def __call__(self, x):
        return self.head(self.features(x))


def tiny_conv_net(seed: int = 0, size: int = 12, num_classes: int = 3, activation: str = "softplus"):
    """Returns ``(module, variables, model_fn)`` of a TinyConvNet for ``(B, size, size, 3)`` inputs."""
    module = TinyConvNet(num_classes, activation)
    variables = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))
    return module, variables, lambda x: module.apply(variables, x)


def linear_model(weights):
    """Logits ``[sum(w * x), -sum(w * x)]`` for weights ``(H, W, C)``; gradient of class 0 is ``w``."""

    def model_fn(x):
        s = jnp.sum(x * weights, axis=(1, 2, 3))
        return jnp.stack([s, -s], axis=-1)

    return model_fn
