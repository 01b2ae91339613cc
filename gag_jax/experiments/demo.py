"""The zero-setup demo: real photos, a real ImageNet model, every method.

``run_demo`` explains the photos shipped with scikit-image (Chelsea the cat, a cup of coffee, a
rocket, a motorcycle; at 160 px EfficientNet-Lite0 classifies them as Egyptian cat, espresso,
drilling platform and moped) with the real EfficientNet-Lite0 weights for every method of
``gj.METHODS``, scores every map with RCAP, DAUC and IAUC, and writes a Figure-1-style grid,
per-image overlays, one Figure-3-style RCAP partition figure per photo, the Figure 4
propositions and a Markdown + CSV table. The model, keys and batched maps come from the job layer
(:mod:`gag_jax.experiments.jobs`) that every command shares.
Nothing is downloaded.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

import gag_jax as gj
from gag_jax.data import read_images
from gag_jax.experiments import figures
from gag_jax.experiments import readme as readme_sections
from gag_jax.experiments.explain_command import probability_text
from gag_jax.experiments.jobs import BadInputError, Job
from gag_jax.experiments.specs import label_of
from gag_jax.experiments.timing import CompileTimer

DEMO_N = 20
"""Modifications per method of the paper's methods in the demo (the paper's n)."""

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


def score_arrays(model: gj.ModelFunctions, images: np.ndarray, labels: np.ndarray, maps: np.ndarray, *,
                 batch_size: int, metric_batch_size: int | str | None) -> dict[str, np.ndarray]:
    """Per-image RCAP (with ``ratios`` / ``probs``), DAUC and IAUC (``gj.metrics.score``; the black of
    RCAP from the model's scaling), in fixed-size batches (``gj.distributed.map_batches``)."""

    def score(m, x, y, s):
        return gj.metrics.score(m, x, y, s, metrics=("rcap", "dauc", "iauc"), copies_per_call=metric_batch_size)

    out = gj.distributed.map_batches(score, [images, labels.astype(np.int32), maps], batch_size=batch_size,
                                     shared=(model,), mesh=None)
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


TIMING_NOTE = ("compile s: the time JAX spent tracing, lowering and compiling the method's explain "
               "program (or loading it from the compile cache), from jax.monitoring's compile events; "
               "run s: the rest of the explain wall time. Scoring the maps is timed separately below")


README_SECTION = "demo-table"
README_MARKERS = readme_sections.markers(README_SECTION)
"""The comments in ``README.md`` between which :func:`update_readme` writes the demo's table."""


def demo_markdown(model_name: str, size: int, n: int, predictions: Sequence[tuple], scores: dict,
                  timing: dict, *, scoring: dict | None = None) -> str:
    """The demo's ``demo_table.md``: one row per method (the paper's Table 2 order and bold,
    ``tables.render_markdown``) with mean RCAP, DAUC, IAUC and the time it took, then the
    photos with the model's top-1 class.

    Args:
      model_name: the classifier's name.
      size, n: input side and modifications per method.
      predictions: ``(image, class index, class name, probability)`` per photo.
      scores: method -> ``{"rcap": (N,), "dauc": (N,), "iauc": (N,)}`` per-image values.
      timing: method -> ``{"compile": s, "run": s}`` of its explain calls (two columns, see
        :data:`TIMING_NOTE`), or method -> seconds (one ``seconds`` column).
      scoring: ``{"compile": s, "run": s}`` of scoring every map, stated under the table.
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
    specs = [specs_lib.base_spec(m) if m in gj.METHODS
             else specs_lib.MethodSpec(name=m, label=label_of(m), method=m, part=4) for m in scores]
    rows = specs_lib.rows_for_table(2, specs)
    lines = ["The photos and the class explained (the model's top-1):", "",
             "| Image | top-1 class | probability |", "|---|---|---:|"]
    lines += [f"| {nm} | {cname} | {p:.3f} |" for nm, _, cname, p in predictions]
    if all(isinstance(t, Mapping) for t in timing.values()):
        extra = {"compile s": {m: f"{t['compile']:.1f}" for m, t in timing.items()},
                 "run s": {m: f"{t['run']:.1f}" for m, t in timing.items()}}
        timing_note = f" Time per method: {TIMING_NOTE}"
        if scoring:
            timing_note += (f" (RCAP, DAUC and IAUC of every map: {scoring['compile']:.1f} s compile, "
                            f"{scoring['run']:.1f} s run)")
        timing_note += "."
    else:
        extra, timing_note = {"seconds": {m: f"{t:.1f}" for m, t in timing.items()}}, ""
    beyond = " or the perturbation methods below the last line" if any(s.part == 4 for s in rows) else ""
    method_table = tables.render_markdown(
        2, rows, {"demo": results}, {"demo": metrics},
        caption=f"gag-jax demo: {model_name} on {len(predictions)} photos ({size}x{size}, n = {n}).",
        note=("Mean over the photos; each map explains the model's top-1 class. Higher RCAP / IAUC and lower "
              f"DAUC are better; bold: the best gradient method when it leads the runner-up by more than the "
              f"standard error of their difference (none with one photo; Grad-CAM, above the line{beyond}, is "
              f"not ranked).{timing_note}"),
        extra_columns=extra)
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


def run_demo(job: Job, *, size: int = DEMO_SIZE, images: Sequence[str] | None = None,
             report: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> DemoResult:
    """Explain real photos with a real model for every method and score the maps.

    Args:
      job: the shared options (:class:`~gag_jax.experiments.jobs.Job`): ``out_dir`` (created);
        ``methods`` (``gj.PRESETS`` entries, default the paper's ``gj.METHODS``); ``n`` (None:
        :data:`DEMO_N`, the paper's 20, for the paper's methods, their own defaults for occlusion,
        rise and xrai); ``seed``; ``batch_size`` (images explained together, default 4);
        ``metric_batch_size``; ``chunk_size``; ``model_name`` / ``checkpoint`` (default the shipped
        EfficientNet-Lite0); ``progress`` (a tqdm bar over the methods).
      size: input side in pixels (default 160; EfficientNet-Lite0 was trained at 224, which costs
        about twice as much).
      images: image files / folders (default: the scikit-image photos).
      report: receives the predictions, one line each.
      warn: receives one line per undecodable image file (default: ``report``).

    Returns:
      a :class:`DemoResult`; ``seconds`` holds ``method_<m>`` (explain wall time), ``compile_<m>`` and
      ``run_<m>`` (its compile / run split, :class:`CompileTimer`), ``scoring_compile`` / ``scoring_run``.

    Raises:
      ValueError: unknown method; BadInputError: no readable image.
    """
    from gag_jax.experiments.modelzoo import imagenet_class_names, predict_top1

    t0 = time.perf_counter()
    methods = list(job.methods or gj.METHODS)
    out_dir, batch_size = job.out_dir, job.batch_size or 4
    model, info = job.load_model(size, methods=methods)
    mean, std = model.mean, model.std
    paths = list(images) if images else demo_image_paths()
    pixels, x, names = read_images(paths, size, report=warn or report, mean=mean, std=std)
    if not names:
        raise BadInputError("no readable image among the inputs (each unreadable file is named above); "
                            "nothing written")
    os.makedirs(out_dir, exist_ok=True)
    demo_names = {file: label for label, file in DEMO_IMAGES} if not images else {}
    keys = job.keys(names)  # from the file names: the same maps as `gag-jax explain` of those files
    names = [demo_names.get(nm, os.path.splitext(nm)[0]) for nm in names]
    t_load = time.perf_counter()

    labels, top_probs = predict_top1(model, x, batch_size=batch_size)
    classes = imagenet_class_names() if info["num_classes"] == 1000 else [str(i) for i in range(info["num_classes"])]
    predictions = [(nm, int(c), classes[c], float(p)) for nm, c, p in zip(names, labels, top_probs)]
    for nm, c, cname, p in predictions:
        report(f"  {nm}: {probability_text(cname, p)}")

    maps, scores, timing = {}, {}, {}
    scoring = {"compile": 0.0, "run": 0.0}
    bar = None
    if job.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(names), unit="img", desc="demo", dynamic_ncols=True)
    for m in methods:
        if bar is not None:
            bar.set_postfix(method=m)
        # n: the paper's 20 for its methods unless given (the input scaling is the model's)
        opts = job.method_options(m, default_n=DEMO_N if m in gj.METHODS else None)
        start = time.perf_counter()
        with CompileTimer() as compiled:
            maps[m] = job.explain(model, x, labels, keys, m, options=opts, batch_size=batch_size)
        wall = time.perf_counter() - start
        timing[m] = {"compile": compiled.seconds, "run": max(wall - compiled.seconds, 0.0), "wall": wall}
        start = time.perf_counter()
        with CompileTimer() as compiled:
            scores[m] = score_arrays(model, x, labels, maps[m], batch_size=batch_size,
                                     metric_batch_size=job.metric_batch_size)
        wall = time.perf_counter() - start
        scoring["compile"] += compiled.seconds
        scoring["run"] += max(wall - compiled.seconds, 0.0)
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
        w.writerow(["method", "label", "rcap", "dauc", "iauc", "images", "explain_compile_seconds",
                    "explain_run_seconds"])
        for m in methods:
            w.writerow([m, label_of(m), repr(table[m]["rcap"]), repr(table[m]["dauc"]), repr(table[m]["iauc"]),
                        len(names), f"{timing[m]['compile']:.2f}", f"{timing[m]['run']:.2f}"])
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
        f.write(demo_markdown(info["name"], size, job.n or DEMO_N, predictions, scores, timing, scoring=scoring))

    files["grid"] = figures.method_grid(
        os.path.join(out_dir, "method_grid.png"), pixels, {m: maps[m] for m in methods},
        row_titles=[f"{nm}: {cname}" for nm, _, cname, _ in predictions],
        column_titles={m: label_of(m) for m in methods}, scores={m: scores[m]["rcap"] for m in methods})
    overlay_dir = os.path.join(out_dir, "overlays")
    for i, (nm, _, cname, p) in enumerate(predictions):
        for m in methods:
            figures.save_overlay(os.path.join(overlay_dir, f"{nm}_{m}.png"), pixels[i], maps[m][i],
                                 title=f"{label_of(m)}: {nm}, {probability_text(cname, p)}")
    files["overlays"] = overlay_dir
    focus = "gag" if "gag" in methods else methods[0]
    partitions = []
    for i, (nm, _, cname, _) in enumerate(predictions):
        partitions.append(figures.rcap_partitions(
            os.path.join(out_dir, f"rcap_partitions_{nm}_{focus}.png"), pixels[i], maps[focus][i],
            ratios=scores[focus]["ratios"][i], probs=scores[focus]["probs"][i],
            title=f"{nm} ({cname}), {label_of(focus)}: RCAP partitions (Figure 3 style)"))
    files["rcap_partitions"] = os.path.join(out_dir, f"rcap_partitions_<image>_{focus}.png")
    files["propositions"] = figures.synthetic_propositions(os.path.join(out_dir, "figure4_propositions.png"))["path"]
    files["maps"] = os.path.join(out_dir, "maps.npz")
    np.savez_compressed(files["maps"], names=np.asarray(names), labels=labels,
                        **{m: maps[m].astype(np.float16) for m in methods})
    t_end = time.perf_counter()
    seconds = {"load": t_load - t0, "methods": t_methods - t_load, "figures": t_end - t_methods, "total": t_end - t0,
               "scoring_compile": scoring["compile"], "scoring_run": scoring["run"],
               **{f"method_{m}": timing[m]["wall"] for m in methods},
               **{f"compile_{m}": timing[m]["compile"] for m in methods},
               **{f"run_{m}": timing[m]["run"] for m in methods}}
    return DemoResult(out_dir, files, table, predictions, seconds)


