"""The helpers every command shares (issue 22 item 3): top-1 prediction and batch rounding, each
written once, against numpy references written from their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.experiments import modelzoo


def _linear(seed=0, k=5):
    w = np.random.default_rng(seed).normal(size=(12, k)).astype(np.float32)
    return w, gj.ModelFunctions(lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w), mean=(0.0,), std=(1.0,))


@pytest.mark.parametrize("batch_size", [None, 1, 3, 7, 9])
def test_predict_top1_is_the_softmax_argmax_whatever_the_batch(batch_size):
    w, model = _linear()
    x = np.random.default_rng(1).normal(size=(7, 2, 2, 3)).astype(np.float32)
    logits = x.reshape(7, -1).astype(np.float64) @ w
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(modelzoo.class_probabilities(model, x, batch_size=batch_size), probs, rtol=1e-5,
                               atol=1e-6)
    classes, p = modelzoo.predict_top1(model, x, batch_size=batch_size)
    assert classes.dtype == np.int32 and classes.shape == p.shape == (7,)
    np.testing.assert_array_equal(classes, probs.argmax(1))
    np.testing.assert_allclose(p, probs.max(1), rtol=1e-5)


def test_top1_of_takes_the_first_of_equal_classes():
    classes, p = modelzoo.top1_of(np.asarray([[0.2, 0.4, 0.4], [0.5, 0.1, 0.4]], np.float32))
    np.testing.assert_array_equal(classes, [1, 0])
    np.testing.assert_allclose(p, [0.4, 0.5])


def test_round_to_devices_is_the_next_multiple_of_the_device_count():
    mesh = gj.distributed.make_mesh(jax.devices()[:1])
    assert [gj.distributed.round_to_devices(b, mesh) for b in (1, 5)] == [1, 5]
    assert gj.distributed.round_to_devices(3, None) == 3
    d = len(jax.devices())
    mesh = gj.distributed.make_mesh()
    for b in range(1, 3 * d + 2):
        got = gj.distributed.round_to_devices(b, mesh)
        assert got % d == 0 and b <= got < b + d  # the smallest multiple of d not below b


# ---------------------------------------------------------------------------- the one batch loop


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3, 7, 10])
def test_map_batches_equals_one_call_and_compiles_one_shape(batch_size):
    """Every batch size gives the rows of one call on all images (numpy reference); the last batch is
    padded, so each batch size traces once; the shared argument is passed whole."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 4)).astype(np.float32)
    y = np.arange(7, dtype=np.int32)
    w = rng.normal(size=(4,)).astype(np.float32)
    traces = []

    @jax.jit
    def fn(weights, xs, ys):
        traces.append(xs.shape)
        return {"score": xs @ weights + ys, "twice": 2 * xs}

    out = gj.distributed.map_batches(fn, [x, y], batch_size=batch_size, shared=(w,))
    np.testing.assert_allclose(out["score"], x.astype(np.float64) @ w + y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["twice"], 2 * x)
    assert isinstance(out["score"], np.ndarray) and out["score"].shape == (7,)
    assert len(set(traces)) == 1 and len(traces) == 1


def test_map_batches_runs_only_the_batches_asked_for_and_reports_their_rows():
    x = np.arange(10.0)
    seen = []
    out = gj.distributed.map_batches(lambda a: a + 1, [x], batch_size=4, batches=[0, 2], on_batch=seen.append,
                                     mesh=None)
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 9, 10])  # rows 0-3 and 8-9
    assert seen == [4, 2]
    with pytest.raises(ValueError, match="no batch among"):
        gj.distributed.map_batches(lambda a: a, [x], batch_size=4, batches=[5], mesh=None)
    with pytest.raises(ValueError, match="leading axis"):
        gj.distributed.map_batches(lambda a, b: a, [x, x[:3]], batch_size=4, mesh=None)


def test_map_batches_over_every_local_device_equals_no_mesh():
    """Sharded over a mesh of every local device (the batch rounded up to the device count)."""
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    mesh = gj.distributed.make_mesh()
    fn = jax.jit(lambda s, a: jnp.tanh(a) * s)
    sharded = gj.distributed.map_batches(fn, [x], batch_size=3, shared=(np.float32(2.0),), mesh=mesh)
    np.testing.assert_allclose(sharded, np.tanh(x) * 2, rtol=1e-6)


# ---------------------------------------------------------------------------- the job options


def test_job_is_built_once_from_each_commands_flags():
    from gag_jax import cli
    from gag_jax.experiments.jobs import Job

    parser = cli.build_parser()
    args = parser.parse_args(["explain", "a.png", "--method", "gag,ig", "--n", "3", "--seed", "5", "--out", "o",
                              "--batch-size", "2", "--no-progress"])
    job = Job.from_args(args, methods=args.method)
    assert job == Job("o", methods=("gag", "ig"), model_name="efficientnet_lite0", n=3, seed=5, batch_size=2,
                      progress=False)
    args = parser.parse_args(["evaluate", "--case", "synthetic", "--out", "r", "--methods", "gag,sg_r",
                              "--chunk-size", "4", "--metric-batch-size", "6"])
    job = Job.from_args(args)
    assert (job.out_dir, job.methods, job.model_name, job.chunk_size, job.metric_batch_size, job.batch_size,
            job.progress) == ("r", ("gag", "sg_r"), None, 4, 6, 16, True)


def test_job_method_options_only_where_the_method_takes_them():
    from gag_jax.experiments.jobs import Job

    job = Job("o", n=3, chunk_size=2)
    assert job.method_options("gag") == {"n": 3, "chunk_size": 2}
    assert job.method_options("gradcam") == {} and job.method_options("xrai") == {}  # neither option
    assert job.method_options("occlusion") == {"chunk_size": 2}
    assert Job("o").method_options("sg", default_n=20) == {"n": 20}
    np.testing.assert_array_equal(job.keys(["x/cat.png"]), gj.keys.file_keys(0, ["cat.png"]))


def test_one_top_k_reader_and_one_ranking():
    """"top-K" is read in one place (evaluate --target, explain --labels) and ranked in one (numpy's
    stable argsort of the negated probabilities: ties to the lower class)."""
    from gag_jax import cli
    from gag_jax.experiments.records import parse_top_k, target_count

    assert [parse_top_k(t) for t in ("top-5", "TOP5", "top-1", "label", "3")] == [5, 5, 1, None, None]
    for bad in ("top-0", "top-x", "top-"):
        with pytest.raises(ValueError, match="K >= 1"):
            parse_top_k(bad)
    assert target_count("top-3") == 3 and target_count("predicted") == 1
    parser = cli.build_parser()
    assert parser.parse_args(["evaluate", "--case", "synthetic", "--out", "o", "--target", "Top5"]).target == "top-5"
    assert cli._parse_top_k("top5") == 5 and cli._parse_top_k("top-1") is None and cli._parse_top_k("3,4") is None
    probs = np.asarray([[0.1, 0.4, 0.4, 0.1], [0.7, 0.1, 0.05, 0.15]], np.float32)
    np.testing.assert_array_equal(modelzoo.top_k_of(probs, 3), [[1, 2, 0], [0, 3, 1]])
    np.testing.assert_array_equal(modelzoo.top1_of(probs)[0], [1, 0])
    with pytest.raises(ValueError, match="1 <= K <= 4"):
        modelzoo.top_k_of(probs, 5)
