"""The ``explainer=`` argument of the robustness and randomisation metrics, as one traceable function.

Those metrics re-explain perturbed inputs (robustness) or a randomised model (randomisation) inside
their own compiled program, so the explainer they are given must be *traceable*: a function of
``(model, images, labels, key)`` that ``jax.jit`` can trace with the model's weights and the images
as abstract values. :func:`as_explainer` turns every form the metrics accept into such a function:

* a method name (``"sg"``), a ``(name, {options})`` pair, a ``gj.Method`` or a composed
  ``gj.Explainer``: ``gj.explain(method, model, images, labels, key=key, validate=False, **options)``
  (``gj.explain`` is traceable with ``validate=False`` for every ``jittable`` method; XRAI segments
  on the host and is refused with a ValueError);
* a callable ``explainer(model, images, labels, key) -> (n, H, W)`` maps: used as it is (it must be
  traceable: JAX code, no conversion to numpy).

The normalised explainer is hashable by value for the built-in forms (the same name and options
give an equal object), so the metrics' compiled programs are cached across calls; a callable is
hashed by identity (pass the same function object to reuse the compilation).

``key`` is always a batch of keys ``(n, 2)``, one per image given to the explainer: the metrics fold
each perturbed copy's key from its image's key, so a copy's explanation does not depend on the
other images of the batch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from gag_jax import explainers as explainers_lib
from gag_jax.pipeline import Explainer

__all__ = ["ExplainerFn", "as_explainer", "explainer_name"]

ExplainerFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Explain:
    """``gj.explain(method, model, images, labels, key=key, validate=False, **options)`` (hashable)."""

    method: Any  # a name in gj.PRESETS or a gj.Method (hashable)
    options: tuple[tuple[str, Any], ...] = ()

    def __call__(self, model, images, labels, key):
        return explainers_lib.explain(self.method, model, images, labels, key=key, validate=False,
                                      **dict(self.options))

    @property
    def name(self) -> str:
        method = self.method if isinstance(self.method, str) else self.method.name
        return explainers_lib.method_key(method, dict(self.options))


def _check_jittable(record: explainers_lib.Method) -> None:
    if not record.jittable:
        raise ValueError(
            f"method {record.name!r} runs host code (it is not jittable), so it cannot re-explain the perturbed "
            "copies inside the metric's compiled program; use a jittable method (e.g. 'ig', 'sg', 'gag', 'occlusion') "
            "or a traceable callable explainer(model, images, labels, key) -> (n, H, W)")


def as_explainer(explainer) -> ExplainerFn:
    """A traceable ``fn(model, images (n, H, W, C), labels (n,), keys (n, 2)) -> maps (n, H, W)``.

    Args:
      explainer: a method name in ``gj.PRESETS`` (``"sg"``), a ``(name_or_method, {options})`` pair,
        a ``gj.Method``, a composed ``gj.Explainer``, or a callable
        ``explainer(model, images, labels, key) -> (n, H, W)`` (used as it is; it must be traceable).

    Returns:
      The function; for the built-in forms it calls ``gj.explain(..., validate=False)`` (maps in
      [0, 1]: the project's channel reduction and per-image min-max; ``postprocess`` and ``reduce``
      can be given as options).

    Raises:
      ValueError: ``None``, an unknown method or option, a ``(method, options)`` pair whose options
        are not a mapping, or a method that is not jittable (XRAI).
    """
    if explainer is None:
        raise ValueError("this metric re-explains its inputs: pass explainer= (a method name such as 'sg', a "
                         "(name, {options}) pair, a gj.Method, a composed gj.Explainer or a callable "
                         "explainer(model, images, labels, key) -> (n, H, W))")
    options: Mapping[str, Any] = {}
    method = explainer
    if isinstance(explainer, tuple):
        if len(explainer) != 2 or not isinstance(explainer[1], Mapping):
            raise ValueError(f"an explainer pair must be (method, {{options}}); got {explainer!r}")
        method, options = explainer
    if isinstance(method, Explainer):
        method = explainers_lib.as_method(method)
    if isinstance(method, (str, explainers_lib.Method)):
        record = explainers_lib.as_method(method)
        _check_jittable(record)
        extra = dict(options)
        postprocess = extra.pop("postprocess", True)
        explainers_lib.resolve_options(record, extra)  # unknown option names: ValueError now
        key_method = method if isinstance(method, str) else record
        items = tuple(sorted({**{k: explainers_lib.hashable(v) for k, v in extra.items()},
                              **({} if postprocess is True else {"postprocess": postprocess})}.items()))
        return _Explain(key_method, items)
    if options:
        raise ValueError(f"options {sorted(options)} can only be given with a method name, gj.Method or gj.Explainer")
    if callable(method):
        return method
    raise ValueError(f"explainer must be a method name, a (name, options) pair, a gj.Method, a gj.Explainer or a "
                     f"callable explainer(model, images, labels, key); got {explainer!r}")


def explainer_name(explainer) -> str:
    """A short name of an explainer for messages."""
    fn = as_explainer(explainer)
    if isinstance(fn, _Explain):
        return fn.name
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) or type(inner).__name__
