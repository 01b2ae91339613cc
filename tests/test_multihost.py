"""``gag-jax evaluate`` on several processes (``gag_jax.experiments.hosts``).

Fast: the work sharing (contiguous blocks), the job resolution (flags, variables, SLURM) and the
meetings over a fake coordination-service client (a process that failed, went silent or is at
another step is named). Slow: real processes on localhost, each with 2 simulated CPU devices,
running ``python -m gag_jax evaluate --case synthetic``: two processes write the same records
(every npz array) as one process, resume a run one process started, and stop with a line naming
the process that is missing, was killed or has other options.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gag_jax.experiments import hosts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- sharing the work


@pytest.mark.parametrize("size, count", [(0, 2), (1, 3), (7, 2), (10, 3), (16, 4), (5, 8)])
def test_share_gives_disjoint_contiguous_blocks_covering_every_item_once(size, count):
    items = [f"batch{i}" for i in range(size)]
    blocks = [hosts.share(items, p, count) for p in range(count)]
    assert sum(blocks, []) == items  # in order, each once
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    for block in blocks:  # contiguous: consecutive positions in items
        positions = [items.index(x) for x in block]
        assert positions == list(range(positions[0], positions[0] + len(block))) if block else True


def test_share_rejects_a_process_outside_the_job():
    with pytest.raises(ValueError, match="process_id"):
        hosts.share([1, 2], 2, 2)
    with pytest.raises(ValueError, match="num_processes"):
        hosts.share([1, 2], 0, 0)


def test_ranges_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        chosen = sorted(set(rng.integers(0, 40, size=rng.integers(0, 30)).tolist()))
        runs = hosts._ranges(chosen)
        assert hosts._expand(runs) == chosen
        assert all(a[1] < b[0] for a, b in zip(runs, runs[1:]))  # maximal runs


# ----------------------------------------------------------------------------- who we are


@pytest.fixture
def no_job(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM_") or name in hosts.ENV or name.startswith("TPU_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_resolve_flags_variables_and_alone(no_job):
    assert hosts.resolve() is None
    assert hosts.resolve("h:1234", 1, 0) is None  # one process: nothing to join
    assert hosts.resolve("10.0.0.1:1234", 4, 3) == hosts.Job("10.0.0.1:1234", 4, 3, "flags")
    no_job.setenv("JAX_COORDINATOR_ADDRESS", "node7:9999")
    no_job.setenv("JAX_NUM_PROCESSES", "2")
    no_job.setenv("JAX_PROCESS_ID", "1")
    assert hosts.resolve() == hosts.Job("node7:9999", 2, 1, "environment")
    assert hosts.resolve("h:1", 3, 2).source == "flags"  # flags win


@pytest.mark.parametrize("args, env, match", [
    (("h:1234", None, 0), {}, "missing --num-processes"),
    (("h:1234", 2, 2), {}, r"process id must be in \[0, 2\)"),
    (("1234", 2, 0), {}, "HOST:PORT"),
    (("h:99999", 2, 0), {}, "HOST:PORT"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1"}, "missing JAX_NUM_PROCESSES, JAX_PROCESS_ID"),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES must be an integer"),
])
def test_resolve_names_what_cannot_work(no_job, args, env, match):
    for k, v in env.items():
        no_job.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        hosts.resolve(*args)


def _slurm(monkeypatch, tasks, per_node, node=0):
    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": str(tasks),
                 "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": per_node,
                 "SLURM_NODEID": str(node)}.items():
        monkeypatch.setenv(k, v)


def test_resolve_detects_slurm_and_keeps_every_device_with_one_task_per_node(no_job):
    _slurm(no_job, 2, "1(x2)", node=1)
    job = hosts.resolve()
    assert (job.source, job.coordinator, job.local_device_ids) == ("slurm", None, ())  # JAX would keep device 0 only
    _slurm(no_job, 4, "2(x2)")
    assert hosts.resolve().local_device_ids is None  # one task per device: JAX's choice (its local id)
    _slurm(no_job, 1, "1")
    assert hosts.resolve() is None  # a one-task job runs alone


@pytest.mark.parametrize("spec, node, tasks", [("1(x2)", 1, 1), ("2(x3),1", 3, 1), ("2(x3),1", 2, 2), ("4", 0, 4),
                                               ("3,1(x2)", 0, 3), ("bad", 0, None), ("2(x2)", 5, None)])
def test_slurm_tasks_on_node(monkeypatch, spec, node, tasks):
    monkeypatch.delenv("SLURM_TASKS_PER_NODE", raising=False)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", spec)
    monkeypatch.setenv("SLURM_NODEID", str(node))
    assert hosts._slurm_tasks_on_node() == tasks


# ----------------------------------------------------------------------------- meetings (a fake coordinator)


class FakeClient:
    """The coordination-service calls the meetings use, in memory, shared by fake processes."""

    def __init__(self, alive):
        self.store, self.alive, self.lock = {}, set(alive), threading.Lock()

    def key_value_set(self, key, value, allow_overwrite=False):
        with self.lock:
            if key in self.store and not allow_overwrite:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.store[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]

    def get_live_nodes(self, ids):
        return {i: 0 for i in ids if i in self.alive}


def _meetings(client, p, n):
    return hosts._Meetings(client, p, n, poll=0.01, live_every=0.05)


def test_meetings_return_every_payload_in_process_order():
    client = FakeClient(alive={0, 1, 2})
    results = {}

    def process(p):
        m = _meetings(client, p, 3)
        results[p] = [m.meet("hello", {"me": p}), m.meet("plan", p * 10)]

    threads = [threading.Thread(target=process, args=(p,)) for p in (2, 1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expected = [[{"me": 0}, {"me": 1}, {"me": 2}], [0, 10, 20]]
    assert results == {0: expected, 1: expected, 2: expected}


def test_a_meeting_names_the_process_that_failed_went_silent_or_is_elsewhere():
    client = FakeClient(alive={0, 1, 2})
    _meetings(client, 1, 3).fail("process 1 of 3 has other options than process 0: n=3")
    with pytest.raises(hosts.HostError, match="process 1 stopped before 'plan': process 1 of 3 has other options"):
        _meetings(client, 0, 3).meet("plan")

    client = FakeClient(alive={0, 1})  # process 2 was killed: no heartbeat
    start = time.monotonic()
    with pytest.raises(hosts.HostError, match="process 2 stopped answering before 'records'"):
        _meetings(client, 0, 3).meet("records")
    assert time.monotonic() - start < 5

    client = FakeClient(alive={0, 1})  # process 1 arrived at its first meeting, named "selection"
    client.key_value_set("gag_jax/meet/00001/1", '{"step": "selection", "payload": null}')
    with pytest.raises(hosts.HostError, match="process 0 of 2 is at step 'plan', process 1 at 'selection'"):
        _meetings(client, 0, 2).meet("plan")


def test_a_process_that_arrived_and_ended_between_two_reads_is_not_called_gone():
    """Process 1 arrives and exits after process 0 read the arrivals but before it asked who is alive
    (seen on a loaded CI machine): process 0 reads the arrivals again before naming anyone."""

    class ArrivesWhileAsked(FakeClient):
        def get_live_nodes(self, ids):
            self.key_value_set("gag_jax/meet/00001/1", '{"step": "records", "payload": 1}')
            self.alive.discard(1)  # arrived, passed the meeting and ended
            return super().get_live_nodes(ids)

    client = ArrivesWhileAsked(alive={0, 1})
    m = hosts._Meetings(client, 0, 2, poll=0.01, live_every=0.0)
    assert m.meet("records", 0) == [0, 1]


def test_one_process_meets_itself():
    assert hosts.meet("anything", {"x": 1}) == [{"x": 1}]
    with hosts.main_first("the model"):
        pass


# ----------------------------------------------------------------------------- real processes (slow)

FLAGS = ["--case", "synthetic", "--limit", "5", "--batch-size", "2", "--n", "2", "--confidence", "none",
         "--methods", "gag,ig_r", "--metrics", "rcap,mae", "--image-size", "16", "--no-figures", "--no-progress",
         "--compile-cache", "none"]
_UNSUPPORTED = ("Multiprocess computations aren't implemented", "gloo is not available", "Unknown CPU collectives")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               GAG_JAX_COMPILE_CACHE="none", PYTHONUNBUFFERED="1")
    for name in hosts.ENV:
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(out, checkpoint, *extra):
    return [sys.executable, "-m", "gag_jax", "evaluate", *FLAGS, "--checkpoint", str(checkpoint), "--out", str(out),
            *map(str, extra)]


# the processes of the tests that should succeed wait long for each other: on a loaded 2-core CI machine one
# of them may import and compile minutes after the other (a failing process is still named at once)
PATIENT = 240


def _start(out, checkpoint, process, count=2, port=None, timeout=PATIENT, extra=()):
    args = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", count, "--process-id", process,
            "--host-timeout", timeout, *extra]
    return subprocess.Popen(_command(out, checkpoint, *args), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs, limit=600):
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=limit))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the processes did not end within {limit} s (a hang)")
    errors = "\n".join(err for _, err in outputs)
    if any(p.returncode for p in procs) and any(msg in errors for msg in _UNSUPPORTED):
        pytest.skip(f"this jax build cannot run several CPU processes: {errors[-300:]}")
    return [p.returncode for p in procs], outputs


def _two(out, checkpoint, timeout=PATIENT, extra=((), ())):
    port = _free_port()
    procs = [_start(out, checkpoint, p, port=port, timeout=timeout, extra=extra[p]) for p in (0, 1)]
    return _finish(procs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny CNN (5 classes): the records only need one model, the same in every run."""
    import jax

    from gag_jax.experiments import tiny

    path = tmp_path_factory.mktemp("model") / "tiny.msgpack"
    module = tiny.TinyCNN(num_classes=5, width=4)
    tiny.save_tiny(module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32)), str(path),
                   num_classes=5, width=4)
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, checkpoint):
    """The reference: one process with 2 devices (the plan's batch rounds to the local device count, 2)."""
    out = tmp_path_factory.mktemp("one") / "run"
    done = subprocess.run(_command(out, checkpoint), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _records(run):
    files = sorted(glob.glob(os.path.join(run, "records", "*", "*.npz")) +
                   glob.glob(os.path.join(run, "selection", "*.npz")))
    return {os.path.relpath(f, run): f for f in files}


def _assert_same_records(run, reference):
    mine, ref = _records(run), _records(reference)
    assert sorted(mine) == sorted(ref) and ref
    for name, path in ref.items():
        with np.load(path) as a, np.load(mine[name]) as b:
            assert sorted(a.files) == sorted(b.files), name
            for key in a.files:
                if key != "seconds":  # timing, not a result
                    np.testing.assert_array_equal(b[key], a[key], err_msg=f"{name}: {key}")


def _manifest(run):
    import json

    with open(os.path.join(run, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_write_the_records_of_one_process(tmp_path, checkpoint, one_process):
    out = tmp_path / "two"
    codes, outputs = _two(out, checkpoint)
    assert codes == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    _assert_same_records(out, one_process)
    manifest = _manifest(out)
    assert manifest["status"] == "complete" and manifest["hosts"]["processes"] == 2
    assert [m["local_devices"] for m in manifest["hosts"]["machines"]] == [2, 2]
    by_process = manifest["counts"]["computed_by_process"]
    assert sum(by_process) == 6 and min(by_process) > 0  # 3 batches x 2 rows, shared
    with open(out / "table2.csv") as a, open(one_process / "table2.csv") as b:
        assert a.read() == b.read()  # process 0 alone wrote the table, from every process's records
    assert "process 1 of 2: done" in outputs[1][0] and "Table 2" not in outputs[1][0]


@pytest.mark.slow
def test_two_processes_resume_a_run_one_process_started(tmp_path, checkpoint, one_process):
    out = tmp_path / "resumed"
    shutil.copytree(one_process, out)
    removed = [f for f in glob.glob(str(out / "records" / "*" / "*.npz")) if not f.endswith("batch_00000.npz")]
    removed.append(str(out / "selection" / "batch_00002.npz"))
    for f in removed:
        os.remove(f)
    codes, outputs = _two(out, checkpoint)
    assert codes == [0, 0], "\n".join(err[-2000:] for _, err in outputs)
    _assert_same_records(out, one_process)
    counts = _manifest(out)["counts"]
    assert (counts["computed"], counts["reused"]) == (4, 2)  # batches 1, 2 of both rows; batch 0 reused


@pytest.mark.slow
def test_a_missing_or_killed_process_stops_the_other_with_a_line_naming_it(tmp_path, checkpoint):
    # omitted: process 1 never starts
    start = time.monotonic()
    codes, outputs = _finish([_start(tmp_path / "alone", checkpoint, 0, port=_free_port(), timeout=8)], limit=120)
    assert codes == [1] and time.monotonic() - start < 100
    assert "process 0 of 2: not every process reached 127.0.0.1:" in outputs[0][1]
    assert not os.path.exists(tmp_path / "alone")  # nothing written

    # killed: process 1 is killed once it runs; process 0 names it within the heartbeat timeout
    port = _free_port()
    procs = [_start(tmp_path / "killed", checkpoint, p, port=port, timeout=8) for p in (0, 1)]
    deadline = time.monotonic() + 120
    while not os.path.exists(tmp_path / "killed" / "manifest.json") and time.monotonic() < deadline:
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    codes, outputs = _finish(procs, limit=120)
    assert codes[0] == 1, outputs[0][1][-2000:]
    assert "process 1 stopped answering" in outputs[0][1]
    assert time.monotonic() - killed < 60  # 8 s without a heartbeat, then the next meeting


@pytest.mark.slow
def test_a_process_with_other_options_stops_every_process_before_any_record(tmp_path, checkpoint):
    out = tmp_path / "mixed"
    codes, outputs = _two(out, checkpoint, extra=((), ("--n", "3")))
    assert codes == [1, 2], [err[-1000:] for _, err in outputs]
    assert "process 1 of 2 has other options than process 0" in outputs[1][1] and "'n': 3" in outputs[1][1]
    assert "process 1 stopped before" in outputs[0][1] and "'n': 3" in outputs[0][1]
    assert not glob.glob(str(out / "records" / "*" / "*.npz")) and not glob.glob(str(out / "selection" / "*"))
