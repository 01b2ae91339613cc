"""The user's own code named as ``module:attribute`` (as console scripts and pytest plugins name it):
a method, a metric or a model, wherever a command takes a name.

The module is imported from the working directory or ``PYTHONPATH``; the attribute is

* a **method**: a factory ``f(**options) -> gj.Explainer`` (what the presets are), a composed
  ``gj.Explainer`` or a ``gj.Method``; registered with :func:`gag_jax.register_method` under the
  attribute's name (the row's name);
* a **metric**: ``fn(model, images, labels, maps, **options) -> (B,)`` or a dict, or a
  ``gj.metrics.Metric``; registered with :func:`gag_jax.metrics.register` under the attribute's name;
* a **model**: a factory ``f() -> gj.ModelFunctions`` (or a ``gj.ModelFunctions`` itself).

Every failure is one ``ValueError`` line naming the reference and what is wrong (no module, no
attribute, a wrong type), which the command line prints before exiting with status 2.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from typing import Any

from gag_jax import explainers
from gag_jax._signature import source_of
from gag_jax.metrics import registry
from gag_jax.model import ModelFunctions

_REFERENCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attribute>[A-Za-z_][\w.]*)$")

__all__ = ["is_reference", "load_attribute", "user_method", "user_metric", "user_model"]


def is_reference(text: str) -> bool:
    """Whether ``text`` names code as ``module:attribute`` (``mylab.methods:edge_grad``)."""
    return isinstance(text, str) and bool(_REFERENCE.match(text.strip()))


def load_attribute(reference: str, what: str) -> tuple[Any, str]:
    """``(object, attribute name)`` of ``module:attribute``.

    Args:
      reference: ``"package.module:attribute"`` (the attribute may be dotted: ``module:Class.factory``).
      what: what it should be (``"method"``, ``"metric"``, ``"model"``), for the error message.

    Raises:
      ValueError: not of the form ``module:attribute``, a module that cannot be imported, a missing
        attribute.
    """
    match = _REFERENCE.match(str(reference).strip())
    if match is None:
        raise ValueError(f"{what} {reference!r}: expected module:attribute (e.g. mylab.methods:edge_grad)")
    module_name, attribute = match.group("module"), match.group("attribute")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # as `python -m`: the working directory is importable
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"{what} {reference!r}: no module named {err.name!r} (importable from the working "
                             f"directory {cwd} or PYTHONPATH)") from None
        raise ValueError(f"{what} {reference!r}: importing {module_name!r} failed: {err}") from None
    except Exception as err:  # the user's module raised while importing: say so in one line
        raise ValueError(f"{what} {reference!r}: importing {module_name!r} raised "
                         f"{type(err).__name__}: {err}") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"{what} {reference!r}: module {module_name!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    return value, attribute.rsplit(".", 1)[-1]


def _same_source(record, reference: str) -> bool:
    source = getattr(record, "source", None) or {}
    return source.get("module") == reference.split(":", 1)[0]


def user_method(reference: str) -> str:
    """Register the method ``module:attribute`` (see the module docstring) and return its name.

    Raises:
      ValueError: as :func:`load_attribute`; an attribute named like a built-in method; a factory
        that does not build a ``gj.Explainer``.
    """
    value, name = load_attribute(reference, "method")
    existing = explainers.METHOD_RECORDS.get(name)
    if existing is not None and existing.function is value:
        return name
    if any(name == m for m in explainers.BUILT_IN_METHODS):
        raise ValueError(f"method {reference!r}: {name!r} is a built-in method's name; rename the attribute")
    try:
        explainers.register_method(name, value, replace=existing is not None and _same_source(existing, reference))
    except ValueError as err:
        raise ValueError(f"method {reference!r}: {err}") from None
    record = explainers.METHOD_RECORDS[name]
    if record.source is None:  # an Explainer or Method object: the module that holds it
        module = importlib.import_module(reference.split(":", 1)[0])
        explainers.METHOD_RECORDS[name] = dataclasses.replace(record, source=source_of(module))
    return name


def user_metric(reference: str) -> str:
    """Register the metric ``module:attribute`` (see the module docstring) and return its name.

    Raises:
      ValueError: as :func:`load_attribute`; a built-in metric's name; not callable.
    """
    value, name = load_attribute(reference, "metric")
    if name in registry.metric_names() and registry.get(name).function is value:
        return name
    existing = registry._REGISTRY.get(name)
    try:
        registry.register(name, value, replace=existing is not None and _same_source(existing, reference))
    except ValueError as err:
        raise ValueError(f"metric {reference!r}: {err}") from None
    return name


def user_model(reference: str) -> ModelFunctions:
    """The ``gj.ModelFunctions`` that ``module:attribute`` builds (a factory called without
    arguments, or the ModelFunctions itself).

    Raises:
      ValueError: as :func:`load_attribute`; a factory that raises or returns something else.
    """
    value, _ = load_attribute(reference, "model")
    if isinstance(value, ModelFunctions):
        return value
    if not callable(value):
        raise ValueError(f"model {reference!r}: expected a factory returning a gj.ModelFunctions; got "
                         f"{type(value).__name__}")
    try:
        model = value()
    except Exception as err:
        raise ValueError(f"model {reference!r}: calling it raised {type(err).__name__}: {err}") from None
    if not isinstance(model, ModelFunctions):
        raise ValueError(f"model {reference!r} must return a gj.ModelFunctions (ModelFunctions.from_module / "
                         f"from_nnx / from_apply); got {type(model).__name__}")
    return model
