"""Where a computation runs, and the choices that depend on it: the one backend policy of the package.

Three choices differ between the CPU and an accelerator, each measured on this project's 2-core
CPU (``benchmarks/RESULTS.md``, ``models/README.md``); nothing else in the package reads the
backend:

* **images per model call in the sample loop** (``gj.chain``'s ``chunk_size=None``): on CPU the
  largest divisor of n with ``chunk * batch <= CPU_IMAGES_PER_CALL`` (= 4): at 224 px, batch 4,
  n = 20, chunk 1 gave 1.5x (EfficientNet-Lite0) and 1.25x (ResNet-50) the explanations/s of all
  20 samples at once; on an accelerator all n at once;
* **perturbed copies per model call in the metrics** (``batch_size="auto"``): on CPU
  ``CPU_METRIC_COPIES`` (= 2): Lite0 at 224 px, RCAP + DAUC + IAUC on 4 photos, best warm time
  2.52 s at 1 copy per call, 2.48 s at 2, 2.86 s at 4, 3.08 s at 8, 5.12 s with all 100 at once; on
  an accelerator ``ACCELERATOR_METRIC_COPIES`` (= 64, not measured: no GPU was lent so far);
* **sorting the rows of the metrics** (:func:`host_sort`): XLA:CPU sorts with a compiled comparator,
  about 25x slower than numpy (``(4, 150528)`` float32 rows: 76 ms per row with ``jnp.sort``, 3 ms
  through numpy; a stable argsort 94 ms vs 35 ms; 2-core CPU, 2026-12-07), so on CPU the metrics'
  sorts, argsorts and top-k run in numpy through ``jax.pure_callback`` (``gag_jax.metrics._sorting``),
  with the same results (stable order, ties to the lower index); on an accelerator in XLA;
* **the depthwise convolution of the EfficientNets** (``depthwise="auto"``): XLA:CPU runs a grouped
  convolution with ``feature_group_count = C`` 2-5x slower than the same sum of strided slices,
  so ``"slices"`` on CPU and ``"grouped"`` elsewhere. (The written-out input-gradient conv of
  ``models/_conv.py`` is used on every backend: it is the same arithmetic.)

The platform is read from where the inputs live (:func:`platform_of`: a CPU array in a GPU process
is a CPU case) at the entry points, on the host; inside a trace, where arrays carry no device,
the process's default backend is used. Every choice can be overridden by the caller (an explicit
``chunk_size``, ``batch_size`` or ``depthwise``).
"""
from __future__ import annotations

import jax

__all__ = [
    "ACCELERATOR_METRIC_COPIES", "CPU_IMAGES_PER_CALL", "CPU_METRIC_COPIES", "DEPTHWISE_FASTEST",
    "HOST_SORT_PLATFORMS", "depthwise_impl", "host_sort", "metric_copies_per_call", "platform_of", "sample_chunk",
]

CPU_IMAGES_PER_CALL = 4
"""Images (samples x batch) per model call in the sample loop on CPU."""

CPU_METRIC_COPIES = 2
"""Perturbed copies per model call of the metrics on CPU (``batch_size="auto"``)."""

ACCELERATOR_METRIC_COPIES = 64
"""Perturbed copies per model call of the metrics on a GPU / TPU (not measured yet)."""

HOST_SORT_PLATFORMS = ("cpu",)
"""Platforms whose metrics sort in numpy (through ``jax.pure_callback``) rather than in XLA."""

DEPTHWISE_FASTEST = {"cpu": "slices"}
"""Platform -> the depthwise implementation that measured fastest there (``"grouped"`` otherwise)."""


def platform_of(x=None) -> str:
    """``"cpu"``, ``"gpu"``, ``"tpu"`` ...: the platform of the device(s) holding ``x``.

    Args:
      x: a committed ``jax.Array`` (its devices decide), or None / a numpy array / a tracer (the
        process's default backend: where such a value would be computed).
    """
    devices = getattr(x, "devices", None)
    if callable(devices) and not isinstance(x, jax.core.Tracer):
        try:
            found = devices()
        except Exception:  # noqa: BLE001 - deleted or abstract arrays: fall back to the default
            found = None
        if found:
            return next(iter(found)).platform
    return jax.default_backend()


def sample_chunk(n: int, batch: int, platform: str | None = None) -> int:
    """Samples per vmapped chunk when ``chunk_size`` is None.

    Args:
      n: samples; batch: images per batch; platform: None = the default backend.

    Returns:
      ``n`` on accelerators; on CPU the largest divisor of n with ``chunk * batch <=
      CPU_IMAGES_PER_CALL`` (at least 1), so no sample is padded.
    """
    if (platform or jax.default_backend()) != "cpu":
        return n
    cap = max(1, CPU_IMAGES_PER_CALL // max(int(batch), 1))
    return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)


def metric_copies_per_call(platform: str | None = None) -> int:
    """Perturbed copies per model call of the metrics for ``batch_size="auto"``."""
    return CPU_METRIC_COPIES if (platform or jax.default_backend()) == "cpu" else ACCELERATOR_METRIC_COPIES


def host_sort(platform: str | None = None) -> bool:
    """True where the metrics' sorts run in numpy (:data:`HOST_SORT_PLATFORMS`: the CPU)."""
    return (platform or jax.default_backend()) in HOST_SORT_PLATFORMS


def depthwise_impl(platform: str | None = None) -> str:
    """``"slices"`` or ``"grouped"``: the depthwise convolution for ``depthwise="auto"``."""
    return DEPTHWISE_FASTEST.get(platform or jax.default_backend(), "grouped")
