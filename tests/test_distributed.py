"""Scale-out: sharded == unsharded on 4 fake CPU devices, and a real two-process run on localhost.

Both need a fresh interpreter (the device count and ``jax.distributed`` are fixed when jax starts),
so they run small scripts in subprocesses with bounded timeouts and compare against
``gj.explain`` computed here, on this process's single device.
"""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from unittest import mock

import jax
import numpy as np
import pytest

import gag_jax as gj
from gag_jax import distributed as gd

pytestmark = pytest.mark.slow  # subprocesses with 4 simulated devices and two processes; CI runs it, -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
SIZE = 12
OPTS = dict(n=4, chunk_size=3)  # two chunks, the second one padded

# Shared by every process: a deterministic toy dataset and model (same bits everywhere on CPU).
_DATA = """
import jax, jax.numpy as jnp, numpy as np
from toy_models import tiny_conv_net

SIZE = %d
module, variables, model_fn = tiny_conv_net(seed=0, size=SIZE, activation="relu")
images = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (NUM, SIZE, SIZE, 3)))
labels = np.arange(NUM) %% 3
key = jax.random.PRNGKey(7)
""" % SIZE


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, TESTS, env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@functools.lru_cache(maxsize=1)
def _model():
    from toy_models import tiny_conv_net

    return tiny_conv_net(seed=0, size=SIZE, activation="relu")


def _data(num):
    module, variables, model_fn = _model()
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (num, SIZE, SIZE, 3)))
    return module, variables, model_fn, images, np.arange(num) % 3, jax.random.PRNGKey(7)


# ---------------------------------------------------------------------------- host helpers


def test_pad_batch_repeats_last_row_and_masks():
    x = np.arange(3 * 2).reshape(3, 2)
    padded, valid = gd.pad_rows(x, 5)
    assert padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[3:], np.repeat(x[-1:], 2, 0))
    np.testing.assert_array_equal(valid, [True, True, True, False, False])
    with pytest.raises(ValueError, match="cannot be padded"):
        gd.pad_rows(x, 2)


def test_process_indices_cover_the_dataset_once_in_order():
    num, batch, count = 11, 4, 2
    seen = []
    for step in range(gd.num_steps(num, batch)):
        rows = []
        for p in range(count):
            idx, valid = gd.process_indices(num, batch, step, p, count)
            assert idx.shape == valid.shape == (batch // count,)
            rows += list(idx[valid])
        seen += rows
    assert seen == list(range(num))
    idx, valid = gd.process_indices(num, batch, 2, 1, count)  # last step: items 8, 9, 10 (pad)
    np.testing.assert_array_equal(idx, [10, 10])
    np.testing.assert_array_equal(valid, [True, False])
    idx, valid = gd.process_indices(9, batch, 2, 1, count)  # process 1 has no real row: all padding
    np.testing.assert_array_equal(idx, [8, 8])
    assert not valid.any()
    with pytest.raises(ValueError, match="multiple of the process count"):
        gd.process_rows(5, 0, 2)


def test_sharded_on_one_device_equals_explain_and_module_variables_path():
    module, variables, model_fn, images, labels, key = _data(3)
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=4, **OPTS)
    out = sharded(images, labels, key)
    ref = np.asarray(gj.explain("gag", model_fn, images, labels, key=key, **OPTS))
    assert out.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    # Grad-CAM goes through the module's features/head split with the variables bound.
    cam = gd.ShardedExplainer("gradcam", module, variables=variables, batch_size=4)(images, labels, key)
    fns = gj.ModelFunctions(model_fn, lambda x: module.apply(variables, x, method="features"),
                            lambda f: module.apply(variables, f, method="head"))
    np.testing.assert_allclose(cam, np.asarray(gj.explain("gradcam", fns, images, labels)), atol=1e-6)


# ---------------------------------------------------------------------------- 4 fake devices

_FOUR_DEVICES = _DATA + """
import sys
import gag_jax as gj
from gag_jax import distributed as gd
assert len(jax.devices()) == 4, jax.devices()
out = {}
opts = dict(n=4, chunk_size=3, noise_range="batch")  # the batch-wide noise range is the one padding could break
sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=8, **opts)
g = sharded.step(*sharded.shard(images, labels)[0], key)
assert len(g.sharding.device_set) == 4 and g.addressable_shards[0].data.shape[0] == 2
out["batch_8"] = sharded(images, labels, key)
out["batch_5"] = sharded(images[:5], labels[:5], key)   # 5 rows padded to 8
out["traces"] = np.asarray(sharded.traces)
out["closure_5"] = gd.explain_sharded("gag", model_fn, images[:5], labels[:5], key, **opts)
np.savez(sys.argv[1], **out)
"""


def test_sharded_equals_unsharded_on_four_cpu_devices(tmp_path):
    script = tmp_path / "four.py"
    script.write_text(_FOUR_DEVICES.replace("NUM", "8"))
    result = tmp_path / "four.npz"
    proc = subprocess.run([sys.executable, str(script), str(result)], capture_output=True, text=True,
                          timeout=240, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = np.load(result)
    _, _, model_fn, images, labels, key = _data(8)
    opts = dict(OPTS, noise_range="batch")
    ref8 = np.asarray(gj.explain("gag", model_fn, images, labels, key=key, **opts))
    ref5 = np.asarray(gj.explain("gag", model_fn, images[:5], labels[:5], key=key, **opts))
    assert got["batch_8"].shape == (8, SIZE, SIZE) and got["batch_5"].shape == (5, SIZE, SIZE)
    np.testing.assert_allclose(got["batch_8"], ref8, atol=1e-6)
    np.testing.assert_allclose(got["batch_5"], ref5, atol=1e-6)
    assert int(got["traces"]) == 1  # the padded batch of 5 reused the program
    np.testing.assert_allclose(got["closure_5"], ref5, atol=1e-6)  # closed-over parameters path


# ---------------------------------------------------------------------------- two processes

_TWO_PROCESSES = """
import sys
rank, port, result = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from gag_jax import distributed as gd
gd.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank, initialization_timeout=60)
""" + _DATA + """
assert jax.process_count() == 2 and len(jax.devices()) == 2 and len(jax.local_devices()) == 1
BATCH = 4
sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=BATCH, n=4, chunk_size=3,
                              noise_range="batch")
maps = []
for step in range(gd.num_steps(NUM, BATCH)):
    idx, valid = gd.process_indices(NUM, BATCH, step)   # this process reads only its own rows
    maps.append(sharded.explain_local(images[idx], labels[idx], key, valid=valid))
if jax.process_index() == 0:
    np.save(result, np.concatenate(maps))
print("traces", sharded.traces, flush=True)
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_UNSUPPORTED = ("not implemented on the CPU backend", "Multiprocess computations aren't implemented",
                "collectives are not supported", "gloo is not available", "Unknown CPU collectives")


def test_two_processes_on_localhost_equal_one_process(tmp_path):
    num = 7  # batches of 4: one full, one ragged (3 rows: process 1 has one real row and one pad)
    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESSES.replace("NUM", str(num)))
    result = tmp_path / "two.npy"
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), port, str(result)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("two-process run timed out after 240 s:\n" + "\n".join(o[1][-2000:] for o in outputs))
    codes = [p.returncode for p in procs]
    errors = "\n".join(err[-3000:] for _, err in outputs)
    if any(codes) and any(msg in errors for msg in _UNSUPPORTED):
        pytest.skip(f"this jax build cannot run CPU multi-process collectives: {errors[-500:]}")
    assert codes == [0, 0], errors
    assert all("traces 1" in out for out, _ in outputs), [o for o, _ in outputs]
    merged = np.load(result)
    _, _, model_fn, images, labels, key = _data(num)
    opts = dict(OPTS, noise_range="batch")
    ref = np.concatenate([np.asarray(gj.explain("gag", model_fn, images[s:s + 4], labels[s:s + 4], key=key, **opts))
                          for s in (0, 4)])
    assert merged.shape == (num, SIZE, SIZE)
    np.testing.assert_allclose(merged, ref, atol=1e-6)


# ---------------------------------------------------------------------------- evaluate on 4 devices

_EVALUATE = """
import json, os, sys
import jax, numpy as np
import gag_jax as gj
from gag_jax.data import load_case
from gag_jax.experiments import runner, specs, tiny

assert jax.local_device_count() == 4
module = tiny.TinyCNN(num_classes=5, width=4)
variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
model = gj.ModelFunctions.from_module(module, variables)
rows = specs.parse_methods(["gag", "ig", "sg_r"])
out = {}
for devices in ("1", "4"):
    os.environ["GAG_JAX_DEVICES"] = devices
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    config = runner.RunConfig(case="synthetic", model_name="tiny", image_size=16, batch_size=4, confidence=None, seed=3,
                              metrics=("rcap", "dauc", "iauc", "mae"), method_overrides={"n": 2})
    result = runner.run(config, rows, os.path.join(sys.argv[1], devices), batches=batches, model=model,
                        progress=False)
    out[devices] = {row: {m: float(v[m]) for m in ("rcap", "dauc", "iauc", "mae")} for row, v in result["results"].items()}
    out[devices + "_cost"] = json.load(open(os.path.join(sys.argv[1], devices, "manifest.json")))["cost"]["devices"]
json.dump(out, open(os.path.join(sys.argv[1], "out.json"), "w"))
"""


@pytest.mark.slow
def test_evaluate_on_four_devices_gives_one_devices_records(tmp_path):
    script = tmp_path / "evaluate4.py"
    script.write_text(_EVALUATE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=400, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    out = json.loads((tmp_path / "out.json").read_text())
    for row, values in out["1"].items():
        for metric, value in values.items():  # same keys per image: equal up to float rounding
            np.testing.assert_allclose(out["4"][row][metric], value, rtol=1e-5, err_msg=f"{row} {metric}")
    assert out["4_cost"]["count"] == 4


def test_explain_on_four_devices_with_fewer_images_than_batches_gives_one_devices_maps(tmp_path):
    """3 images, --batch-size 2 on 4 devices: the batch is rounded up to 4 (one call, not two); the
    command asks for the batches the loop really makes and writes the maps of one device."""
    from PIL import Image

    from gag_jax.experiments import tiny

    module = tiny.TinyCNN(num_classes=5, width=4)
    tiny.save_tiny(module.init(jax.random.PRNGKey(1), np.zeros((1, 16, 16, 3), np.float32)),
                   str(tmp_path / "tiny.msgpack"), num_classes=5, width=4)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"p{i}.png")
    args = ["explain", str(tmp_path / "imgs"), "--model", "tiny", "--checkpoint", str(tmp_path / "tiny.msgpack"),
            "--size", "16", "--batch-size", "2", "--n", "2", "--no-progress", "--compile-cache", "none"]
    proc = subprocess.run([sys.executable, "-m", "gag_jax", *args, "--out", str(tmp_path / "out4")],
                          capture_output=True, text=True, timeout=240,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from gag_jax import cli

    with mock.patch.dict(os.environ, {gd.DEVICES_ENV: "1"}):  # this process, one device
        assert cli.main([*args, "--out", str(tmp_path / "out1")]) == 0
    for i in range(3):
        np.testing.assert_allclose(np.load(tmp_path / "out4" / f"p{i}_gag.npy"),
                                   np.load(tmp_path / "out1" / f"p{i}_gag.npy"), atol=1e-6)
