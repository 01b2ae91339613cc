"""Run records and the manifest: the on-disk format of an evaluation run, written atomically and read back.

See :mod:`gag_jax.experiments.runner` for the layout of an output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

import gag_jax as gj
from gag_jax import user_code
from gag_jax.experiments.specs import MethodSpec

TARGETS = ("label", "predicted", "top-K")
"""What each map explains: the label, the model's top-1 class, or each of its K most probable classes
(``"top-5"``: five maps per image, each scored as its own (image, class) pair)."""


def parse_top_k(text: str | None) -> int | None:
    """K of ``"top-K"`` (also ``"topK"``, any case), K >= 1; None when ``text`` is not of that form. The
    one reader of "top-K" (``evaluate --target``, ``explain --labels``).

    Raises:
      ValueError: ``"top"`` followed by anything but an integer K >= 1.

    Examples:
      >>> parse_top_k("top-5"), parse_top_k("Top3"), parse_top_k("label")
      (5, 3, None)
    """
    low = (text or "").strip().lower()
    if not low.startswith("top"):
        return None
    found = re.fullmatch(r"top-?([0-9]+)", low)
    if found is None or int(found.group(1)) < 1:
        raise ValueError(f"'top-K' needs an integer K >= 1 (e.g. top-5); got {text!r}")
    return int(found.group(1))


def target_count(target: str) -> int:
    """Classes explained per image: 1 for ``"label"`` / ``"predicted"``, K for ``"top-K"`` (K >= 1).

    Raises:
      ValueError: anything else (the valid forms named).
    """
    if target in ("label", "predicted"):
        return 1
    try:
        count = parse_top_k(target)
    except ValueError:
        count = None
    if count is None:
        raise ValueError(f"target must be 'label', 'predicted' or 'top-K' with K >= 1 (e.g. top-5); got {target!r}")
    return count


MANIFEST = "manifest.json"
FORMAT_VERSION = 3
"""3: the config names the model ``model_name`` and holds ``metric_options``; 2: one key per image from its
name (gag_jax.keys); 1 keyed (method, batch)."""


class RunMismatchError(ValueError):
    """The output directory holds a run made with different options (named in the message)."""


class OptionError(ValueError):
    """An evaluation option that cannot work (an unknown case, method, metric or model, a missing
    data directory or checkpoint, a model with too few classes); raised before anything is computed."""


def parse_metrics(names: Sequence[str] | str | None, has_masks: bool) -> tuple[str, ...]:
    """Normalise metric names (comma-separated allowed; aliases such as ``dice`` = ``log_cosh_dice``).

    Args:
      names: e.g. ``"rcap,dauc,iauc,dice,mae"``: any registered metric (``gj.metrics.metric_names()``),
        alias, or ``module:attribute`` (a metric of your own, registered under the attribute's name); None: RCAP, DAUC, IAUC, plus Log-Cosh Dice and MAE when the case has masks.
      has_masks: whether the data carries masks.

    Returns:
      metric names in registry order.

    Raises:
      ValueError: unknown metric, or a mask metric for a case without masks.
    """
    if names is not None:
        names = [names] if isinstance(names, str) else names
        names = [user_code.user_metric(p.strip()) if user_code.is_reference(p.strip()) else p
                 for n in names for p in str(n).split(",") if p.strip()]
    return gj.metrics.check_metrics(names, has_masks)


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
      model_name: the model's name (a registered model or ``module:attribute``); checkpoint: its file;
        checkpoint_sha256: the file's digest.
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
      metric_options: keyword options per metric option group (``gj.metrics.score``'s ``options``),
        e.g. ``{"max_sensitivity": {"samples": 5}}``.
    """

    case: str
    model_name: str
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
    metric_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        target_count(self.target)

    def result_keys(self) -> dict[str, Any]:
        """The options that must match for a run to be resumed (checkpoint by digest, not path)."""
        data = dataclasses.asdict(self)
        data.pop("checkpoint")
        data["metrics"] = list(self.metrics)
        data["data_dir"] = None if self.data_dir is None else os.path.abspath(self.data_dir)
        return json.loads(json.dumps(data, default=str))


def _check_resume(manifest: Mapping, config: RunConfig) -> None:
    if manifest.get("format_version", 1) != FORMAT_VERSION:
        raise RunMismatchError(
            f"the output directory holds a run of format {manifest.get('format_version', 1)} (an earlier layout); "
            f"this release writes format {FORMAT_VERSION}: use another --out")
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
            for c in (c for m in metrics for c in gj.metrics.metric(m).curves):
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


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


# ----------------------------------------------------------------------------- reading and orchestration


def _known_metric(described: Mapping[str, Any]) -> None:
    """Make a run's metric known to the tables of this process: a user's metric is imported again from
    its ``module:attribute`` when it can be, else registered from its description in the manifest (its
    label and direction: enough for tables and figures, which read the stored values)."""
    name = described["name"]
    if name in gj.metrics.metric_names():
        return
    source = described.get("source") or {}
    if source.get("module") and source.get("attribute"):
        try:
            user_code.user_metric(f"{source['module']}:{source['attribute']}")
            return
        except ValueError:
            pass

    def not_importable(*args, **kwargs):
        raise ValueError(f"metric {name!r} ({source.get('module', '?')}:{source.get('attribute', '?')}) is not "
                         "importable here: only its stored values can be read")

    gj.metrics.register(name, gj.metrics.Metric(
        name, not_importable, described.get("label", name), described.get("category", "faithfulness"),
        bool(described.get("higher_is_better", True)), frozenset(described.get("needs", ())),
        tuple(described.get("curves", ())), source=source or None), replace=True)


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
    path = os.path.join(run_dir, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: not an evaluate output directory (no {MANIFEST})")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    specs = [MethodSpec(name=m["name"], label=m["label"], method=m["method"],
                        options=tuple(sorted((k, gj.explainers.hashable(v)) for k, v in m.get("options", {}).items())),
                        reverse=m.get("reverse", False), part=m.get("part", 1), base=m.get("base"),
                        variant=m.get("variant")) for m in manifest["methods"]]
    metrics = tuple(manifest["config"]["metrics"])
    for described in manifest.get("metrics", []):
        _known_metric(described)
    results = collect(run_dir, specs, manifest.get("plan", {}).get("batches", 0), metrics)
    return {"case": manifest["config"]["case"], "manifest": manifest, "specs": specs, "metrics": metrics,
            "results": results}



