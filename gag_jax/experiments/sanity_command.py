"""``gag-jax sanity`` as a function: load a model, read photos, run the randomisation test for each
method and write its tables and figures (:mod:`gag_jax.experiments.sanity_figures`)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from gag_jax.experiments.jobs import Job
from gag_jax.experiments.sanity_figures import run_sanity


def sanity_check(job: Job, image_paths: Sequence[str], *, labels: Sequence[int] | None = None, max_images: int = 4,
                 size: int = 224, cascading: bool = True, report: Callable[[str], None] = print,
                 warn: Callable[[str], None] = print, **test_options) -> dict | None:
    """The model-randomisation test on image files, as ``gag-jax sanity`` runs it.

    Loads the model as every command does (:meth:`Job.load_model`: a built-in name with its weights or
    a checkpoint, or ``module:attribute``; it must be a linen model), reads up to ``max_images``
    images (files, or the images of folders, in sorted order) with the model's own input scaling,
    explains each one's ``labels`` (default: the model's top-1 class) and calls :func:`run_sanity`.

    Args:
      job: the shared options (:class:`~gag_jax.experiments.jobs.Job`): ``out_dir`` (CSVs, Markdown
        summary, figures), ``model_name`` / ``checkpoint``, ``methods`` (default the paper's ten),
        ``n`` / ``chunk_size`` (method options where the method has them), ``seed``.
      image_paths: image files and/or folders.
      labels: one class per image, or one for all (default: top-1).
      max_images, size: how many images, and their side in pixels.
      cascading: cascading (top block first) or independent randomisation.
      report, warn: progress lines and warnings (unreadable files).
      **test_options: for ``gj.sanity.model_randomisation`` (``by``, ``steps``, ``batch_size``).

    Returns:
      :func:`run_sanity`'s dict plus ``"markdown_with_command"`` (the summary and the equivalent
      command, for the README), or None when no image could be read.

    Raises:
      ValueError: labels that do not fit the images or the model; ``tiny`` without a checkpoint.
    """
    import shlex

    import jax

    import gag_jax as gj
    from gag_jax.data import read_images
    from gag_jax.data._common import list_image_files
    from gag_jax.experiments.modelzoo import class_probabilities, top1_of

    methods = list(job.methods or gj.METHODS)
    model_name = job.model_name or "efficientnet_lite0"
    model, _ = job.load_model(size, methods=methods)  # the loader of every command
    if model.kind != "linen":
        raise ValueError(f"sanity --model {model_name}: the layer randomisation needs a Flax linen model "
                         "(gj.ModelFunctions.from_module); for an NNX model call gj.sanity.model_randomisation "
                         "with fresh= in Python")
    paths = []  # folders listed here so that max_images reads only the images it uses
    for path in image_paths:
        paths += list_image_files(path) if os.path.isdir(path) else [path]
    mean, std = model.mean, model.std
    pixels, images, names = read_images(paths[:max_images], size, report=warn, mean=mean, std=std)
    if not names:
        return None
    probs = class_probabilities(model, images)  # (N, K)
    if labels is None:
        y = top1_of(probs)[0]
    else:
        y = np.asarray(list(labels) if len(labels) > 1 else list(labels) * len(names), np.int32)
        if y.shape[0] != len(names) or y.min() < 0 or y.max() >= probs.shape[1]:
            raise ValueError(f"--labels needs {len(names)} class indices in [0, {probs.shape[1]})")
    method_options = {m: job.method_options(m) for m in methods}  # the scaling is the model's
    report(f"gag-jax sanity: {model_name}, {len(names)} image(s) at {size}, {len(methods)} method(s), "
           f"{'cascading' if cascading else 'independent'} randomisation")
    os.makedirs(job.out_dir, exist_ok=True)
    start = time.perf_counter()
    keys = job.keys(names)  # as demo / explain / evaluate
    run = run_sanity(model, pixels, images, y, names, job.out_dir, methods=methods,
                     key=jax.random.PRNGKey(job.seed), cascading=cascading, method_options=method_options,
                     report=report, image_keys=keys, **test_options)
    minutes = (time.perf_counter() - start) / 60
    command = ["gag-jax", "sanity", "--model", model_name, "--methods", ",".join(methods), "--images",
               *[os.path.basename(p) for p in paths[:max_images]], "--size", str(size), "--seed", str(job.seed)]
    command += ["--n", str(job.n)] if job.n is not None else []
    command += [] if cascading else ["--independent"]
    with open(run["files"]["markdown"], encoding="utf-8") as f:
        table = f.read().strip()
    run["markdown_with_command"] = (
        f"{table}\n\n{len(names)} image(s) at {size} px, {minutes:.0f} min on {gj.backend.platform_of()} "
        f"({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}:\n\n```bash\n{shlex.join(command)}\n```\n")
    return run
