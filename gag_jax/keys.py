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

import os
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["POLICY", "REVERSE_SALT", "file_keys", "image_id", "image_keys", "per_image_keys", "reverse_keys"]

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


def file_keys(seed: int, paths: Sequence[str]) -> jax.Array:
    """:func:`image_keys` of the files' base names: the one key function of ``demo``, ``explain``,
    ``evaluate`` and ``sanity`` (the same image file, seed and method give the same map from each)."""
    return image_keys(seed, [os.path.basename(str(p)) for p in paths])


def per_image_keys(key, batch: int) -> jax.Array:
    """``(batch, 2)`` raw keys, one per image: ``key`` itself when it is a batch of keys (one per image:
    an image's draws then depend on its own key only), else ``fold_in(key, b)`` for image ``b`` (its
    draws then depend on its position); None: ``PRNGKey(0)``.

    Raises:
      ValueError: a batch of keys of another length, or a key of another shape.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    key = key if isinstance(key, jax.Array) else jnp.asarray(key)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.ndim == 2 and key.shape[-1] == 2:
        if key.shape[0] != batch:
            raise ValueError(f"a batch of keys needs one key per image: got {key.shape[0]} keys for {batch} images")
        return key
    if key.shape != (2,):
        raise ValueError(f"key must be one PRNG key (2,) or one per image (B, 2); got shape {key.shape}")
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch))
