"""Option names and defaults read from a method function's signature (the one place they are written),
and the source identity of a user's function (module, attribute, hash of the module file)."""
from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any


def option_defaults(fn: Callable, *, skip: int = 0, name: str | None = None) -> dict[str, Any]:
    """``{option: default}`` of ``fn``'s parameters after the first ``skip``.

    Raises:
      ValueError: an option without a default (named).
    """
    parameters = list(inspect.signature(fn).parameters.values())[skip:]
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"method {name or getattr(fn, '__name__', fn)!r}: every option needs a default; "
                         f"{missing} have none")
    return {p.name: p.default for p in parameters}


def source_of(function: Callable) -> dict[str, str] | None:
    """``{"module", "attribute", "sha256"}`` of a function (or a module) defined in a module file
    (the hash of the file's source: a run's manifest records which version of the user's code ran)."""
    module = function if inspect.ismodule(function) else inspect.getmodule(function)
    path = getattr(module, "__file__", None)
    if module is None or not path:
        return None
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    attribute = "" if inspect.ismodule(function) else getattr(function, "__qualname__", repr(function))
    return {"module": module.__name__, "attribute": attribute, "sha256": digest}
