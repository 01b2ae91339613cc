"""gag-jax's metrics vs Quantus 0.6.0, side by side in one process on the same CPU (issue 23).

Run ``python -m benchmarks.quantus_suite`` from a checkout (``--count 4 --size 224``; ``--metrics a,b``
for some; ``--append`` adds the table to ``benchmarks/RESULTS.md``). For every metric of
:data:`PAIRS` that ``gj.metrics`` has, both libraries score the same maps of the same photos with the
same options:

* models: EfficientNet-Lite0 with the real ImageNet weights, torch (``efficientnet_lite_pytorch``) for
  Quantus and the same file ported to Flax for gag-jax (:func:`benchmarks.cpu_vs_torch.build`);
* inputs: the first ``--count`` photos of ``--photos`` (``labels.txt``'s classes as targets), squashed
  to ``--size``, Lite0's normalisation; random images where the folder is absent;
* maps: SmoothGrad (``gj.explain("sg")``, n = 20, one key per image) of the Flax model, each divided
  by its ``max|a|`` (Quantus normalises by the maximum of the whole batch; with every map's maximum 1
  the two agree);
* masks (localisation metrics only): the photos have none, so a centred box of half the side;
* timing: gag-jax's first call (compile + run) and a second, warm call (the reported figure); Quantus
  one call (``batch_size`` = the whole batch; torch on ``--threads`` threads, default the fastest of
  1 .. the cores JAX uses, measured first: on a loaded host more torch threads can be several times
  slower). Seconds per image = seconds / count.

Bounds. ``passes`` = model forward passes per image (the metric's registry cost); ``limit`` = passes x
gag-jax's batched forward seconds per copy (``copies_per_call="auto"``), the time the metric cannot
beat; Quantus's own model time = passes x torch's forward seconds per image at its batch size; both
forward rates are measured right after each metric's runs (the shared host's load drifts). A
metric is "host"-bound in Quantus when Quantus takes more than 1.5x its model time, else "model".

:data:`PAIRS` maps a gag-jax metric name to its Quantus class and the options on both sides: the other
metric engineers add their rows there (a metric that needs an explainer is not run yet: Quantus's
``explain`` needs captum, which is not installed).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cpu_vs_torch as cvt
from benchmarks.measure import print_and_append


@dataclasses.dataclass(frozen=True)
class Pair:
    """One metric on both sides.

    Attributes:
      quantus: the Quantus 0.6 class name.
      quantus_options: its constructor options (``disable_warnings=True`` is added).
      options: gag-jax's options (the same definitions, gag-jax's names).
      masks: pass ground-truth masks (``s_batch`` / ``masks=``).
      per_image: call Quantus one image at a time (its batch mixes images).
      quantus_fix: a named workaround of a Quantus 0.6 failure (see :func:`_quantus_metric`).
      random: the metric draws at random (each side its own draws: values agree in distribution only).
      note: what the options mean, for the table.
    """

    quantus: str
    quantus_options: dict
    options: dict
    masks: bool = False
    per_image: bool = False
    quantus_fix: Optional[str] = None
    random: bool = False
    note: str = ""


PAIRS: dict[str, Pair] = {
    # faithfulness (gag_jax.metrics.faithfulness); options keep Quantus near 2 minutes per metric at 4 x 224^2
    "faithfulness_correlation": Pair("FaithfulnessCorrelation", {"nr_runs": 100, "subset_size": 224},
                                     {"runs": 100, "subset_size": 224}, random=True, note="100 runs, subset 224"),
    "faithfulness_estimate": Pair("FaithfulnessEstimate", {"features_in_step": 896}, {"features_in_step": 896},
                                  note="896 features (298 2/3 px) per step, 168 steps"),
    "infidelity": Pair("Infidelity", {"perturb_patch_sizes": [16], "n_perturb_samples": 1}, {"patch_sizes": (16,)},
                       note="16 px patches (196); Quantus n_perturb_samples=1 (its 10 repeat one deterministic run)"),
    "pixel_flipping": Pair("PixelFlipping", {"features_in_step": 896}, {"features_in_step": 896},
                           note="896 features per step, 168 steps (as estimate)"),
    "region_perturbation": Pair("RegionPerturbation", {"patch_size": 8, "regions_evaluation": 100},
                                {"patch_size": 8, "regions": 100}, note="8 px patches, 100 regions (defaults)"),
    "selectivity": Pair("Selectivity", {"patch_size": 16}, {"patch_size": 16}, note="16 px patches (196)"),
    "irof": Pair("IROF", {"return_aggregate": False}, {}, per_image=True, quantus_fix="irof",
                 note="SLIC defaults; Quantus one image per call, mask broadcast to RGB, np.trapz restored"),
    "monotonicity_correlation": Pair("MonotonicityCorrelation", {"features_in_step": 3136, "nr_samples": 5},
                                     {"features_in_step": 3136, "nr_samples": 5}, random=True,
                                     note="3136 features per step (48 steps), 5 samples"),
    # other categories: run when gj.metrics has them (their engineers own the rows)
    "sparseness": Pair("Sparseness", {}, {}),
    "complexity": Pair("Complexity", {}, {}),
    "effective_complexity": Pair("EffectiveComplexity", {}, {}),  # (map-only: no model passes)
    "attribution_localisation": Pair("AttributionLocalisation", {}, {}, masks=True),
    "top_k_intersection": Pair("TopKIntersection", {}, {}, masks=True),
    "relevance_rank_accuracy": Pair("RelevanceRankAccuracy", {}, {}, masks=True),
    "relevance_mass_accuracy": Pair("RelevanceMassAccuracy", {}, {}, masks=True),
    "localisation_auc": Pair("AUC", {}, {}, masks=True),
}
"""gag-jax metric name -> its Quantus 0.6 counterpart and the options of both."""


# ----------------------------------------------------------------------------------------------
# the two sides
# ----------------------------------------------------------------------------------------------

def _gj_function(name: str) -> Callable:
    """The engine-signature function of a metric: its registry record's, else ``gj.metrics.<name>``."""
    import gag_jax.metrics as gm

    try:
        return gm.metric(name).function
    except (ValueError, AttributeError):
        return getattr(gm, name)


def _gj_has(name: str) -> bool:
    try:
        _gj_function(name)
        return True
    except AttributeError:
        return False


def _quantus_metric(pair: Pair):
    import quantus

    options = dict(pair.quantus_options, disable_warnings=True)
    if pair.quantus_fix == "irof":
        # Quantus 0.6's IROF builds a (B, 1, H, W) mask, which baseline_replacement_by_mask rejects for
        # C > 1 (AssertionError "The shape of arr must be the same as the mask shape"): broadcast it.
        from quantus.functions.perturb_func import baseline_replacement_by_mask

        def broadcast_mask(arr, mask, **kwargs):
            return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

        options["perturb_func"] = broadcast_mask
    return getattr(quantus, pair.quantus)(**options)


def _restore_trapz() -> None:
    """Quantus 0.6's AUCs call ``np.trapz``, which NumPy 2.4 removed; alias it to ``np.trapezoid``."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]


def run_quantus(pair: Pair, tm, x_nchw, labels, maps, masks) -> np.ndarray:
    """Quantus's per-image values (an AUC of the curve where it returns curves, as gag-jax's score)."""
    def call(xs, ys, a, s):
        metric = _quantus_metric(pair)
        kwargs = {"s_batch": s[:, None]} if pair.masks else {}
        out = metric(tm, xs, ys, a[:, None], channel_first=True, device="cpu", batch_size=len(xs), **kwargs)
        out = [np.asarray(v, np.float64) for v in out]
        return [float(np.trapezoid(v)) if v.ndim else float(v) for v in out]

    if pair.per_image:
        values = [call(x_nchw[i:i + 1], labels[i:i + 1], maps[i:i + 1], masks[i:i + 1])[0] for i in range(len(labels))]
    else:
        values = call(x_nchw, labels, maps, masks)
    return np.asarray(values)


def run_gj(name: str, pair: Pair, fns, images, labels, maps, masks, keys) -> np.ndarray:
    kwargs = dict(pair.options)
    if pair.masks:
        kwargs["masks"] = masks
    fn = _gj_function(name)
    import inspect

    if "key" in inspect.signature(fn).parameters:
        kwargs["key"] = keys
    out = fn(fns, images, labels, maps, **kwargs)
    value = out[name] if isinstance(out, dict) else out
    return np.asarray(jax.block_until_ready(value), np.float64)


def _passes(name: str, pair: Pair, shape) -> Optional[int]:
    import gag_jax.metrics as gm

    try:
        record = gm.metric(name)
    except (ValueError, AttributeError):
        return None
    if callable(record.forward_passes):
        try:
            return int(record.forward_passes(dict(pair.options), tuple(shape)))
        except TypeError:
            return int(record.forward_passes(dict(pair.options)))
    return int(record.forward_passes)


# ----------------------------------------------------------------------------------------------
# forward rates (the limits)
# ----------------------------------------------------------------------------------------------

def gj_forward_timer(fns, images, copies: Optional[int], calls: int = 16) -> Callable[[], float]:
    """A function timing gag-jax's batched forward: seconds per copy in calls of ``copies`` copies (a
    ``lax.map`` over ``calls`` calls inside one jitted program, as the metrics run them); compiled once,
    timed again at each call (so each metric's limit is measured next to it, under the same load)."""
    size = copies or len(images)
    idx = (jnp.arange(size * calls) % len(images)).reshape(calls, size)

    @jax.jit
    def run(model, x, i):
        return jax.lax.map(lambda j: model(x[j]).sum(), i)

    x = jnp.asarray(images)
    jax.block_until_ready(run(fns, x, idx))

    def seconds_per_copy() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(run(fns, x, idx))
            times.append(time.perf_counter() - start)
        return statistics.median(times) / (size * calls)

    return seconds_per_copy


def gj_seconds_per_copy(fns, images, copies: Optional[int], calls: int = 16) -> float:
    """One measurement of :func:`gj_forward_timer`."""
    return gj_forward_timer(fns, images, copies, calls)()


def fastest_threads(tm, x_nchw, cores: int) -> int:
    """The torch thread count in ``1 .. cores`` with the fastest forward of the batch (on a loaded
    host, more threads than free cores can be several times slower)."""
    import torch

    speed = {}
    for t in range(1, cores + 1):
        torch.set_num_threads(t)
        speed[t] = torch_seconds_per_image(tm, x_nchw, len(x_nchw))
    return min(speed, key=speed.get)


def torch_seconds_per_image(tm, x_nchw, batch: int) -> float:
    import torch

    x = torch.as_tensor(x_nchw[:batch])
    with torch.no_grad():
        tm(x)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            tm(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def centre_masks(count: int, size: int) -> np.ndarray:
    m = np.zeros((count, size, size), np.float32)
    m[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
    return m


def main(argv: Optional[list[str]] = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--photos", type=Path, default=cvt.PHOTOS)
    ap.add_argument("--metrics", default=None, help="comma-separated names (default: every pair gj.metrics has)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: JAX's cores)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import torch

    import gag_jax as gj
    from gag_jax import models
    from gag_jax.keys import image_keys

    _restore_trapz()
    module, variables, tm, (mean, std) = cvt.build("efficientnet_lite0")
    fns = models.model_functions(module, variables)
    images, labels, source = cvt.load_batch(args.photos, args.count, args.size, mean, std)
    x_nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    threads = args.threads or fastest_threads(tm, x_nchw, cvt.jax_cores())
    torch.set_num_threads(threads)
    keys = image_keys(0, [f"image{i}" for i in range(args.count)])
    maps = np.asarray(gj.explain("sg", fns, jnp.asarray(images), jnp.asarray(labels), key=keys), np.float32)
    maps = maps / np.maximum(np.abs(maps).max(axis=(1, 2), keepdims=True), 1e-30)
    masks = centre_masks(args.count, args.size)

    names = [n.strip() for n in args.metrics.split(",")] if args.metrics else list(PAIRS)
    skipped = [n for n in names if n not in PAIRS or not _gj_has(n)]
    names = [n for n in names if n in PAIRS and _gj_has(n)]
    copies = gj.metrics.default_batch_size("cpu")
    forward = gj_forward_timer(fns, images, copies)
    gj_copies, torch_s = [], {b: [] for b in sorted({1, args.count})}

    rows = []
    for name in names:
        pair = PAIRS[name]
        try:
            t0 = time.perf_counter()
            ours = run_gj(name, pair, fns, images, labels, maps, masks, keys)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            ours = run_gj(name, pair, fns, images, labels, maps, masks, keys)
            warm = time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - reported in the table, the other metrics still run
            print(f"{name}: gag-jax failed: {type(err).__name__}: {err}", flush=True)
            skipped.append(f"{name} (gag-jax: {type(err).__name__})")
            continue
        t0 = time.perf_counter()
        try:
            theirs, error = run_quantus(pair, tm, x_nchw, labels, maps, masks), None
        except Exception as err:  # noqa: BLE001 - a Quantus failure is a result of the comparison
            theirs, error = None, f"{type(err).__name__}: {err}"[:80]
        q_s = time.perf_counter() - t0
        passes = _passes(name, pair, images.shape[1:])
        copy_s, torch_b = None, 1 if pair.per_image else args.count
        torch_img_s = None
        if passes:  # the forward rates next to this metric's runs, under the same load
            copy_s = forward()
            torch_img_s = torch_seconds_per_image(tm, x_nchw, torch_b)
            gj_copies.append(copy_s)
            torch_s[torch_b].append(torch_img_s)
        rows.append(dict(name=name, pair=pair, ours=ours, theirs=theirs, error=error, first=first / args.count,
                         warm=warm / args.count, quantus=q_s / args.count, passes=passes,
                         limit=passes * copy_s if passes else None,
                         q_model=passes * torch_img_s if passes else None))
        print(f"{name}: gj {warm / args.count:.3f} s/img (first {first / args.count:.2f}), quantus "
              f"{q_s / args.count:.3f} s/img, max |diff| "
              f"{'n/a' if theirs is None else f'{np.max(np.abs(ours - theirs)):.2e}'}", flush=True)
    gj_copy_s = statistics.median(gj_copies) if gj_copies else forward()
    torch_s = {b: statistics.median(v) for b, v in torch_s.items() if v}
    return _table(rows, args, source, threads, gj_copy_s, torch_s, copies, skipped)


def _fmt(x: Optional[float], spec: str = "{:.3f}") -> str:
    return "n/a" if x is None else spec.format(x)


def _table(rows, args, source, threads, gj_copy_s, torch_s, copies, skipped) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"## gag-jax metrics vs Quantus 0.6.0 (issue 23): cpu, {stamp}", "",
             f"Device: CPU ({platform.processor() or platform.machine()}, {cvt.jax_cores()} cores for JAX, torch on "
             f"{threads} threads, the fastest of 1..{cvt.jax_cores()} on this load), shared host (load average "
             f"{os.getloadavg()[0]:.1f} at the end); {args.count} x {args.size}^2 ({source}); EfficientNet-Lite0 (real "
             f"weights) in torch (Quantus) and Flax (gag-jax); SmoothGrad maps (n = 20) each scaled to max|a| = 1. "
             f"gag-jax: `copies_per_call=\"auto\"` ({copies} copies per model call), warm call (first call, with "
             f"compilation, in brackets). Forward seconds per copy (medians of the measurements taken next to each "
             f"metric): gag-jax batched {gj_copy_s:.4f}; torch "
             + ", ".join(f"batch {b} {s:.4f}" for b, s in torch_s.items()) + ". `limit` = passes x gag-jax's "
             "batched forward and `Quantus model` = passes x torch's forward, both measured right after the "
             "metric's runs; bound = host where Quantus takes "
             "> 1.5x its model time. `agree` = max |gag-jax - Quantus| over the images (random metrics: "
             "different draws, so means only).", "",
             "| metric | options | passes/img | Quantus s/img | gag-jax s/img | speed-up | limit s/img | "
             "gag-jax / limit | Quantus model s/img | bound | agree | mean gj / Quantus |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        speed = None if r["error"] else r["quantus"] / r["warm"]
        bound = "n/a" if not r["q_model"] or r["error"] else \
            ("host" if r["quantus"] > 1.5 * r["q_model"] else "model")
        if r["theirs"] is None:
            agree, means = r["error"], f"{np.nanmean(r['ours']):.4g} / n/a"
        else:
            diff = np.nanmax(np.abs(r["ours"] - r["theirs"]))
            scale = np.nanmax(np.abs(r["theirs"])) or 1.0
            agree = "random draws" if r["pair"].random else f"{diff:.1e} (rel {diff / scale:.0e})"
            means = f"{np.nanmean(r['ours']):.4g} / {np.nanmean(r['theirs']):.4g}"
        lines.append(
            f"| {r['name']} | {r['pair'].note or '-'} | {_fmt(r['passes'], '{:d}')} | {_fmt(r['quantus'])} | "
            f"{_fmt(r['warm'])} ({_fmt(r['first'], '{:.2f}')}) | {_fmt(speed, '{:.1f}x')} | {_fmt(r['limit'])} | "
            f"{_fmt(r['warm'] / r['limit'] if r['limit'] else None, '{:.2f}')} | {_fmt(r['q_model'])} | "
            f"{bound} | {agree} | {means} |")
    if skipped:
        lines += ["", f"Not run (no gag-jax function or no pair yet): {', '.join(skipped)}."]
    return print_and_append("\n".join(lines) + "\n", args.append)


if __name__ == "__main__":
    main()
