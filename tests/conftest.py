"""Test-suite wide settings: tests marked ``gpu`` skip cleanly where JAX sees no GPU; torch is
imported before anything imports TensorFlow."""
import gc
import importlib.util
import os

import jax
import pytest

# Importing torchvision (torch._dynamo -> triton) after TensorFlow in one process segfaults (seen
# 2026-12-04 with torch 2.14.1 + tensorflow-cpu: `pytest tests/test_data.py tests/test_models_efficientnet.py`
# crashed in triton/knobs.py); imported first, it is fine. So a subset of the suite in any order is safe.
if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401
    import torchvision.ops  # noqa: F401


# The commands' persistent XLA cache (~/.cache/gag-jax/xla) is off for the suite and for the commands it
# starts in subprocesses: tests never read executables another run wrote, nor write into the home directory.
# (A test that wants the cache passes --compile-cache DIR.)
os.environ["GAG_JAX_COMPILE_CACHE"] = "none"


def _has_gpu() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a GPU (JAX sees none); run on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every test module's compiled programs when it ends (``jax.clear_caches``).

    Each XLA:CPU executable holds about three memory mappings for as long as JAX's caches keep it; the
    suite compiles tens of thousands of programs in one process, which reached the kernel's limit of
    65,530 mappings per process (``vm.max_map_count``) after ~30 minutes: the next compilation
    segfaulted inside XLA (seen on CI and reproduced here). Cleared per module, the count stays at a
    few thousand.
    """
    yield
    jax.clear_caches()
    gc.collect()

