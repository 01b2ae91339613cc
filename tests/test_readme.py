"""The README's usage example runs as written and gives a sensible map."""
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_five_line_example_runs_and_explains_the_cat():
    pytest.importorskip("skimage")
    example = python_blocks()[0]
    lines = [line for line in example.strip().splitlines() if line.strip()]
    assert len(lines) <= 6, "the README promises a short example"
    namespace = {}
    exec(compile(example, str(README), "exec"), namespace)
    maps = np.asarray(namespace["maps"])
    assert maps.shape == (1, 224, 224)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() == 1
    logits = np.asarray(namespace["model"].logits(namespace["images"]))
    assert logits.argmax() in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
