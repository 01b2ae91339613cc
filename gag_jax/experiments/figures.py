"""Figures (matplotlib, Agg backend): the paper's Figure 1 method grid, Figure 3 RCAP partitions,
Figure 4 synthetic propositions, and Table 1's p-ablation as a curve. Plus heat-map overlays
(Pillow only, fast) used by ``explain`` and ``demo``.

Every function writes one PNG and returns its path; none needs a display.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


SALIENCY_CMAP = "inferno"
"""The colour map of every saliency figure: perceptually uniform, dark (low) to bright (high)."""


def _cmap(values: np.ndarray, name: str = SALIENCY_CMAP) -> np.ndarray:
    """``(H, W)`` in [0, 1] -> ``(H, W, 3)`` float RGB in [0, 1]."""
    from matplotlib import colormaps

    return colormaps[name](np.clip(values, 0.0, 1.0))[..., :3]


def overlay(pixels: np.ndarray, saliency: np.ndarray, alpha: float = 0.85, cmap: str = SALIENCY_CMAP) -> np.ndarray:
    """The saliency map in colour over a grey copy of the photo (the photo's colours would be
    confused with the map's).

    The map's opacity grows with its value, from ``0.3 * alpha`` at 0 to ``alpha`` at 1, so the
    photo stays readable where the map is low and the colours match the colour bar where it is high.

    Args:
      pixels: uint8 ``(H, W, 3)`` image.
      saliency: ``(H, W)`` map in [0, 1].
      alpha: the map's opacity at value 1.
      cmap: matplotlib colormap name.

    Returns:
      uint8 ``(H, W, 3)``.
    """
    img = np.asarray(pixels, np.float32) / 255.0
    grey = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None] * np.ones(3, np.float32)
    s = np.clip(np.asarray(saliency, np.float32), 0.0, 1.0)
    heat = _cmap(s, cmap)
    a = alpha * (0.3 + 0.7 * s)[..., None]
    return np.clip(np.round(255.0 * ((1 - a) * grey + a * heat)), 0, 255).astype(np.uint8)


def _colorbar(fig, axes, cmap: str = SALIENCY_CMAP, label: str = "saliency (normalised)"):
    """One colour bar for ``axes`` mapping the colours to saliency values in [0, 1]."""
    from matplotlib import cm, colors

    mappable = cm.ScalarMappable(norm=colors.Normalize(0.0, 1.0), cmap=cmap)
    bar = fig.colorbar(mappable, ax=axes, fraction=0.035, pad=0.02)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    return bar


def save_overlay(path: str, pixels: np.ndarray, saliency: np.ndarray, *, title: str = "") -> str:
    """Write one explanation as a PNG: the photo, the map over the photo and the map alone, with
    a colour bar (as the paper's Figure 1) and ``title`` (e.g. method, class and probability).

    Args:
      path: output PNG.
      pixels: uint8 ``(H, W, 3)``.
      saliency: ``(H, W)`` in [0, 1].
      title: figure title.
    """
    plt = _plt()
    saliency = np.clip(np.asarray(saliency, np.float32), 0.0, 1.0)
    fig, axes = plt.subplots(1, 3, figsize=(7.6, 2.75), layout="constrained")
    axes[0].imshow(pixels)
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(overlay(pixels, saliency))
    axes[1].set_title("map over the input", fontsize=8)
    axes[2].imshow(saliency, cmap=SALIENCY_CMAP, vmin=0.0, vmax=1.0)
    axes[2].set_title("map", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    _colorbar(fig, list(axes))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (``0.000123``, ``0.0815``, ``0.174``)."""
    return f"{float(value):.{digits}g}"


def method_grid(path: str, pixels: np.ndarray, maps: Mapping[str, np.ndarray], *,
                row_titles: Sequence[str] | None = None, column_titles: Mapping[str, str] | None = None,
                scores: Mapping[str, np.ndarray] | None = None, cell_inches: float = 1.6) -> str:
    """Figure 1 style grid: one row per image, the input then each method's map over the input
    (grey), one colour bar for all.

    Args:
      path: output PNG.
      pixels: uint8 ``(N, H, W, 3)``.
      maps: method -> ``(N, H, W)`` maps in [0, 1], in column order.
      row_titles: one title per image (e.g. the predicted class).
      column_titles: method -> column title (default: the key).
      scores: optional method -> ``(N,)`` RCAP values printed under each cell (3 significant digits).
      cell_inches: size of one cell.
    """
    plt = _plt()
    methods = list(maps)
    n = pixels.shape[0]
    cols = len(methods) + 1
    fig, axes = plt.subplots(n, cols, figsize=(cell_inches * cols + 0.8, cell_inches * n + 0.4), squeeze=False,
                             layout="constrained")
    for i in range(n):
        axes[i, 0].imshow(pixels[i])
        if row_titles is not None:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
        for j, m in enumerate(methods, start=1):
            ax = axes[i, j]
            ax.imshow(overlay(pixels[i], maps[m][i]))
            if scores is not None and m in scores:
                ax.set_xlabel(f"RCAP {_significant(scores[m][i])}", fontsize=6, labelpad=1)
        if i == 0:
            axes[0, 0].set_title("input", fontsize=8)
            for j, m in enumerate(methods, start=1):
                axes[0, j].set_title((column_titles or {}).get(m, m), fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _colorbar(fig, axes[:, 1:].ravel().tolist())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rcap_partitions(path: str, pixels: np.ndarray, saliency: np.ndarray, *, lower_bound: float = 50,
                    interval: float = 10, ratios: Sequence[float] | None = None,
                    probs: Sequence[float] | None = None, title: str = "") -> str:
    """Figure 3 style: the recovered images ``I_k`` of one image for ``p_k = 90, 80, ..., 50``.

    Each panel shows the image where ``saliency >= percentile_{p_k}`` and black elsewhere (as
    RCAP recovers it), titled with ``ratio_k`` and ``prob_k`` when given; a last panel plots
    ``ratio_k``, ``prob_k`` and their product against ``k`` (RCAP is the product's mean).

    Args:
      path: output PNG.
      pixels: uint8 ``(H, W, 3)``.
      saliency: ``(H, W)``.
      lower_bound, interval: RCAP's partition.
      ratios, probs: ``(j,)`` from ``gj.metrics.rcap`` (optional).
      title: figure title.
    """
    plt = _plt()
    from gag_jax.metrics import rcap_percentiles

    levels = rcap_percentiles(lower_bound, interval)
    j = len(levels)
    extra = 2 if ratios is not None and probs is not None else 1
    fig, axes = plt.subplots(1, j + extra, figsize=(1.7 * (j + extra), 2.4), squeeze=False, layout="constrained")
    axes = axes[0]
    axes[0].imshow(overlay(pixels, saliency))
    axes[0].set_title("saliency", fontsize=8)
    for k, p in enumerate(levels):
        q = np.percentile(saliency, p)
        keep = saliency >= q
        axes[k + 1].imshow(np.where(keep[..., None], pixels, 0).astype(np.uint8))
        label = f"p$_k$ = {p:g} (percentile)"
        if ratios is not None and probs is not None:
            label += f"\nratio {ratios[k]:.2f}  prob {probs[k]:.2f}"
        axes[k + 1].set_title(label, fontsize=7)
    for ax in axes[: j + 1]:
        ax.set_xticks([])
        ax.set_yticks([])
    if extra == 2:
        ax = axes[-1]
        ks = np.arange(1, j + 1)
        r, pr = np.asarray(ratios), np.asarray(probs)
        ax.plot(ks, r, "o-", label="ratio$_k$")
        ax.plot(ks, pr, "s-", label="prob$_k$")
        ax.plot(ks, r * pr, "^-", label="product")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(ks)
        ax.set_xlabel("k", fontsize=7)
        ax.set_title(f"RCAP = {_significant(np.mean(r * pr))}", fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# one colour per plain method (tab10 has exactly the ten of Table 2 parts 1-2); its reversed "R" row
# keeps the colour with a dashed line and hollow markers; any other row gets a colour of its own
_METHOD_COLOURS = {"gradcam": "tab:gray", "gag": "tab:red", "ag": "tab:orange", "vargrad": "tab:olive",
                   "sg": "tab:blue", "ig": "tab:green", "gb": "tab:purple", "guided_ig": "tab:cyan",
                   "blur_ig": "tab:brown", "vg": "tab:pink"}
_EXTRA_COLOURS = ("#000000", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                  "#17becf", "#393b79", "#8c6d31", "#843c39")
_EXTRA_LINESTYLES = ("-.", ":", (0, (5, 1, 1, 1, 1, 1)))
_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def method_styles(names: Sequence[str]) -> dict[str, dict]:
    """A distinct line style per row name: ``{name: {"color", "linestyle", "marker", "markerfacecolor"}}``.

    The ten plain methods of Table 2 have fixed colours; a reversed row ``<m>_r`` takes the colour of
    ``<m>`` with a dashed line and hollow markers; any other row (GAG-p, variants, perturbation
    methods) takes the next unused colour of a second palette, then dash-dot / dotted lines. No two
    names share (colour, line style).
    """
    styles: dict[str, dict] = {}
    used: set = set()
    extra = 0
    for i, name in enumerate(names):
        marker = _MARKERS[i % len(_MARKERS)]
        base = name[:-2] if name.endswith("_r") else name
        if base in _METHOD_COLOURS:
            colour, linestyle = _METHOD_COLOURS[base], ("--" if name.endswith("_r") else "-")
        else:
            colour = linestyle = None
        while colour is None or (colour, str(linestyle)) in used:
            colour = _EXTRA_COLOURS[extra % len(_EXTRA_COLOURS)]
            linestyle = _EXTRA_LINESTYLES[(extra // len(_EXTRA_COLOURS)) % len(_EXTRA_LINESTYLES)]
            extra += 1
            if extra > len(_EXTRA_COLOURS) * len(_EXTRA_LINESTYLES):  # beyond 36 extra rows: cycle the markers
                break
        used.add((colour, str(linestyle)))
        styles[name] = {"color": colour, "linestyle": linestyle, "marker": marker,
                        "markerfacecolor": "none" if name.endswith("_r") else colour}
    return styles


def rcap_curves(path: str, results: Mapping[str, Mapping], labels: Mapping[str, str] | None = None,
                lower_bound: float = 50, interval: float = 10) -> str:
    """Mean ``ratio_k`` and ``prob_k`` per k for each method (from ``runner.collect`` results); every
    method has its own colour / line style (:func:`method_styles`)."""
    plt = _plt()
    from gag_jax.metrics import rcap_percentiles

    levels = rcap_percentiles(lower_bound, interval)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    plotted = [name for name, res in results.items() if "rcap_ratios" in res]
    styles = method_styles(plotted)
    for name in plotted:
        res = results[name]
        lab = (labels or {}).get(name, name)
        axes[0].plot(levels, res["rcap_ratios"], label=lab, ms=3.5, lw=1.2, **styles[name])
        axes[1].plot(levels, res["rcap_probs"], label=lab, ms=3.5, lw=1.2, **styles[name])
    for ax, t in zip(axes, ("ratio$_k$ = sum(M[M >= q$_k$]) / sum(M)", "prob$_k$ = softmax(f(I$_k$))$_c$")):
        ax.set_xlabel("percentile p$_k$")
        ax.set_title(t, fontsize=9)
        ax.invert_xaxis()
        ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=6, handlelength=3, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the data
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def p_ablation_curve(path: str, results: Mapping[str, Mapping[str, Mapping]],
                     metrics_by_case: Mapping[str, Sequence[str]]) -> str:
    """Table 1 as curves: each metric against GAG's percentile p, one line per case.

    Args:
      path: output PNG.
      results: ``{case: {"gag-<p>": {metric: mean}}}``.
      metrics_by_case: metrics of each case.
    """
    plt = _plt()
    from gag_jax.experiments.tables import CASE_LABELS, metric_label, metric_order

    metrics = [m for m in metric_order() if any(m in ms for ms in metrics_by_case.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 2.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for case, res in results.items():
            if metric not in metrics_by_case[case]:
                continue
            points = sorted((float(name.split("-", 1)[1]), r[metric]) for name, r in res.items()
                            if name.startswith("gag-") and metric in r)
            if points:
                ax.plot([p for p, _ in points], [v for _, v in points], "o-", label=CASE_LABELS.get(case, case))
        ax.set_title(metric_label(metric), fontsize=9)
        ax.set_xlabel("p (percent)")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Guided AbsoluteGrad: percentile p of the variance guide (Table 1)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_ranks(results: Mapping[str, Mapping], metrics: Sequence[str], rows: Sequence[str]) -> np.ndarray:
    """``(rows, metrics)`` rank of each row on each metric (1 = best, by the metric's direction; ties
    share their mean rank; NaN where a row has no value)."""
    import gag_jax as gj

    ranks = np.full((len(rows), len(metrics)), np.nan)
    for j, metric in enumerate(metrics):
        sign = -1.0 if gj.metrics.metric(metric).higher_is_better else 1.0
        values = np.asarray([results.get(r, {}).get(metric, np.nan) for r in rows], np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            continue
        keyed = sign * values[finite]
        order = np.argsort(keyed, kind="stable")
        rank = np.empty(len(keyed))
        rank[order] = np.arange(1, len(keyed) + 1)
        for value in np.unique(keyed):  # ties: mean rank
            rank[keyed == value] = rank[keyed == value].mean()
        ranks[finite, j] = rank
    return ranks


def metric_summary(path: str, results: Mapping[str, Mapping], metrics: Sequence[str],
                   labels: Mapping[str, str] | None = None, *, title: str = "") -> str:
    """Methods x metrics as researchers compare them: each method's rank on each metric (1 = best),
    the metrics grouped by what they test (Quantus's categories, from the metric records), with the
    mean rank per category on the right.

    Args:
      path: output PNG.
      results: ``{row name: {metric: mean}}`` (``runner.collect``).
      metrics: the metrics (columns), any order: grouped by category here.
      labels: row display labels.
      title: the figure's title.

    Returns:
      ``path``.
    """
    import gag_jax as gj

    plt = _plt()
    records = [gj.metrics.metric(m) for m in metrics]
    categories = [c for c in gj.metrics.CATEGORIES if any(r.category == c for r in records)]
    ordered = [r for c in categories for r in records if r.category == c]
    rows = list(results)
    ranks = metric_ranks(results, [r.name for r in ordered], rows)
    with warnings.catch_warnings():  # a row without any value in a category: NaN, shown as "-"
        warnings.simplefilter("ignore", RuntimeWarning)
        per_category = np.stack([np.nanmean(ranks[:, [r.category == c for r in ordered]], axis=1)
                                 for c in categories], axis=1) if categories else np.zeros((len(rows), 0))
        mean_rank = np.nanmean(ranks, axis=1) if ranks.size else np.zeros(len(rows))
    order = np.argsort(np.nan_to_num(mean_rank, nan=np.inf), kind="stable")
    ranks, per_category, rows = ranks[order], per_category[order], [rows[i] for i in order]
    width = 2.2 + 0.8 * (len(ordered) + len(categories))
    fig, (ax, ax_cat) = plt.subplots(1, 2, figsize=(width, 2.9 + 0.42 * len(rows)), squeeze=True,
                                     layout="constrained",
                                     gridspec_kw={"width_ratios": [max(len(ordered), 1), max(len(categories), 1)]})
    cmap = plt.get_cmap("viridis_r")
    arrows = {True: "\u2191", False: "\u2193"}
    metric_columns = [f"{r.label} {arrows[r.higher_is_better]}" for r in ordered]
    for axis, data, columns in ((ax, ranks, metric_columns), (ax_cat, per_category, categories)):
        axis.imshow(np.nan_to_num(data, nan=len(rows) + 1), cmap=cmap, vmin=1, vmax=max(len(rows), 2), aspect="auto")
        for (i, j), value in np.ndenumerate(data):
            axis.text(j, i, "-" if np.isnan(value) else f"{value:.3g}", ha="center", va="center", fontsize=7,
                      color="white" if np.isfinite(value) and value > (len(rows) + 1) / 2 else "black")
        axis.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
        axis.set_yticks(range(len(rows)), [(labels or {}).get(r, r) for r in rows], fontsize=8)
    boundaries = np.cumsum([sum(r.category == c for r in ordered) for c in categories])[:-1]
    for b in boundaries:
        ax.axvline(b - 0.5, color="white", linewidth=3)
    top = ax.secondary_xaxis("top")  # the categories above their columns
    top.set_xticks([(a + b - 1) / 2 for a, b in zip(np.r_[0, boundaries], np.r_[boundaries, len(ordered)])],
                   categories, fontsize=7, rotation=20, ha="left")
    ax_cat.set_title("mean rank per category", fontsize=8)
    ax_cat.set_yticks([])
    fig.suptitle(title or "Rank per metric (1 = best; arrows: direction), grouped by what the metric tests",
                 fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluation_figures(out_dir: str, case: str, specs: Sequence, results: Mapping[str, Mapping],
                       metrics: Sequence[str], tables: Sequence[int]) -> list[str]:
    """The figures of one evaluated case: ``rcap_curves.png`` (every plain row; with RCAP),
    ``metric_ranks.png`` (:func:`metric_summary`; two metrics and two rows or more) and
    ``table1_p_ablation.png`` (with Table 1 and GAG-p rows).

    Args:
      out_dir: where they are written.
      case: the case name.
      specs: the computed ``MethodSpec`` rows.
      results: ``runner.collect`` results of the case.
      metrics: the case's metric names.
      tables: the tables asked for.

    Returns:
      the paths written.
    """
    paths = []
    if "rcap" in metrics:
        labels = {s.name: s.label for s in specs}
        paths.append(rcap_curves(os.path.join(out_dir, "rcap_curves.png"),
                                 {s.name: results[s.name] for s in specs if s.base is None}, labels))
    plain = [s for s in specs if s.base is None]
    if len(metrics) >= 2 and len(plain) >= 2:
        paths.append(metric_summary(os.path.join(out_dir, "metric_ranks.png"),
                                    {s.name: results[s.name] for s in plain}, metrics, {s.name: s.label for s in plain},
                                    title=f"{case}: rank per metric (1 = best), grouped by what the metric tests"))
    if 1 in tables and any(s.name.startswith("gag-") for s in specs):
        paths.append(p_ablation_curve(os.path.join(out_dir, "table1_p_ablation.png"),
                                      {case: {k: v for k, v in results.items() if k.startswith("gag-")}},
                                      {case: metrics}))
    return paths


def gaussian_map(size: int, centre: tuple[float, float], std: float) -> np.ndarray:
    """An isotropic Gaussian saliency map in [0, 1] (centre and std in pixels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2.0 * std * std))
    return (g - g.min()) / (g.max() - g.min())


def proposition_maps(size: int = 100) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Figure 4's setting: the ground truth (the centred 20% of the features) and maps M1..M4.

    M1: centred, narrow; M2: centred, wide (noisier); M3: narrow, centre moved by 30% of the width
    and height towards the lower right; M4: wide and moved.

    Returns:
      ``(mask (size, size) bool, {"M1": ..., "M4": ...})``.
    """
    side = round(size * float(np.sqrt(0.2)))
    start = (size - side) // 2
    mask = np.zeros((size, size), bool)
    mask[start:start + side, start:start + side] = True
    c = size / 2.0
    moved = c + 0.3 * size
    narrow, wide = 0.12 * size, 0.3 * size
    maps = {"M1": gaussian_map(size, (c, c), narrow), "M2": gaussian_map(size, (c, c), wide),
            "M3": gaussian_map(size, (moved, moved), narrow), "M4": gaussian_map(size, (moved, moved), wide)}
    return mask, maps


def coverage_rcap(saliency: np.ndarray, mask: np.ndarray, lower_bound: float = 0, interval: float = 20
                  ) -> tuple[float, np.ndarray, np.ndarray]:
    """RCAP with the paper's hypothesis as the "model": ``prob_k`` = fraction of the ground truth
    recovered by the focus area ``M >= percentile_{p_k}(M)``.

    Returns:
      ``(rcap, ratios (j,), probs (j,))``.
    """
    from gag_jax.metrics import rcap_percentiles

    ratios, probs = [], []
    for p in rcap_percentiles(lower_bound, interval):
        keep = saliency >= np.percentile(saliency, p)
        ratios.append(saliency[keep].sum() / saliency.sum())
        probs.append((keep & mask).sum() / mask.sum())
    r, pr = np.asarray(ratios), np.asarray(probs)
    return float(np.mean(r * pr)), r, pr


def _area_layers(values: np.ndarray, in_truth: np.ndarray, *, columns: int = 500, rows: int = 300
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage of the areas under a sorted curve, for ``imshow``.

    ``values`` (decreasing) are split into ``columns`` equal runs of pixels; cell (row r, column c)
    holds the fraction of column c's pixels whose value exceeds row r's level (the focus area
    under the curve) and the fraction that also lie in the ground truth (the ground-truth area).

    Returns:
      ``(focus, truth)``: ``(rows, columns)`` fractions in [0, 1], row 0 at the top (level 1).
    """
    n = values.shape[0]
    columns = min(columns, n)
    cut = n - n % columns
    v = values[:cut].reshape(columns, -1)
    t = in_truth[:cut].reshape(columns, -1)
    levels = (np.arange(rows)[::-1] + 0.5) / rows
    under = v[None, :, :] > levels[:, None, None]
    return under.mean(-1), (under & t[None]).mean(-1)


def synthetic_propositions(path: str, size: int = 100) -> dict:
    """Figure 4: ground truth, maps M1..M4 and their sorted saliency per partition (interval 20%).

    Panels (f)/(g) plot each map's saliency values sorted in decreasing order against the
    partition number (5 partitions); the grey area under each curve is the focus area, the gold
    area the part of it on ground-truth pixels (both drawn as anti-aliased rasters of the
    ``size**2`` sorted pixels, not as that many polygons). The titles give the RCAP obtained with
    ``prob_k`` = ground-truth coverage (:func:`coverage_rcap`): Proposition 1 (M1 > M3, same
    noise, better localisation) and Proposition 2 (M1 > M2, same localisation, less noise) can be
    read off.

    Returns:
      ``{"path": path, "rcap": {"M1": ..., ...}}``.
    """
    plt = _plt()
    from matplotlib.patches import Patch

    mask, maps = proposition_maps(size)
    scores = {k: coverage_rcap(v, mask)[0] for k, v in maps.items()}
    fig, axes = plt.subplots(1, 7, figsize=(18, 3.0), layout="constrained")
    axes[0].imshow(mask, cmap="viridis")
    axes[0].set_title("(a) ground truth (20%)", fontsize=8)
    for ax, (name, m), letter in zip(axes[1:5], maps.items(), "bcde"):
        ax.imshow(m, cmap=SALIENCY_CMAP, vmin=0, vmax=1)
        ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"({letter}) {name}  RCAP {_significant(scores[name])}", fontsize=8)
    for ax in axes[:5]:
        ax.set_xticks([])
        ax.set_yticks([])
    _colorbar(fig, list(axes[1:5]), label="saliency")
    colours = {"M1": "tab:orange", "M2": "tab:blue", "M3": "tab:green", "M4": "tab:pink"}
    grey, gold = np.array([0.5, 0.5, 0.5]), np.array([1.0, 0.78, 0.0])
    n = size * size
    for ax, pair, letter in ((axes[5], ("M1", "M2"), "f"), (axes[6], ("M3", "M4"), "g")):
        for name in pair:
            order = np.argsort(-maps[name].ravel(), kind="stable")
            values = maps[name].ravel()[order]
            focus, truth = _area_layers(values, mask.ravel()[order])
            for colour, cover, opacity in ((grey, focus, 0.25), (gold, truth, 0.45)):
                rgba = np.concatenate([np.broadcast_to(colour, cover.shape + (3,)), (opacity * cover)[..., None]], -1)
                ax.imshow(rgba, extent=(0, 5, 0, 1), aspect="auto", interpolation="bilinear")
            ax.plot(np.linspace(0, 5, n, endpoint=False), values, color=colours[name], label=name)
        for b in range(1, 5):
            ax.axvline(b, color="k", lw=0.4, ls=":")
        ax.set_xlim(0, 5)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("partition (interval 20%)", fontsize=7)
        ax.set_title(f"({letter}) sorted saliency", fontsize=8)
        handles, _ = ax.get_legend_handles_labels()
        handles += [Patch(facecolor=grey, alpha=0.4, label="focus area (under the curve)"),
                    Patch(facecolor=gold, alpha=0.6, label="ground-truth area")]
        ax.legend(handles=handles, fontsize=6, loc="upper right")
        ax.tick_params(labelsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"path": path, "rcap": scores}
