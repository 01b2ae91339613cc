"""Table writers: CSV + Markdown in the layout of the paper's Tables 1, 2 and 3.

``results`` everywhere is ``{case: {method name: {metric: mean, metric + "_sem": sem, "n": images}}}``
(what :func:`gag_jax.experiments.runner.collect` returns, per case). Rows are methods (Tables 1
and 2) or gradient-processing variants (Table 3); columns are (case, metric) pairs, cases in the
paper's order, metrics ``L_lc-dce``, ``MAE`` (cases with masks), ``RCAP``, ``DAUC``, ``IAUC``.

* Table 1 and 2 cells are dataset means (6 decimals, as the paper). In Markdown the best value
  of each column is bold: over all rows in Table 1, over the gradient methods (part 2, i.e.
  without Grad-CAM and the reversed rows) in Table 2, as in the paper; but only when it rests on
  at least two images and, where the results carry standard errors, leads the runner-up by more
  than the standard error of their difference (``sqrt(sem_best**2 + sem_second**2)``): no column
  has a bold cell otherwise (:func:`best_value`).
* Table 3 cells: for each variant (+, -, A, G, GA) and metric, ``value(variant) / value(original)``
  per base method (SG, IG, Guided IG, BlurIG, GB), averaged over the bases (2 decimals). Bold
  marks an improvement (> 1 for RCAP / IAUC, < 1 for the others). The per-base ratios are
  written to ``table3_ratios.csv``.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence

import gag_jax as gj
from gag_jax.experiments.records import load_run
from gag_jax.experiments.specs import TABLE3_BASES, VARIANTS, MethodSpec

CASE_ORDER = ("imagenet_s", "isic", "places365", "synthetic")
CASE_LABELS = {"imagenet_s": "ImageNet-S", "isic": "ISIC", "places365": "Places365", "synthetic": "Synthetic",
               "folder": "Folder", "demo": "Photos"}


def metric_order() -> tuple[str, ...]:
    """The order of metric columns: the metric registry's (built-in first, then the user's)."""
    return gj.metrics.metric_names()


def higher_is_better(metric: str) -> bool:
    """The direction of a metric, from its record."""
    return gj.metrics.metric(metric).higher_is_better


def metric_label(metric: str) -> str:
    """The column title of a metric, from its record."""
    return gj.metrics.metric(metric).label
CAPTIONS = {
    1: "Table 1. Ablation of Guided AbsoluteGrad's percentile p (Equation 4).",
    2: "Table 2. Gradient-based method comparison (part 1: Grad-CAM; part 2: gradient methods; "
       "part 3: reversed variants, Proposition 1).",
    3: "Table 3. Average improvement / degradation of the gradient-processing variants: "
       "variant / original, averaged over SG, IG, Guided IG, BlurIG and GB (1.0 = same as the original).",
}


def _columns(results: Mapping[str, Mapping], metrics_by_case: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    cases = sorted(results, key=lambda c: CASE_ORDER.index(c) if c in CASE_ORDER else len(CASE_ORDER))
    return [(c, m) for c in cases for m in metric_order() if m in metrics_by_case[c]]


def _fmt(value: float, digits: int) -> str:
    """``digits`` decimals (the paper's tables print 6); values of a million and more (the suite's
    infidelity) in 4 significant digits and from a thousand (counts such as effective complexity) in one
    decimal, so a column stays readable. The CSV keeps full precision."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1e6:
        return f"{value:.3e}"
    return f"{value:.1f}" if abs(value) >= 1e3 else f"{value:.{digits}f}"


def table3_values(specs: Sequence[MethodSpec], results: Mapping[str, Mapping[str, Mapping]],
                  columns: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, dict]], list[dict]]:
    """Table 3's averaged ratios and the per-base ratios behind them.

    Returns:
      ``(rows, details)``: rows ``[(variant label, {(case, metric): mean ratio})]`` in the paper's
      order (+, -, A, G, GA; only variants present in ``specs``); details: one dict per
      (variant, base) with the ratio of every column.
    """
    names = {s.name for s in specs}
    rows, details = [], []
    for suffix, (label, _) in VARIANTS.items():
        bases = [b for b in TABLE3_BASES if f"{b}.{suffix}" in names]
        if not bases:
            continue
        cells = {}
        for col in columns:
            case, metric = col
            ratios = []
            for b in bases:
                orig = results[case].get(b, {}).get(metric)
                var = results[case].get(f"{b}.{suffix}", {}).get(metric)
                if orig is None or var is None or math.isnan(orig) or math.isnan(var) or orig == 0:
                    continue
                ratios.append(var / orig)
            cells[col] = sum(ratios) / len(ratios) if ratios else float("nan")
        rows.append((label, cells))
        for b in bases:
            detail = {"variant": label, "method": b}
            for case, metric in columns:
                orig = results[case].get(b, {}).get(metric)
                var = results[case].get(f"{b}.{suffix}", {}).get(metric)
                ok = orig is not None and var is not None and not math.isnan(orig) and not math.isnan(var) and orig != 0
                detail[f"{case}_{metric}"] = var / orig if ok else float("nan")
            details.append(detail)
    return rows, details


def _finite(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def best_value(cells: Sequence[Mapping], metric: str) -> float | None:
    """The value to print in bold among ``cells`` (one ``{metric: mean, metric + "_sem": sem, "n": images}``
    per ranked row), or None when no row stands out.

    None when fewer than two rows have a value, when the best rests on fewer than two images, or
    when the results carry standard errors and the best leads the runner-up by no more than the
    standard error of their difference, ``sqrt(sem_best**2 + sem_second**2)`` (a difference within
    the noise of the image sample is not a winner).
    """
    ranked = [c for c in cells if _finite(c.get(metric))]
    if len(ranked) < 2:
        return None
    ranked.sort(key=lambda c: c[metric], reverse=higher_is_better(metric))
    best, second = ranked[0], ranked[1]
    n = best.get("n")
    if n is not None and _finite(float(n)) and float(n) < 2:
        return None
    if best[metric] == second[metric]:
        return None
    sems = [c.get(f"{metric}_sem") for c in (best, second)]
    if all(_finite(v) for v in sems) and abs(best[metric] - second[metric]) <= math.hypot(*sems):
        return None
    return best[metric]


def render_markdown(table: int, specs: Sequence[MethodSpec], results: Mapping[str, Mapping[str, Mapping]],
                    metrics_by_case: Mapping[str, Sequence[str]], *, note: str = "", caption: str | None = None,
                    extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The Markdown text of Table ``table`` (see the module docstring).

    Args:
      table: 1, 2 or 3.
      specs: the rows, in order (:func:`gag_jax.experiments.specs.rows_for_table` gives the paper's).
      results: ``{case: {method: {metric: mean, ...}}}``.
      metrics_by_case: the metrics of each case.
      note: a line under the caption.
      caption: replaces the paper's caption of the table.
      extra_columns: Tables 1-2: ``{header: {method name: cell text}}`` appended after the metrics
        (e.g. seconds per method).
    """
    columns = _columns(results, metrics_by_case)
    extra = dict(extra_columns or {}) if table != 3 else {}
    arrows = {m: "\u2191" if higher_is_better(m) else "\u2193" for _, m in columns}
    header = ["Method" if table != 3 else "Variant"] + [
        f"{CASE_LABELS.get(c, c)} {metric_label(m)}{arrows[m]}" for c, m in columns] + list(extra)
    lines = [CAPTIONS[table] if caption is None else caption, ""]
    if note:
        lines += [note, ""]
    width = len(columns) + len(extra)
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * width) + "|"]
    if table == 3:
        rows, _ = table3_values(specs, results, columns)
        for label, cells in rows:
            out = [label]
            for col in columns:
                v = cells[col]
                text = _fmt(v, 2)
                better = not math.isnan(v) and ((v > 1) if higher_is_better(col[1]) else (v < 1))
                out.append(f"**{text}**" if better else text)
            lines.append("| " + " | ".join(out) + " |")
        return "\n".join(lines) + "\n"
    ranked = [s for s in specs if (table == 1 or s.part == 2)]
    best = {col: best_value([results[col[0]].get(s.name, {}) for s in ranked], col[1]) for col in columns}
    previous_part = None
    for spec in specs:
        if table == 2 and previous_part is not None and spec.part != previous_part:
            lines.append("| " + " | ".join(["*\u2014*"] + [""] * width) + " |")
        previous_part = spec.part
        out = [spec.label]
        for col in columns:
            v = results[col[0]].get(spec.name, {}).get(col[1], float("nan"))
            text = _fmt(v, 6)
            is_best = spec in ranked and best[col] is not None and v == best[col] and len(ranked) > 1
            out.append(f"**{text}**" if is_best else text)
        out += [cells.get(spec.name, "") for cells in extra.values()]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def write_tables(table: int, specs: Sequence[MethodSpec], results: Mapping[str, Mapping[str, Mapping]],
                 metrics_by_case: Mapping[str, Sequence[str]], out_dir: str, *, note: str = "") -> dict[str, str]:
    """Write ``table{N}.csv`` and ``table{N}.md`` (Table 3 also ``table3_ratios.csv``) into ``out_dir``.

    CSV columns: Tables 1-2: ``method, label, part``, then per case ``<case>_n`` and per metric
    ``<case>_<metric>`` and ``<case>_<metric>_sem``; Table 3: ``variant``, then ``<case>_<metric>``
    (mean ratio). Numbers are written with full precision.

    Args:
      table: 1, 2 or 3.
      specs: the rows (Table 3: originals and variants).
      results: ``{case: {method: {metric: mean, ...}}}``.
      metrics_by_case: the metrics of each case.
      out_dir: destination directory.
      note: a line printed under the Markdown caption (e.g. model and image count).

    Returns:
      ``{"csv": path, "md": path, "markdown": text}`` (plus ``"ratios"`` for Table 3).
    """
    os.makedirs(out_dir, exist_ok=True)
    columns = _columns(results, metrics_by_case)
    csv_path = os.path.join(out_dir, f"table{table}.csv")
    md_path = os.path.join(out_dir, f"table{table}.md")
    out: dict[str, str] = {"csv": csv_path, "md": md_path}
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if table == 3:
            rows, details = table3_values(specs, results, columns)
            writer.writerow(["variant"] + [f"{c}_{m}" for c, m in columns])
            for label, cells in rows:
                writer.writerow([label] + [repr(float(cells[col])) for col in columns])
            ratios_path = os.path.join(out_dir, "table3_ratios.csv")
            with open(ratios_path, "w", newline="", encoding="utf-8") as g:
                w = csv.writer(g)
                w.writerow(["variant", "method"] + [f"{c}_{m}" for c, m in columns])
                for d in details:
                    w.writerow([d["variant"], d["method"]] + [repr(float(d[f"{c}_{m}"])) for c, m in columns])
            out["ratios"] = ratios_path
        else:
            cases = list(dict.fromkeys(c for c, _ in columns))
            head = ["method", "label", "part"]
            for c in cases:
                head.append(f"{c}_n")
                for cc, m in columns:
                    if cc == c:
                        head += [f"{c}_{m}", f"{c}_{m}_sem"]
            writer.writerow(head)
            for spec in specs:
                row = [spec.name, spec.label, spec.part]
                for c in cases:
                    res = results[c].get(spec.name, {})
                    row.append(res.get("n", 0))
                    for cc, m in columns:
                        if cc == c:
                            row += [repr(float(res.get(m, float("nan")))), repr(float(res.get(m + "_sem", float("nan"))))]
                writer.writerow(row)
    text = render_markdown(table, specs, results, metrics_by_case, note=note)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    out["markdown"] = text
    return out


def read_table_csv(path: str) -> list[dict[str, str]]:
    """Rows of a table CSV as dicts (header -> text)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def combine_runs(run_dirs: Sequence[str], tables: Sequence[int], out_dir: str) -> list[dict[str, str]]:
    """One table per number in ``tables`` from several finished runs (one column group per case),
    as ``gag-jax tables`` writes them.

    Args:
      run_dirs: output directories of ``runner.run`` / ``runner.evaluate_case``, one per case.
      tables: table numbers (1, 2, 3).
      out_dir: destination directory.

    Returns:
      one :func:`write_tables` dict per table.

    Raises:
      FileNotFoundError: a directory that is not a run directory.
      ValueError: two runs of the same case.
    """
    from gag_jax.experiments.specs import rows_for_table

    results, metrics_by_case, specs = {}, {}, {}
    for run_dir in run_dirs:
        run = load_run(run_dir)
        if run["case"] in results:
            raise ValueError(f"two runs of case {run['case']!r} given ({run_dir})")
        results[run["case"]] = run["results"]
        metrics_by_case[run["case"]] = run["metrics"]
        for spec in run["specs"]:
            specs.setdefault(spec.name, spec)
    return [write_tables(t, rows_for_table(t, list(specs.values())), results, metrics_by_case, out_dir,
                         note="Cases: " + ", ".join(results)) for t in tables]


def runs_markdown(run_dirs: Sequence[str], written: Sequence[Mapping[str, str]]) -> str:
    """Markdown for a README section: a summary of each run (``readme.run_summary``) and the tables.

    Args:
      run_dirs: the evaluate output directories the tables come from.
      written: what :func:`combine_runs` returned for them.
    """
    from gag_jax.experiments.readme import run_summary

    parts = [run_summary(run_dir, load_run(run_dir)["manifest"]) for run_dir in run_dirs]
    parts += [paths["markdown"].strip() for paths in written]
    return "\n\n".join(parts) + "\n"
