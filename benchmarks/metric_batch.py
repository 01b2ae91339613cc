"""Perturbed copies per model call (``batch_size``) of RCAP and Deletion / Insertion, measured.

Real EfficientNet-Lite0 (the shipped weights), real photos, 224 x 224, a batch of images scored
with RCAP (5 copies per image) and DAUC + IAUC (20 copies per image) at several ``batch_size``
values. Rounds go over the sizes in turn (so a change in machine load hits every size alike) and
the best warm time of each size is kept. Prints a Markdown table; ``--append`` adds it to
``benchmarks/RESULTS.md`` (from a checkout only).

    python -m benchmarks.metric_batch --photos /path/to/photos --images 4 --rounds 3
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics

import jax

import gag_jax as gj
from benchmarks import measure
from benchmarks.measure import print_and_append
from gag_jax import models
from gag_jax.metrics._common import chunk_plan


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", required=True, help="folder of photos")
    p.add_argument("--images", type=int, default=4, help="images per batch (default %(default)s)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="8,16,25,50,100,all", help="batch_size values, 'all' = None "
                   "(default %(default)s)")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    sizes = tuple(None if s.strip() == "all" else int(s) for s in args.sizes.split(","))

    module, variables = models.load("efficientnet_lite0")
    model = models.model_functions(module, variables)
    logits = model.logits
    images, _ = measure.real_photos(args.photos, args.images, args.size, model)
    images = jax.numpy.asarray(images)
    labels = jax.numpy.argmax(logits(images), axis=-1).astype(jax.numpy.int32)
    maps = gj.explain("vg", logits, images, labels, key=jax.random.PRNGKey(0))
    b = images.shape[0]

    def run(bs):
        r = gj.metrics.rcap(logits, images, labels, maps, copies_per_call=bs)
        d = gj.metrics.deletion_insertion(logits, images, labels, maps, copies_per_call=bs)
        return r["rcap"], d["dauc"]

    cold = {bs: measure.timed(lambda bs=bs: run(bs))[0] for bs in sizes}
    warm: dict = {bs: [] for bs in sizes}
    for _ in range(args.rounds):
        for bs in sizes:
            warm[bs].append(measure.timed(lambda bs=bs: run(bs))[0])

    def calls(n, bs):
        size, full, rest = chunk_plan(n, bs)
        return f"{full}x{size}" + (f" + {rest}" if rest else "")

    today = datetime.date.today().isoformat()
    lines = [f"## Metric model batch: {jax.default_backend()}, {today}", "",
             (f"- EfficientNet-Lite0 (shipped weights), {b} photos at {args.size}x{args.size}, float32; "
              f"RCAP {5 * b} copies, DAUC + IAUC {20 * b} copies; VG maps"),
             (f"- jax {jax.__version__}; host {platform.machine()}, {os.cpu_count()} CPUs visible; "
              f"{args.rounds} rounds over the sizes in turn, best and median warm time"),
             "", "| batch_size | RCAP calls | DAUC+IAUC calls | first call s (compile) | best s | median s | images/s |",
             "|---|---|---|---|---|---|---|"]
    for bs in sizes:
        best, med = min(warm[bs]), statistics.median(warm[bs])
        lines.append(f"| {bs} | {calls(5 * b, bs)} | {calls(20 * b, bs)} | {cold[bs]:.1f} | {best:.2f} | "
                     f"{med:.2f} | {b / best:.2f} |")
    table = "\n".join(lines) + "\n"
    return print_and_append(table, args.append)


if __name__ == "__main__":
    main()
