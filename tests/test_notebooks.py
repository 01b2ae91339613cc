"""The notebooks in ``notebooks/`` run top to bottom, and each ``.ipynb`` is the pair of its ``.py``.

Each notebook's source of truth is a jupytext percent-format script (``notebooks/NN_name.py``:
``# %%`` code cells, ``# %% [markdown]`` text cells), real code that linters see; the ``.ipynb``
beside it is its pair without outputs, for Jupyter and GitHub. After editing a script run
``jupytext --sync notebooks/*.py`` (pairing is configured in ``pyproject.toml``).

Each notebook is executed from its script (jupytext -> nbclient) in a fresh ``python3`` kernel whose
working directory is ``notebooks/`` (as when a user opens it in Jupyter). Any cell that raises fails
the test with the cell's traceback. The notebooks are sized to run in about a minute each on two
CPU cores (128-pixel photos, 32-pixel synthetic images); they are marked ``slow`` so that
``pytest -m "not slow"`` skips them, and CI (plain ``pytest``) runs them.
"""
from __future__ import annotations

import pathlib
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600  # per cell; generous for a loaded 2-core machine
SCRIPTS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def test_every_script_has_its_notebook_and_back():
    assert len(SCRIPTS) == 4
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [s[:-3] + ".ipynb" for s in SCRIPTS]


@pytest.mark.parametrize("script", SCRIPTS)
def test_notebook_is_the_pair_of_its_script_without_outputs(script):
    source = jupytext.read(NOTEBOOKS / script)
    paired = nbformat.read(NOTEBOOKS / (script[:-3] + ".ipynb"), as_version=4)
    assert _cells(paired) == _cells(source), f"{script} and its .ipynb differ: run jupytext --sync notebooks/*.py"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{script}: outputs are not stripped"
    assert paired.metadata["kernelspec"]["name"] == "python3" == source.metadata["kernelspec"]["name"]
    assert all(cell.cell_type in ("code", "markdown") for cell in source.cells)


def test_quickstart_is_under_twenty_lines_of_code():
    nb = jupytext.read(NOTEBOOKS / "01_quickstart.py")
    lines = [line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert 5 < len(lines) < 20, lines


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_notebook_executes(script):
    nb = jupytext.read(NOTEBOOKS / script)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:  # the message carries the failing cell and its traceback
        pytest.fail(f"{script} failed:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - start
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, f"{script}: error outputs {errors}"
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert figures > 0, f"{script} produced no figure"
    print(f"{script}: executed in {elapsed:.1f} s, {figures} figures")
