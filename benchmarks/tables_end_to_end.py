"""Tables 1-3 end to end: ``gag-jax evaluate`` of this checkout against an earlier commit, same machine.

Both run the same command (the shipped EfficientNet-Lite0, real photos of ``--photos``, ``--table
1,2,3``, n = 20, the same ``--limit``, batch and chunk size, no compile cache, no figures), one after
the other in fresh processes: the earlier commit from a ``git worktree`` of this repository (its own
``gag_jax`` and ``models`` first on ``PYTHONPATH``), this checkout from its own tree. The wall time of
each whole command (start, model, selection, 30 + 24 rows of maps and metrics, tables) is measured
from outside, so nothing in either version times itself. Each run's Table 1 GAG-85 RCAP is read from
its ``table1.csv`` beside the times (the two versions draw other noise: the maps are not the same).
Prints a Markdown table; ``--append`` adds it to ``benchmarks/RESULTS.md``.

    python -m benchmarks.tables_end_to_end --photos ../shared/data/imagenet_val_sample --limit 44
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks.measure import ROOT, print_and_append

BASELINE = "1ba1f9c"
"""The release before the sweep engine (one gradient sweep per row, one key per method and batch)."""


def _command(python_path: str, photos: str, out: str, args) -> tuple[list[str], dict]:
    command = [sys.executable, "-m", "gag_jax", "evaluate", "--case", "folder", "--data-dir", photos,
               "--model", "efficientnet_lite0", "--table", "1,2,3", "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--chunk-size", str(args.chunk_size), "--n", str(args.n),
               "--out", out, "--no-progress", "--no-figures", "--compile-cache", "none"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([python_path, os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    return command, env


def _gag85_rcap(out: str) -> tuple[float, float] | None:
    """``(mean, standard error)`` of GAG-85's RCAP in ``out/table1.csv`` (None if not found)."""
    path = os.path.join(out, "table1.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("label") == "GAG-85":
                return float(row["folder_rcap"]), float(row["folder_rcap_sem"])
    return None


def _kept(out: str) -> str:
    import json

    path = os.path.join(out, "manifest.json")
    if not os.path.isfile(path):
        return "?"
    with open(path, encoding="utf-8") as f:
        plan = json.load(f).get("plan", {})
    return f"{plan.get('images_kept', '?')} of {plan.get('images_seen', '?')}"


def _run(name: str, python_path: str, cwd: str, photos: str, out: str, args) -> dict:
    command, env = _command(python_path, photos, out, args)
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"name": name, "seconds": seconds, "kept": _kept(out), "gag85": _gag85_rcap(out)}


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", required=True, help="folder of photos with labels.txt (read in place)")
    p.add_argument("--limit", type=int, default=44, help="files read (44 keep 16 of the shared sample's photos)")
    p.add_argument("--baseline", default=BASELINE, help="the earlier commit (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=5)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    photos = os.path.abspath(args.photos)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="gag-jax-tables-") as tmp:
        old_tree = os.path.join(tmp, "baseline")
        subprocess.run(["git", "worktree", "add", "--detach", old_tree, args.baseline], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = [_run(f"release {args.baseline}", old_tree, old_tree, photos, os.path.join(tmp, "old"), args),
                    _run(f"this checkout ({head.stdout.strip() or '?'})", str(ROOT), str(ROOT), photos,
                         os.path.join(tmp, "new"), args)]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", old_tree], cwd=ROOT, capture_output=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"## Tables 1-3 end to end, this checkout vs {args.baseline}: cpu, {stamp}", "",
             f"`gag-jax evaluate --case folder --table 1,2,3 --limit {args.limit} --batch-size {args.batch_size} "
             f"--chunk-size {args.chunk_size} --n {args.n}` on the shipped EfficientNet-Lite0 at 224, one fresh "
             f"process each, one after the other; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores, load before the runs {os.getloadavg()[0]:.1f}.", "",
             "| version | images kept | wall time (s) | GAG-85 RCAP (SE) |", "|---|---|---:|---|"]
    for row in rows:
        g = row["gag85"]
        rcap = f"{g[0]:.3f} ({g[1]:.3f})" if g else "n/a"
        lines.append(f"| {row['name']} | {row['kept']} | {row['seconds']:.0f} | {rcap} |")
    lines += ["", f"Speed-up: {rows[0]['seconds'] / rows[1]['seconds']:.2f}x (the earlier release's time / "
              "this checkout's)."]
    return print_and_append("\n".join(lines), args.append)


if __name__ == "__main__":
    main()
