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
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.data import pad_rows
from gag_jax.experiments import figures
from gag_jax.experiments import readme as readme_sections
from gag_jax.experiments.specs import input_scaling, label_of  # noqa: F401  (demo.label_of)

DEMO_N = 20
"""Modifications per method of the paper's methods in the demo (the paper's n)."""

UPSCALE_NOTICE_FACTOR = 2.0
"""An image whose shorter side is below ``size / UPSCALE_NOTICE_FACTOR`` gets a notice: it is upscaled
that much, and its maps cannot show detail finer than its own pixels."""


class BadInputError(ValueError):
    """An input that cannot be explained as given (no readable image, labels that do not fit the
    images or the model); the message names it. The command line reports it in one line, exit 2."""


def probability_text(class_name: str, probability: float) -> str:
    """``"P(Egyptian cat) = 0.62"``: the model's probability of the class, spelled out (``p`` alone
    would read as RCAP's percentile)."""
    return f"P({class_name}) = {probability:.2f}"


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


def upscale_notice(files: Sequence[str], size: int, factor: float = UPSCALE_NOTICE_FACTOR) -> str | None:
    """One line naming the images whose shorter side is below ``size / factor`` (they are upscaled at
    least ``factor`` times to ``size``), or None when there is none."""
    from PIL import Image

    small = []
    for path in files:
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Exception:  # noqa: BLE001 - it was decoded once already; a notice is not worth failing for
            continue
        if min(w, h) * factor <= size:
            small.append((os.path.basename(path), w, h, size / min(w, h)))
    if not small:
        return None
    if len(small) == 1:
        name, w, h, up = small[0]
        return (f"{name} is {w}x{h} px, much smaller than the {size}x{size} input: upscaled {up:.1f}x, so its maps "
                "show no detail finer than its own pixels")
    named = ", ".join(f"{name} ({w}x{h})" for name, w, h, _ in small[:3]) + (", ..." if len(small) > 3 else "")
    return (f"{len(small)} images are much smaller than the {size}x{size} input and were upscaled (up to "
            f"{max(t[3] for t in small):.1f}x; their maps show no detail finer than their own pixels): {named}")


def read_images(paths: Sequence[str], size: int, *, report: Callable[[str], None] = print,
                resize_mode: str = "center_crop", mean=gj.data.IMAGENET_MEAN, std=gj.data.IMAGENET_STD,
                notice: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read image files / folders with ``gag_jax.data.load_image_files``; report each bad file in one line.

    Args:
      notice: receives one line (:func:`upscale_notice`) when images much smaller than ``size`` are
        upscaled (default: ``report``).

    Returns:
      ``(pixels uint8 (N, S, S, 3), images float32 normalised, names)``; the undecodable files
      are reported through ``report`` and left out.

    Raises:
      FileNotFoundError: a path that does not exist.
    """
    from gag_jax.data import load_image_files
    from gag_jax.data._common import list_image_files

    files = []
    for path in map(os.fspath, paths):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such image file or folder: {path}")
        files += list_image_files(path) if os.path.isdir(path) else [path]
    skipped: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported below, one line per file
        pixels, images, names = load_image_files(files, size, resize_mode=resize_mode, skipped=skipped,
                                                 mean=mean, std=std)
    for s in skipped:
        report(f"skipping {s.path}: {s.reason}")
    bad = {s.path for s in skipped}
    line = upscale_notice([f for f in files if f not in bad], size)
    if line:
        (notice or report)(line)
    return pixels, images, names


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def explain_arrays(model: gj.ModelFunctions, images: np.ndarray, labels: np.ndarray, method: str, *, key,
                   batch_size: int, options: dict | None = None,
                   progress: Callable[[int], None] | None = None, batches: Sequence[int] | None = None) -> np.ndarray:
    """Maps ``(N, H, W)`` of ``images`` in fixed-size batches (the last one padded), one compile per method;
    ``key``: ``(N, 2)`` keys, one per image (``gj.keys.image_keys``: an image's map does not depend on
    its batch). ``progress`` receives the number of images of each finished batch. ``batches``: compute
    only these batch indices (the maps of those images, in order)."""
    out = []
    n = images.shape[0]
    bs = min(batch_size, n)
    mesh = gj.distributed.local_mesh()  # several local devices: the batch axis is sharded over them
    if mesh is not None:
        bs = -(-bs // mesh.devices.size) * mesh.devices.size
        model = gj.distributed.replicate(model, mesh)
    for i, (a, b) in enumerate(_batches(n, bs)):
        if batches is not None and i not in batches:
            continue
        (x, y, k), _ = pad_rows((jnp.asarray(images[a:b]), jnp.asarray(labels[a:b], jnp.int32), key[a:b]), bs)
        x, y, k = gj.distributed.shard_rows([x, y, k], mesh)
        maps = gj.explain(method, model, x, y, key=k, **(options or {}))
        out.append(np.asarray(maps)[: b - a])
        if progress is not None:
            progress(b - a)
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.float32)


def image_keys(seed: int, files: Sequence[str]) -> jax.Array:
    """``(N, 2)`` keys from the seed and each image's file name (``gj.keys.image_keys`` of the base
    names): the same image, seed and method give the same map from ``demo``, ``explain`` and ``evaluate``."""
    return gj.keys.file_keys(seed, files)


def method_options(method: str, *, n: int | None, chunk_size: int | None, mean, std) -> dict:
    """The options the CLI jobs pass to ``gj.explain``: ``n``, ``chunk_size`` and the input scaling, where
    ``method`` takes them; ``n=None`` keeps the method's default."""
    options = {"n": n, "chunk_size": chunk_size, **input_scaling(mean, std)}
    return {k: v for k, v in options.items() if v is not None and k in gj.METHOD_RECORDS[method].defaults}


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
        values = gj.metrics.score(model, x, y, s, metrics=("rcap", "dauc", "iauc"),
                                  copies_per_call=metric_batch_size, mean=mean, std=std)
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


def _checked_model(methods: Sequence[str], model_name: str, checkpoint: str | None, size: int):
    """Check the method names, load the model, check ``size`` against it: ``(model, info, mean, std)``."""
    from gag_jax.experiments.modelzoo import (
        check_input_size,
        load_model,
        model_normalization,
    )

    for m in methods:
        if m not in gj.METHOD_RECORDS:
            raise ValueError(f"unknown method {m!r}; expected one of {', '.join(gj.METHOD_RECORDS)}")
    model, info = load_model(model_name, checkpoint, image_size=size)
    check_input_size(model, size, name=model_name, option="--size")
    mean, std = model_normalization(model_name)
    return model, info, mean, std


def run_demo(out_dir: str = "gag_demo", *, methods: Sequence[str] | None = None, n: int | None = None,
             size: int = DEMO_SIZE,
             images: Sequence[str] | None = None, seed: int = 0, batch_size: int = 4,
             metric_batch_size: int | str | None = "auto", chunk_size: int | None = None, model_name: str = "efficientnet_lite0",
             checkpoint: str | None = None, report: Callable[[str], None] = print,
             warn: Callable[[str], None] | None = None, progress: bool = True) -> DemoResult:
    """Explain real photos with a real model for every method and score the maps.

    Args:
      out_dir: where everything is written (created).
      methods: ``gj.PRESETS`` entries (default: the paper's ``gj.METHODS``).
      n: modifications per method (None: :data:`DEMO_N`, the paper's 20, for the paper's methods and
        their own defaults for occlusion, rise and xrai).
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
      a :class:`DemoResult`; ``seconds`` holds ``method_<m>`` (explain wall time), ``compile_<m>`` and
      ``run_<m>`` (its compile / run split, :class:`CompileTimer`), ``scoring_compile`` / ``scoring_run``.

    Raises:
      ValueError: unknown method; BadInputError: no readable image.
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
        raise BadInputError("no readable image among the inputs (each unreadable file is named above); "
                            "nothing written")
    os.makedirs(out_dir, exist_ok=True)
    demo_names = {file: label for label, file in DEMO_IMAGES} if not images else {}
    keys = image_keys(seed, names)  # from the file names: the same maps as `gag-jax explain` of those files
    names = [demo_names.get(nm, os.path.splitext(nm)[0]) for nm in names]
    t_load = time.perf_counter()

    probs = np.asarray(jax.nn.softmax(model.logits(jnp.asarray(x)), axis=-1))
    labels = probs.argmax(-1).astype(np.int32)
    classes = imagenet_class_names() if info["num_classes"] == 1000 else [str(i) for i in range(info["num_classes"])]
    predictions = [(nm, int(c), classes[c], float(probs[i, c])) for i, (nm, c) in enumerate(zip(names, labels))]
    for nm, c, cname, p in predictions:
        report(f"  {nm}: {probability_text(cname, p)}")

    maps, scores, timing = {}, {}, {}
    scoring = {"compile": 0.0, "run": 0.0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(names), unit="img", desc="demo", dynamic_ncols=True)
    for m in methods:
        if bar is not None:
            bar.set_postfix(method=m)
        # scaling: IG's black baseline; n: the paper's 20 for its methods unless given
        opts = method_options(m, n=n if n is not None or m not in gj.METHODS else DEMO_N, chunk_size=chunk_size,
                              mean=mean, std=std)
        start = time.perf_counter()
        with CompileTimer() as compiled:
            try:
                maps[m] = explain_arrays(model, x, labels, m, key=keys, batch_size=batch_size, options=opts)
            except ValueError as err:  # gj.explain: an option that does not fit the images or the model
                raise BadInputError(f"method {m!r}: {' '.join(str(err).split())}") from None
        wall = time.perf_counter() - start
        timing[m] = {"compile": compiled.seconds, "run": max(wall - compiled.seconds, 0.0), "wall": wall}
        start = time.perf_counter()
        with CompileTimer() as compiled:
            scores[m] = score_arrays(model, x, labels, maps[m], batch_size=batch_size,
                                     metric_batch_size=metric_batch_size, mean=mean, std=std)
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
        f.write(demo_markdown(info["name"], size, n or DEMO_N, predictions, scores, timing, scoring=scoring))

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


EXPLAIN_CSV_COLUMNS = ("image", "file_stem", "method", "label", "class_name", "probability")
"""The columns of ``explain.csv``: one row per (image, method) whose map is in the folder."""


def _read_explain_csv(path: str, out_dir: str) -> list[dict]:
    """The rows of an existing ``explain.csv`` (none when there is no file). A file written before the
    ``method`` column existed gets one row per map of its image found in ``out_dir``."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        if row.get("method"):
            out.append({k: row.get(k, "") for k in EXPLAIN_CSV_COLUMNS})
            continue
        for m in gj.PRESETS:
            if os.path.isfile(os.path.join(out_dir, f"{row.get('file_stem', '')}_{m}.npy")):
                out.append({**{k: row.get(k, "") for k in EXPLAIN_CSV_COLUMNS}, "method": m})
    return out


def _write_explain_csv(path: str, rows: Sequence[Mapping]) -> None:
    """Write ``rows`` to ``path`` through a temporary file (an interrupted run leaves the old file whole)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(EXPLAIN_CSV_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def run_explain(paths: Sequence[str], out_dir: str, *, methods: Sequence[str], model_name: str,
                checkpoint: str | None = None, labels: Sequence[int] | None = None, size: int = 224,
                n: int | None = None, seed: int = 0, batch_size: int = 8, chunk_size: int | None = None,
                resize_mode: str = "center_crop", report: Callable[[str], None] = print,
                notice: Callable[[str], None] | None = None, progress: bool = False,
                top_k: int | None = None) -> dict:
    """Explain image files (or folders of images): an overlay PNG and a ``.npy`` map per (image, method).

    Files written: ``<stem>_<method>.npy`` (float32 ``(size, size)`` in [0, 1]),
    ``<stem>_<method>.png`` (image | map over the image | map, colour bar, titled with the method,
    the class and its probability, ``P(class) = 0.62``) and ``explain.csv`` (one row per image and
    method: image, file stem, method, label, class name, probability of the label). A second run into
    the same folder keeps the rows of the first and replaces those of the same (file stem, method);
    ``explain.csv`` is rewritten (atomically) after each method, so it lists exactly the maps written.
    Nothing is written, not even ``out_dir``, when no image could be read or the labels do not fit.
    With ``top_k``, each image is explained for the model's ``top_k`` classes in one call per batch
    (``labels (B, K)``: the forward passes and the noise / path sweep shared); the files and the rows'
    ``file_stem`` are then ``<stem>_top<r>_<class index>_<class name>`` (``cat_top1_285_egyptian_cat_gag.npy``).

    Args:
      paths: image files and / or folders.
      out_dir: output directory.
      methods: ``gj.PRESETS`` entries.
      model_name, checkpoint: the classifier (see ``modelzoo.load_model``).
      labels: one target class per image in reading order, or None for the model's top-1.
      top_k: explain the model's ``top_k`` classes of each image instead (not with ``labels``).
      size: input side.
      n: modifications per method (None: the method's default, 20 for the paper's).
      seed: PRNG seed.
      batch_size: images per explainer call.
      chunk_size: modifications per vmapped chunk.
      resize_mode: ``center_crop`` or ``squash``.
      report: one line per skipped file.
      notice: one line naming the images much smaller than ``size`` (upscaled; default ``report``).
      progress: show a tqdm bar (stderr) over images x methods.

    Returns:
      ``{"written": [paths], "skipped": [lines], "images": [names], "rows": rows in explain.csv}``.

    Raises:
      ValueError: unknown method; BadInputError: a label count or class that does not fit.
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

    pixels, x, names = read_images(paths, size, report=note, resize_mode=resize_mode, mean=mean, std=std,
                                   notice=notice or report)
    if not names:  # nothing to write: no output folder either
        return {"written": [], "skipped": bad, "images": [], "rows": 0}
    probs = np.asarray(jax.nn.softmax(model.logits(jnp.asarray(x)), axis=-1))
    if top_k is not None:
        if labels is not None or not 1 <= top_k <= probs.shape[1]:
            raise BadInputError(f"top-{top_k} needs 1 <= K <= {probs.shape[1]} (the model's classes) and no labels")
        y = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k].astype(np.int32)  # (N, K), most probable first
    elif labels is None:
        y = probs.argmax(-1).astype(np.int32)
    else:
        y = np.asarray(list(labels), np.int32)
        if y.shape[0] == 1 and len(names) > 1:
            y = np.repeat(y, len(names))
        if y.shape[0] != len(names):
            raise BadInputError(f"--labels gave {y.shape[0]} labels for {len(names)} readable images "
                                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); give one per image "
                                "or one for all")
        if y.min() < 0 or y.max() >= probs.shape[1]:
            raise BadInputError(f"--labels must lie in [0, {probs.shape[1]}) for this model; got "
                                f"{int(y.min() if y.min() < 0 else y.max())}")
    classes = imagenet_class_names() if info["num_classes"] == 1000 else [str(i) for i in range(info["num_classes"])]
    stems = [os.path.splitext(nm)[0] for nm in names]
    # two files with the same stem (a.jpg, a.png): keep both
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):
        if s in seen:
            stems[i] = f"{s}_{os.path.splitext(names[i])[1].lstrip('.')}"
        seen[s] = i
    keys = image_keys(seed, names)
    # one (file stem, class) per map of each image: its own stem, or one per top-k class named by it
    targets = [[(stem, int(y[i]))] if top_k is None else
               [(f"{stem}_top{r + 1}_{c}_{_file_slug(classes[c])}", int(c)) for r, c in enumerate(y[i])]
               for i, stem in enumerate(stems)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(names), unit="img", desc="explain", dynamic_ncols=True)

    def explain(m: str, batches: Sequence[int]) -> np.ndarray:
        if bar is not None:
            bar.set_postfix(method=m)
        try:
            return explain_arrays(model, x, y, m, key=keys, batch_size=batch_size,
                                  options=method_options(m, n=n, chunk_size=chunk_size, mean=mean, std=std),
                                  progress=None if bar is None else bar.update, batches=batches)
        except ValueError as err:  # gj.explain: an option that does not fit the images or the model
            raise BadInputError(f"method {m!r}: {' '.join(str(err).split())}") from None

    written = []
    try:
        # the first batch of every method before anything is written: a method that cannot run with
        # these images and options is refused with the folder untouched (and compiled meanwhile)
        first = {m: explain(m, [0]) for m in methods}
        os.makedirs(out_dir, exist_ok=True)
        table = os.path.join(out_dir, "explain.csv")
        earlier = _read_explain_csv(table, out_dir)
        new_rows: dict[tuple[str, str], dict] = {}
        num_batches = -(-len(names) // min(batch_size, len(names)))
        for m in methods:
            rest = explain(m, range(1, num_batches)) if num_batches > 1 else None
            maps = first.pop(m) if rest is None else np.concatenate([first.pop(m), rest])  # (N[, K], H, W)
            for i in range(len(stems)):
                for t, (stem, c) in enumerate(targets[i]):
                    image_map = maps[i] if top_k is None else maps[i, t]
                    npy = os.path.join(out_dir, f"{stem}_{m}.npy")
                    np.save(npy, image_map.astype(np.float32))
                    title = f"{label_of(m)}: {names[i]}, {probability_text(classes[c], float(probs[i, c]))}"
                    png = figures.save_overlay(os.path.join(out_dir, f"{stem}_{m}.png"), pixels[i], image_map,
                                               title=title)
                    written += [npy, png]
                    new_rows[(stem, m)] = {"image": names[i], "file_stem": stem, "method": m, "label": c,
                                           "class_name": classes[c], "probability": f"{probs[i, c]:.6f}"}
            rows = [r for r in earlier if (r["file_stem"], r["method"]) not in new_rows]
            order = {(stem, m): (i, t, j) for i in range(len(stems)) for t, (stem, _) in enumerate(targets[i])
                     for j, m in enumerate(methods)}
            rows += sorted(new_rows.values(), key=lambda r: order[r["file_stem"], r["method"]])
            _write_explain_csv(table, rows)
    finally:
        if bar is not None:
            bar.close()
    written.append(table)
    return {"written": written, "skipped": bad, "images": names, "rows": len(rows)}


def _file_slug(name: str) -> str:
    """A class name as part of a file name: lower case, runs of other characters as ``_``."""
    return "_".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split()) or "class"
