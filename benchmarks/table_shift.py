"""How far a regenerated table moved: each row's new mean against the README's earlier one, in standard errors.

Reads the earlier tables from the README of a git revision (the Markdown between a section's markers,
``<!-- NAME:start -->`` / ``<!-- NAME:end -->``, as ``gag-jax tables --update-readme`` writes it) and the
new run's ``table<N>.csv`` (means and standard errors per row), and prints per row and metric the old
mean, the new mean and ``(new - old) / SE`` with the new run's standard error of the mean. Rows are
matched by their label; Table 3 (ratios, no standard errors) is left out. Prints a Markdown table;
``--append`` adds it to ``benchmarks/RESULTS.md``.

    python -m benchmarks.table_shift --run /work/runs/real_t12 --revision HEAD --section real-photo-tables-12
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import subprocess

from benchmarks.measure import ROOT, print_and_append

METRICS = ("rcap", "dauc", "iauc")


def old_tables(revision: str, section: str) -> dict[str, dict[str, float]]:
    """``{row label: {metric: mean}}`` of the Markdown tables in README.md's ``section`` at ``revision``."""
    text = subprocess.run(["git", "show", f"{revision}:README.md"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README.md at {revision} has no section {section!r}")
    body = text[text.index(start) + len(start):text.index(end)]
    rows: dict[str, dict[str, float]] = {}
    header: list[str] = []
    for line in body.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        if cells[0] in ("Method", "Variant"):
            header = [c.split()[-1].rstrip("↑↓").lower() if c != cells[0] else c for c in cells]
            continue
        if not header or set(cells[0]) <= set("-—") or not cells[1]:
            continue
        values = {}
        for name, cell in zip(header[1:], cells[1:]):
            try:
                values[name] = float(cell)
            except ValueError:
                pass
        if values:
            rows[cells[0]] = values
    return rows


def new_tables(run: str) -> dict[str, dict[str, tuple[float, float]]]:
    """``{row label: {metric: (mean, standard error)}}`` of the run's ``table1.csv`` / ``table2.csv``."""
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    for number in (1, 2):
        path = os.path.join(run, f"table{number}.csv")
        if not os.path.isfile(path):
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rows[row["label"]] = {m: (float(row[f"folder_{m}"]), float(row[f"folder_{m}_sem"]))
                                      for m in METRICS if f"folder_{m}" in row}
    return rows


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the new run's folder (gag-jax evaluate --out)")
    p.add_argument("--revision", default="HEAD", help="git revision whose README holds the earlier tables")
    p.add_argument("--section", default="real-photo-tables-12", help="the README section's marker name")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    old, new = old_tables(args.revision, args.section), new_tables(args.run)
    common = [label for label in new if label in old]
    if not common:
        raise SystemExit("no row label is in both the README section and the run's tables")
    revision = subprocess.run(["git", "rev-parse", "--short", args.revision], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    lines = [f"## Tables 1-2 regenerated: shift from README {revision}, {datetime.date.today()}", "",
             f"Run `{os.path.basename(os.path.normpath(args.run))}` against the README section `{args.section}` "
             f"at {revision}; shift = (new - old) / SE, SE the new run's standard error of the mean.", "",
             "| row | " + " | ".join(f"{m.upper()} old → new (shift)" for m in METRICS) + " |",
             "|---|" + "---:|" * len(METRICS)]
    largest = 0.0
    for label in common:
        cells = []
        for m in METRICS:
            if m in old[label] and m in new[label]:
                mean, se = new[label][m]
                shift = (mean - old[label][m]) / se if se > 0 else float("nan")
                largest = max(largest, abs(shift))
                cells.append(f"{old[label][m]:.3f} → {mean:.3f} ({shift:+.2f})")
            else:
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"{len(common)} rows; largest |shift| {largest:.2f} standard errors."]
    return print_and_append("\n".join(lines), args.append)


if __name__ == "__main__":
    main()
