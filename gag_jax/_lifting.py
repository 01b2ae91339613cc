"""Split ``functools.partial(apply, variables, ...)`` into a static function and array arguments.

Model functions bind their parameters with ``functools.partial`` (``models.model_functions``,
or ``partial(module.apply, variables)``). Closed over inside a ``jax.jit`` those arrays would be
baked into the compiled program as constants (slow compiles, a copy of the weights per
program). The jitted entry points split them off with ``split_function`` and pass them as
ordinary (traced) arguments, rebuilding the function inside with ``join_function``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


def split_function(fn: Callable) -> tuple[tuple[bool, Any], Any]:
    """``fn -> (static, arrays)``: hashable static part and the partial's array arguments (or None)."""
    leaves = jax.tree_util.tree_leaves(getattr(fn, "args", ()))
    if isinstance(fn, functools.partial) and leaves and all(_is_array(leaf) for leaf in leaves):
        keywords = tuple(sorted(fn.keywords.items()))
        try:
            hash(keywords)
        except TypeError:
            return (False, fn), None
        return (True, (fn.func, keywords)), fn.args
    return (False, fn), None


def join_function(static: tuple[bool, Any], arrays: Any) -> Callable:
    """Inverse of ``split_function``."""
    lifted, value = static
    if not lifted:
        return value
    func, keywords = value
    return functools.partial(func, *arrays, **dict(keywords))


def jit_lifting_model(static_argnames: tuple[str, ...]):
    """Like ``jax.jit(core, static_argnames=...)`` for a core taking a keyword ``model_fn``, but
    with the model's bound arrays passed as traced arguments rather than baked-in constants.

    The compiled function is cached per (shapes, static options, ``model_fn``'s static part), so
    two partials of the same ``apply`` with different weights share one compilation.
    """
    others = tuple(name for name in static_argnames if name != "model_fn")

    def decorate(core):
        def inner(*args, model_static, model_arrays, **kwargs):
            return core(*args, model_fn=join_function(model_static, model_arrays), **kwargs)

        jitted = jax.jit(inner, static_argnames=others + ("model_static",))

        @functools.wraps(core)
        def call(*args, model_fn, **kwargs):
            static, arrays = split_function(model_fn)
            return jitted(*args, model_static=static, model_arrays=arrays, **kwargs)

        return call

    return decorate
