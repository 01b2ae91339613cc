"""A tiny Flax CNN for the synthetic case, trained in seconds with optax inside the runner.

The synthetic dataset (``gag_jax.data.make_synthetic``) has exact ground-truth masks but no
pre-trained classifier, so ``gag-jax evaluate --case synthetic`` (model ``tiny``) trains this
network on a *separate* synthetic draw (``seed + 1000``, never the evaluated images) and saves the
weights beside the results; a resumed run reloads them instead of re-training, so its numbers
are those of the interrupted run.

The network and its checkpoint file are ``gag_jax.models.tiny`` (one registry of models); this
module trains it.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import optax

from gag_jax.models.tiny import TinyCNN, load_tiny, save_tiny  # noqa: F401  (re-exported)

TRAIN_SEED_OFFSET = 1000
"""The training images are ``make_synthetic(..., seed=seed + TRAIN_SEED_OFFSET)``."""


def train_tiny(num_classes: int = 5, image_size: int = 32, *, seed: int = 0, steps: int = 300,
               num_images: int = 640, batch_size: int = 64, learning_rate: float = 3e-3,
               width: int = 16) -> tuple[TinyCNN, dict, dict]:
    """Train a :class:`TinyCNN` on synthetic shapes (:func:`train_on_synthetic`).

    Deterministic for fixed arguments on a given device. Takes a few seconds on a CPU.

    Args:
      num_classes: shape classes (1..5).
      image_size: image side.
      seed: the data seed is ``seed + TRAIN_SEED_OFFSET``; the init key ``PRNGKey(seed)``.
      steps: optimisation steps.
      num_images: training-set size.
      batch_size: images per step.
      learning_rate: adam learning rate.
      width: first-layer channels.

    Returns:
      ``(module, variables, info)``: info has ``train_accuracy``, ``seconds``, ``steps``.
    """
    module = TinyCNN(num_classes=num_classes, width=width)
    variables, info = train_on_synthetic(module, num_classes, image_size, seed=seed, steps=steps,
                                         num_images=num_images, batch_size=batch_size, learning_rate=learning_rate)
    return module, variables, info


def train_on_synthetic(module, num_classes: int, image_size: int, *, seed: int = 0, steps: int = 300,
                       num_images: int = 640, batch_size: int = 64,
                       learning_rate: float = 3e-3) -> tuple[dict, dict]:
    """Train any Flax linen classifier ``module`` (``(B, S, S, 3) -> (B, num_classes)``, parameters only)
    on synthetic shapes: adam, softmax cross-entropy, batches drawn with ``jax.random.choice``.

    Args:
      module: the classifier (e.g. :class:`TinyCNN`, a small ``gag_jax.models.vit.ViT``).
      num_classes, image_size, seed, steps, num_images, batch_size, learning_rate: as :func:`train_tiny`.

    Returns:
      ``(variables, info)``: info has ``train_accuracy``, ``seconds``, ``steps``, ``num_images``, ``seed``.
    """
    from gag_jax.data import make_synthetic

    start = time.perf_counter()
    data = make_synthetic(num_images, image_size, seed + TRAIN_SEED_OFFSET, num_classes)
    x_all, y_all = jnp.asarray(data["images"]), jnp.asarray(data["labels"])
    params = module.init(jax.random.PRNGKey(seed), x_all[:1])["params"]
    opt = optax.adam(learning_rate)
    opt_state = opt.init(params)

    def loss_fn(p, x, y):
        logits = module.apply({"params": p}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, key):
        idx = jax.random.choice(key, x_all.shape[0], (batch_size,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    key = jax.random.PRNGKey(seed + 1)
    for i in range(steps):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
    logits = module.apply({"params": params}, x_all)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_all))
    variables = {"params": jax.device_get(params)}
    return variables, {"train_accuracy": accuracy, "seconds": time.perf_counter() - start,
                       "steps": steps, "num_images": num_images, "seed": seed}


def trained_tiny(path: str | os.PathLike, num_classes: int, image_size: int, *, seed: int = 0,
                 steps: int = 300) -> tuple[TinyCNN, dict, dict]:
    """Load the tiny model at ``path`` if it exists, else train it and save it there.

    Returns:
      ``(module, variables, info)``; ``info["trained"]`` says whether it was trained now.

    Raises:
      ValueError: the file exists but holds a model for another number of classes.
    """
    if os.path.isfile(path):
        module, variables = load_tiny(path)
        if module.num_classes != num_classes:
            raise ValueError(f"tiny model {path} has {module.num_classes} classes, the data {num_classes}")
        return module, variables, {"trained": False, "path": os.fspath(path)}
    module, variables, info = train_tiny(num_classes, image_size, seed=seed, steps=steps)
    save_tiny(variables, path, num_classes=num_classes, width=module.width)
    info.update(trained=True, path=os.fspath(path))
    return module, variables, info

