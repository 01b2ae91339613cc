"""Performance contract checks that do not depend on wall-clock time (memory flat in n, weights as
arguments, one compilation per shape)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import gag_jax as gj
from gag_jax import distributed as gd
from toy_models import tiny_conv_net

SIZE = 16


@pytest.fixture(scope="module")
def toy():
    module, variables, model_fn = tiny_conv_net(seed=0, size=SIZE)
    return module, variables, model_fn


def test_five_batches_one_shape_trace_once_including_ragged_last(toy):
    module, variables, _ = toy
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=4, n=4, chunk_size=2)
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (18, SIZE, SIZE, 3)))
    labels = np.arange(18) % 3
    key = jax.random.PRNGKey(1)
    batches = [(images[s:s + 4], labels[s:s + 4]) for s in range(0, 18, 4)]  # 4, 4, 4, 4, 2 rows
    maps = [sharded(x, y, key) for x, y in batches]
    assert [m.shape for m in maps] == [(4, SIZE, SIZE)] * 4 + [(2, SIZE, SIZE)]
    assert sharded.traces == 1
    # the prefetching stream gives the same maps with the same program
    streamed = list(sharded.explain_batches(iter(batches), key))
    assert sharded.traces == 1
    for a, b in zip(streamed, maps, strict=True):
        np.testing.assert_array_equal(a, b)


def test_explain_sharded_reuses_its_compiled_program(toy):
    _, _, model_fn = toy
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, SIZE, SIZE, 3)))
    key = jax.random.PRNGKey(1)
    for b in (3, 2, 1):
        gd.explain_sharded("ag", model_fn, images[:b], np.zeros(b, int), key, batch_size=4, n=2)
    structure = jax.tree_util.tree_structure(gj.ModelFunctions(model_fn))
    sharded = gd._cached("ag", gd.explainers_lib.resolve_options("ag", {"n": 2}), structure, True, gd.make_mesh(), 4)
    assert sharded.traces == 1


def _temp_bytes(module, variables, n, chunk_size):
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=2, n=n, chunk_size=chunk_size)
    return sharded.lower((2, SIZE, SIZE, 3)).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_temporary_memory_does_not_grow_with_n(toy):
    module, variables, _ = toy
    t20 = _temp_bytes(module, variables, 20, 4)
    t200 = _temp_bytes(module, variables, 200, 4)
    # One chunk's gradients alone are 4 * 2 * 16*16*3 float32 = 24 KiB; n = 200 unchunked would be
    # 200x that. Nothing may grow with n: the scan carries its chunk index (no xs vector).
    unchunked = _temp_bytes(module, variables, 20, 20)  # all 20 samples in one chunk
    assert unchunked > t20
    assert t200 == t20


def test_variables_are_arguments_not_constants(toy):
    module, variables, _ = toy
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=2, n=4)
    compiled = sharded.lower((2, SIZE, SIZE, 3)).compile()
    param_bytes = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(variables))
    # the weights arrive as arguments (images 2*16*16*3*4 + labels + key + params)
    assert compiled.memory_analysis().argument_size_in_bytes >= param_bytes
    assert all(isinstance(x, jax.Array) and x.sharding.is_fully_replicated
               for x in jax.tree_util.tree_leaves(sharded.variables))


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_benchmark_entry_point_smoke(tmp_path, capsys):
    from benchmarks import run as bench

    results = tmp_path / "RESULTS.md"
    bench.main(["--model", "tiny", "--size", "16", "--batch-sizes", "2", "--n", "4", "--repeats", "1",
                "--dtypes", "float32", "--metrics-batch", "1", "--results", str(results), "--no-torch",
                "--memory-n", "", "--out", str(tmp_path / "out")])
    table = results.read_text()
    assert "expl/s" in table and "| float32 |" in table and "cpu" in table.lower()
    assert "expl/s" in capsys.readouterr().out
    assert (tmp_path / "out" / "benchmark.md").read_text() in table  # written where asked, and appended
    data = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert [(r["batch"], r["dtype"]) for r in data["gag"]] == [(2, "float32")] and data["gag"][0]["expl_s"] > 0


def test_benchmark_results_log_only_in_a_checkout(monkeypatch):
    from benchmarks import measure, run

    assert run.parse_args([]).results == str(measure.RESULTS)  # the tests run from a checkout
    monkeypatch.setattr(measure, "in_checkout", lambda: False)
    assert run.parse_args([]).results == ""


def test_benchmarks_and_notebooks_are_not_installed():
    """pyproject's package list holds the library and the models, not the repository tools."""
    import pathlib

    import setuptools

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = pathlib.Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = config["packages"]
    assert "gag_jax" in packages and "gag_jax.models" in packages
    assert not [p for p in packages if p.split(".")[0] in ("benchmarks", "notebooks", "tests", "models")]
    # every package folder of the library is listed (a new subpackage must not be left out)
    found = setuptools.find_packages(str(root), include=["gag_jax*"])
    assert set(found) <= set(packages)


def test_bound_weights_enter_explain_and_metrics_as_arguments():
    """A ``ModelFunctions.from_apply(apply, variables)`` is never baked into the programs as constants;
    a plain function that closes over its weights is, and the user is warned."""
    import warnings

    import jax.numpy as jnp

    import gag_jax as gj

    weights = jnp.ones((32, 32, 3))

    def apply(w, x):
        s = jnp.sum(x * w, axis=(1, 2, 3))
        return jnp.stack([s, -s], -1)

    images, labels = jnp.ones((2, 32, 32, 3)), jnp.array([0, 1])
    old = jax.config.jax_captured_constants_warn_bytes
    jax.config.update("jax_captured_constants_warn_bytes", 1000)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model_fn = gj.ModelFunctions.from_apply(apply, weights, mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
            maps = gj.explain("gag", model_fn, images, labels, key=jax.random.PRNGKey(0), n=2)
            gj.metrics.rcap(model_fn, images, labels, maps)
            gj.metrics.deletion_insertion(model_fn, images, labels, maps)
        assert not [w for w in caught if "constants were captured" in str(w.message)]
        with warnings.catch_warnings(record=True) as caught:  # the check itself can fail: a closure is caught
            warnings.simplefilter("always")
            gj.explain("gag", lambda x: apply(weights, x), images, labels, key=jax.random.PRNGKey(0), n=2)
        assert [w for w in caught if "constants were captured" in str(w.message)]
        assert [w for w in caught if "closes over 12,288 bytes of arrays" in str(w.message)]
    finally:
        jax.config.update("jax_captured_constants_warn_bytes", old)


def test_default_chunk_size_per_backend():
    from gag_jax.pipeline import CPU_IMAGES_PER_CALL, default_chunk_size

    assert default_chunk_size(20, 4, "gpu") == 20  # accelerators: all samples in one call
    for n, batch in [(20, 4), (20, 1), (20, 2), (7, 1), (20, 3), (1, 8)]:
        c = default_chunk_size(n, batch, "cpu")
        assert n % c == 0 and (c == 1 or c * batch <= CPU_IMAGES_PER_CALL)
        assert all(n % d or d * batch > CPU_IMAGES_PER_CALL for d in range(c + 1, n + 1))  # the largest such
