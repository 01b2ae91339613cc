"""The README's Python blocks run as written, in order, as one script; the first gives a sensible map.
Its "Which method" table is the demo's own table, between the markers the demo writes into."""
import pathlib
import re

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the README's blocks with the real Lite0 at 224 px; CI runs it, -m "not slow" skips it

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_python_blocks_run_in_order_and_the_first_explains_the_cat():
    pytest.importorskip("skimage")
    blocks = python_blocks()
    assert len(blocks) >= 2
    first = [line for line in blocks[0].strip().splitlines() if line.strip()]
    assert len(first) <= 6, "the README promises a short example"
    namespace = {"__name__": "readme"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{README}:python block {index + 1}", "exec"), namespace)  # noqa: S102 - the README's code
        if index == 0:
            maps = np.asarray(namespace["maps"])
            assert maps.shape == (1, 224, 224)
            assert maps.min() >= 0 and maps.max() <= 1 and maps.max() == 1
            logits = np.asarray(namespace["model"].logits(namespace["images"]))
            assert logits.argmax() in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


def test_which_method_table_sits_between_the_demo_markers():
    from gag_jax.experiments.demo import README_MARKERS

    text = README.read_text()
    start, end = (text.index(m) for m in README_MARKERS)
    table = text[start:end]
    assert "| Method |" in table and "| GAG |" in table


def test_composition_section_shows_the_gag_preset_verbatim():
    import inspect

    from gag_jax import explainers

    assert inspect.getsource(explainers.gag) in README.read_text()

