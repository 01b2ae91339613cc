"""Generated sections of ``README.md``: text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.

Tables in the README come from what the code writes (the demo's ``demo_table.md``, an evaluate
run's ``table<N>.md``, the sanity check's ``sanity_summary.md``), never typed by hand. The
commands that produce them take ``--update-readme [README]`` and call :func:`replace_section`.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping

import numpy as np


def markers(name: str) -> tuple[str, str]:
    """The start and end comments of section ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def check_section(readme: str, name: str) -> None:
    """Check, before anything is computed, that :func:`replace_section` can write section ``name`` of
    ``readme``.

    Raises:
      FileNotFoundError: no such file; ValueError: the markers are missing or out of order.
    """
    if not os.path.isfile(readme):
        raise FileNotFoundError(f"{readme}: no such file")
    _locate(readme, name)


def _locate(readme: str, name: str) -> tuple[str, int, int]:
    """``(text, start, end)``: the file's text and where the section's two markers stand."""
    start_marker, end_marker = markers(name)
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{readme} lacks the markers {start_marker} ... {end_marker}")
    return text, start, end


def replace_section(readme: str, name: str, markdown: str) -> str:
    """Replace the text between the markers of section ``name`` in the file ``readme``.

    Args:
      readme: path of a Markdown file holding both markers, start before end.
      name: section name (e.g. ``"demo-table"``).
      markdown: the new text (surrounding blank lines are normalised).

    Returns:
      ``readme``.

    Raises:
      ValueError: the markers are missing or out of order.
    """
    text, start, end = _locate(readme, name)
    start_marker, _ = markers(name)
    text = text[: start + len(start_marker)] + "\n" + markdown.strip() + "\n" + text[end:]
    with open(readme, "w", encoding="utf-8") as f:
        f.write(text)
    return readme


def _command(argv_line: str) -> str:
    """``.../gag_jax/__main__.py evaluate ...`` or ``.../gag-jax evaluate ...`` -> ``gag-jax evaluate ...``."""
    words = argv_line.split()
    if words and (words[0].endswith("__main__.py") or os.path.basename(words[0]) == "gag-jax"):
        words[0] = "gag-jax"
    return " ".join(words)


def record_seconds(run_dir: str) -> float:
    """Compute time of a run: the sum of the ``seconds`` its records store (explanations and metrics)."""
    total = 0.0
    for path in glob.glob(os.path.join(run_dir, "records", "*", "*.npz")):
        with np.load(path) as record:
            if "seconds" in record.files:
                total += float(np.asarray(record["seconds"]).sum())
    return total


def run_summary(run_dir: str, manifest: Mapping) -> str:
    """One Markdown paragraph describing an evaluate run from its manifest and records.

    Args:
      run_dir: the run's output directory.
      manifest: its ``manifest.json`` (``runner.load_run(run_dir)["manifest"]``).

    Returns:
      the date, the machine (platform, backend, package versions, git commit), the images seen and
      kept, the compute time summed over the records, and the command(s) that produced the run.
    """
    versions, plan, config = manifest.get("versions", {}), manifest.get("plan", {}), manifest.get("config", {})
    commands = list(dict.fromkeys(_command(c) for c in manifest.get("command", [])))
    machine = ", ".join(f"{k} {versions[k]}" for k in ("platform", "backend", "jax", "flax") if k in versions)
    if versions.get("cpu_count"):
        machine += f", {versions['cpu_count']} CPU cores"
    summary = (
        f"Run `{os.path.basename(os.path.normpath(run_dir))}`: case {config.get('case')}, model {config.get('model_name', config.get('model'))}, "
        f"{config.get('image_size')} px, {plan.get('images_kept')} of {plan.get('images_seen')} images kept "
        f"(confidence > {config.get('confidence')} on the {config.get('target', 'label')} class), "
        f"{len(manifest.get('methods', []))} rows, status {manifest.get('status')}, finished "
        f"{str(manifest.get('updated', '?'))[:16].replace('T', ' ')} UTC; "
        f"compute time {record_seconds(run_dir) / 60:.0f} min (sum over records); machine: {machine}; code: git {str(versions.get('git_commit', '?'))[:10]}."
    )
    return "\n".join([summary, "", "```bash", *commands, "```"])
