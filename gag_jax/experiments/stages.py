"""The two stages of an evaluation run: selection (stage 1) and explanation + metrics (stage 2), batch by batch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.experiments.modelzoo import class_probabilities, top1_of, top_k_of
from gag_jax.experiments.records import (
    RunConfig,
    _atomic_savez,
    _is_record,
    _load_npz,
    record_path,
    selection_path,
    target_count,
)
from gag_jax.experiments.specs import MethodSpec


@dataclasses.dataclass
class Plan:
    """Stage-1 result: which data rows are evaluated, packed into fixed-size batches.

    Attributes:
      rows: ``(N_kept, 2)`` int array of (data batch, row) in data order.
      targets: ``(N_kept,)`` int32 class each kept row's map explains (its label, or the model's
        top-1 class with ``target="predicted"``); ``(N_kept, K)`` with ``target="top-K"`` (the
        model's K most probable classes, most probable first).
      batch_size: evaluated batch size.
      num_seen: real data rows looked at; num_kept: rows kept.
      num_unlabelled: real rows left out because their label is unknown (``target="label"``).
    """

    rows: np.ndarray
    targets: np.ndarray
    batch_size: int
    num_seen: int
    num_unlabelled: int = 0

    @property
    def num_kept(self) -> int:
        """Rows kept for evaluation."""
        return int(self.rows.shape[0])

    def __len__(self) -> int:
        """Number of evaluated batches (the last one may be partly padding)."""
        return (self.num_kept + self.batch_size - 1) // self.batch_size

    def batch_rows(self, k: int) -> np.ndarray:
        """``(n, 2)`` (data batch, row) of evaluated batch ``k`` (n <= batch_size)."""
        return self.rows[k * self.batch_size:(k + 1) * self.batch_size]

    def batch_targets(self, k: int) -> np.ndarray:
        """``(batch_size,)`` (``(batch_size, K)`` for top-K) int32 target classes of evaluated batch ``k``,
        padded by repeating the last row."""
        t = self.targets[k * self.batch_size:(k + 1) * self.batch_size]
        return np.concatenate([t, np.repeat(t[-1:], self.batch_size - t.shape[0], axis=0)]).astype(np.int32)


class _Reader:
    """Sequential reader of data batches that restarts only when asked to go back."""

    def __init__(self, batches):
        self.batches = batches
        self.iterator: Iterator | None = None
        self.index = -1
        self.current: dict | None = None

    def get(self, index: int) -> dict:
        """Data batch ``index`` (reads forward; restarts the iterator only to go back)."""
        if self.current is not None and index == self.index:
            return self.current
        if self.iterator is None or index < self.index:
            self.iterator = self.batches.iter_from(index)
            self.index = index - 1
        while self.index < index:
            self.current = next(self.iterator)
            self.index += 1
        return self.current


def gather(reader: _Reader, rows: np.ndarray, batch_size: int, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Collect ``rows`` (data batch, row) into one batch of ``batch_size``, padding by repeating
    the last row; adds ``valid`` (False on the padding)."""
    parts: dict[str, list] = {k: [] for k in keys}
    for b, r in rows:
        batch = reader.get(int(b))
        for k in keys:
            parts[k].append(batch[k][int(r)])
    return gj.data.pad_batch({k: np.stack(parts[k]) for k in keys}, batch_size)


# ----------------------------------------------------------------------------- computation


def explain_batch(spec: MethodSpec, model: gj.ModelFunctions, images, labels, key, overrides: Mapping) -> np.ndarray:
    """Saliency maps ``(B, H, W)`` of one batch for one spec (``gj.reverse`` for the "R" rows), with
    ``key`` one key per image (:func:`gag_jax.keys.image_keys`). ``evaluate`` computes all rows of a
    batch at once (:func:`explain_rows`); this is the same for one row."""
    return explain_rows([spec], model, images, labels, key, overrides)[spec.name]


def _reverse_each(maps, keys):
    """``gj.reverse`` image by image, each with its own key (a map does not depend on its batch);
    maps ``(B, K, H, W)``: each of an image's K maps with the image's key."""
    def one(m, k):
        return gj.reverse(m[None], k)[0]

    if maps.ndim == 4:
        one = jax.vmap(one, in_axes=(0, None))
    return jax.vmap(one)(maps, gj.keys.reverse_keys(keys))


def _row_request(spec: MethodSpec, overrides: Mapping) -> tuple[str, dict]:
    return spec.method, spec.explain_options(overrides)


def row_identity(spec: MethodSpec, overrides: Mapping) -> tuple:
    """What a row computes: (method, every option resolved, reversed?). Rows with equal identities
    (``gag`` and ``gag-85``) have the same maps, computed and scored once."""
    method, options = _row_request(spec, overrides)
    return method, gj.explainers.resolve_options(method, options), spec.reverse


def explain_rows(specs: Sequence[MethodSpec], model: gj.ModelFunctions, images, labels, keys,
                 overrides: Mapping) -> dict[str, np.ndarray]:
    """The maps of every row in ``specs`` for one batch, each gradient sweep computed once
    (``gj.explain_many``); "R" rows reverse their base row's maps. ``keys``: one per image."""
    requests = {}
    for spec in specs:
        method, options = _row_request(spec, overrides)
        requests.setdefault(gj.explainers.method_key(method, options), (method, options))
    maps = gj.explain_many(list(requests.values()), model, images, labels, key=keys)
    out = {}
    for spec in specs:
        method, options = _row_request(spec, overrides)
        row = maps[gj.explainers.method_key(method, options)]
        out[spec.name] = _reverse_each(row, keys) if spec.reverse else row
    return out


def score_batch(model: gj.ModelFunctions, images, labels, maps, masks, metrics: Sequence[str], *,
                mean, std, metric_batch_size: int | None, explainer=None, keys=None,
                options: Mapping[str, Mapping] | None = None) -> dict[str, np.ndarray]:
    """Per-image metric values and curves of one batch (``gj.metrics.score``), as numpy. ``explainer``:
    the row's ``(method, options)``, which the metrics that re-explain (robustness, randomisation) use;
    ``keys``: one per image, for the metrics that draw random numbers."""
    return gj.metrics.score(model, images, labels, maps, masks, metrics=metrics, copies_per_call=metric_batch_size,
                            mean=mean, std=std, explainer=explainer, key=keys, options=options)


# ----------------------------------------------------------------------------- the run


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1,
                file=sys.stderr)


_SELECTION_KEYS = ("probs", "keep", "valid", "names", "targets")


def select(batches, model: gj.ModelFunctions, out_dir: str, confidence: float | None, batch_size: int,
           *, progress: bool = True, metric_batch_size: int | None = None, target: str = "label",
           only: Collection[int] | None = None) -> Plan:
    """Stage 1: which rows to evaluate, and the class each map explains.

    ``target="label"`` keeps the real rows with a known label whose probability on it is above
    ``confidence`` (None: every labelled row); ``target="predicted"`` explains the model's top-1
    class and keeps the real rows whose top-1 probability is above ``confidence``; ``target="top-K"``
    keeps the same rows and explains each one's K most probable classes. One record per
    data batch in ``out_dir/selection``; existing records are reused. ``only``: compute the
    missing records of these data batches only (one process's share, :mod:`.hosts`; the returned
    plan then covers just the records found or computed).
    """
    count = target_count(target)
    bar = _progress(batches.num_examples, 0, "select", progress)
    rows, targets, seen, unlabelled = [], [], 0, 0
    reader_iter = None
    for b in range(len(batches)):
        path = selection_path(out_dir, b)
        rec = _load_npz(path) if os.path.exists(path) else None
        if rec is not None and not all(k in rec for k in _SELECTION_KEYS):
            rec = None
        if rec is None and only is not None and b not in only:  # another process's batch
            reader_iter = None
            continue
        if rec is None:
            if reader_iter is None:
                reader_iter = batches.iter_from(b)
            batch = next(reader_iter)
            real = np.asarray(batch["valid"], bool)
            if target != "label":  # the model's most probable classes; kept on the top-1 probability
                all_probs = class_probabilities(model, batch["images"])  # (B, C)
                top, probs = top1_of(all_probs)
                if target != "predicted":  # top-K: (B, K), most probable first (ties: the lower index)
                    top = top_k_of(all_probs, count)
                valid = real
            else:
                valid = real & (np.asarray(batch["labels"]) >= 0)
                top = np.maximum(np.asarray(batch["labels"]), 0).astype(np.int32)
                probs = np.asarray(gj.metrics.target_probs(model.logits, batch["images"], top,
                                                           batch_size=metric_batch_size))
            keep = valid & (probs > confidence) if confidence is not None else valid
            rec = {"probs": probs.astype(np.float32), "keep": keep, "valid": real,
                   "names": np.asarray(batch["names"]).astype(str), "targets": top.astype(np.int32),
                   "labels": np.asarray(batch["labels"], np.int32)}
            _atomic_savez(path, **rec)
        else:
            reader_iter = None  # the next missing batch restarts the reader there
        n_real = int(rec["valid"].sum())
        seen += n_real
        if target == "label" and "labels" in rec:
            unlabelled += int((rec["valid"] & (rec["labels"] < 0)).sum())
        kept = np.flatnonzero(rec["keep"])
        rows += [(b, int(r)) for r in kept]
        targets += list(rec["targets"][kept])
        if bar is not None:
            bar.update(n_real)
            bar.set_postfix(kept=len(rows))
    if bar is not None:
        bar.close()
    # fewer kept images than a batch: one batch of exactly those (no padding computed for nothing);
    # several local devices: a multiple of their count, so the batch shards evenly (padding flagged)
    batch_size = max(1, min(batch_size, len(rows)))
    batch_size = gj.distributed.round_to_devices(batch_size, gj.distributed.local_mesh())
    targets_shape = (-1,) if target in ("label", "predicted") else (-1, count)
    return Plan(np.asarray(rows, np.int64).reshape(-1, 2), np.asarray(targets, np.int32).reshape(targets_shape),
                batch_size, seen, unlabelled)


def evaluate_plan(plan: Plan, batches, model: gj.ModelFunctions, specs: Sequence[MethodSpec], out_dir: str, *,
                  config: RunConfig, metric_batch_size: int | None = None, progress: bool = True,
                  on_record: Callable[[str, int], None] | None = None,
                  only: Collection[int] | None = None) -> dict[str, int]:
    """Stage 2: every (spec, evaluated batch) without a record is computed and written at once.
    ``only``: these evaluated batches only (one process's share, :mod:`.hosts`).

    Returns:
      ``{"computed": ..., "reused": ...}`` counts of (spec, batch) records.
    """
    keys = ["images", "labels", "names"] + (["masks"] if batches.has_masks else [])
    needs_masks = any("masks" in gj.metrics.metric(m).needs for m in config.metrics)
    overrides = config.method_overrides  # the input scaling is the model's (gj.explain_many reads it)
    batch_ids = [k for k in range(len(plan)) if only is None or k in only]
    total = sum(len(plan.batch_rows(k)) for k in batch_ids) * len(specs)
    done = {(s.name, k) for s in specs for k in batch_ids if _is_record(record_path(out_dir, s.name, k))}
    initial = sum(len(plan.batch_rows(k)) for _, k in done)
    bar = _progress(total, initial, "evaluate", progress)
    reader = _Reader(batches)
    computed = 0
    mesh = gj.distributed.local_mesh()  # every local device: the batch axis is sharded over them
    model = gj.distributed.replicate(model, mesh) if mesh is not None else model
    for k in batch_ids:
        todo = [s for s in specs if (s.name, k) not in done]
        if not todo:
            continue
        rows = plan.batch_rows(k)
        data = gather(reader, rows, plan.batch_size, keys)
        images, labels = jnp.asarray(data["images"]), jnp.asarray(plan.batch_targets(k))
        masks = jnp.asarray(data["masks"]) if needs_masks else None
        rng_keys = gj.keys.file_keys(config.seed, data["names"])  # as every command: seed + file name
        images, labels, rng_keys = gj.distributed.shard_rows([images, labels, rng_keys], mesh)
        if masks is not None:
            masks = gj.distributed.shard_rows([masks], mesh)[0]
        if bar is not None:
            bar.set_postfix(methods=len(todo), batch=f"{k + 1}/{len(plan)}")
        start = time.perf_counter()
        all_maps = explain_rows(todo, model, images, labels, rng_keys, overrides)  # (B, H, W) or (B, K, H, W)
        explain_seconds = (time.perf_counter() - start) / len(todo)
        pairs = _target_pairs(images, labels, masks, rng_keys, data, rows)  # top-K: one scored row per pair
        scored: dict[tuple, dict] = {}
        for spec in todo:
            start = time.perf_counter()
            identity = row_identity(spec, overrides)
            if identity not in scored:  # equal rows (gag, gag-85) are scored once
                maps = all_maps[spec.name]
                scored[identity] = score_batch(model, pairs["images"], pairs["labels"],
                                               maps.reshape((-1,) + maps.shape[-2:]), pairs["masks"], config.metrics,
                                               mean=batches.mean, std=batches.std,
                                               metric_batch_size=metric_batch_size,
                                               explainer=_row_request(spec, overrides), keys=pairs["keys"],
                                               options=config.metric_options)
            values = scored[identity]
            _atomic_savez(record_path(out_dir, spec.name, k), **pairs["record"],
                          seconds=np.float64(explain_seconds + time.perf_counter() - start), **values)
            computed += 1
            if on_record is not None:
                on_record(spec.name, k)
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return {"computed": computed, "reused": len(done)}


def _target_pairs(images, labels, masks, keys, data: Mapping, rows: np.ndarray) -> dict:
    """What the metrics score and a record holds for one evaluated batch.

    One target per image (``labels (B,)``): the batch itself. ``labels (B, K)`` (``--target top-K``):
    each (image, target) pair is a row of its own: images, masks and keys repeated K times, the
    ``(B, K, H, W)`` maps read as ``(B * K, H, W)``, and the record's per-row arrays (names, labels,
    validity, source rows) repeated, with ``target_rank`` (0 = the most probable class) beside them.
    """
    names, valid = np.asarray(data["names"]).astype(str), np.asarray(data["valid"])
    record = {"names": names, "labels": np.asarray(labels), "data_labels": np.asarray(data["labels"]),
              "valid": valid, "source_rows": rows}
    if labels.ndim == 1:
        return {"images": images, "labels": labels, "masks": masks, "keys": keys, "record": record}
    count = labels.shape[1]

    def repeat(x):
        return None if x is None else jnp.repeat(x, count, axis=0)

    record.update(names=np.repeat(names, count), labels=np.asarray(labels).reshape(-1),
                  data_labels=np.repeat(np.asarray(data["labels"]), count), valid=np.repeat(valid, count),
                  source_rows=np.repeat(np.asarray(rows).reshape(-1, 2), count, axis=0),
                  target_rank=np.tile(np.arange(count, dtype=np.int32), names.shape[0]))
    return {"images": repeat(images), "labels": labels.reshape(-1), "masks": repeat(masks), "keys": repeat(keys),
            "record": record}


def run_cost(specs, overrides: Mapping, metrics: Sequence[str], image_size: int | None,
             metric_options: Mapping[str, Mapping] | None = None) -> dict[str, Any]:
    """What one image costs in the plan actually run: model gradient evaluations (each gradient sweep
    once, :func:`gag_jax.explainers.sweep_plan`) and forward passes (the selection, the metrics of
    every distinct map, occlusion's windows and RISE's masks), counted from the options, not timed."""
    requests, rows_of = {}, {}
    for spec in specs:
        options = spec.explain_options(overrides)
        key = gj.explainers.method_key(spec.method, options)
        requests.setdefault(key, (spec.method, options))
        rows_of.setdefault(key, []).extend([] if spec.reverse else [spec.name])
    sweeps = gj.explainers.sweep_plan(list(requests.values()))
    per_map = gj.metrics.forward_passes_per_map(metrics, metric_options,
                                                (image_size, image_size, 3) if image_size else None)
    forward = 1 + len({row_identity(s, overrides) for s in specs}) * per_map
    shape = (image_size, image_size) if image_size else None
    forward += sum(gj.per_image_cost(method, options, shape)["forward_passes"] for method, options in requests.values())
    return {"gradient_evaluations_per_image": int(sum(g["gradients"] for g in sweeps)),
            "forward_passes_per_image": int(forward),
            "sweeps": [{"rows": [row for key in g["methods"] for row in rows_of[key]] or g["methods"],
                        "gradients": g["gradients"]} for g in sweeps]}
