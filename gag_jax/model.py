"""The model contract: ``ModelFunctions``, a pytree of a model's weights and its pure apply functions.

Every entry point of the package (``gj.explain``, ``gj.metrics``, ``gj.sanity``, the CLI) takes the
model as a ``ModelFunctions``. Its **arrays are pytree leaves** (the linen ``variables``, or the
NNX ``State``) and its **apply functions are static** (Flax's ``TrainState`` pattern: ``apply_fn``
static, ``params`` traced). Every jitted computation takes it as an ordinary argument, so

* weights are never baked into a compiled program as constants: the next training step, a loaded
  checkpoint or zeroed weights give new maps from the same compiled program, without re-tracing;
* a new set of weights for the same architecture reuses the compilation.

It also carries the model's **input scaling** (``mean``/``std`` of the standardisation of pixels
in [0, 1]): the methods and metrics that put black in pixel space (IG's and Guided IG's baseline,
occlusion, RISE, XRAI, RCAP, ROAD's noise) read it from here, through :mod:`gag_jax.pixels`, which
builds every pixel-space value. Explicit ``mean=``/``std=`` keywords still override; a model without
it gets a clear error from those methods, never a guess.

Build it with

* ``ModelFunctions.from_module(module, variables, mean=..., std=...)`` (Flax linen),
* ``ModelFunctions.from_nnx(module, mean=..., std=...)`` (Flax NNX; put in eval mode),
* ``ModelFunctions.from_apply(apply, variables, mean=..., std=...)`` (any pure
  ``apply(variables, images) -> logits``),
* ``ModelFunctions(logits_fn)`` (a plain callable of images: its weights, if it reads any from
  outside, are constants of the compiled program: a jitted program is cached per function object,
  so a function that reads global weights keeps the weights it was first traced with. Use one of
  the constructors above for weights that change).

It also holds the guided activation (``guided_backprop_activation``) that the models of
``gag_jax.models`` build their Guided-Backprop copies from. This module sits on the bottom floor
of the package: it imports only JAX (Flax on demand); the core and the models both import it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BoundFunction", "ModelFunctions", "as_model_functions", "guided_backprop_activation", "guided_relu",
           "check_scaling", "jit_with_model", "scaling_tuple", "warn_if_closed_over"]

_PARTS = ("logits", "features", "head", "guided_logits")


# ----------------------------------------------------------------------------------------------
# the guided activation: what a model's own Guided-Backprop copy is built from


def guided_backprop_activation(activation: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Wrap an activation so its backward pass follows Guided Backpropagation.

    Forward: ``activation(x)`` unchanged. Backward: the incoming gradient is first clipped at
    zero (only positive gradients pass) and then multiplied by the activation's own derivative.
    For ReLU this is the rule of Springenberg et al.: ``g_in = g_out * (x > 0) * (g_out > 0)``;
    ReLU6 also blocks ``x > 6``; SiLU uses its smooth derivative.

    Args:
      activation: elementwise function, e.g. ``jax.nn.relu``.

    Returns:
      An elementwise function with the same forward values, usable inside a Flax module.
    """

    @jax.custom_vjp
    def guided(x):
        return activation(x)

    def fwd(x):
        y, vjp = jax.vjp(activation, x)
        return y, vjp

    def bwd(vjp, g):
        (gx,) = vjp(jnp.maximum(g, 0).astype(g.dtype))
        return (gx,)

    guided.defvjp(fwd, bwd)
    return guided


guided_relu = guided_backprop_activation(jax.nn.relu)
guided_relu.__doc__ = "ReLU whose backward pass only lets positive gradients through (Guided Backprop)."


# ----------------------------------------------------------------------------------------------
# static apply functions: (variables, x) -> y, hashable, compared by what they apply
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Plain:
    """A plain function of ``x`` (no variables): ``f(x)``."""

    fn: Callable

    def __call__(self, variables, x):
        return self.fn(x)


@dataclasses.dataclass(frozen=True)
class _Apply:
    """A pure ``apply(variables, x)``."""

    fn: Callable

    def __call__(self, variables, x):
        return self.fn(variables, x)


@dataclasses.dataclass(frozen=True)
class _Linen:
    """``module.apply(variables, x, method=method)`` of a Flax linen module."""

    module: Any
    method: str | None = None

    def __call__(self, variables, x):
        if self.method is None:
            return self.module.apply(variables, x)
        return self.module.apply(variables, x, method=self.method)


@dataclasses.dataclass(frozen=True)
class _Nnx:
    """``nnx.merge(graphdef, state)(x)`` (or its ``method``) of a Flax NNX module."""

    graphdef: Any
    method: str | None = None

    def __call__(self, variables, x):
        from flax import nnx

        module = nnx.merge(self.graphdef, variables)
        return module(x) if self.method is None else getattr(module, self.method)(x)


def _layer_error(layer: str, names: Sequence[str]) -> ValueError:
    shown = ", ".join(repr(n) for n in names[:40]) + (" ..." if len(names) > 40 else "")
    return ValueError(f"the model has no layer {layer!r}; its layers are: {shown}")


@dataclasses.dataclass(frozen=True)
class _LinenTap:
    """Logits and the output of the named submodule (``"layer4"``, ``"blocks_15/conv"``), with
    ``delta`` added to that output (its gradient is the gradient with respect to the activations)."""

    module: Any

    def __call__(self, variables, x, layer: str, delta):
        import flax.linen as nn

        seen: list[str] = []
        captured: list = []

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name != "__call__" or context.module.path == ():
                return out
            path = "/".join(str(p) for p in context.module.path)
            seen.append(path)
            if path == layer and not captured:
                if delta is not None:
                    out = out + delta.astype(out.dtype)
                captured.append(out)
            return out

        with nn.intercept_methods(interceptor):
            logits = self.module.apply(variables, x)
        if not captured:
            raise _layer_error(layer, list(dict.fromkeys(seen)))
        return logits, captured[0]


class _Recorder:
    """Stands in for an NNX submodule: calls it, adds ``delta`` to its output and keeps that output."""

    def __init__(self, inner, delta):
        self.inner, self.delta, self.outputs = inner, delta, []

    def __call__(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if not self.outputs and self.delta is not None:
            out = out + self.delta.astype(out.dtype)
        self.outputs.append(out)
        return out


def _nnx_layer_names(module) -> list[str]:
    from flax import nnx

    return ["/".join(str(p) for p in path) for path, node in nnx.iter_graph(module)
            if isinstance(node, nnx.Module) and path]


@dataclasses.dataclass(frozen=True)
class _NnxTap:
    """As :class:`_LinenTap` for an NNX module: the named attribute path (``"conv2"``, ``"blocks/3"``)."""

    graphdef: Any

    def __call__(self, variables, x, layer: str, delta):
        from flax import nnx

        module = nnx.merge(self.graphdef, variables)  # a copy made in this trace: free to change
        parts = layer.split("/")
        parent = module
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
            last = parts[-1]
            inner = parent[int(last)] if last.isdigit() else getattr(parent, last)
        except (AttributeError, IndexError, KeyError, TypeError):
            raise _layer_error(layer, _nnx_layer_names(module)) from None
        recorder = _Recorder(inner, delta)
        if last.isdigit():
            parent[int(last)] = recorder
        else:
            object.__setattr__(parent, last, recorder)
        logits = module(x)
        if not recorder.outputs:
            raise ValueError(f"layer {layer!r} is not called by the model's forward pass")
        return logits, recorder.outputs[0]


@dataclasses.dataclass(frozen=True)
class _Statics:
    logits: Callable
    features: Callable | None = None
    head: Callable | None = None
    guided_logits: Callable | None = None
    tap: Callable | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def scaling_tuple(name: str, value, channels: int | None = None) -> tuple[float, ...] | None:
    """``mean`` / ``std`` as a hashable tuple of floats (None stays None): the package's one check of
    an input scaling. ``std`` entries must be > 0; with ``channels``, 1 or ``channels`` entries.

    Raises:
      ValueError: not a sequence of floats, empty, a ``std`` entry <= 0, or the wrong length.
    """
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in np.ravel(np.asarray(value, np.float64)).tolist())
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of floats (one per channel); got {value!r}") from err
    if not out:
        raise ValueError(f"{name} must not be empty")
    if name == "std" and any(not s > 0 for s in out):
        raise ValueError(f"std entries must be > 0; got {out}")
    if channels is not None and len(out) not in (1, channels):
        raise ValueError(f"{name} must have 1 or C={channels} entries; got {len(out)}: {out}")
    return out


def check_scaling(mean, std, channels: int | None = None
                  ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Both of ``mean`` / ``std`` (checked by :func:`scaling_tuple`) or neither (``(None, None)``).

    Raises:
      ValueError: only one given, or a bad value (see :func:`scaling_tuple`).
    """
    if (mean is None) != (std is None):
        raise ValueError("give the input scaling as both mean and std (pixels in [0, 1]), or neither")
    return scaling_tuple("mean", mean, channels), scaling_tuple("std", std, channels)


# ----------------------------------------------------------------------------------------------
# the pytree
# ----------------------------------------------------------------------------------------------

@jax.tree_util.register_pytree_node_class
class ModelFunctions:
    """A model as the explainers and metrics need it: weights (pytree leaves) + pure apply functions.

    Attributes (read-only):
      logits: ``images (B, H, W, C) -> logits (B, K)``.
      features: ``images -> activations (B, h, w, D)`` of the Grad-CAM layer, or None.
      head: ``activations -> logits`` (Grad-CAM), or None.
      guided_logits: optional copy of the model with Guided-Backprop activations, for models whose
        activations ``gradients.guided_backprop`` cannot rewrite (SiLU, GELU, ...), or None.
      variables: the weights (a pytree: linen variables, an NNX ``State``, or None).
      mean, std: the model's input scaling (per-channel tuples, pixels in [0, 1]) or None (unknown).

    ``ModelFunctions(logits, features=None, head=None, guided_logits=None, mean=None, std=None)``
    wraps a plain callable of images: its weights (if it reads any from outside) are constants of
    every compiled program, which is cached per function object, so a function that reads global
    weights keeps those of its first call. Use :meth:`from_module`,
    :meth:`from_nnx` or :meth:`from_apply` when weights change between calls.

    Calling the object calls ``logits``.
    """

    __slots__ = ("_statics", "_variables", "__weakref__")

    def __init__(self, logits: Callable, features: Callable | None = None, head: Callable | None = None,
                 guided_logits: Callable | None = None, *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        if not callable(logits):
            raise ValueError(f"logits must be a callable images -> logits; got {type(logits)}")
        for name, fn in (("features", features), ("head", head), ("guided_logits", guided_logits)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name} must be a callable or None; got {type(fn)}")
        mean, std = check_scaling(mean, std)
        wrap = (lambda f: None if f is None else _Plain(f))
        self._statics = _Statics(_Plain(logits), wrap(features), wrap(head), wrap(guided_logits), None, mean, std)
        self._variables = None

    @classmethod
    def _make(cls, statics: _Statics, variables) -> ModelFunctions:
        obj = object.__new__(cls)
        obj._statics = statics
        obj._variables = variables
        return obj

    # pytree protocol: the variables are the children, everything else is static
    def tree_flatten(self):
        return (self._variables,), self._statics

    @classmethod
    def tree_unflatten(cls, statics, children):
        return cls._make(statics, children[0])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_apply(cls, apply: Callable, variables, *, features: Callable | None = None,
                   head: Callable | None = None, guided_logits: Callable | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ModelFunctions:
        """A model given as pure functions of ``(variables, x)``.

        Args:
          apply: ``apply(variables, images (B, H, W, C)) -> logits (B, K)``.
          variables: any pytree of arrays (the traced leaves).
          features, head, guided_logits: optional ``f(variables, x)`` functions (see the class).
          mean, std: the input scaling (pixels in [0, 1]); None if unknown.
        """
        mean, std = check_scaling(mean, std)
        wrap = (lambda f: None if f is None else _Apply(f))
        return cls._make(_Statics(_Apply(apply), wrap(features), wrap(head), wrap(guided_logits), None, mean, std),
                         variables)

    @classmethod
    def from_module(cls, module, variables: Mapping, *, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, jit: bool | None = None) -> ModelFunctions:
        """A Flax linen module with its variables.

        ``logits`` is ``module.apply``; ``features``/``head`` if the module defines both methods
        (Grad-CAM without naming a layer); ``guided_logits`` if it has a ``guided_backprop`` field
        (a copy of the module with guided activations). Grad-CAM on any submodule: ``layer=`` (its
        path, e.g. ``"layer4"`` or ``"blocks_15/conv"``).

        Args:
          module: a ``flax.linen.Module`` mapping images ``(B, H, W, C)`` to logits ``(B, K)``.
          variables: its variables (``{"params", ...}``): the pytree leaves.
          mean, std: the input scaling (pixels in [0, 1]); None if unknown.
          jit: ignored (kept for compatibility: every call is jitted with the variables as arguments).
        """
        del jit
        mean, std = check_scaling(mean, std)
        split = callable(getattr(module, "features", None)) and callable(getattr(module, "head", None))
        guided = "guided_backprop" in getattr(module, "__dataclass_fields__", {})
        return cls._make(_Statics(
            _Linen(module), _Linen(module, "features") if split else None, _Linen(module, "head") if split else None,
            _Linen(module.clone(guided_backprop=True)) if guided else None, _LinenTap(module), mean, std),
            variables)

    @classmethod
    def from_nnx(cls, module, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 eval_mode: bool = True) -> ModelFunctions:
        """A Flax NNX module, split into its graph definition (static) and state (the leaves).

        The module is put in evaluation mode on a copy (``module.eval()``: batch norm uses its
        running statistics, dropout is off), so a module left in training mode neither mutates its
        statistics inside a trace nor explains a noisy model. The given module is not changed; a
        later change of its weights needs a new ``from_nnx`` (cheap: no compilation).
        ``features``/``head`` if the module defines both methods; Grad-CAM on any submodule by its
        attribute path (``layer="conv2"``, ``"blocks/3"``).

        Args:
          module: an ``nnx.Module`` mapping images ``(B, H, W, C)`` to logits ``(B, K)``.
          mean, std: the input scaling (pixels in [0, 1]); None if unknown.
          eval_mode: False keeps the module's mode (a module that mutates state then fails to trace).
        """
        from flax import nnx

        if not isinstance(module, nnx.Module):
            raise ValueError(f"from_nnx takes a flax.nnx.Module; got {type(module)}")
        mean, std = check_scaling(mean, std)
        graphdef, state = nnx.split(module)
        if eval_mode:
            copy = nnx.merge(graphdef, state)
            copy.eval()
            graphdef, state = nnx.split(copy)
        split = callable(getattr(module, "features", None)) and callable(getattr(module, "head", None))
        return cls._make(_Statics(_Nnx(graphdef), _Nnx(graphdef, "features") if split else None,
                                  _Nnx(graphdef, "head") if split else None, None, _NnxTap(graphdef), mean, std),
                         state)

    # ------------------------------------------------------------------ accessors
    def _bound(self, part: str):
        return None if getattr(self._statics, part) is None else BoundFunction(self, part)

    @property
    def logits(self) -> BoundFunction:
        return BoundFunction(self, "logits")

    @property
    def features(self) -> BoundFunction | None:
        return self._bound("features")

    @property
    def head(self) -> BoundFunction | None:
        return self._bound("head")

    @property
    def guided_logits(self) -> BoundFunction | None:
        return self._bound("guided_logits")

    @property
    def variables(self):
        return self._variables

    @property
    def mean(self) -> tuple[float, ...] | None:
        return self._statics.mean

    @property
    def std(self) -> tuple[float, ...] | None:
        return self._statics.std

    @property
    def scaling(self) -> dict[str, tuple[float, ...]] | None:
        """``{"mean", "std"}`` (pixels in [0, 1]) or None when the model does not carry it."""
        return None if self.mean is None else {"mean": self.mean, "std": self.std}

    def __call__(self, images):
        return self.logits(images)

    def replace(self, *, variables=dataclasses.MISSING, mean=dataclasses.MISSING,
                std=dataclasses.MISSING) -> ModelFunctions:
        """A copy with other weights (same apply functions: no new compilation) or input scaling."""
        statics = self._statics
        if mean is not dataclasses.MISSING or std is not dataclasses.MISSING:
            new_mean = statics.mean if mean is dataclasses.MISSING else mean
            new_std = statics.std if std is dataclasses.MISSING else std
            new_mean, new_std = check_scaling(new_mean, new_std)
            statics = dataclasses.replace(statics, mean=new_mean, std=new_std)
        return self._make(statics, self._variables if variables is dataclasses.MISSING else variables)

    @property
    def kind(self) -> str:
        """How the model was built: ``"linen"`` (:meth:`from_module`), ``"nnx"`` (:meth:`from_nnx`),
        ``"apply"`` (:meth:`from_apply`) or ``"plain"`` (a function)."""
        return type(self._statics.logits).__name__.strip("_").lower()

    def linen_parts(self):
        """``(module, variables)`` of a model built with :meth:`from_module` (a Flax linen module and
        its variables, e.g. for a layer-randomisation check); None for other models."""
        if isinstance(self._statics.logits, _Linen):
            return self._statics.logits.module, self._variables
        return None

    def layer_output(self, images, layer: str, delta=None):
        """``(logits (B, K), activations)`` of the submodule named ``layer``, ``delta`` added to them.

        Raises:
          ValueError: a plain callable (no layers), or no such layer (the message lists them).
        """
        if self._statics.tap is None:
            raise ValueError("naming a layer needs a Flax model: build it with gj.ModelFunctions.from_module "
                             "(linen) or gj.ModelFunctions.from_nnx; a plain callable has no layers")
        return self._statics.tap(self._variables, images, layer, delta)

    def __repr__(self):
        parts = [p for p in _PARTS if getattr(self._statics, p) is not None]
        return (f"ModelFunctions({self.kind}, parts={parts}, scaling="
                f"{'unknown' if self.mean is None else (self.mean, self.std)})")


def _call_part(model: ModelFunctions, x, part: str):
    return getattr(model._statics, part)(model._variables, x)


_call_part_jit = jax.jit(_call_part, static_argnames="part")


@jax.tree_util.register_pytree_node_class
class BoundFunction:
    """``model.logits`` / ``.features`` / ``.head`` / ``.guided_logits``: a callable of images that
    keeps its model (a pytree), so that passing ``model.logits`` to a metric is the same as passing
    ``model``. Called on concrete arrays it runs jitted, with the weights as arguments."""

    __slots__ = ("model", "part", "__weakref__")

    def __init__(self, model: ModelFunctions, part: str):
        self.model, self.part = model, part

    def __call__(self, x):
        return _call_part_jit(self.model, x, part=self.part)

    def tree_flatten(self):
        return (self.model,), self.part

    @classmethod
    def tree_unflatten(cls, part, children):
        return cls(children[0], part)

    def __repr__(self):
        return f"<{self.part} of {self.model!r}>"


def _is_nnx_module(obj) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(obj, nnx.Module)


def _is_linen_module(obj) -> bool:
    try:
        import flax.linen as nn
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(obj, nn.Module)


def as_model_functions(model, variables=None) -> ModelFunctions:
    """Normalise what the entry points accept into a ``ModelFunctions`` (the package's one normaliser).

    * a ``ModelFunctions``: as is; its ``.logits`` (a :class:`BoundFunction`): its model;
    * a Flax NNX module: :meth:`ModelFunctions.from_nnx` (weights as leaves, eval mode, re-split
      at every call so that in-place changes of its weights are seen);
    * a mapping ``{"logits": f, "features": g, ...}`` or a plain callable ``images -> logits``:
      ``ModelFunctions(...)`` (weights it reads from outside are constants of the compiled program);
    * with ``variables``: a Flax linen module (:meth:`ModelFunctions.from_module`) or a pure
      ``apply(variables, images)`` (:meth:`ModelFunctions.from_apply`).

    Raises:
      ValueError: anything else, or a mapping with unknown keys / without ``"logits"``.
    """
    if variables is not None:
        if _is_linen_module(model):
            return ModelFunctions.from_module(model, variables)
        if callable(model) and not isinstance(model, (ModelFunctions, BoundFunction)) and not _is_nnx_module(model):
            return ModelFunctions.from_apply(model, variables)
        raise ValueError(f"with variables, model must be a flax linen Module or apply(variables, images); "
                         f"got {type(model)}")
    if isinstance(model, ModelFunctions):
        return model
    if isinstance(model, BoundFunction) and model.part == "logits":
        return model.model
    if _is_nnx_module(model):
        return ModelFunctions.from_nnx(model)
    if isinstance(model, Mapping):
        unknown = set(model) - set(_PARTS)
        if unknown:
            raise ValueError(f"unknown model function(s) {sorted(unknown)}; expected keys {_PARTS}")
        if "logits" not in model:
            raise ValueError("a model mapping needs a 'logits' function")
        return ModelFunctions(**model)
    if callable(model):
        return ModelFunctions(model)
    raise ValueError(f"model_fn must be a callable images -> logits, a gj.ModelFunctions, an NNX module or a "
                     f"mapping of model functions; got {type(model)}")


CLOSED_OVER_WARN_BYTES = 1024
"""A plain model function closing over more array bytes than this gets a warning (once)."""


@functools.lru_cache(maxsize=64)
def _closed_over_bytes(fn: Callable, shape: tuple, dtype: str) -> int:
    try:
        closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct(shape, np.dtype(dtype)))
    except Exception:  # noqa: BLE001 - the caller's own call reports a broken function
        return 0
    return int(sum(getattr(c, "nbytes", 0) for c in closed.consts))


def _function_name(fn) -> str:
    """A short name of a callable for messages (a partial's function, never its array arguments)."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__


def warn_if_closed_over(model: ModelFunctions, images) -> None:
    """Warn when a plain model function closes over arrays (traced once per function and input shape).

    Such arrays become constants of every compiled program, which is cached per function object:
    when they change (a training step, a loaded checkpoint), the maps would not. The warning names
    the fix: pass the weights as leaves of a ``ModelFunctions``.
    """
    plain = model._statics.logits
    if not isinstance(plain, _Plain) or getattr(images, "ndim", 0) != 4:
        return
    try:
        size = _closed_over_bytes(plain.fn, tuple(images.shape), str(images.dtype))
    except TypeError:  # an unhashable callable: nothing is cached for it either
        return
    if size > CLOSED_OVER_WARN_BYTES:  # Python's warning filters show it once per call site
        import warnings

        warnings.warn(
            f"the model function {_function_name(plain.fn)!r} closes over {size:,} bytes of arrays "
            "(its weights?): they are constants of the compiled program, which is cached per function object, so "
            "if they change the maps will not. Pass the weights as arguments: gj.ModelFunctions.from_apply(apply, "
            "variables), .from_module(module, variables) or .from_nnx(module)", UserWarning, stacklevel=3)


def jit_with_model(static_argnames: Sequence[str]):
    """``jax.jit`` for a core that takes the model as the keyword ``model_fn``: the model becomes a
    ``ModelFunctions`` and is passed as an ordinary (pytree) argument, so its weights are traced
    values, never constants; the cache key is the shapes, the static options and its apply functions.
    """
    others = tuple(name for name in static_argnames if name != "model_fn")

    def decorate(core):
        jitted = jax.jit(core, static_argnames=others)

        @functools.wraps(core)
        def call(*args, model_fn, **kwargs):
            model = as_model_functions(model_fn)
            if args:
                warn_if_closed_over(model, args[0])
            return jitted(*args, model_fn=model, **kwargs)

        return call

    return decorate
