"""A resumable case x methods x metrics runner that writes every finished batch to disk.

Layout of an output directory::

    manifest.json                 all options, seeds, versions, the method specs, status
    selection/batch_00000.npz     stage 1, per data batch: target probability, kept rows
    records/<method>/batch_00000.npz
                                  stage 2, per (method, evaluated batch): per-image metric values,
                                  RCAP ratios / probabilities, deletion / insertion curves
    tiny_model.msgpack            (synthetic case, model ``tiny``) the trained network
    table{1,2,3}.csv / .md        the tables (written at the end; rewritten by every run)

Stage 1 runs the model once over the data and keeps the images whose softmax probability on the
ground-truth class is above ``confidence`` (the paper: 0.9), plus only real rows (not padding,
not undecodable files, known labels). Stage 2 re-packs the kept images, in order, into batches
of ``batch_size`` (the last one padded by repeating its last image; padding is flagged and never
counted) and computes every method's maps and metrics batch by batch.

Every file is written atomically (temporary file + rename) as soon as its batch is done, so an
interrupted run (Ctrl-C, a killed job, a crash) loses at most the batch in flight. Running the
same command again checks that the options match the manifest, skips every batch that has a
record and computes only the rest; the PRNG key of (method, batch) is
``fold_in(fold_in(PRNGKey(seed), crc32(method name)), batch index)``, so the final numbers are
the same as those of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gag_jax as gj
from gag_jax.experiments.specs import MethodSpec, input_scaling

METRICS: tuple[str, ...] = gj.metrics.METRIC_NAMES
"""Metric names stored in records (``dice`` on the command line is ``log_cosh_dice``)."""

METRIC_ALIASES = {"dice": "log_cosh_dice", "lcd": "log_cosh_dice", "l_lc-dce": "log_cosh_dice",
                  "pointing": "pointing_game", "gini": "sparseness", "entropy": "complexity"}
MASK_METRICS = gj.metrics.MASK_METRICS

TARGETS = ("label", "predicted")
"""What a map explains: the ground-truth class or the model's top-1 class."""

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class RunMismatchError(ValueError):
    """The output directory holds a run made with different options (named in the message)."""


class OptionError(ValueError):
    """An evaluation option that cannot work (an unknown case, method, metric or model, a missing
    data directory or checkpoint, a model with too few classes); raised before anything is computed."""


def parse_metrics(names: Sequence[str] | str | None, has_masks: bool) -> tuple[str, ...]:
    """Normalise metric names (comma-separated allowed; ``dice`` = ``log_cosh_dice``).

    Args:
      names: e.g. ``"rcap,dauc,iauc,dice,mae"`` (any of :data:`METRICS` or :data:`METRIC_ALIASES`);
        None: RCAP, DAUC, IAUC, plus Log-Cosh Dice and MAE when the case has ground-truth masks.
      has_masks: whether the data carries masks.

    Returns:
      metric names in the canonical order of :data:`METRICS`.

    Raises:
      ValueError: unknown metric, or a mask metric for a case without masks.
    """
    if names is None:
        return gj.metrics.default_metrics(has_masks)
    if isinstance(names, str):
        names = [names]
    wanted = []
    for name in (p.strip().lower() for n in names for p in str(n).split(",") if p.strip()):
        name = METRIC_ALIASES.get(name, name)
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)} (dice = log_cosh_dice)")
        if name in MASK_METRICS and not has_masks:
            raise ValueError(f"metric {name!r} needs ground-truth masks, which this case does not have")
        wanted.append(name)
    return tuple(m for m in METRICS if m in wanted)


# ----------------------------------------------------------------------------- files


def _atomic_savez(path: str, **arrays) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _atomic_json(path: str, data: Mapping) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _load_npz(path: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):  # a truncated file from a hard kill: recompute it
        return None


def _is_record(path: str) -> bool:
    """A finished, readable record (a damaged file counts as missing and is recomputed)."""
    return os.path.exists(path) and _load_npz(path) is not None


def selection_path(out_dir: str, batch: int) -> str:
    """Stage-1 record of data batch ``batch``."""
    return os.path.join(out_dir, "selection", f"batch_{batch:05d}.npz")


def record_path(out_dir: str, method: str, batch: int) -> str:
    """Stage-2 record of (``method``, evaluated batch ``batch``)."""
    return os.path.join(out_dir, "records", method, f"batch_{batch:05d}.npz")


def versions() -> dict[str, str]:
    """Versions of Python, JAX, Flax, NumPy, gag-jax, the git commit (if any) and the device."""
    import flax

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "jax": jax.__version__,
           "jaxlib": getattr(jax.lib, "__version__", None) or _module_version("jaxlib"),
           "flax": flax.__version__, "numpy": np.__version__, "gag_jax": gj.__version__,
           "device": str(jax.devices()[0].device_kind), "backend": gj.backend.platform_of(),
           "cpu_count": os.cpu_count()}
    try:
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()
        if commit:
            out["git_commit"] = commit
    except Exception:  # noqa: BLE001, S110 - best effort only: no git, not a checkout
        pass
    return out


def _module_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def file_digest(path: str | None) -> str | None:
    """sha256 of a file (None for None); identifies a checkpoint in the manifest."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class RunConfig:
    """Everything that decides the numbers of a run (stored in the manifest and checked on resume).

    Attributes:
      case: ``synthetic``, ``imagenet_s``, ``isic`` or ``places365``.
      data_dir: dataset directory (None for synthetic).
      model: model name; checkpoint: its file; checkpoint_sha256: the file's digest.
      image_size: input side (None: the case's).
      batch_size: images per evaluated batch.
      limit: use only the first ``limit`` examples (synthetic: the number of images generated).
      confidence: keep images with target probability above it (None: keep all).
      seed: PRNG seed of the explanations (and of the synthetic data / tiny model).
      metrics: metric names.
      method_overrides: options applied to every method that takes them (e.g. ``n``).
      split: dataset split (None: the case's default).
      case_options: loader options of the case (``load_case(**case_options)``).
      target: the class each map explains: ``"label"`` (the ground truth; unlabelled images are
        left out) or ``"predicted"`` (the model's top-1 class; every image is kept). The
        confidence selection uses the probability of this class.
      resize_mode: how images were brought to ``image_size`` (``"squash"`` / ``"center_crop"`` /
        ``"imagenet_eval"``; None: the case's).
      mean, std: the per-channel normalisation of the model's inputs (also the metrics' black).
    """

    case: str
    model: str
    data_dir: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    image_size: int | None = None
    batch_size: int = 16
    limit: int | None = None
    confidence: float | None = 0.9
    seed: int = 0
    metrics: tuple[str, ...] = ("rcap", "dauc", "iauc")
    method_overrides: dict = dataclasses.field(default_factory=dict)
    split: str | None = None
    case_options: dict = dataclasses.field(default_factory=dict)
    target: str = "label"
    resize_mode: str | None = None
    mean: tuple[float, ...] = tuple(gj.data.IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(gj.data.IMAGENET_STD)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {self.target!r}")

    def result_keys(self) -> dict[str, Any]:
        """The options that must match for a run to be resumed (checkpoint by digest, not path)."""
        data = dataclasses.asdict(self)
        data.pop("checkpoint")
        data["metrics"] = list(self.metrics)
        data["data_dir"] = None if self.data_dir is None else os.path.abspath(self.data_dir)
        return json.loads(json.dumps(data, default=str))


def _check_resume(manifest: Mapping, config: RunConfig) -> None:
    old = manifest.get("config", {})
    new = config.result_keys()
    for key in sorted(set(old) | set(new)):
        if key not in new and not old.get(key):  # a retired option that was empty (metric_options)
            continue
        if key in ("method_overrides",):
            a, b = old.get(key) or {}, new.get(key) or {}
            a = {k: v for k, v in a.items() if k != "chunk_size"}
            b = {k: v for k, v in b.items() if k != "chunk_size"}
        else:
            a, b = old.get(key), new.get(key)
        if a != b:
            raise RunMismatchError(
                f"the output directory holds a run with {key}={a!r}, this command has {key}={b!r}; "
                "use another --out (or the same options to resume)")


# ----------------------------------------------------------------------------- data adapter


@dataclasses.dataclass
class Plan:
    """Stage-1 result: which data rows are evaluated, packed into fixed-size batches.

    Attributes:
      rows: ``(N_kept, 2)`` int array of (data batch, row) in data order.
      targets: ``(N_kept,)`` int32 class each kept row's map explains (its label, or the model's
        top-1 class with ``target="predicted"``).
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
        """``(batch_size,)`` int32 target classes of evaluated batch ``k``, padded by repeating the last."""
        t = self.targets[k * self.batch_size:(k + 1) * self.batch_size]
        return np.concatenate([t, np.repeat(t[-1:], self.batch_size - t.shape[0])]).astype(np.int32)


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
    """Saliency maps ``(B, H, W)`` of one batch for one spec (``gj.reverse`` for the "R" rows)."""
    explain_key, reverse_key = jax.random.split(key)
    maps = gj.explain(spec.method, model, images, labels, key=explain_key, **spec.explain_options(overrides))
    if spec.reverse:
        maps = gj.reverse(maps, reverse_key)
    return maps


def score_batch(model: gj.ModelFunctions, images, labels, maps, masks, metrics: Sequence[str], *,
                mean, std, metric_batch_size: int | None) -> dict[str, np.ndarray]:
    """Per-image metric values and curves of one batch (``gj.metrics.score``), as numpy."""
    return gj.metrics.score(model, images, labels, maps, masks, metrics=metrics, batch_size=metric_batch_size,
                            mean=mean, std=std)


def batch_key(seed: int, spec: MethodSpec, batch: int) -> jax.Array:
    """The PRNG key of (spec, evaluated batch): independent of method order and of resuming."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), spec.seed_salt), batch)


# ----------------------------------------------------------------------------- the run


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1,
                file=sys.stderr)


def _predict_fn(model: gj.ModelFunctions):
    """A jitted ``images -> (top-1 class (B,), its softmax probability (B,))``."""

    @jax.jit
    def predict(images):
        probs = jax.nn.softmax(jnp.asarray(model.logits(images)).astype(jnp.float32), axis=-1)
        return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)

    return predict


_SELECTION_KEYS = ("probs", "keep", "valid", "names", "targets")


def select(batches, model: gj.ModelFunctions, out_dir: str, confidence: float | None, batch_size: int,
           *, progress: bool = True, metric_batch_size: int | None = None, target: str = "label") -> Plan:
    """Stage 1: which rows to evaluate, and the class each map explains.

    ``target="label"`` keeps the real rows with a known label whose probability on it is above
    ``confidence`` (None: every labelled row); ``target="predicted"`` explains the model's top-1
    class and keeps the real rows whose top-1 probability is above ``confidence``. One record per
    data batch in ``out_dir/selection``; existing records are reused.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
    bar = _progress(batches.num_examples, 0, "select", progress)
    rows, targets, seen, unlabelled = [], [], 0, 0
    reader_iter = None
    predict = _predict_fn(model) if target == "predicted" else None
    for b in range(len(batches)):
        path = selection_path(out_dir, b)
        rec = _load_npz(path) if os.path.exists(path) else None
        if rec is not None and not all(k in rec for k in _SELECTION_KEYS):
            rec = None
        if rec is None:
            if reader_iter is None:
                reader_iter = batches.iter_from(b)
            batch = next(reader_iter)
            real = np.asarray(batch["valid"], bool)
            if target == "predicted":
                top, probs = (np.asarray(a) for a in predict(jnp.asarray(batch["images"])))
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
        targets += [int(t) for t in rec["targets"][kept]]
        if bar is not None:
            bar.update(n_real)
            bar.set_postfix(kept=len(rows))
    if bar is not None:
        bar.close()
    # fewer kept images than a batch: one batch of exactly those (no padding computed for nothing)
    batch_size = max(1, min(batch_size, len(rows)))
    return Plan(np.asarray(rows, np.int64).reshape(-1, 2), np.asarray(targets, np.int32), batch_size, seen,
                unlabelled)


def evaluate_plan(plan: Plan, batches, model: gj.ModelFunctions, specs: Sequence[MethodSpec], out_dir: str, *,
                  config: RunConfig, metric_batch_size: int | None = None, progress: bool = True,
                  on_record: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Stage 2: every (spec, evaluated batch) without a record is computed and written at once.

    Returns:
      ``{"computed": ..., "reused": ...}`` counts of (spec, batch) records.
    """
    keys = ["images", "labels", "names"] + (["masks"] if batches.has_masks else [])
    needs_masks = any(m in MASK_METRICS for m in config.metrics)
    overrides = {**config.method_overrides, **input_scaling(config.mean, config.std)}
    total = plan.num_kept * len(specs)
    done = {(s.name, k) for s in specs for k in range(len(plan)) if _is_record(record_path(out_dir, s.name, k))}
    initial = sum(len(plan.batch_rows(k)) for _, k in done)
    bar = _progress(total, initial, "evaluate", progress)
    reader = _Reader(batches)
    computed = 0
    for k in range(len(plan)):
        todo = [s for s in specs if (s.name, k) not in done]
        if not todo:
            continue
        rows = plan.batch_rows(k)
        data = gather(reader, rows, plan.batch_size, keys)
        images, labels = jnp.asarray(data["images"]), jnp.asarray(plan.batch_targets(k))
        masks = jnp.asarray(data["masks"]) if needs_masks else None
        for spec in todo:
            if bar is not None:
                bar.set_postfix(method=spec.name, batch=f"{k + 1}/{len(plan)}")
            start = time.perf_counter()
            maps = explain_batch(spec, model, images, labels, batch_key(config.seed, spec, k), overrides)
            values = score_batch(model, images, labels, maps, masks, config.metrics, mean=batches.mean,
                                 std=batches.std, metric_batch_size=metric_batch_size)
            _atomic_savez(record_path(out_dir, spec.name, k), names=data["names"].astype(str),
                          labels=np.asarray(labels), data_labels=np.asarray(data["labels"]), valid=data["valid"],
                          source_rows=rows,
                          seconds=np.float64(time.perf_counter() - start), **values)
            computed += 1
            if on_record is not None:
                on_record(spec.name, k)
            if bar is not None:
                bar.update(len(rows))
    if bar is not None:
        bar.close()
    return {"computed": computed, "reused": len(done)}


CURVES = ("rcap_ratios", "rcap_probs", "deletion_curve", "insertion_curve")
"""Per-image curves whose mean over the images :func:`collect` returns."""


def collect(out_dir: str, specs: Sequence[MethodSpec], plan_batches: int, metrics: Sequence[str]) -> dict[str, dict]:
    """Read every record of ``specs`` and reduce it to per-method results, record by record
    (``gj.metrics.RunningStat``: one batch of values in memory at a time).

    Returns:
      ``{spec name: {"n": images, metric: mean, metric + "_sem": standard error,
      "rcap_ratios": (j,) mean, "rcap_probs": (j,) mean, ..., "batches": records found,
      "complete": every batch found}}``.
    """
    results = {}
    for spec in specs:
        stats = {m: gj.metrics.RunningStat() for m in metrics}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        found = 0
        for k in range(plan_batches):
            path = record_path(out_dir, spec.name, k)
            rec = _load_npz(path) if os.path.exists(path) else None
            if rec is None:
                continue
            found += 1
            valid = rec["valid"].astype(bool)
            for m in metrics:
                if m in rec:
                    stats[m].update(rec[m][valid])
            for c in CURVES:
                if c in rec:
                    sums[c] = sums.get(c, 0.0) + rec[c][valid].astype(np.float64).sum(axis=0)
                    counts[c] = counts.get(c, 0) + int(valid.sum())
        res: dict[str, Any] = {"batches": found, "complete": found == plan_batches}
        for m in metrics:
            summary = stats[m].as_dict()
            res["n"] = summary["n"]
            res[m], res[m + "_sem"] = summary["mean"], summary["sem"]
        for c, total in sums.items():
            if counts[c]:
                res[c] = (total / counts[c]).tolist()
        results[spec.name] = res
    return results


def run(config: RunConfig, specs: Sequence[MethodSpec], out_dir: str, *, batches, model: gj.ModelFunctions,
        table: int | Sequence[int] | None = None, metric_batch_size: int | None = None, progress: bool = True,
        extra_manifest: Mapping | None = None, on_record: Callable[[str, int], None] | None = None,
        command: str | None = None) -> dict:
    """Run (or resume) an evaluation and return its per-method results.

    Args:
      config: the options that decide the numbers (see :class:`RunConfig`).
      specs: table rows to compute.
      out_dir: results directory (created; see the module docstring for its layout).
      batches: a ``gag_jax.data.Batches`` (``iter_from``, ``num_examples``, ``mean``, ``std``,
        ``has_masks``, ``len()``).
      model: ``gj.ModelFunctions`` of the classifier.
      table: the table number recorded in the manifest.
      metric_batch_size: perturbed copies per model call in the metrics (None: all at once).
      progress: tqdm bars on stderr.
      extra_manifest: more JSON-able facts for the manifest (e.g. the tiny model's training).
      on_record: called with (method name, batch index) after each record is written (an
        exception it raises stops the run as an interruption would).
      command: the command line recorded in the manifest (default: this process's ``sys.argv``).

    Returns:
      ``{"results": collect(...), "plan": {...}, "counts": {"computed", "reused"}, "manifest": path}``.

    Raises:
      RunMismatchError: ``out_dir`` holds a run with other options.
      KeyboardInterrupt: Ctrl-C; the manifest then says ``"interrupted"`` and every finished
        record is kept.
    """
    os.makedirs(out_dir, exist_ok=True)
    manifest_file = os.path.join(out_dir, MANIFEST)
    manifest: dict[str, Any] = {}
    if os.path.exists(manifest_file):
        with open(manifest_file, encoding="utf-8") as f:
            manifest = json.load(f)
        _check_resume(manifest, config)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    known = {s["name"]: s for s in manifest.get("methods", [])}
    known.update({s.name: s.as_dict() for s in specs})
    manifest.update({
        "format_version": FORMAT_VERSION, "created": manifest.get("created", now), "updated": now,
        "status": "running", "config": config.result_keys(), "checkpoint_path": config.checkpoint,
        "method_options_resolved": {s.name: {k: _jsonable(v) for k, v in s.explain_options(
            {**config.method_overrides, **input_scaling(config.mean, config.std)}).items()}
                                    for s in specs},
        "methods": list(known.values()), "table": table, "versions": versions(),
        "metric_batch_size": metric_batch_size,
        "seeds": {"explanations": "fold_in(fold_in(PRNGKey(seed), crc32(method)), batch)", "seed": config.seed},
        "command": manifest.get("command", []) + [command or " ".join(sys.argv)],
    })
    if extra_manifest:
        manifest.update({k: _jsonable(v) for k, v in extra_manifest.items()})
    _atomic_json(manifest_file, manifest)

    plan = select(batches, model, out_dir, config.confidence, config.batch_size, progress=progress,
                  metric_batch_size=metric_batch_size, target=config.target)
    skipped = [dataclasses.asdict(s) for s in getattr(batches, "skipped", [])]
    manifest["plan"] = {"images_seen": plan.num_seen, "images_kept": plan.num_kept, "batches": len(plan),
                        "images_unlabelled": plan.num_unlabelled,
                        "skipped_files": skipped or manifest.get("plan", {}).get("skipped_files", [])}
    _atomic_json(manifest_file, manifest)
    try:
        counts = evaluate_plan(plan, batches, model, specs, out_dir, config=config,
                               metric_batch_size=metric_batch_size, progress=progress, on_record=on_record)
    except BaseException as err:
        manifest["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed: {type(err).__name__}"
        manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        _atomic_json(manifest_file, manifest)
        raise
    manifest["status"] = "complete"
    manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["counts"] = counts
    _atomic_json(manifest_file, manifest)
    results = collect(out_dir, specs, len(plan), config.metrics)
    return {"results": results, "plan": manifest["plan"], "counts": counts, "manifest": manifest_file}


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


# ----------------------------------------------------------------------------- reading and orchestration


def load_run(run_dir: str) -> dict[str, Any]:
    """Read a finished (or interrupted) run directory back.

    Args:
      run_dir: an output directory of :func:`run` / :func:`evaluate_case`.

    Returns:
      ``{"case", "manifest", "specs", "metrics", "results"}``: the case name, the manifest dict,
      the row specs, the metric names and :func:`collect`'s per-method results.

    Raises:
      FileNotFoundError: ``run_dir`` has no manifest (not a run directory).
    """
    from gag_jax.experiments.specs import spec_from_name

    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: not an evaluate output directory (no {MANIFEST})")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    specs = [spec_from_name(m["name"]) for m in manifest["methods"]]
    metrics = tuple(manifest["config"]["metrics"])
    results = collect(run_dir, specs, manifest.get("plan", {}).get("batches", 0), metrics)
    return {"case": manifest["config"]["case"], "manifest": manifest, "specs": specs, "metrics": metrics,
            "results": results}


def run_note(case: str, model: str, plan: Mapping, confidence: float | None, target: str, seed: int) -> str:
    """The line under a table's caption: case, model, images kept, selection, target, seed."""
    selection = f"(confidence > {confidence})" if confidence is not None else "(no confidence selection)"
    explained = "top-1 class" if target == "predicted" else "label"
    return (f"Case {case}, model {model}, {plan['images_kept']} of {plan['images_seen']} images {selection}, "
            f"maps explain the {explained}, seed {seed}.")


def evaluate_case(case: str, out_dir: str, *, data_dir: str | None = None, model: str | None = None,
                  checkpoint: str | None = None, num_classes: int | None = None, tables: Sequence[int] = (2,),
                  methods: Sequence[str] | str | None = None, metrics: Sequence[str] | str | None = None,
                  batch_size: int = 16, metric_batch_size: int | str | None = "auto", limit: int | None = None,
                  confidence: float | None = 0.9, image_size: int | None = None, split: str | None = None,
                  n: int | None = None, chunk_size: int | None = None, seed: int = 0,
                  case_options: Mapping[str, Any] | None = None, backend: str = "auto", resize: str | None = None,
                  target: str = "auto", train_steps: int = 300, figures: bool = True, progress: bool = True,
                  report: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    """Evaluate one case end to end, as ``gag-jax evaluate`` does: load the data and the model,
    run (or resume) :func:`run`, write the tables and figures.

    Args:
      case: a ``gag_jax.data.CASES`` entry (``folder``: any folder of images).
      out_dir: the results directory (reuse it to resume).
      data_dir: the dataset directory (not for ``synthetic``).
      model: a ``modelzoo.model_names()`` entry (None: the case's, ``modelzoo.CASE_MODELS``).
      checkpoint: the model's weights (``tiny``: loaded if the file exists, else trained there;
        default ``out_dir/tiny_model.msgpack``).
      num_classes: classifier outputs (None: from the checkpoint).
      tables: which of Tables 1, 2, 3 to write.
      methods: row names computed instead of the tables' rows (``specs.specs_for``).
      metrics: metric names (``parse_metrics``; None: the paper's, with the mask metrics when the
        case has masks).
      batch_size: images per evaluated batch.
      metric_batch_size: perturbed copies per model call in the metrics.
      limit: the first ``limit`` examples only (synthetic: how many are generated, default 64).
      confidence: keep images whose probability on the explained class is above it (None: all).
      image_size: input side (None: the case's).
      split: dataset split (None: the case's).
      n, chunk_size: modifications per method and per vmapped chunk (None: the methods' own).
      seed: PRNG seed of the explanations (and the synthetic data / tiny model).
      case_options: loader options of the case (``load_case(**case_options)``).
      backend: ``"auto"``, ``"tfds"`` or ``"files"``.
      resize: ``"squash"``, ``"center_crop"``, ``"imagenet_eval"`` or None (the case's).
      target: ``"label"``, ``"predicted"`` or ``"auto"`` (label when the data has labels).
      train_steps: optimisation steps when the ``tiny`` model is trained.
      figures: write ``rcap_curves.png`` and ``table1_p_ablation.png``.
      progress: tqdm bars.
      report: receives one line per step (what is loaded, trained, run).
      command: the command line recorded in the manifest (default: ``sys.argv``).

    Returns:
      :func:`run`'s dict plus ``"specs"``, ``"metrics"``, ``"target"``, ``"model"``,
      ``"image_size"``, ``"note"``, ``"tables"`` (``{table: write_tables(...)}``), ``"figures"``
      (paths) and ``"seconds"``.

    Raises:
      OptionError: an option that cannot work (nothing computed yet).
      DatasetLayoutError: the data directory does not have the case's layout; a folder's
        ``labels.txt`` line, class folder or mask that cannot work (one line naming it, e.g. a
        class the model does not have: ``Batches.check_model_classes``). ``out_dir`` is not made.
      RunMismatchError: ``out_dir`` holds a run with other options.
      KeyboardInterrupt: Ctrl-C (every finished batch is kept; run again to resume).
    """
    from gag_jax.data import CASE_IMAGE_SIZES, CASES, load_case
    from gag_jax.experiments import figures as figures_lib
    from gag_jax.experiments import modelzoo
    from gag_jax.experiments import specs as specs_lib
    from gag_jax.experiments import tables as tables_lib

    if case not in CASES:
        raise OptionError(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    if case != "synthetic":
        if data_dir is None:
            raise OptionError(f"case {case!r} needs --data-dir (the directory of your copy of the dataset)")
        if not os.path.isdir(data_dir):
            raise OptionError(f"--data-dir {data_dir}: no such directory")
    model_name = model or modelzoo.CASE_MODELS[case]
    tables = sorted(set(tables))
    try:
        modelzoo.check_model(model_name, checkpoint)
        if model_name == modelzoo.TINY and case != "synthetic" and checkpoint is None:
            raise ValueError("model 'tiny' is trained on the synthetic case only; give --checkpoint for other cases")
        specs = specs_lib.specs_for(tables, methods)
    except ValueError as err:
        raise OptionError(str(err)) from None
    image_size = image_size or CASE_IMAGE_SIZES[case]
    loader_options = dict(case_options or {})
    if case == "synthetic":
        loader_options.update({"num_images": limit or 64, "seed": seed})
    mean, std = modelzoo.model_normalization(model_name)
    try:
        batches = load_case(case, data_dir, split=split, image_size=image_size, batch_size=batch_size,
                            backend=backend, max_examples=None if case == "synthetic" else limit, mean=mean,
                            std=std, resize_mode=resize, **loader_options)
        metric_names = parse_metrics(metrics, batches.has_masks)
    except (ValueError, TypeError) as err:
        raise OptionError(str(err)) from None

    if model_name == modelzoo.TINY:  # (out_dir is made after the checks: a refused run leaves no empty folder)
        checkpoint = checkpoint or os.path.join(out_dir, "tiny_model.msgpack")
    net, info, training = modelzoo.load_or_train(model_name, checkpoint, num_classes=num_classes,
                                                 train_classes=batches.num_classes, image_size=image_size, seed=seed,
                                                 steps=train_steps, report=report)
    batches.check_model_classes(info["num_classes"])  # a folder: names the labels.txt line / class folder
    if batches.num_classes is not None and info["num_classes"] < batches.num_classes:
        raise OptionError(f"the model has {info['num_classes']} classes but the {case} labels have "
                          f"{batches.num_classes}: give a checkpoint with {batches.num_classes} classes or other "
                          "labels (--case-option, e.g. labels=melanoma for a 2-class ISIC model)")
    try:
        modelzoo.check_input_size(net, image_size, name=model_name, option="--image-size")
    except ValueError as err:
        raise OptionError(str(err)) from None
    os.makedirs(out_dir, exist_ok=True)
    if target == "auto":
        target = "label" if batches.has_labels else "predicted"
        if not batches.has_labels:
            report("the images have no labels: each map explains the model's top-1 class (--target predicted)")
    config = RunConfig(
        case=case, model=model_name, data_dir=data_dir, checkpoint=checkpoint,
        checkpoint_sha256=file_digest(checkpoint), image_size=image_size, batch_size=batch_size, limit=limit,
        confidence=confidence, seed=seed, metrics=metric_names,
        method_overrides={k: v for k, v in {"n": n, "chunk_size": chunk_size}.items() if v is not None},
        split=split, case_options=dict(case_options or {}), target=target,
        resize_mode=batches.resize_mode, mean=batches.mean, std=batches.std)
    report(f"evaluate: case {case} ({batches.num_examples} images, {image_size}x{image_size}), model {model_name}, "
           f"{len(specs)} method(s), metrics {', '.join(metric_names)} -> {out_dir}")
    start = time.perf_counter()
    out = run(config, specs, out_dir, batches=batches, model=net, table=tables[0] if len(tables) == 1 else tables,
              metric_batch_size=metric_batch_size, progress=progress,
              extra_manifest={"tiny_model_training": training} if training else None, command=command)
    out["seconds"] = time.perf_counter() - start
    note = run_note(case, model_name, out["plan"], confidence, target, seed)
    written = {}
    for t in tables:
        rows = specs_lib.rows_for_table(t, specs)
        if rows:
            written[t] = tables_lib.write_tables(t, rows, {case: out["results"]}, {case: metric_names}, out_dir,
                                                 note=note)
    paths = []
    if figures and out["plan"]["images_kept"] > 0:
        paths = figures_lib.evaluation_figures(out_dir, case, specs, out["results"], metric_names, tables)
    out.update({"specs": specs, "metrics": metric_names, "target": target, "model": model_name,
                "image_size": image_size, "note": note, "tables": written, "figures": paths})
    return out
