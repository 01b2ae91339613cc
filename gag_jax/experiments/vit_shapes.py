"""A small vision transformer trained on the synthetic shapes, explained by the transformer methods.

No pretrained ViT checkpoint ships with the package (and none can be downloaded at run time), but the
synthetic case has what a picture of transformer explanations needs: a classifier that learned
something and the exact mask of the object it learned. :func:`run` trains a
``gag_jax.models.vit.ViT`` (CLS token, pre-norm blocks, GELU) on synthetic shapes with
:func:`gag_jax.experiments.tiny.train_on_synthetic` (separate images from the explained ones),
explains held-out images for their label with attention rollout, generic attention, Grad-CAM on the
last block's ``norm1`` tokens, GAG and VG, and scores each map against the shape's mask with the
pointing game and relevance mass accuracy (higher is better for both). It writes a figure (images,
masks, maps) and a Markdown table::

    python -m gag_jax.experiments.vit_shapes --out docs/vit --update-readme README.md
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.experiments.tiny import train_on_synthetic
from gag_jax.models.vit import ViT

METHODS = ("attention_rollout", "generic_attention", "gradcam", "gag", "vg")
"""The methods compared (each with its defaults; GAG with ``n``)."""

README_SECTION = "vit-shapes"


def tiny_vit(num_classes: int, image_size: int, *, patch_size: int = 4, embed_dim: int = 48, depth: int = 3,
             num_heads: int = 3) -> ViT:
    """The transformer trained here: ``(image_size / patch_size)^2`` patch tokens and a CLS token."""
    return ViT(img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
               mlp_dim=2 * embed_dim, num_classes=num_classes)


def run(out_dir: str, *, image_size: int = 32, num_classes: int = 5, steps: int = 600, images: int = 40,
        n: int = 20, seed: int = 0, figure_rows: int = 5) -> dict:
    """Train, explain, score, draw.

    Args:
      out_dir: where ``vit_shapes.png`` and ``vit_shapes.md`` are written (created).
      image_size: image side ``S`` (a multiple of the patch size 4).
      num_classes: shape classes (1..5).
      steps: training steps (adam, batch 64, 640 training images).
      images: held-out images explained and scored ``N``.
      n: GAG's noisy copies.
      seed: training and data seed (the explained images use ``seed``, training ``seed + 1000``).
      figure_rows: images shown in the figure.

    Returns:
      ``{"scores": {method: {"pointing_game": mean, "relevance_mass": mean}}, "accuracy": held-out
      accuracy, "train": training info, "files": {...}, "markdown": table text}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    module = tiny_vit(num_classes, image_size)
    variables, train = train_on_synthetic(module, num_classes, image_size, seed=seed, steps=steps)
    model = gj.ModelFunctions.from_module(module, variables, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
    data = gj.data.make_synthetic(images, image_size, seed, num_classes, model=model)
    x, y, masks = jnp.asarray(data["images"]), jnp.asarray(data["labels"]), np.asarray(data["masks"])
    accuracy = float(np.mean(np.argmax(np.asarray(model(x)), -1) == np.asarray(y)))
    keys = gj.keys.image_keys(seed, [f"shape_{i:04d}" for i in range(images)])
    maps, scores, seconds = {}, {}, {}
    for method in METHODS:
        options = {"n": n} if "n" in gj.DEFAULTS[method] else {}
        start = time.perf_counter()
        maps[method] = np.asarray(gj.explain(method, model, x, y, key=keys, **options))
        seconds[method] = time.perf_counter() - start
        pointing = gj.metrics.pointing_game(maps[method], masks, tolerance=1)
        mass = gj.metrics.relevance_mass_accuracy(model, x, y, jnp.asarray(maps[method]), masks=jnp.asarray(masks))
        scores[method] = {"pointing_game": float(np.mean(pointing)),
                          "relevance_mass": float(np.nanmean(np.asarray(mass["relevance_mass_accuracy"])))}
    mask_share = float(masks.mean())
    lines = [f"ViT ({module.depth} blocks, {module.embed_dim} wide, "
             f"{module.num_heads} heads, {(image_size // module.patch_size) ** 2} patches of "
             f"{module.patch_size}² + CLS) trained {steps} steps on {train['num_images']} synthetic {image_size}² "
             f"shapes ({num_classes} classes; train accuracy {train['train_accuracy']:.3f}, held-out "
             f"{accuracy:.3f}); {images} held-out images explained for their label. The shape covers "
             f"{100 * mask_share:.0f} % of an image on average: a map spread evenly scores that relevance mass.",
             "", "| method | pointing game↑ | relevance mass↑ | seconds |", "|---|---:|---:|---:|"]
    for method in METHODS:
        lines.append(f"| {gj.METHOD_RECORDS[method].label or method} | {scores[method]['pointing_game']:.3f} | "
                     f"{scores[method]['relevance_mass']:.3f} | {seconds[method]:.1f} |")
    markdown = "\n".join(lines) + "\n"
    table = os.path.join(out_dir, "vit_shapes.md")
    with open(table, "w", encoding="utf-8") as f:
        f.write(markdown)
    figure = _figure(os.path.join(out_dir, "vit_shapes.png"), np.asarray(data["pixels"]), masks, maps,
                     figure_rows)
    return {"scores": scores, "accuracy": accuracy, "train": train, "seconds": seconds,
            "files": {"figure": figure, "table": table}, "markdown": markdown}


def _figure(path: str, pixels: np.ndarray, masks: np.ndarray, maps: dict, rows: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = min(rows, pixels.shape[0]), 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(pixels[r])
        axes[r, 0].contour(masks[r], levels=[0.5], colors="yellow", linewidths=0.8)
        for c, (method, m) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(m[r], cmap="inferno", vmin=0, vmax=1)
            axes[r, c].contour(masks[r], levels=[0.5], colors="cyan", linewidths=0.6)
            if r == 0:
                axes[r, c].set_title(gj.METHOD_RECORDS[method].label or method, fontsize=8)
        if r == 0:
            axes[r, 0].set_title("image, mask", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--update-readme", default=None, metavar="README",
                   help=f"write the table into README's section {README_SECTION!r}")
    args = p.parse_args(argv)
    result = run(args.out, steps=args.steps, images=args.images, n=args.n, seed=args.seed)
    print(result["markdown"])
    print(f"wrote {result['files']['figure']} and {result['files']['table']}")
    if args.update_readme:
        from gag_jax.experiments.readme import replace_section

        command = (f"python -m gag_jax.experiments.vit_shapes --out {args.out} --steps {args.steps} "
                   f"--images {args.images} --n {args.n} --seed {args.seed}")
        replace_section(args.update_readme, README_SECTION,
                        f"{result['markdown']}\n{time.strftime('%Y-%m-%d')}, {jax.default_backend()}:\n\n"
                        f"```bash\n{command}\n```\n")
    return result


if __name__ == "__main__":
    main()
