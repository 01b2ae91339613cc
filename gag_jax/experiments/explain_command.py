"""``gag-jax explain`` as a function: :func:`run_explain` writes an overlay PNG and a ``.npy`` map per
(image, method) and an ``explain.csv``. The model, the keys and the batched explain step are the
job layer's (:mod:`gag_jax.experiments.jobs`), shared with ``demo``, ``evaluate`` and ``sanity``.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

import gag_jax as gj
from gag_jax.data import read_images
from gag_jax.experiments import figures
from gag_jax.experiments.jobs import BadInputError, Job
from gag_jax.experiments.specs import label_of


def probability_text(class_name: str, probability: float) -> str:
    """``"P(Egyptian cat) = 0.62"``: the model's probability of the class, spelled out (``p`` alone
    would read as RCAP's percentile)."""
    return f"P({class_name}) = {probability:.2f}"


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


def run_explain(job: Job, paths: Sequence[str], *, labels: Sequence[int] | None = None, size: int = 224,
                resize_mode: str = "center_crop", report: Callable[[str], None] = print,
                notice: Callable[[str], None] | None = None, top_k: int | None = None) -> dict:
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
      job: the shared options (:class:`~gag_jax.experiments.jobs.Job`): ``out_dir``, ``methods``
        (``gj.PRESETS`` entries, default ``("gag",)``), ``model_name`` / ``checkpoint`` (default the
        shipped Lite0), ``n``, ``chunk_size``, ``seed``, ``batch_size`` (default 8), ``progress``.
      paths: image files and / or folders.
      labels: one target class per image in reading order, or None for the model's top-1.
      top_k: explain the model's ``top_k`` classes of each image instead (not with ``labels``).
      size: input side.
      resize_mode: ``center_crop`` or ``squash``.
      report: one line per skipped file.
      notice: one line naming the images much smaller than ``size`` (upscaled; default ``report``).

    Returns:
      ``{"written": [paths], "skipped": [lines], "images": [names], "rows": rows in explain.csv}``.

    Raises:
      ValueError: unknown method; BadInputError: a label count or class that does not fit.
      InputTooSmallError: ``size`` below the smallest input side the model takes (named).
      FileNotFoundError: a path that does not exist.
    """
    from gag_jax.experiments.modelzoo import (
        class_probabilities,
        imagenet_class_names,
        top1_of,
        top_k_of,
    )

    methods = list(job.methods or ("gag",))
    out_dir = job.out_dir
    batch_size = job.batch_size or 8
    model, info = job.load_model(size, methods=methods)
    mean, std = model.mean, model.std
    bad: list[str] = []

    def note(line: str) -> None:
        bad.append(line)
        report(line)

    pixels, x, names = read_images(paths, size, report=note, resize_mode=resize_mode, mean=mean, std=std,
                                   notice=notice or report)
    if not names:  # nothing to write: no output folder either
        return {"written": [], "skipped": bad, "images": [], "rows": 0}
    probs = class_probabilities(model, x, batch_size=batch_size)  # (N, K)
    if top_k is not None:
        if labels is not None or not 1 <= top_k <= probs.shape[1]:
            raise BadInputError(f"top-{top_k} needs 1 <= K <= {probs.shape[1]} (the model's classes) and no labels")
        y = top_k_of(probs, top_k)  # (N, K), most probable first
    elif labels is None:
        y = top1_of(probs)[0]
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
    keys = job.keys(names)
    # one (file stem, class) per map of each image: its own stem, or one per top-k class named by it
    targets = [[(stem, int(y[i]))] if top_k is None else
               [(f"{stem}_top{r + 1}_{c}_{_file_slug(classes[c])}", int(c)) for r, c in enumerate(y[i])]
               for i, stem in enumerate(stems)]
    bar = None
    if job.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * len(names), unit="img", desc="explain", dynamic_ncols=True)

    def explain(m: str, batches: Sequence[int]) -> np.ndarray:
        if bar is not None:
            bar.set_postfix(method=m)
        return job.explain(model, x, y, keys, m, batch_size=batch_size, batches=batches,
                           on_batch=None if bar is None else bar.update)

    written = []
    try:
        # the first batch of every method before anything is written: a method that cannot run with
        # these images and options is refused with the folder untouched (and compiled meanwhile)
        first = {m: explain(m, [0]) for m in methods}
        os.makedirs(out_dir, exist_ok=True)
        table = os.path.join(out_dir, "explain.csv")
        earlier = _read_explain_csv(table, out_dir)
        new_rows: dict[tuple[str, str], dict] = {}
        num_batches = gj.distributed.num_steps(  # as map_batches splits them
            len(names), gj.distributed.rows_per_call(len(names), batch_size, gj.distributed.local_mesh()))
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
