"""The model-randomisation sanity check as an experiment: run it for several methods, write CSVs and
the two figures of Adebayo et al. (2018): similarity curves per method, and a grid of maps as the
layers are randomised.

Used by ``gag-jax sanity``; every figure function writes one PNG (matplotlib, Agg) and returns its path.
"""
from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gag_jax.experiments.figures import _cmap, _plt

METRIC_TITLES = {"spearman_abs": "Spearman (absolute maps)", "spearman": "Spearman (signed maps)",
                 "ssim": "SSIM", "hog": "HOG similarity"}


def similarity_curves(path: str, results: Mapping[str, Mapping], *, metrics: Sequence[str] = tuple(METRIC_TITLES),
                      labels: Mapping[str, str] | None = None, title: str | None = None) -> str:
    """Adebayo et al. Figure 2 (right): mean similarity to the original map after each randomisation step.

    Args:
      path: output PNG.
      results: method -> ``gj.sanity.model_randomisation`` result (same steps for every method).
      metrics: one panel per metric (keys of the results, each ``(S, B)``).
      labels: method -> legend label.
      title: figure title.
    """
    plt = _plt()
    methods = list(results)
    if not methods:
        raise ValueError("no results to plot")
    steps = list(results[methods[0]]["steps"])
    x = np.arange(len(steps) + 1)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics) + 1.6, 3.6), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for j, metric in enumerate(metrics):
        ax = axes[0, j]
        for i, m in enumerate(methods):
            values = np.asarray(results[m][metric], np.float64)
            mean = np.concatenate([[1.0], values.mean(axis=1)])
            std = np.concatenate([[0.0], values.std(axis=1)])
            ax.plot(x, mean, marker="o", markersize=2.5, linewidth=1.2, color=colours(i % 10),
                    label=(labels or {}).get(m, m))
            ax.fill_between(x, mean - std, mean + std, color=colours(i % 10), alpha=0.12, linewidth=0)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(["original"] + steps, rotation=90, fontsize=6)
        ax.set_ylim(-0.5, 1.05)
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].set_ylabel("similarity to the original map", fontsize=8)
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    cascading = results[methods[0]].get("cascading", True)
    fig.suptitle(title or ("cascading randomisation, top layer first" if cascading
                           else "independent randomisation, one block at a time"), fontsize=10)
    fig.tight_layout(pad=0.4)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _display(saliency: np.ndarray, clip: float | None) -> np.ndarray:
    """A map scaled for display: values above the ``clip`` percentile saturate (PAIR's grayscale view)."""
    if clip is None:
        return saliency
    top = np.percentile(saliency, clip)
    return np.clip(saliency / top, 0.0, 1.0) if top > 0 else saliency


def randomisation_grid(path: str, pixels: np.ndarray, results: Mapping[str, Mapping], *, image: int = 0,
                       steps: Sequence[str] | None = None, labels: Mapping[str, str] | None = None,
                       cmap: str = "gray", clip_percentile: float | None = 99.0, cell_inches: float = 0.9,
                       title: str | None = None) -> str:
    """Adebayo et al. Figure 2 (left): one row per method, the original map then the map after each step.

    Args:
      path: output PNG.
      pixels: uint8 ``(N, H, W, 3)`` images (column 0 shows ``pixels[image]``).
      results: method -> ``gj.sanity.model_randomisation`` result (with ``original`` and ``maps``).
      image: which image of the batch.
      steps: the step labels to show (default all).
      labels: method -> row label.
      cmap: colormap of the absolute maps (the paper shows them in gray).
      clip_percentile: display only: each map is divided by its value at this percentile and
        clipped to 1, as the paper's figures (PAIR's ``VisualizeImageGrayscale``) do, so that a few
        extreme pixels do not leave the rest black; None shows the maps as they are.
      cell_inches: size of one cell.
      title: figure title.
    """
    plt = _plt()
    methods = list(results)
    if not methods:
        raise ValueError("no results to plot")
    all_steps = list(results[methods[0]]["steps"])
    show = all_steps if steps is None else [s for s in all_steps if s in set(steps)]
    cols = len(show) + 2
    rows = len(methods)
    left, top, bottom = 0.9, 1.0, 0.1  # inches of margin: row labels, column titles + title
    width, height = cell_inches * cols + left + 0.1, cell_inches * rows + top + bottom
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.1 / width, bottom=bottom / height,
                        top=1 - top / height, wspace=0.04, hspace=0.04)
    for i, m in enumerate(methods):
        r = results[m]
        axes[i, 0].imshow(pixels[image])
        axes[i, 1].imshow(_cmap(_display(r["original"][image], clip_percentile), cmap))
        for j, s in enumerate(show, start=2):
            axes[i, j].imshow(_cmap(_display(r["maps"][all_steps.index(s)][image], clip_percentile), cmap))
        axes[i, 0].set_ylabel((labels or {}).get(m, m), fontsize=8, rotation=0, ha="right", va="center")
    axes[0, 0].set_title("input", fontsize=7)
    axes[0, 1].set_title("original", fontsize=7)
    for j, s in enumerate(show, start=2):
        axes[0, j].set_title(s, fontsize=7, rotation=60, ha="left", va="bottom", rotation_mode="anchor")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    cascading = results[methods[0]].get("cascading", True)
    fig.suptitle(title or ("maps as the layers are randomised, top first (cascading) \u2192" if cascading
                           else "maps with one block randomised at a time (independent) \u2192"),
                 fontsize=10, y=1 - 0.12 / height, va="top")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_csv(path: str, results: Mapping[str, Mapping], image_names: Sequence[str]) -> str:
    """One row per (method, step, image): ``method, variant, step_index, step, image, spearman, ...``."""
    from gag_jax.sanity import METRICS

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "variant", "step_index", "step", "image", *METRICS])
        for m, r in results.items():
            variant = "cascading" if r.get("cascading", True) else "independent"
            for s, step in enumerate(r["steps"]):
                for b, name in enumerate(image_names):
                    w.writerow([m, variant, s + 1, step, name, *(f"{float(r[k][s, b]):.6f}" for k in METRICS)])
    return path


def write_summary(path: str, results: Mapping[str, Mapping]) -> str:
    """Mean over images per (method, step), plus the verdict: ``method, variant, step_index, step, ..., passed``."""
    from gag_jax.sanity import METRICS

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["method", "variant", "step_index", "step", *(f"mean_{k}" for k in METRICS), "passed"])
        for m, r in results.items():
            variant = "cascading" if r.get("cascading", True) else "independent"
            for s, step in enumerate(r["steps"]):
                w.writerow([m, variant, s + 1, step, *(f"{float(np.mean(r[k][s])):.6f}" for k in METRICS),
                            int(bool(r["passed"]))])
    return path


def summary_markdown(results: Mapping[str, Mapping], image_names: Sequence[str]) -> str:
    """A Markdown table of the test: per method, the mean Spearman correlation (absolute maps) with the
    trained model's map after the top block, at the last step and averaged over steps, and the verdict.

    Args:
      results: method -> ``gj.sanity.model_randomisation`` result (with ``"passed"``).
      image_names: the images explained.
    """
    first = next(iter(results.values()))
    intro = (
        f"Spearman rank correlation of absolute maps with the trained model's map, mean over {len(image_names)} "
        f"image(s) ({', '.join(image_names)}); {len(first['steps'])} steps from `{first['steps'][0]}` to "
        f"`{first['steps'][-1]}`. A method passes when the mean over the steps is below 0.5 (its maps change "
        "as the model is randomised)."
    )
    lines = [
        intro,
        "",
        f"| method | after `{first['steps'][0]}` | last step | mean over steps | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        curve = np.asarray(r["spearman_abs"]).mean(axis=1)
        verdict = "passes" if r["passed"] else "**fails** (its maps survive the randomisation)"
        lines.append(f"| {name} | {curve[0]:.3f} | {curve[-1]:.3f} | {curve.mean():.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str, results: Mapping[str, Mapping], image_names: Sequence[str]) -> str:
    """Write :func:`summary_markdown` to ``path``; returns ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(summary_markdown(results, image_names))
    return path


def run_sanity(model, pixels: np.ndarray, images: np.ndarray, labels: np.ndarray,
               image_names: Sequence[str], out_dir: str, *, methods: Sequence, key, cascading: bool = True,
               method_options: Mapping[str, Mapping] | None = None, report: Callable[[str], None] = print,
               prefix: str = "sanity", **test_options) -> dict:
    """Run ``gj.sanity.model_randomisation`` for each method; write CSVs and both figures.

    Args:
      model: the trained model (``gj.ModelFunctions`` of a linen or NNX module; an NNX model also
        needs ``fresh=`` among ``test_options``), carrying its input scaling.
      pixels: uint8 ``(B, H, W, 3)`` images for the grid; ``images`` the inputs in the model's scaling.
      labels: ``(B,)`` targets.
      image_names: one name per image (CSV).
      out_dir: output directory.
      methods: ``gj.METHODS`` names (or callables).
      key: PRNG key (``fold_in`` by method index).
      cascading: cascading or independent randomisation.
      method_options: method -> options for ``gj.explain`` (e.g. ``{"gag": {"n": 10}}``).
      report: progress lines.
      prefix: file name prefix.
      **test_options: passed to ``model_randomisation`` (``by``, ``blocks``, ``steps``, ...).

    Returns:
      ``{"results": {method: result}, "files": {name: path}, "seconds": {method: s}}``.
    """
    import jax

    import gag_jax as gj

    results, seconds = {}, {}
    for i, m in enumerate(methods):
        name = m if isinstance(m, str) else getattr(m, "__name__", f"method{i}")
        start = time.perf_counter()
        results[name] = gj.sanity.model_randomisation(
            m, model, images, labels, jax.random.fold_in(key, i), cascading=cascading, report=report,
            **test_options, **dict((method_options or {}).get(name, {})))
        seconds[name] = time.perf_counter() - start
        r = results[name]
        curve = r["spearman_abs"].mean(axis=1)
        report(f"{name}: Spearman (abs) after {r['steps'][0]} {curve[0]:.3f}, at the last step {curve[-1]:.3f}, "
               f"mean over steps {curve.mean():.3f} -> {'passes' if r['passed'] else 'FAILS'} the check "
               f"({seconds[name]:.0f} s)")
    files = {
        "csv": write_csv(os.path.join(out_dir, f"{prefix}.csv"), results, image_names),
        "markdown": write_markdown(os.path.join(out_dir, f"{prefix}_summary.md"), results, image_names),
        "summary": write_summary(os.path.join(out_dir, f"{prefix}_summary.csv"), results),
        "curves": similarity_curves(os.path.join(out_dir, f"{prefix}_curves.png"), results),
        "grid": randomisation_grid(os.path.join(out_dir, f"{prefix}_maps.png"), pixels, results),
    }
    return {"results": results, "files": files, "seconds": seconds}
