"""A resumable case x methods x metrics runner that writes every finished batch to disk.

The case runner; the on-disk records and manifest are :mod:`gag_jax.experiments.records`, the two
stages :mod:`gag_jax.experiments.stages` (their names stay importable from here).

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
record and computes only the rest. An image's PRNG key depends only on the seed and its name
(:mod:`gag_jax.keys`), so the final numbers are those of an uninterrupted run, whatever the batch
size; all rows of a batch are explained together, each gradient sweep once (``gj.explain_many``).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

import gag_jax as gj
from gag_jax.experiments.records import (  # noqa: F401  (re-exported: the runner's public names)
    TARGETS,
    target_count,
    MANIFEST,
    FORMAT_VERSION,
    RunMismatchError,
    OptionError,
    parse_metrics,
    _atomic_savez,
    _atomic_json,
    _load_npz,
    _is_record,
    selection_path,
    record_path,
    versions,
    _module_version,
    file_digest,
    RunConfig,
    _check_resume,
    collect,
    _jsonable,
    load_run,
)
from gag_jax.experiments.specs import MethodSpec
from gag_jax.experiments import hosts
from gag_jax.experiments.jobs import Job
from gag_jax.experiments.stages import (  # noqa: F401  (re-exported)
    Plan,
    _Reader,
    gather,
    explain_batch,
    explain_rows,
    row_identity,
    run_cost,
    score_batch,
    _progress,
    _SELECTION_KEYS,
    select,
    evaluate_plan,
)


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
    model = model_with_scaling(model, config.mean, config.std)
    os.makedirs(out_dir, exist_ok=True)
    job = hosts.hello()  # {"processes": 1}, or every process's host and devices (one meeting)
    save = _atomic_json if hosts.is_main() else (lambda path, data: None)  # process 0 alone writes the manifest
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
            config.method_overrides).items()}
                                    for s in specs},
        "methods": list(known.values()), "table": table, "versions": versions(),
        "metrics": [gj.metrics.metric(m).as_dict() for m in config.metrics],
        "metric_batch_size": metric_batch_size,
        "seeds": {"explanations": gj.keys.POLICY, "seed": config.seed}, "hosts": job,
        "command": manifest.get("command", []) + [command or " ".join(sys.argv)],
    })
    if extra_manifest:
        manifest.update({k: _jsonable(v) for k, v in extra_manifest.items()})
    save(manifest_file, manifest)
    hosts.agree(manifest_file, config, specs, job)  # several processes: each checks its options against process 0's

    start = time.perf_counter()
    plan = hosts.select(batches, model, out_dir, config.confidence, config.batch_size, progress=progress,
                  metric_batch_size=metric_batch_size, target=config.target)
    seconds = {"selection": time.perf_counter() - start}
    skipped = [dataclasses.asdict(s) for s in getattr(batches, "skipped", [])]
    manifest["plan"] = {"images_seen": plan.num_seen, "images_kept": plan.num_kept, "batches": len(plan),
                        "images_unlabelled": plan.num_unlabelled,
                        "skipped_files": skipped or manifest.get("plan", {}).get("skipped_files", [])}
    save(manifest_file, manifest)
    manifest["cost"] = {**run_cost(specs, config.method_overrides, config.metrics, config.image_size, config.metric_options),
                        "devices": {"count": jax.device_count(), "kind": str(jax.devices()[0].device_kind)},
                        "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    save(manifest_file, manifest)
    try:
        start = time.perf_counter()
        counts = hosts.evaluate_plan(plan, batches, model, specs, out_dir, config=config,
                               metric_batch_size=metric_batch_size, progress=progress, on_record=on_record)
        seconds["explanations_and_metrics"] = time.perf_counter() - start
    except BaseException as err:
        manifest["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else f"failed: {type(err).__name__}"
        manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        save(manifest_file, manifest)
        raise
    manifest["status"] = "complete"
    manifest["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["counts"] = counts
    manifest["cost"]["seconds"] = {k: round(v, 3) for k, v in seconds.items()}  # this session's stages
    save(manifest_file, manifest)
    results = collect(out_dir, specs, len(plan), config.metrics) if hosts.is_main() else {}  # tables: process 0
    return {"results": results, "plan": manifest["plan"], "counts": counts, "manifest": manifest_file}


def model_with_scaling(model, mean, std) -> gj.ModelFunctions:
    """The one scaling rule of a run: the evaluated model carries the input scaling its data were
    normalised with (``mean`` / ``std``, the run's), and every method reads it from the model.

    A model without a scaling gets the run's; a model whose own scaling differs is refused.

    Raises:
      ValueError: the model's scaling is not the data's (naming both).
    """
    from gag_jax.model import as_model_functions, check_scaling

    model = as_model_functions(model)
    mean, std = check_scaling(mean, std)
    if model.mean is None or model.std is None:
        return model.replace(mean=mean, std=std)
    if not (np.allclose(model.mean, mean) and np.allclose(model.std, std)):  # (checked when the model was built)
        raise ValueError(f"the model's input scaling (mean {model.mean}, std {model.std}) is not the one the images "
                         f"were normalised with (mean {mean}, std {std})")
    return model


def run_note(case: str, model: str, plan: Mapping, confidence: float | None, target: str, seed: int) -> str:
    """The line under a table's caption: case, model, images kept, selection, target, seed."""
    selection = f"(confidence > {confidence})" if confidence is not None else "(no confidence selection)"
    explained = {"predicted": "top-1 class", "label": "label"}.get(
        target, f"{target_count(target)} most probable classes (each image and class scored as one row)")
    return (f"Case {case}, model {model}, {plan['images_kept']} of {plan['images_seen']} images {selection}, "
            f"maps explain the {explained}, seed {seed}.")


def evaluate_case(job: Job, case: str, *, data_dir: str | None = None, num_classes: int | None = None,
                  tables: Sequence[int] = (2,), metrics: Sequence[str] | str | None = None, limit: int | None = None,
                  confidence: float | None = 0.9, image_size: int | None = None, split: str | None = None,
                  case_options: Mapping[str, Any] | None = None, metric_options: Mapping[str, Mapping] | None = None,
                  backend: str = "auto", resize: str | None = None,
                  target: str = "auto", train_steps: int = 300, figures: bool = True,
                  report: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    """Evaluate one case end to end, as ``gag-jax evaluate`` does: load the data and the model,
    run (or resume) :func:`run`, write the tables and figures.

    Args:
      job: the shared options (:class:`~gag_jax.experiments.jobs.Job`): ``out_dir`` (the results
        directory; reuse it to resume); ``model_name`` (a ``modelzoo.model_names()`` entry or
        ``module:attribute``, a factory of yours returning a ``gj.ModelFunctions``; None: the case's,
        ``modelzoo.CASE_MODELS``); ``checkpoint`` (``tiny``: loaded if the file exists, else trained
        there; default ``out_dir/tiny_model.msgpack``); ``methods`` (row names computed instead of
        the tables' rows, ``specs.specs_for``); ``batch_size`` (images per evaluated batch, default
        16); ``metric_batch_size``; ``n`` / ``chunk_size`` (None: the methods' own); ``seed`` (of the
        explanations and the synthetic data / tiny model); ``progress`` (tqdm bars).
      case: a ``gag_jax.data.CASES`` entry (``folder``: any folder of images).
      data_dir: the dataset directory (not for ``synthetic``).
      num_classes: classifier outputs (None: from the checkpoint).
      tables: which of Tables 1, 2, 3 to write.
      metrics: metric names (``parse_metrics``; None: the paper's, with the mask metrics when the
        case has masks).
      limit: the first ``limit`` examples only (synthetic: how many are generated, default 64).
      confidence: keep images whose probability on the explained class is above it (None: all).
      image_size: input side (None: the case's).
      split: dataset split (None: the case's).
      case_options: loader options of the case (``load_case(**case_options)``).
      metric_options: options per metric option group (``{"max_sensitivity": {"samples": 5}}``; checked
        against the metrics asked for before anything is computed).
      backend: ``"auto"``, ``"tfds"`` or ``"files"``.
      resize: ``"squash"``, ``"center_crop"``, ``"imagenet_eval"`` or None (the case's).
      target: ``"label"``, ``"predicted"`` or ``"auto"`` (label when the data has labels).
      train_steps: optimisation steps when the ``tiny`` model is trained.
      figures: write ``rcap_curves.png`` and ``table1_p_ablation.png``.
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

    out_dir, checkpoint, methods, seed = job.out_dir, job.checkpoint, job.methods, job.seed
    batch_size, metric_batch_size, progress = job.batch_size or 16, job.metric_batch_size, job.progress
    if case not in CASES:
        raise OptionError(f"unknown case {case!r}; cases: {', '.join(CASES)}")
    if case != "synthetic":
        if data_dir is None:
            raise OptionError(f"case {case!r} needs --data-dir (the directory of your copy of the dataset)")
        if not os.path.isdir(data_dir):
            raise OptionError(f"--data-dir {data_dir}: no such directory")
    model_name = job.model_name or modelzoo.CASE_MODELS[case]
    tables = sorted(set(tables))
    try:
        modelzoo.check_model(model_name, checkpoint, trains_tiny=case == "synthetic")
        specs = specs_lib.specs_for(tables, methods)
    except ValueError as err:
        raise OptionError(str(err)) from None
    image_size = image_size or CASE_IMAGE_SIZES[case]
    loader_options = dict(case_options or {})
    if case == "synthetic":
        loader_options.update({"num_images": limit or 64, "seed": seed})
    try:
        mean, std = modelzoo.model_normalization(model_name)
        batches = load_case(case, data_dir, split=split, image_size=image_size, batch_size=batch_size,
                            backend=backend, max_examples=None if case == "synthetic" else limit, mean=mean,
                            std=std, resize_mode=resize, **loader_options)
        metric_names = parse_metrics(metrics, batches.has_masks)
        groups = {gj.metrics.metric(m).option_group for m in metric_names}
        unknown = sorted(set(metric_options or {}) - groups)
        if unknown:
            raise ValueError(f"--metric-option for {unknown}, which are not among the metrics asked for "
                             f"(option groups: {', '.join(sorted(groups))})")
    except (ValueError, TypeError) as err:
        raise OptionError(str(err)) from None

    if model_name == modelzoo.TINY:  # (out_dir is made after the checks: a refused run leaves no empty folder)
        checkpoint = checkpoint or os.path.join(out_dir, "tiny_model.msgpack")
    try:
        with hosts.main_first("the model"):  # several processes: process 0 trains the tiny model, the others load it
            net, info, training = modelzoo.load_or_train(model_name, checkpoint, num_classes=num_classes,
                                                         train_classes=batches.num_classes, image_size=image_size,
                                                         seed=seed, steps=train_steps, report=report)
    except ValueError as err:
        raise OptionError(str(err)) from None
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
        case=case, model_name=model_name, data_dir=data_dir, checkpoint=checkpoint,
        checkpoint_sha256=file_digest(checkpoint), image_size=image_size, batch_size=batch_size, limit=limit,
        confidence=confidence, seed=seed, metrics=metric_names,
        method_overrides={k: v for k, v in {"n": job.n, "chunk_size": job.chunk_size}.items() if v is not None},
        split=split, case_options=dict(case_options or {}), target=target,
        resize_mode=batches.resize_mode, mean=batches.mean, std=batches.std,
        metric_options={k: dict(v) for k, v in (metric_options or {}).items()})
    report(f"evaluate: case {case} ({batches.num_examples} images, {image_size}x{image_size}), model {model_name}, "
           f"{len(specs)} method(s), metrics {', '.join(metric_names)} -> {out_dir}")
    start = time.perf_counter()
    out = run(config, specs, out_dir, batches=batches, model=net, table=tables[0] if len(tables) == 1 else tables,
              metric_batch_size=metric_batch_size, progress=progress,
              extra_manifest={**({"tiny_model_training": training} if training else {}),
                              **({"model_source": info["source"]} if info.get("source") else {})} or None,
              command=command)
    out["seconds"] = time.perf_counter() - start
    note = run_note(case, model_name, out["plan"], confidence, target, seed)
    written = {}
    for t in tables if hosts.is_main() else ():  # several processes: process 0 writes the tables and figures
        rows = specs_lib.rows_for_table(t, specs)
        if rows:
            written[t] = tables_lib.write_tables(t, rows, {case: out["results"]}, {case: metric_names}, out_dir,
                                                 note=note)
    paths = []
    if figures and out["plan"]["images_kept"] > 0 and hosts.is_main():
        paths = figures_lib.evaluation_figures(out_dir, case, specs, out["results"], metric_names, tables)
    out.update({"specs": specs, "metrics": metric_names, "target": target, "model": model_name,
                "image_size": image_size, "note": note, "tables": written, "figures": paths})
    return out
