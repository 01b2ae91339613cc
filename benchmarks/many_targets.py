"""K targets in one call, measured: ``gj.explain(method, ..., labels (B, K))`` against K calls with ``labels (B,)``.

Real EfficientNet-Lite0 (the shipped weights), real photos (``--photos``: e.g. the ImageNet sample
of ``../shared/data/imagenet_val_sample``, read in place), each image's top-K classes of the model,
GAG with n = 20 by default, one key per image (``gj.keys.image_keys``), the default ``chunk_size``
for both ways. The one call shares the n noisy copies and their forward passes and runs one backward
pass per target (``jax.vjp`` once, its pullback vmapped over K one-hot cotangents); the K calls
each repeat the sweep. Both ways run in the same process, alternating round by round (so a change
in machine load hits both alike); the first call (compile included) and the median warm time are
reported with the largest difference between the maps and the share of pixels that differ by more
than 1e-4 (GAG's percentile guide may flip a pixel where two variances nearly tie). Prints a
Markdown table; ``--append`` adds it to ``benchmarks/RESULTS.md`` (from a checkout only).

    python -m benchmarks.many_targets --photos ../shared/data/imagenet_val_sample --images 4 --k 5
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from benchmarks import measure
from benchmarks.measure import print_and_append
from gag_jax import models


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", required=True, help="folder of photos (read in place)")
    p.add_argument("--images", type=int, default=4, help="images per batch (default %(default)s)")
    p.add_argument("--k", type=int, default=5, help="targets per image: the model's top-K (default %(default)s)")
    p.add_argument("--method", default="gag", help="method (default %(default)s)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    model = models.model_functions(*models.load("efficientnet_lite0"))
    images, names = measure.real_photos(args.photos, args.images, args.size, model)
    labels = jnp.argsort(-model(images), axis=-1)[:, :args.k].astype(jnp.int32)  # (B, K), most probable first
    keys = gj.keys.image_keys(0, names)
    options = {"n": args.n} if "n" in gj.DEFAULTS[args.method] else {}

    def one_call():
        return gj.explain(args.method, model, images, labels, key=keys, **options)

    def k_calls():
        return jnp.stack([gj.explain(args.method, model, images, labels[:, k], key=keys, **options)
                          for k in range(args.k)], axis=1)

    load_start = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    first, warm, maps = {}, {"one": [], "each": []}, {}
    for label, fn in (("one", one_call), ("each", k_calls)):
        first[label], maps[label] = measure.timed(fn)
    for _ in range(args.rounds):
        for label, fn in (("one", one_call), ("each", k_calls)):
            warm[label].append(measure.timed(fn)[0])
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    difference = np.abs(np.asarray(maps["one"]) - np.asarray(maps["each"]))
    b, k = labels.shape
    sweeps = args.n if options else 1
    lines = [f"## {args.method.upper()} for K = {k} targets in one call vs {k} calls: "
             f"{jax.default_backend()}, {datetime.date.today()}", "",
             (f"- EfficientNet-Lite0 (shipped weights), {b} photos of {os.path.basename(os.path.normpath(args.photos))} "
              f"({', '.join(names)}) at {args.size}x{args.size}, each image's top-{k} classes, {args.method} "
              f"n = {args.n}, default chunk_size, one key per image"),
             (f"- jax {jax.__version__}; host {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs "
              f"visible; load average {load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f} (1/5/15 min) at "
              f"the start, {load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} at the end; {args.rounds} "
              "alternating rounds"),
             (f"- maps (B, K, H, W) = {tuple(maps['one'].shape)}: largest difference {difference.max():.2g}, "
              f"{(difference > 1e-4).mean():.2%} of the values differ by more than 1e-4"),
             "", "| way | forward passes per image | backward passes per image | first call s (compile) | "
             "median warm s | maps/s |", "|---|---|---|---|---|---|"]
    for label, text, forwards in (("each", f"{k} calls, labels (B,)", k * sweeps),
                                  ("one", "one call, labels (B, K)", sweeps)):
        med = statistics.median(warm[label])
        lines.append(f"| {text} | {forwards} | {k * sweeps} | {first[label]:.1f} | {med:.2f} | {b * k / med:.2f} |")
    ratio = statistics.median(warm["one"]) / statistics.median(warm["each"])
    lines += ["", f"Warm, the one call takes {ratio:.2f}x the time of the {k} calls ({1 / ratio:.2f}x as many maps "
              f"per second); the first call (compile included) {first['one']:.1f} s against {first['each']:.1f} s."]
    table = "\n".join(lines) + "\n"
    return print_and_append(table, args.append)


if __name__ == "__main__":
    main()
