"""The zero-setup demo and the ``explain`` job: real photos, a real ImageNet model, every method.

``run_demo`` explains the photos shipped with scikit-image (Chelsea the cat, a cup of coffee, a
rocket, a motorcycle; at 160 px EfficientNet-Lite0 classifies them as Egyptian cat, espresso,
drilling platform and moped) with the real EfficientNet-Lite0 weights for every method of
``gj.METHODS``, scores every map with RCAP, DAUC and IAUC, and writes a Figure-1-style grid,
per-image overlays, one Figure-3-style RCAP partition figure per photo, the Figure 4
propositions and a Markdown + CSV table.
Nothing is downloaded.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.data import pad_rows
from gag_jax.experiments import figures
from gag_jax.experiments import readme as readme_sections
from gag_jax.experiments.specs import LABELS, input_scaling

DEMO_IMAGES: tuple[tuple[str, str], ...] = (
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("rocket", "rocket.jpg"),
    ("motorcycle", "motorcycle_left.png"),
)
"""(name, file in ``skimage.data``) of the demo photos."""


def demo_image_paths() -> list[str]:
    """Paths of the demo photos inside the installed scikit-image.

    Raises:
      RuntimeError: scikit-image is not installed (``pip install 'gag-jax[demo]'``) or lacks a file.
    """
    try:
        import skimage.data
    except ImportError:
        raise RuntimeError("the demo photos come from scikit-image: pip install 'gag-jax[demo]' "
                           "(or pass your own photos with --images)") from None
    root = os.path.dirname(skimage.data.__file__)
    paths = [os.path.join(root, f) for _, f in DEMO_IMAGES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise RuntimeError(f"scikit-image does not ship {missing[0]}; pass your own photos with --images")
    return paths


def read_images(paths: Sequence[str], size: int, *, report: Callable[[str], None] = print,
                resize_mode: str = "center_crop", mean=gj.data.IMAGENET_MEAN, std=gj.data.IMAGENET_STD
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read image files / folders with ``gag_jax.data.load_image_files``; report each bad file in one line.

    Returns:
      ``(pixels uint8 (N, S, S, 3), images float32 normalised, names)``; the undecodable files
      are reported through ``report`` and left out.

    Raises:
      FileNotFoundError: a path that does not exist.
    """
    from gag_jax.data import load_image_files

    skipped: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below, one line per file
        pixels, images, names = load_image_files(list(paths), size, resize_mode=resize_mode, skipped=skipped,
                                                 mean=mean, std=std)
    for s in skipped:
        report(f"skipping {s.path}: {s.reason}")
    return pixels, images, names


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def explain_arrays(model: gj.ModelFunctions, images: np.ndarray, labels: np.ndarray, method: str, *, key,
                   batch_size: int, options: dict | None = None) -> np.ndarray:
    """Maps ``(N, H, W)`` of ``images`` in fixed-size batches (the last one padded), one compile per method."""
    out = []
    n = images.shape[0]
    bs = min(batch_size, n)
    for i, (a, b) in enumerate(_batches(n, bs)):
        (x, y), _ = pad_rows((jnp.asarray(images[a:b]), jnp.asarray(labels[a:b], jnp.int32)), bs)
        maps = gj.explain(method, model, x, y, key=jax.random.fold_in(key, i), **(options or {}))
        out.append(np.asarray(maps)[: b - a])
    return np.concatenate(out)


def score_arrays(model: gj.ModelFunctions, images: np.ndarray, labels: np.ndarray, maps: np.ndarray, *,
                 batch_size: int, metric_batch_size: int | None, mean=gj.data.IMAGENET_MEAN,
                 std=gj.data.IMAGENET_STD) -> dict[str, np.ndarray]:
    """Per-image RCAP (with ``ratios`` / ``probs``), DAUC and IAUC (``gj.metrics.score``), in
    fixed-size batches (the last one padded)."""
    parts: dict[str, list] = {}
    n = images.shape[0]
    bs = min(batch_size, n)
    for a, b in _batches(n, bs):
        (x, y, s), _ = pad_rows((images[a:b], labels[a:b].astype(np.int32), maps[a:b]), bs)
        values = gj.metrics.score(model.logits, x, y, s, metrics=("rcap", "dauc", "iauc"),
                                  batch_size=metric_batch_size, mean=mean, std=std)
        for k, v in values.items():
            parts.setdefault(k, []).append(v[: b - a])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["ratios"], out["probs"] = out.pop("rcap_ratios"), out.pop("rcap_probs")
    return out


@dataclasses.dataclass
class DemoResult:
    """What ``run_demo`` wrote and measured.

    Attributes:
      out_dir: the output directory.
      files: name -> path of every file written (grid, table_md, table_csv, ...).
      table: method -> {"rcap", "dauc", "iauc"} means over the images.
      predictions: one (image name, class index, class name, probability) per image.
      seconds: wall time per phase and in total.
    """

    out_dir: str
    files: dict
    table: dict
    predictions: list
    seconds: dict


README_SECTION = "demo-table"
README_MARKERS = readme_sections.markers(README_SECTION)
"""The comments in ``README.md`` between which :func:`update_readme` writes the demo's table."""


def demo_markdown(model_name: str, size: int, n: int, predictions: Sequence[tuple], scores: dict,
                  timing: dict) -> str:
    """The demo's ``demo_table.md``: one row per method (the paper's Table 2 order and bold,
    ``tables.render_markdown``) with mean RCAP, DAUC, IAUC and the seconds it took, then the
    photos with the model's top-1 class.

    Args:
      model_name: the classifier's name.
      size, n: input side and modifications per method.
      predictions: ``(image, class index, class name, probability)`` per photo.
      scores: method -> ``{"rcap": (N,), "dauc": (N,), "iauc": (N,)}`` per-image values.
      timing: method -> seconds.
    """
    from gag_jax.experiments import specs as specs_lib
    from gag_jax.experiments import tables

    metrics = ("rcap", "dauc", "iauc")
    results = {}
    for m, values in scores.items():
        stats = {k: gj.metrics.RunningStat() for k in metrics}
        for k in metrics:
            stats[k].update(values[k])
        results[m] = {"n": stats["rcap"].n, **{k: stats[k].mean for k in metrics},
                      **{f"{k}_sem": stats[k].sem for k in metrics}}
    rows = specs_lib.rows_for_table(2, [specs_lib.base_spec(m) for m in scores])
    lines = ["The photos and the class explained (the model's top-1):", "",
             "| Image | top-1 class | probability |", "|---|---|---:|"]
    lines += [f"| {nm} | {cname} | {p:.3f} |" for nm, _, cname, p in predictions]
    method_table = tables.render_markdown(
        2, rows, {"demo": results}, {"demo": metrics},
        caption=f"gag-jax demo: {model_name} on {len(predictions)} photos ({size}x{size}, n = {n}).",
        note=("Mean over the photos; each map explains the model's top-1 class. Higher RCAP / IAUC and lower "
              "DAUC are better; bold: the best gradient method (Grad-CAM, above the line, is not ranked)."),
        extra_columns={"seconds": {m: f"{t:.1f}" for m, t in timing.items()}})
    return method_table + "\n" + "\n".join(lines) + "\n"


def update_readme(readme: str, table_md: str) -> str:
    """Write the demo table ``table_md`` (a ``demo_table.md`` of :func:`run_demo`) into ``readme``
    between :data:`README_MARKERS` (see :func:`gag_jax.experiments.readme.replace_section`).

    Raises:
      ValueError: the markers are missing or out of order.
    """
    with open(table_md, encoding="utf-8") as f:
        return readme_sections.replace_section(readme, README_SECTION, f.read())


DEMO_SIZE = 160
"""Default demo input side: at 160 px, with its own input scaling, Lite0 gives the four photos Egyptian
cat 0.62, espresso 0.98, drilling platform 0.70 and moped 0.99 (measured 2026-11-27), and the demo
costs about half of 224 px."""


def _checked_model(methods: Sequence[str], model_name: str, checkpoint: str | None, size: int):
    """Check the method names, load the model, check ``size`` against it: ``(model, info, mean, std)``."""
    from gag_jax.experiments.modelzoo import (
        check_input_size,
        load_model,
        model_normalization,
    )

    for m in methods:
        if m not in gj.METHODS:
            raise ValueError(f"unknown method {m!r}; expected one of {', '.join(gj.METHODS)}")
    model, info = load_model(model_name, checkpoint)
    check_input_size(model, size, name=model_name, option="--size")
    mean, std = model_normalization(model_name)
    return model, info, mean, std


def run_demo(out_dir: str = "gag_demo", *, methods: Sequence[str] | None = None, n: int = 20, size: int = DEMO_SIZE,
             images: Sequence[str] | None = None, seed: int = 0, batch_size: int = 4,
             metric_batch_size: int | str | None = "auto", chunk_size: int | None = None, model_name: str = "efficientnet_lite0",
             checkpoint: str | None = None, report: Callable[[str], None] = print,
             warn: Callable[[str], None] | None = None, progress: bool = True) -> DemoResult:
    """Explain real photos with a real model for every method and score the maps.

    Args:
      out_dir: where everything is written (created).
      methods: ``gj.METHODS`` entries (default: all of them).
      n: modifications per method (paper: 20).
      size: input side in pixels (default 160; EfficientNet-Lite0 was trained at 224, which costs
        about twice as much).
      images: image files / folders (default: the scikit-image photos).
      seed: PRNG seed.
      batch_size: images explained together (bounded memory; the last batch is padded).
      metric_batch_size: perturbed copies per model call in the metrics.
      chunk_size: modifications per vmapped chunk in the explainers (None: all n at once).
      model_name, checkpoint: the classifier (default: the shipped EfficientNet-Lite0).
      report: receives the predictions, one line each.
      warn: receives one line per undecodable image file (default: ``report``).
      progress: show a tqdm bar over the methods.

    Returns:
      a :class:`DemoResult`.

    Raises:
      ValueError: unknown method; RuntimeError: no readable image.
    """
    from gag_jax.experiments.modelzoo import (
        imagenet_class_names,
    )

    t0 = time.perf_counter()
    methods = list(gj.METHODS) if not methods else list(methods)
    model, info, mean, std = _checked_model(methods, model_name, checkpoint, size)
    paths = list(images) if images else demo_image_paths()
    pixels, x, names = read_images(paths, size, report=warn or report, mean=mean, std=std)
    if not names:
        raise RuntimeError("no readable image among the inputs")
    os.makedirs(out_dir, exist_ok=True)
    demo_names = {file: label for label, file in DEMO_IMAGES} if not images else {}
    names = [demo_names.get(nm, os.path.splitext(nm)[0]) for nm in names]
    t_load = time.perf_counter()

    probs = np.asarray(jax.nn.softmax(model.logits(jnp.asarray(x)), axis=-1))
    labels = probs.argmax(-1).astype(np.int32)
    classes = imagenet_class_names() if info["num_classes"] == 1000 else [str(i) for i in range(info["num_classes"])]
    predictions = [(nm, int(c), classes[c], float(probs[i, c])) for i, (nm, c) in enumerate(zip(names, labels))]
    for nm, c, cname, p in predictions:
        report(f"  {nm}: {cname} ({p:.2f})")

    key = jax.random.PRNGKey(seed)
    options = {"n": n, "chunk_size": chunk_size, **input_scaling(mean, std)}  # scaling: IG's black baseline
    maps, scores, timing = {}, {}, {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(names), unit="img", desc="demo", dynamic_ncols=True)
    for m in methods:
        start = time.perf_counter()
        if bar is not None:
            bar.set_postfix(method=m)
        opts = {k: v for k, v in options.items() if k in gj.DEFAULTS[m] and v is not None}
        maps[m] = explain_arrays(model, x, labels, m, key=jax.random.fold_in(key, gj.METHODS.index(m)),
                                 batch_size=batch_size, options=opts)
        scores[m] = score_arrays(model, x, labels, maps[m], batch_size=batch_size,
                                 metric_batch_size=metric_batch_size, mean=mean, std=std)
        timing[m] = time.perf_counter() - start
        if bar is not None:
            bar.update(len(names))
    if bar is not None:
        bar.close()
    t_methods = time.perf_counter()

    files = {}
    metrics = ("rcap", "dauc", "iauc")
    table = {m: {k: float(np.mean(scores[m][k])) for k in metrics} for m in methods}
    files["table_csv"] = os.path.join(out_dir, "demo_table.csv")
    with open(files["table_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "label", "rcap", "dauc", "iauc", "images", "seconds"])
        for m in methods:
            w.writerow([m, LABELS[m], repr(table[m]["rcap"]), repr(table[m]["dauc"]), repr(table[m]["iauc"]),
                        len(names), f"{timing[m]:.2f}"])
    files["per_image_csv"] = os.path.join(out_dir, "demo_per_image.csv")
    with open(files["per_image_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "class", "class_name", "probability", "method", "rcap", "dauc", "iauc"])
        for i, (nm, c, cname, p) in enumerate(predictions):
            for m in methods:
                w.writerow([nm, c, cname, f"{p:.6f}", m, repr(float(scores[m]["rcap"][i])),
                            repr(float(scores[m]["dauc"][i])), repr(float(scores[m]["iauc"][i]))])
    files["table_md"] = os.path.join(out_dir, "demo_table.md")
    with open(files["table_md"], "w", encoding="utf-8") as f:
        f.write(demo_markdown(info["name"], size, n, predictions, scores, timing))

    files["grid"] = figures.method_grid(
        os.path.join(out_dir, "method_grid.png"), pixels, {m: maps[m] for m in methods},
        row_titles=[f"{nm}: {cname}" for nm, _, cname, _ in predictions],
        column_titles={m: LABELS[m] for m in methods}, scores={m: scores[m]["rcap"] for m in methods})
    overlay_dir = os.path.join(out_dir, "overlays")
    for i, (nm, _, cname, p) in enumerate(predictions):
        for m in methods:
            figures.save_overlay(os.path.join(overlay_dir, f"{nm}_{m}.png"), pixels[i], maps[m][i],
                                 title=f"{LABELS[m]}: {nm}, {cname} (p = {p:.2f})")
    files["overlays"] = overlay_dir
    focus = "gag" if "gag" in methods else methods[0]
    partitions = []
    for i, (nm, _, cname, _) in enumerate(predictions):
        partitions.append(figures.rcap_partitions(
            os.path.join(out_dir, f"rcap_partitions_{nm}_{focus}.png"), pixels[i], maps[focus][i],
            ratios=scores[focus]["ratios"][i], probs=scores[focus]["probs"][i],
            title=f"{nm} ({cname}), {LABELS[focus]}: RCAP partitions (Figure 3 style)"))
    files["rcap_partitions"] = os.path.join(out_dir, f"rcap_partitions_<image>_{focus}.png")
    files["propositions"] = figures.synthetic_propositions(os.path.join(out_dir, "figure4_propositions.png"))["path"]
    files["maps"] = os.path.join(out_dir, "maps.npz")
    np.savez_compressed(files["maps"], names=np.asarray(names), labels=labels,
                        **{m: maps[m].astype(np.float16) for m in methods})
    t_end = time.perf_counter()
    seconds = {"load": t_load - t0, "methods": t_methods - t_load, "figures": t_end - t_methods, "total": t_end - t0,
               **{f"method_{m}": timing[m] for m in methods}}
    return DemoResult(out_dir, files, table, predictions, seconds)


def run_explain(paths: Sequence[str], out_dir: str, *, methods: Sequence[str], model_name: str,
                checkpoint: str | None = None, labels: Sequence[int] | None = None, size: int = 224,
                n: int | None = None, seed: int = 0, batch_size: int = 8, chunk_size: int | None = None,
                resize_mode: str = "center_crop", report: Callable[[str], None] = print) -> dict:
    """Explain image files (or folders of images): an overlay PNG and a ``.npy`` map per (image, method).

    Files written: ``<stem>_<method>.npy`` (float32 ``(size, size)`` in [0, 1]),
    ``<stem>_<method>.png`` (image | map over the image | map, colour bar, titled with the method,
    class and probability) and ``explain.csv`` (image, label, class name, probability of the
    label). Nothing is written, not even ``out_dir``, when no image could be read.

    Args:
      paths: image files and / or folders.
      out_dir: output directory.
      methods: ``gj.METHODS`` entries.
      model_name, checkpoint: the classifier (see ``modelzoo.load_model``).
      labels: one target class per image in reading order, or None for the model's top-1.
      size: input side.
      n: modifications per method (None: the method's default, 20).
      seed: PRNG seed.
      batch_size: images per explainer call.
      chunk_size: modifications per vmapped chunk.
      resize_mode: ``center_crop`` or ``squash``.
      report: one line per skipped file.

    Returns:
      ``{"written": [paths], "skipped": [paths], "images": [names]}``.

    Raises:
      ValueError: unknown method, or a label count that does not match the images read.
      InputTooSmallError: ``size`` below the smallest input side the model takes (named).
      FileNotFoundError: a path that does not exist.
    """
    from gag_jax.experiments.modelzoo import (
        imagenet_class_names,
    )

    model, info, mean, std = _checked_model(methods, model_name, checkpoint, size)
    bad: list[str] = []

    def note(line: str) -> None:
        bad.append(line)
        report(line)

    pixels, x, names = read_images(paths, size, report=note, resize_mode=resize_mode, mean=mean, std=std)
    if not names:  # nothing to write: no output folder either
        return {"written": [], "skipped": bad, "images": []}
    probs = np.asarray(jax.nn.softmax(model.logits(jnp.asarray(x)), axis=-1))
    if labels is None:
        y = probs.argmax(-1).astype(np.int32)
    else:
        y = np.asarray(list(labels), np.int32)
        if y.shape[0] == 1 and len(names) > 1:
            y = np.repeat(y, len(names))
        if y.shape[0] != len(names):
            raise ValueError(f"--labels gave {y.shape[0]} labels for {len(names)} readable images")
        if y.min() < 0 or y.max() >= probs.shape[1]:
            raise ValueError(f"--labels must lie in [0, {probs.shape[1]}) for this model")
    classes = imagenet_class_names() if info["num_classes"] == 1000 else [str(i) for i in range(info["num_classes"])]
    stems = [os.path.splitext(nm)[0] for nm in names]
    # two files with the same stem (a.jpg, a.png): keep both
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):
        if s in seen:
            stems[i] = f"{s}_{os.path.splitext(names[i])[1].lstrip('.')}"
        seen[s] = i
    os.makedirs(out_dir, exist_ok=True)
    written = []
    key = jax.random.PRNGKey(seed)
    for m in methods:
        opts = {k: v for k, v in {"n": n, "chunk_size": chunk_size, **input_scaling(mean, std)}.items()
                if v is not None and k in gj.DEFAULTS[m]}
        maps = explain_arrays(model, x, y, m, key=jax.random.fold_in(key, gj.METHODS.index(m)),
                              batch_size=batch_size, options=opts)
        for i, stem in enumerate(stems):
            npy = os.path.join(out_dir, f"{stem}_{m}.npy")
            np.save(npy, maps[i].astype(np.float32))
            title = f"{LABELS[m]}: {names[i]}, {classes[int(y[i])]} (p = {probs[i, y[i]]:.2f})"
            png = figures.save_overlay(os.path.join(out_dir, f"{stem}_{m}.png"), pixels[i], maps[i], title=title)
            written += [npy, png]
    table = os.path.join(out_dir, "explain.csv")
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "file_stem", "label", "class_name", "probability"])
        for i, nm in enumerate(names):
            w.writerow([nm, stems[i], int(y[i]), classes[int(y[i])], f"{probs[i, y[i]]:.6f}"])
    written.append(table)
    return {"written": written, "skipped": bad, "images": names}
