"""``gag-jax explain`` as a function, and the batched explain step it shares with ``demo``.

:func:`run_explain` writes an overlay PNG and a ``.npy`` map per (image, method) and an
``explain.csv``; :func:`explain_arrays` explains images in fixed-size batches sharded over the local
devices (one compile per method), with one key per image from its file name (:func:`image_keys`), so
``demo``, ``explain`` and ``evaluate`` give the same map of the same image.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.data import pad_rows, read_images
from gag_jax.experiments import figures
from gag_jax.experiments.specs import label_of


class BadInputError(ValueError):
    """An input that cannot be explained as given (no readable image, labels that do not fit the
    images or the model); the message names it. The command line reports it in one line, exit 2."""


def probability_text(class_name: str, probability: float) -> str:
    """``"P(Egyptian cat) = 0.62"``: the model's probability of the class, spelled out (``p`` alone
    would read as RCAP's percentile)."""
    return f"P({class_name}) = {probability:.2f}"


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
    bs = gj.distributed.round_to_devices(bs, mesh)
    if mesh is not None:
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


def method_options(method: str, *, n: int | None, chunk_size: int | None) -> dict:
    """The options the CLI jobs pass to ``gj.explain``: ``n`` and ``chunk_size`` where ``method`` takes
    them (``None`` keeps the method's default). The input scaling is not among them: ``gj.explain``
    reads it from the model."""
    options = {"n": n, "chunk_size": chunk_size}
    return {k: v for k, v in options.items() if v is not None and k in gj.METHOD_RECORDS[method].defaults}


def load_checked_model(methods: Sequence[str], model_name: str, checkpoint: str | None,
                       size: int) -> tuple[gj.ModelFunctions, dict]:
    """What ``demo`` and ``explain`` start with: the method names checked, the model loaded
    (``modelzoo.load_model``: built-in name, checkpoint or ``module:attribute``) and ``size`` checked
    against it. The model carries its input scaling (``model.mean`` / ``model.std``).

    Returns:
      ``(model, info)`` as ``modelzoo.load_model``.

    Raises:
      ValueError: an unknown method or model (the valid ones named); ``modelzoo.InputTooSmallError``.
    """
    from gag_jax.experiments.modelzoo import check_input_size, load_model

    for m in methods:
        if m not in gj.METHOD_RECORDS:
            raise ValueError(f"unknown method {m!r}; expected one of {', '.join(gj.METHOD_RECORDS)}")
    model, info = load_model(model_name, checkpoint, image_size=size)
    check_input_size(model, size, name=model_name, option="--size")
    return model, info


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
        class_probabilities,
        imagenet_class_names,
        top1_of,
    )

    model, info = load_checked_model(methods, model_name, checkpoint, size)
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
        y = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k].astype(np.int32)  # (N, K), most probable first
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
                                  options=method_options(m, n=n, chunk_size=chunk_size),
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
