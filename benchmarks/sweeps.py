"""Shared gradient sweeps, measured: ``gj.explain_many`` against one ``gj.explain`` per row.

Real EfficientNet-Lite0 (the shipped weights), real photos, the rows of the paper's Tables 1-2 that
read gradients (GAG-0 ... GAG-85, VarGrad, SG, IG, Guided IG, BlurIG, VG, GB, Grad-CAM), n = 20,
one key per image (``gj.keys.image_keys``). Both ways run in the same process, alternating round by
round (so a change in machine load hits both alike); the first call (compile included) and the
median warm time are reported, with the largest difference between the two ways' maps. Prints a
Markdown table; ``--append`` adds it to ``benchmarks/RESULTS.md`` (from a checkout only).

    python -m benchmarks.sweeps --photos /path/to/photos --images 4 --rounds 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import jax
import jax.numpy as jnp

import gag_jax as gj
from benchmarks import measure
from benchmarks.measure import print_and_append
from gag_jax import models

ROWS = ([("gag", {"percentile": p / 100}) for p in (0, 15, 25, 35, 45, 55, 65, 75, 85)]
        + ["vargrad", "sg", "ig", "guided_ig", "blur_ig", "vg", "gb", "gradcam"])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", required=True, help="folder of photos")
    p.add_argument("--images", type=int, default=4, help="images per batch (default %(default)s)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    model = models.model_functions(*models.load("efficientnet_lite0"))
    images, names = measure.real_photos(args.photos, args.images, args.size, model)
    labels = jnp.argmax(model(images), axis=-1).astype(jnp.int32)
    keys = gj.keys.image_keys(0, names)

    def many():
        return gj.explain_many(ROWS, model, images, labels, key=keys, n=args.n)

    def each():
        out = {}
        for row in ROWS:
            name, own = row if isinstance(row, tuple) else (row, {})
            options = {"n": args.n} if "n" in gj.DEFAULTS[name] else {}
            out[gj.explainers.method_key(name, own)] = gj.explain(name, model, images, labels, key=keys,
                                                                  **options, **own)
        return out

    first, warm, maps = {}, {"many": [], "each": []}, {}
    for label, fn in (("many", many), ("each", each)):
        first[label], maps[label] = measure.timed(fn)
    for _ in range(args.rounds):
        for label, fn in (("many", many), ("each", each)):
            warm[label].append(measure.timed(fn)[0])
    diff = max(float(jnp.abs(maps["many"][k] - maps["each"][k]).max()) for k in maps["many"])
    plan = gj.explainers.sweep_plan(ROWS, n=args.n)
    gradients = {"many": sum(g["gradients"] for g in plan),
                 "each": sum(gj.explainers.sweep_plan([r], n=args.n)[0]["gradients"] for r in ROWS)}
    b = images.shape[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"## Shared gradient sweeps (gj.explain_many): {jax.default_backend()}, {datetime.date.today()}", "",
             (f"- EfficientNet-Lite0 (shipped weights), {b} photos at {args.size}x{args.size}, n = {args.n}, "
              f"{len(ROWS)} rows (Tables 1-2's gradient rows); {len(plan)} sweeps"),
             (f"- jax {jax.__version__}; host {platform.machine()}, {os.cpu_count()} CPUs visible, load {load:.1f} "
              f"at the end; {args.rounds} alternating rounds; largest map difference {diff:.2g}"),
             "", "| way | model gradients per image | first call s (compile) | median warm s | images/s |",
             "|---|---|---|---|---|"]
    for label, text in (("each", "one gj.explain per row"), ("many", "gj.explain_many")):
        med = statistics.median(warm[label])
        lines.append(f"| {text} | {gradients[label]} | {first[label]:.1f} | {med:.2f} | {b / med:.2f} |")
    ratio = statistics.median(warm["each"]) / statistics.median(warm["many"])
    lines += ["", f"explain_many is {ratio:.1f}x faster warm, {first['each'] / first['many']:.1f}x on the first call."]
    table = "\n".join(lines) + "\n"
    return print_and_append(table, args.append)


if __name__ == "__main__":
    main()
