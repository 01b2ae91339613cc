"""The notebooks in ``notebooks/`` run top to bottom, and the committed files match their generator.

Each notebook is executed with nbclient in a fresh ``python3`` kernel whose working directory is
``notebooks/`` (as when a user opens it in Jupyter). Any cell that raises fails the test with the
cell's traceback. The notebooks are sized to run in about a minute each on two CPU cores
(128-pixel photos, 32-pixel synthetic images); they are marked ``slow`` so that
``pytest -m "not slow"`` skips them, and CI (plain ``pytest``) runs them.
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600  # per cell; generous for a loaded 2-core machine


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILDER = _builder()
NAMES = sorted(BUILDER.NOTEBOOKS)


def test_every_notebook_file_is_generated():
    on_disk = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert on_disk == NAMES, "notebooks/*.ipynb and build_notebooks.NOTEBOOKS differ; run python notebooks/build_notebooks.py"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_generator_and_has_no_outputs(name):
    text = (NOTEBOOKS / name).read_text(encoding="utf-8")
    assert text == BUILDER.render(name), f"{name} is out of date: run python notebooks/build_notebooks.py"
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: outputs are not stripped"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_quickstart_is_under_twenty_lines_of_code():
    assert BUILDER.user_code_lines("01_quickstart.ipynb") < 20


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:  # the message carries the failing cell and its traceback
        pytest.fail(f"{name} failed:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - start
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, f"{name}: error outputs {errors}"
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert figures > 0, f"{name} produced no figure"
    print(f"{name}: executed in {elapsed:.1f} s, {figures} figures")
