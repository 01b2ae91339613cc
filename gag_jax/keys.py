"""The one key policy of every entry point: an image's random numbers depend only on the seed and
the image's identity in its dataset.

``image_keys(seed, names)[i] = fold_in(PRNGKey(seed), crc32(names[i]))``: never on the batch size,
the image's position in its batch, the device count, the method order or the command (``evaluate``,
``demo``, ``explain`` and ``sanity`` all use it; ``gj.explain`` / ``gj.explain_many`` take the keys).
Every method of a run reads the same key of an image, each family its own way (the noise family
draws sample ``i`` from ``fold_in(key, i)``; RISE its masks), so the rows of one family see the same
noise: common random numbers, their differences carry less Monte Carlo error. The reversed "R"
rows break ties with ``fold_in(key, REVERSE_SALT)``.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["POLICY", "REVERSE_SALT", "image_id", "image_keys", "reverse_keys"]

POLICY = "key(image) = fold_in(PRNGKey(seed), crc32(image name) & 0x7fffffff); R rows: fold_in(key, crc32('reverse'))"
"""The policy in words (recorded in run manifests)."""

REVERSE_SALT = zlib.crc32(b"reverse") & 0x7FFFFFFF


def image_id(name: str) -> int:
    """A stable 31-bit id of an image from its name in the dataset (file name, record id)."""
    return zlib.crc32(str(name).encode()) & 0x7FFFFFFF


def image_keys(seed: int, names: Sequence[str]) -> jax.Array:
    """``(B, 2)`` uint32 PRNG keys, one per image, from the seed and the images' names."""
    ids = jnp.asarray(np.asarray([image_id(n) for n in names], np.uint32))
    return jax.vmap(jax.random.fold_in, (None, 0))(jax.random.PRNGKey(int(seed)), ids)


def reverse_keys(keys: jax.Array) -> jax.Array:
    """The per-image keys of the reversed "R" rows' tie-breaking."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, REVERSE_SALT)
