"""Where a command's wall time goes: the time JAX spends compiling inside a block (``demo``'s
compile s / run s columns)."""
from __future__ import annotations

import jax

# JAX's compile events (jax/_src/dispatch.py): tracing to a jaxpr, lowering to StableHLO, and the
# backend compile (which includes a persistent compile-cache lookup and load)
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileTimer:
    """Wall time JAX spends compiling inside a ``with`` block, from its ``jax.monitoring`` events.

    ``seconds`` is the length of the union of the time spans of :data:`COMPILE_EVENTS` (tracing,
    lowering, XLA compilation or loading from the persistent cache), so nested traces are counted
    once; the rest of the block's wall time is running (dispatch, the computation, host copies).
    """

    def __init__(self):
        self.spans: list[tuple[float, float]] = []

    def _listener(self, event, start, end, **_):
        if event in COMPILE_EVENTS:
            self.spans.append((float(start), float(end)))

    def __enter__(self):
        jax.monitoring.register_event_time_span_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_time_span_listener(self._listener)
        return False

    @property
    def seconds(self) -> float:
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.spans):
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total
