"""The transformer explanations on ViT-S/16, measured: GAG, Grad-CAM, attention rollout, generic attention
(and VG, one gradient, as the reference) per image with ``gj.explain``.

ViT-S/16 at 224x224 (``gag_jax.models.vit.ViTS16``) with randomly initialised weights (``--seed``): the
timings do not depend on the weight values, and no pretrained ViT checkpoint may be at hand (pass none:
there is no download). Real photos (``--photos``: e.g. ``../shared/data/imagenet_val_sample``, read in
place, never copied), prepared with ``gj.data.prepare_pixels(..., model=model)`` (the ViT's own input
scaling, mean = std = 0.5), their labels from the file names (``0002_n01484850.jpg``: class 2), one key
per image (``gj.keys.image_keys``). Per method: the first call (compile + run) and the median warm
seconds per image over ``--rounds`` rounds, the methods alternating within each round (so a change in
the machine's load hits them alike), with the model forward and gradient passes one image costs read
from the method's record (``gj.per_image_cost``). Prints a Markdown table; ``--append`` adds it to
``benchmarks/RESULTS.md`` (from a checkout only).

    JAX_PLATFORMS=cpu python -m benchmarks.vit_methods --photos ../shared/data/imagenet_val_sample --batch 4 --append
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
from gag_jax.models import VIT_MEAN, VIT_STD, model_functions, vit
from PIL import Image

import gag_jax as gj
from benchmarks import measure
from benchmarks.measure import print_and_append

DEFAULT_PHOTOS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir, "shared",
                              "data", "imagenet_val_sample")
METHODS = ("gag", "gradcam", "attention_rollout", "generic_attention", "vg")
"""The rows, in order: GAG (``--n`` samples), Grad-CAM (the ViT's default layer, the last block's
``norm1``), attention rollout, generic attention (Chefer et al. 2021), VG (one gradient, the reference)."""


def _load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def photo_batch(folder: str, count: int, size: int, model) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``count`` photos of ``folder`` (sorted names) -> ``(images (B, size, size, 3) float32 in the
    model's scaling, labels (B,) int32 from the names' leading index (0 where there is none), names)``."""
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png")))[:count]
    if len(names) < count:
        raise ValueError(f"{folder} holds {len(names)} photos; --batch {count} needs {count}")
    photos = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    images = gj.data.prepare_pixels(photos, size, model=model, resize_mode="center_crop")
    labels = np.asarray([int(n.split("_")[0]) if n.split("_")[0].isdigit() else 0 for n in names], np.int32)
    return images, labels, names


def main(argv=None) -> str:
    """Run the measurement; returns the Markdown table (printed; appended with ``--append``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=DEFAULT_PHOTOS, help="folder of photos, read in place (default %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="images per call (default %(default)s)")
    p.add_argument("--n", type=int, default=20, help="GAG's noisy samples (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="warm rounds, methods alternating (default %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weights' init and the images' keys (default %(default)s)")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.n < 1:
        raise ValueError(f"--batch, --rounds and --n must be at least 1; got {args.batch}, {args.rounds}, {args.n}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in gj.DEFAULTS:
            raise ValueError(f"unknown method {m!r}; expected one of {', '.join(sorted(gj.DEFAULTS))}")

    module = vit.ViTS16()
    size = module.img_size
    variables = module.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, size, size, 3), jnp.float32))
    model = model_functions(module, variables, mean=VIT_MEAN, std=VIT_STD)
    images_np, labels_np, names = photo_batch(args.photos, args.batch, size, model)
    images, labels = jnp.asarray(images_np), jnp.asarray(labels_np)
    keys = gj.keys.image_keys(args.seed, names)
    options = {m: ({"n": args.n} if m == "gag" else {}) for m in methods}
    costs = {m: gj.per_image_cost(m, options[m], (size, size, 3)) for m in methods}

    def call(m):
        return lambda: gj.explain(m, model, images, labels, key=keys, **options[m])

    load_start = _load_average()
    first, warm, shapes = {}, {m: [] for m in methods}, {}
    for m in methods:
        first[m], maps = measure.timed(call(m))
        shapes[m] = tuple(maps.shape)
        print(f"{m}: first call {first[m]:.1f} s", flush=True)
    for r in range(args.rounds):
        for m in methods:
            warm[m].append(measure.timed(call(m))[0])
        print(f"round {r + 1}: " + ", ".join(f"{m} {warm[m][-1]:.2f} s" for m in methods), flush=True)
    load_end = _load_average()

    b = args.batch
    lines = [f"## ViT-S/16 explanations per image: {jax.default_backend()}, {datetime.date.today()}", "",
             (f"- ViT-S/16 (`gag_jax.models.vit.ViTS16`, 22,050,664 parameters) at {size}x{size}, **randomly "
              f"initialised weights** (seed {args.seed}): no pretrained ViT checkpoint exists on this machine and "
              "there is no network; the timings do not depend on the weight values (the maps themselves mean "
              "nothing here)"),
             (f"- batch {b}: photos of {os.path.basename(os.path.normpath(args.photos))} ({', '.join(names)}), "
              "center crop, `gj.data.prepare_pixels(..., model=model)` (mean = std = 0.5), labels from the file "
              "names, one key per image; GAG n = " + f"{args.n}, Grad-CAM on the default layer "
              f"(`{module.gradcam_layer}`), rollout head_fusion mean, discard_ratio 0; maps {shapes[methods[0]]}"),
             (f"- device: {platform.machine()} CPU, {os.cpu_count()} cores visible, jax {jax.__version__} backend "
              f"{jax.default_backend()}; load average {load_start[0]:.1f} / {load_start[1]:.1f} / "
              f"{load_start[2]:.1f} (1/5/15 min) at the start, {load_end[0]:.1f} / {load_end[1]:.1f} / "
              f"{load_end[2]:.1f} at the end; {args.rounds} rounds, methods alternating in each"),
             "- passes per image from each method's record (`gj.per_image_cost`); a gradient pass includes its "
             "forward pass",
             "", "| method | forward passes per image | gradient passes per image | first call s (compile + run) | "
             "median warm s per image | maps/s |", "|---|---|---|---|---|---|"]
    for m in methods:
        med = statistics.median(warm[m])
        lines.append(f"| {m} | {costs[m]['forward_passes']} | {costs[m]['gradients']} | {first[m]:.1f} | "
                     f"{med / b:.3f} | {b / med:.2f} |")
    if "vg" in methods:
        vg = statistics.median(warm["vg"])
        lines += ["", "Warm time relative to VG (one gradient): " + ", ".join(
            f"{m} {statistics.median(warm[m]) / vg:.2f}x" for m in methods if m != "vg") + "."]
    table = "\n".join(lines) + "\n"
    return print_and_append(table, args.append)


if __name__ == "__main__":
    main()
