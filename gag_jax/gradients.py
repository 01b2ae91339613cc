"""The gradient seam: d logit_c / d input, plain or through Guided-Backprop activations.

A *gradient function* has the signature ``grad_fn(model_fn, inputs, labels) -> grads`` with
``inputs`` of shape ``(B, H, W, C)``, ``labels`` int ``(B,)`` and ``grads`` of the same shape and
dtype float32 as ``inputs``. It differentiates the *target logit* (pre-softmax); because each image's
logit depends only on that image, the gradient of the summed target logits gives every image's own
gradient in one backward pass.

Several targets per image: ``labels`` int ``(B, K)``, or a target function ``target(logits) ->
(B, K)`` (:func:`target_values`), give ``grads (B, K, H, W, C)``: one forward pass (``jax.vjp``) and
the pullback vmapped over the K one-hot cotangents. A target function returning ``(B,)`` gives
``(B, H, W, C)``.

Guided Backprop works on any model function: ``guided_backprop(model_fn)`` traces ``model_fn`` to a
jaxpr and evaluates it again with every ReLU replaced by the guided ReLU (see ``guided_backprop``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from gag_jax.model import guided_backprop_activation, guided_relu  # noqa: F401  (the model contract; re-exported)

ModelFn = Callable[[jax.Array], jax.Array]
GradientFn = Callable[[ModelFn, jax.Array, jax.Array], jax.Array]


def target_values(logits: jax.Array, labels) -> jax.Array:
    """The targets of each image, read from the model's output.

    Args:
      logits: the model's output, ``(B, classes)`` for a classifier (any shape for a target function).
      labels: ``(B,)`` int (one class per image), ``(B, K)`` int (K classes per image), or a *target
        function* ``target(logits) -> (B,) | (B, K)`` for anything that is not one class logit (a
        sigmoid model's class, a detection score, a sum over a region of a segmentation output).

    Returns:
      ``(B,)`` or ``(B, K)`` float32.

    Raises:
      ValueError: (at trace time) a target function whose output is not ``(B,)`` or ``(B, K)``.
    """
    if callable(labels):
        values = jnp.asarray(labels(logits))
        batch = logits.shape[0] if getattr(logits, "ndim", 0) else None
        if values.ndim not in (1, 2) or (batch is not None and values.shape[0] != batch):
            raise ValueError(f"the target function must map the model output {tuple(logits.shape)} to (B,) or "
                             f"(B, K) with B = {batch}; got shape {tuple(values.shape)}")
        return values.astype(jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if labels.ndim == 1:
        return jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0].astype(jnp.float32)
    return jnp.take_along_axis(logits, labels, axis=1).astype(jnp.float32)


def target_logits(model_fn: ModelFn, inputs: jax.Array, labels) -> jax.Array:
    """Logit of each image's target class (or classes, or the value of a target function).

    Args:
      model_fn: ``images (B, H, W, C) -> logits (B, classes)`` (any output for a target function).
      inputs: ``(B, H, W, C)`` float images.
      labels: ``(B,)`` or ``(B, K)`` int target classes, or a target function (:func:`target_values`).

    Returns:
      ``(B,)`` (or ``(B, K)``) float32 target logits.
    """
    return target_values(model_fn(inputs), labels)


def num_targets(model_fn: ModelFn, inputs: jax.Array, labels) -> int | None:
    """K for ``(B, K)`` targets (int labels, or a target function returning ``(B, K)``), None for one
    target per image. Reads shapes only (``jax.eval_shape`` for a target function)."""
    if callable(labels):
        shape = jax.eval_shape(lambda x: target_logits(model_fn, x, labels),
                               jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)).shape
        return None if len(shape) == 1 else shape[1]
    ndim = jnp.ndim(labels)
    if ndim not in (1, 2):
        raise ValueError(f"labels must have shape (B,) or (B, K); got {jnp.shape(labels)}")
    return None if ndim == 1 else jnp.shape(labels)[1]


def target_column(labels, k: int):
    """The ``k``-th target of ``(B, K)`` targets as one target per image: ``labels[:, k]`` of int
    labels, or a hashable target function returning column ``k`` of a target function's output."""
    if callable(labels):
        return functools.partial(_column_of, labels, k)
    return labels[:, k]


def _column_of(target, k, logits):
    return target(logits)[:, k]


def logit_gradient() -> GradientFn:
    """Gradient seam: ``d logit_c / d input`` of each image, float32.

    ``labels`` of shape ``(B,)`` give ``grads (B, H, W, C)``. Several targets per image (``labels``
    ``(B, K)``, or a target function returning ``(B, K)``, see :func:`target_values`) give
    ``grads (B, K, H, W, C)`` from ONE forward pass: ``jax.vjp`` once at the inputs, then its
    pullback ``vmap``-ped over the K one-hot cotangents of the targets (K backward passes, batched).
    A target function returning ``(B,)`` gives ``(B, H, W, C)``, the gradient of its value.

    Examples:
      >>> import jax.numpy as jnp
      >>> w = jnp.arange(12.).reshape(1, 2, 2, 3)
      >>> model_fn = lambda x: jnp.sum(x * w, axis=(1, 2, 3))[:, None]
      >>> g = logit_gradient()(model_fn, jnp.ones((2, 2, 2, 3)), jnp.zeros(2, jnp.int32))
      >>> bool(jnp.allclose(g[1], w[0]))
      True
      >>> logit_gradient()(model_fn, jnp.ones((2, 2, 2, 3)), jnp.zeros((2, 3), jnp.int32)).shape
      (2, 3, 2, 2, 3)
    """
    return _logit_gradient


def _logit_gradient(model_fn: ModelFn, inputs: jax.Array, labels) -> jax.Array:
    # one function object: explainers with equal seams compare equal (``gj.explain_many`` shares them)
    def total(x):
        return jnp.sum(target_logits(model_fn, x, labels))

    if not callable(labels) and jnp.ndim(labels) == 1:
        return jax.grad(total)(inputs).astype(jnp.float32)
    values, pullback = jax.vjp(lambda x: target_logits(model_fn, x, labels), inputs)
    if values.ndim == 1:  # a target function with one value per image
        return pullback(jnp.ones_like(values))[0].astype(jnp.float32)
    k = values.shape[1]
    one_hot = jnp.broadcast_to(jnp.eye(k, dtype=values.dtype)[:, None, :], (k,) + values.shape)  # (K, B, K)
    (grads,) = jax.vmap(pullback)(one_hot)  # (K, B, H, W, C): one backward pass per target
    return jnp.moveaxis(grads, 0, 1).astype(jnp.float32)


# ---------------------------------------------------------------- Guided Backprop on any model function

# jax.nn activations that are not ReLU-like: their derivative is not a 0/1 gate, so Guided Backprop's
# rule has no single meaning for them. Met on the input's path, they stop the rewrite with an error.
_UNGUIDABLE_FUNCTIONS = frozenset({
    "silu", "swish", "gelu", "elu", "celu", "selu", "leaky_relu", "softplus", "soft_sign", "mish", "sigmoid",
    "log_sigmoid", "hard_tanh", "hard_silu", "hard_swish", "squareplus", "sparse_plus", "sparse_sigmoid", "glu",
})
# Primitives that are (part of) a smooth activation: sigmoid/SiLU, tanh, GELU (tanh or erf form).
_UNGUIDABLE_PRIMITIVES = {"logistic": "sigmoid or SiLU", "tanh": "tanh (or tanh-GELU)", "erf": "GELU (erf form)",
                          "erfc": "GELU (erf form)"}
_RELU_FUNCTIONS = frozenset({"relu", "relu6", "clip"})
# Primitives that only move or re-type values: a constant stays the same constant through them.
_SHAPE_PRIMITIVES = frozenset({"convert_element_type", "broadcast_in_dim", "reshape", "squeeze", "expand_dims",
                               "transpose", "copy", "copy_p"})
_MAX_CONSTANT_SIZE = 4096


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _guided_clamp(x: jax.Array, bound: float, upper: bool) -> jax.Array:
    """``min(x, bound)`` (upper) or ``max(x, bound)``; backward: positive gradients where x is in range."""
    return jnp.minimum(x, bound) if upper else jnp.maximum(x, bound)


def _guided_clamp_fwd(x, bound, upper):
    return _guided_clamp(x, bound, upper), x


def _guided_clamp_bwd(bound, upper, x, g):
    in_range = (x < bound) if upper else (x > bound)
    return (jnp.where(in_range & (g > 0), g, jnp.zeros_like(g)),)


_guided_clamp.defvjp(_guided_clamp_fwd, _guided_clamp_bwd)


class _Info(NamedTuple):
    """What the interpreter knows of a value: does it depend on the inputs; is it a uniform constant."""

    dependent: bool
    constant: float | None = None


def _uniform_constant(value) -> float | None:
    """The scalar a small concrete array is filled with, or None (tracers, mixed values, large arrays)."""
    if isinstance(value, jax.core.Tracer):
        return None
    array = np.asarray(value)
    if array.size == 0 or array.size > _MAX_CONSTANT_SIZE or not np.issubdtype(array.dtype, np.number):
        return None
    first = array.reshape(-1)[0]
    return float(first) if np.all(array == first) else None


def _sub_jaxprs(params) -> list:
    return list(jex_core.jaxprs_in_params(params))


def _has_activation(jaxpr) -> bool:
    """Whether ``jaxpr`` (statically, at any depth) holds a ReLU-like clamp or a smooth activation.

    A clamp is ``max``/``min`` with a literal (or a broadcast literal), ``jax.nn.relu``/``relu6`` or
    ``jnp.clip``.
    """
    literal_like = set()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        operands_literal = [isinstance(v, jex_core.Literal) or v in literal_like for v in eqn.invars]
        if name in _SHAPE_PRIMITIVES and operands_literal and operands_literal[0]:
            literal_like.update(eqn.outvars)
        if name in ("max", "min") and any(operands_literal) or name in _UNGUIDABLE_PRIMITIVES:
            return True
        if name == "jit" and eqn.params.get("name") in _RELU_FUNCTIONS | _UNGUIDABLE_FUNCTIONS:
            return True
        if any(_has_activation(sub) for sub in _sub_jaxprs(eqn.params)):
            return True
    return False


def _unguidable(what: str) -> ValueError:
    return ValueError(
        f"Guided Backprop cannot rewrite {what}: only ReLU-like activations (jax.nn.relu, jax.nn.relu6, "
        "max(x, c), min(x, c), jnp.clip) have a guided backward rule here. Pass the model as "
        "gj.ModelFunctions(logits, guided_logits=...) with its activations wrapped in "
        "gag_jax.gradients.guided_backprop_activation instead")


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **params)
    return out if eqn.primitive.multiple_results else [out]


def _evaluate(jaxpr, consts, args, const_infos, arg_infos):
    """Evaluate ``jaxpr`` with every ReLU-like clamp on the inputs' path replaced by ``_guided_clamp``.

    Returns ``(outputs, infos)``.
    """
    env: dict[Any, Any] = {}
    infos: dict[Any, _Info] = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    def info(v):
        if isinstance(v, jex_core.Literal):
            return _Info(False, _uniform_constant(v.val))
        return infos[v]

    for var, value, var_info in zip(jaxpr.constvars, consts, const_infos):
        env[var], infos[var] = value, var_info
    for var, value, var_info in zip(jaxpr.invars, args, arg_infos):
        env[var], infos[var] = value, var_info

    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        in_infos = [info(v) for v in eqn.invars]
        outs, out_infos = _evaluate_eqn(eqn, invals, in_infos)
        for var, value, var_info in zip(eqn.outvars, outs, out_infos):
            env[var], infos[var] = value, var_info
    return [read(v) for v in jaxpr.outvars], [info(v) for v in jaxpr.outvars]


def _closed_evaluator(closed, in_infos):
    """``fn(*args) -> outputs``: ``_evaluate`` of a closed jaxpr with fixed input infos."""
    const_infos = [_Info(False, _uniform_constant(c)) for c in closed.consts]

    def fn(*args):
        return _evaluate(closed.jaxpr, closed.consts, args, const_infos, in_infos)[0]

    return fn


def _evaluate_eqn(eqn, invals, in_infos):
    name = eqn.primitive.name
    dependent = any(i.dependent for i in in_infos)
    n_out = len(eqn.outvars)
    if not dependent:  # off the inputs' path: nothing to guide; track constants through reshapes
        constant = in_infos[0].constant if name in _SHAPE_PRIMITIVES and in_infos else None
        return _bind(eqn, invals), [_Info(False, constant)] * n_out
    on_path = [_Info(True)] * n_out
    if name in ("max", "min"):
        (x, other), (x_info, other_info) = invals, in_infos
        if not x_info.dependent:
            (x, other), (x_info, other_info) = (other, x), (other_info, x_info)
        out_aval = eqn.outvars[0].aval
        if (not other_info.dependent and other_info.constant is not None
                and jnp.issubdtype(out_aval.dtype, jnp.inexact)):
            x = jnp.broadcast_to(jnp.asarray(x, out_aval.dtype), out_aval.shape)
            return [_guided_clamp(x, other_info.constant, name == "min")], on_path
        return _bind(eqn, invals), on_path
    if name in _UNGUIDABLE_PRIMITIVES:
        raise _unguidable(f"the activation {_UNGUIDABLE_PRIMITIVES[name]} (primitive {name!r})")
    if name == "jit":
        function = eqn.params.get("name")
        if function in _UNGUIDABLE_FUNCTIONS:
            raise _unguidable(f"the activation {function!r}")
        closed = eqn.params["jaxpr"]
        const_infos = [_Info(False, _uniform_constant(c)) for c in closed.consts]
        return _evaluate(closed.jaxpr, closed.consts, invals, const_infos, in_infos)
    subs = _sub_jaxprs(eqn.params)
    if not subs or not any(_has_activation(sub) for sub in subs):
        return _bind(eqn, invals), on_path
    if name == "custom_jvp_call":  # e.g. jax.nn.relu: its own derivative rule gives way to the guided one
        closed = eqn.params["call_jaxpr"]
        return _closed_evaluator(closed, in_infos)(*invals), on_path
    if name in ("remat2", "checkpoint"):
        closed = jex_core.ClosedJaxpr(eqn.params["jaxpr"], ())
        fn = jax.checkpoint(_closed_evaluator(closed, in_infos), prevent_cse=eqn.params["prevent_cse"],
                            policy=eqn.params["policy"])
        return fn(*invals), on_path
    if name == "cond":
        index, operands = invals[0], invals[1:]
        branches = [_closed_evaluator(b, in_infos[1:]) for b in eqn.params["branches"]]
        return jax.lax.switch(index, branches, *operands), on_path
    if name == "scan":
        params = eqn.params
        n_consts, n_carry = params["num_consts"], params["num_carry"]
        consts, init, xs = invals[:n_consts], invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
        carry_infos = [_Info(True)] * (len(invals) - n_consts)
        body_fn = _closed_evaluator(params["jaxpr"], in_infos[:n_consts] + carry_infos)

        def body(carry, x):
            outs = body_fn(*consts, *carry, *x)
            return outs[:n_carry], outs[n_carry:]

        carry, ys = jax.lax.scan(body, init, xs, length=params["length"], reverse=params["reverse"],
                                 unroll=params["unroll"])
        return [*carry, *ys], on_path
    raise _unguidable(f"activations inside a {name!r} (its derivative rule is its own)")


def guided_backprop(model_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``model_fn`` with every ReLU replaced by the guided ReLU (Springenberg et al. 2015).

    ``model_fn`` is traced to a jaxpr and evaluated again, equation by equation, with each ReLU-like
    clamp on the inputs' path replaced by a ``jax.custom_vjp`` of the same forward value whose backward
    pass lets only positive gradients through, where the forward input was in range:

    * ``jax.nn.relu`` and ``max(x, c)`` for a constant c: ``g_in = g * (x > c) * (g > 0)``;
    * ``jax.nn.relu6``, ``jnp.clip`` and ``min(x, c)``: also blocks ``x >= c`` of the upper bound,
      so ReLU6's backward is ``g * (0 < x < 6) * (g > 0)``, as a guided ReLU6.

    Everything else (convolutions, pooling, batch norm, ``jit``, ``remat``, ``scan``, ``cond``)
    keeps its own derivative. Any ``max``/``min`` of a value and a constant counts as a ReLU,
    including a numerical floor on the inputs' path (e.g. a layer norm's ``max(0, var)``).

    Args:
      model_fn: any traceable function of arrays, e.g. ``images (B, H, W, C) -> logits (B, K)``;
        Flax or not, parameters closed over.

    Returns:
      A function with the same signature and forward values and guided gradients.

    Raises:
      ValueError: (when called) the inputs' path holds an activation that is not ReLU-like (SiLU,
        sigmoid, tanh, GELU, ELU, leaky ReLU, softplus, ...) or a ReLU inside a ``custom_vjp`` or a
        loop whose derivative cannot be rewritten; the message names it. Such a model needs a
        hand-built guided copy (``ModelFunctions.guided_logits``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> g = jax.grad(lambda x: guided_backprop(jax.nn.relu)(x).sum() * -1.0)(jnp.ones(3))
      >>> g.tolist()  # the negative gradient does not cross the ReLU
      [0.0, 0.0, 0.0]
    """

    @functools.wraps(model_fn)
    def guided(*args):
        closed, out_shape = jax.make_jaxpr(model_fn, return_shape=True)(*args)
        flat_args = jax.tree_util.tree_leaves(args)
        const_infos = [_Info(False, _uniform_constant(c)) for c in closed.consts]
        outs, _ = _evaluate(closed.jaxpr, closed.consts, flat_args, const_infos, [_Info(True)] * len(flat_args))
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return guided


def guided_logit_gradient() -> GradientFn:
    """Gradient seam of Guided Backprop: ``d logit_c / d input`` through guided ReLUs, float32.

    If ``model_fn`` has a ``guided_logits`` attribute (a ``gj.ModelFunctions`` with a hand-built
    guided copy, for models whose activations cannot be rewritten), that copy is differentiated;
    otherwise ``guided_backprop(model_fn)`` (the ReLU rewrite).

    Examples:
      >>> import jax.numpy as jnp
      >>> model_fn = lambda x: jax.nn.relu(x.reshape(-1, 1) @ jnp.ones((1, 2))) @ jnp.array([[1.0], [-2.0]])
      >>> x, labels = jnp.ones((1, 1, 1, 1)), jnp.zeros(1, jnp.int32)
      >>> logit_gradient()(model_fn, x, labels).reshape(-1).tolist()  # 1 - 2
      [-1.0]
      >>> guided_logit_gradient()(model_fn, x, labels).reshape(-1).tolist()  # the -2 path is blocked
      [1.0]
    """
    return _guided_logit_gradient


def _guided_logit_gradient(model_fn: ModelFn, inputs: jax.Array, labels: jax.Array) -> jax.Array:
    guided = getattr(model_fn, "guided_logits", None)
    return _logit_gradient(guided if guided is not None else guided_backprop(model_fn), inputs, labels)
