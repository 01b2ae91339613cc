"""Option names and defaults read from a method function's signature (the one place they are written).

Also the recognition of a bare function passed as a method, kept for one release: a ``gj.Method``
record says what a function is; a bare function is recognised by the documented signature rule.
"""
from __future__ import annotations

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


def looks_like_attribution_function(fn: Callable) -> tuple[bool, bool]:
    """``(attribution, random)`` of a bare function by the documented rule: an attribution function's
    first parameter has no default (``fn(model, images, labels, key, ...)``), and it is random when
    its ``key`` has none; anything else is a preset."""
    parameters = list(inspect.signature(fn).parameters.values())
    first = parameters[0] if parameters else None
    attribution = first is not None and first.default is inspect.Parameter.empty and first.kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    random = attribution and len(parameters) > 3 and parameters[3].default is inspect.Parameter.empty
    return attribution, random
