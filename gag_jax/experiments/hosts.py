"""``gag-jax evaluate`` on several processes (hosts): joining the job, sharing the work, meeting.

Every process runs the same command. Each explains its share of the images on its own local
devices (``gj.distributed.local_mesh()``: no array spans two processes, so no cross-process
collective runs) and writes the records of its share into the one run folder, which every process
must see (a shared filesystem: NFS / Lustre on a cluster, a Filestore or GCS FUSE mount on a TPU pod).
The records do not depend on which process computed them (an image's key depends only on the seed
and its name, :mod:`gag_jax.keys`), so a run resumes with any number of processes.

One run on ``N`` processes (process 0 is the *main* one)::

    hello        every process: its host and local devices -> manifest["hosts"] (and the process count)
    manifest     process 0 checks the folder's manifest (resume) and writes it; the others then check
                 their own options against it (records._check_resume): one that disagrees stops all
    selection    process 0 lists the data batches without a selection record; each process computes
                 a contiguous block of them (:func:`share`); they meet; every process reads every
                 record into the same plan (checked equal on all)
    records      process 0 lists the evaluated batches with a missing record; each process computes a
                 contiguous block; they meet; process 0 computes anything it still cannot see (nothing
                 on a shared folder), then writes the tables, figures and the manifest

Contiguous blocks (not batch ``k`` to process ``k % N``) keep each process's data reading sequential,
and only *unfinished* work is shared, so a resumed run is balanced too.

Meetings go through the key-value store of JAX's coordination service (no device collective): a
process publishes that it arrived and polls for the others. While it waits it stops with
:class:`HostError` naming the process when another one reported an error, or stopped sending
heartbeats for ``timeout`` seconds (killed, crashed, its host lost; JAX's
``jax_enable_recoverability`` keeps that from killing the survivors, where this JAX has it). A
process that is alive and working is waited for. At the start, a process that cannot reach every
other one within ``timeout`` seconds stops with one line saying so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax

TIMEOUT = 300
"""Default seconds: to connect at the start, and without a heartbeat before a process counts as gone."""

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
"""Environment variables naming the job (all three, like the flags)."""

CLUSTERS = ("slurm", "gcetpu", "gketpu")
"""JAX cluster detections used when neither flags nor variables name the job (SLURM, TPU pods)."""

_KEY = "gag_jax"


class HostError(RuntimeError):
    """Another process of the job stopped, disagrees or cannot be reached (the message names it)."""


@dataclasses.dataclass(frozen=True)
class Job:
    """How this process joins a multi-process job.

    Attributes:
      coordinator: ``"host:port"`` of process 0 (None: JAX's cluster detection finds it).
      num_processes, process_id: None where JAX's cluster detection finds them.
      source: ``"flags"``, ``"environment"`` or the detected cluster (``"slurm"``, ``"gcetpu"``, ``"gketpu"``).
      local_device_ids: for ``jax.distributed.initialize``: None lets JAX decide; ``()`` every device
        the process sees (SLURM with one task on the node, where JAX would keep only the device of
        the task's local id).
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    source: str
    local_device_ids: tuple[int, ...] | None = None


# ----------------------------------------------------------------------------- who we are


def resolve(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> Job | None:
    """The job this process belongs to, or None when it runs alone.

    Order: the three arguments (``--coordinator``, ``--num-processes``, ``--process-id``), else the
    variables :data:`ENV`, else JAX's detection of a SLURM job or a TPU pod slice (:data:`CLUSTERS`)
    with more than one process. One process (``num_processes`` 1, a one-task SLURM job) is None.

    Raises:
      ValueError: some but not all of the three are given, or a value that cannot work (names it).
    """
    flags = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in flags.values()):
        missing = [k for k, v in flags.items() if v is None]
        if missing:
            raise ValueError(f"--coordinator, --num-processes and --process-id go together; missing {', '.join(missing)}")
        return _checked(coordinator, num_processes, process_id, "flags")
    given = {name: os.environ[name] for name in ENV if os.environ.get(name)}
    cluster = _detect_cluster()
    if given and (len(given) == len(ENV) or cluster is None):
        missing = [name for name in ENV if name not in given]
        if missing:
            raise ValueError(f"set all of {', '.join(ENV)} (or none); missing {', '.join(missing)}")
        return _checked(given[ENV[0]], _int(given[ENV[1]], ENV[1]), _int(given[ENV[2]], ENV[2]), "environment")
    if cluster is None:
        return None
    name, count = cluster
    if count < 2:
        return None
    devices = () if name == "slurm" and _slurm_tasks_on_node() == 1 and not os.environ.get("JAX_LOCAL_DEVICE_IDS") else None
    return Job(given.get(ENV[0]), None, None, name, devices)


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {text!r}") from None


def _checked(coordinator: str, num_processes: int, process_id: int, source: str) -> Job | None:
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the coordinator must be HOST:PORT (process 0's address and a free port); got {coordinator!r}")
    if num_processes < 1:
        raise ValueError(f"the number of processes must be >= 1; got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"the process id must be in [0, {num_processes}); got {process_id}")
    return None if num_processes == 1 else Job(str(coordinator), int(num_processes), int(process_id), source)


def _detect_cluster() -> tuple[str, int] | None:
    """``(name, process count)`` of the first JAX cluster of :data:`CLUSTERS` present, else None."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - a JAX without cluster detection
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if getattr(env, "name", None) in CLUSTERS:
            try:
                if env.is_env_present():
                    return env.name, int(env.get_process_count())
            except Exception:  # noqa: BLE001 - a detection that fails (metadata server) counts as absent
                continue
    return None


def _slurm_tasks_on_node() -> int | None:
    """Tasks of this SLURM step on this node (``SLURM_STEP_TASKS_PER_NODE`` such as ``"2(x3),1"`` at
    ``SLURM_NODEID``), None when the variables are missing or unreadable."""
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    node = os.environ.get("SLURM_NODEID", "")
    if not spec or not node.isdigit():
        return None
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            return None
        counts += [int(match[1])] * int(match[2] or 1)
    return counts[int(node)] if int(node) < len(counts) else None


def process_count() -> int:
    """Processes in this JAX job (1 without ``jax.distributed``)."""
    return jax.process_count()


def process_index() -> int:
    """This process's index in ``[0, process_count())``."""
    return jax.process_index()


def is_main() -> bool:
    """Whether this process writes the manifest, tables and figures (process 0)."""
    return process_index() == 0


def share(items: Sequence[Any], process_id: int | None = None, num_processes: int | None = None) -> list:
    """This process's contiguous block of ``items``: block ``p`` of ``N`` nearly equal ones, in order.

    Every process calls it with the same ``items``; the blocks are disjoint, cover ``items`` once
    and their sizes differ by at most one.

    Args:
      items: the work to share (e.g. batch indices), the same list on every process.
      process_id, num_processes: default this process (:func:`process_index`, :func:`process_count`).

    Returns:
      ``items[p * len // N:(p + 1) * len // N]`` as a list.

    Raises:
      ValueError: ``num_processes < 1`` or ``process_id`` outside ``[0, num_processes)``.
    """
    p = process_index() if process_id is None else int(process_id)
    n = process_count() if num_processes is None else int(num_processes)
    if n < 1 or not 0 <= p < n:
        raise ValueError(f"need 0 <= process_id < num_processes; got process_id={p}, num_processes={n}")
    items = list(items)
    return items[p * len(items) // n:(p + 1) * len(items) // n]


def _ranges(indices: Sequence[int]) -> list[list[int]]:
    """Sorted ints as ``[start, stop)`` runs (small to send: usually one or a few)."""
    out: list[list[int]] = []
    for i in sorted(int(i) for i in indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _expand(ranges: Sequence[Sequence[int]]) -> list[int]:
    return [i for start, stop in ranges for i in range(start, stop)]


# ----------------------------------------------------------------------------- joining and meeting


def _label(process_id: int | None = None, num_processes: int | None = None) -> str:
    p = process_index() if process_id is None else process_id
    return f"process {p} of {process_count() if num_processes is None else num_processes}"


def initialize(job: Job, *, timeout: float = TIMEOUT, prefix: str = "gag-jax") -> None:
    """Join ``job`` (``gj.distributed.initialize``) before any other JAX call that touches devices.

    A process that has not reached every other one within ``timeout`` seconds prints one line
    (``<prefix>: error: process I of N: ...``) and exits with status 1 (JAX would abort later
    with a C++ stack trace). The same ``timeout`` is JAX's heartbeat timeout: a process silent
    for that long counts as gone (see :func:`meet`). Nothing happens when ``jax.distributed`` is
    already initialized.
    """
    from gag_jax import distributed as gd

    if jax.distributed.is_initialized():
        return
    who = (f"process {job.process_id} of {job.num_processes}" if job.process_id is not None
           else f"this process ({job.source})")
    where = job.coordinator or f"the coordinator found by {job.source}"

    def give_up():
        print(f"{prefix}: error: {who}: not every process reached {where} within {timeout:g} s (--host-timeout); "
              "start every process with the same --coordinator and --num-processes and its own --process-id",
              file=sys.stderr, flush=True)
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        gd.initialize(job.coordinator, job.num_processes, job.process_id,
                      local_device_ids=None if job.local_device_ids is None else list(job.local_device_ids),
                      initialization_timeout=int(timeout) + 30, heartbeat_timeout=max(1, int(timeout)),
                      shutdown_timeout=max(1, int(timeout)), recoverable=True)
    finally:
        watchdog.cancel()


class _Meetings:
    """Meetings over a coordination-service client (``key_value_set``, ``key_value_dir_get``,
    ``get_live_nodes``); every process calls the same meetings in the same order."""

    def __init__(self, client, process_id: int, num_processes: int, *, poll: float = 0.05,
                 live_every: float = 1.0):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.poll, self.live_every, self.count = poll, live_every, 0

    def _dir(self, prefix: str) -> dict[int, str]:
        try:
            entries = self.client.key_value_dir_get(prefix)
        except Exception as err:  # noqa: BLE001 - the coordinator (process 0) is gone
            raise HostError(f"{_label(self.process_id, self.num_processes)}: lost the coordinator (process 0): "
                            f"{' '.join(str(err).split())[:300]}") from None
        return {int(k.rsplit("/", 1)[1]): v for k, v in entries}

    def _alive(self, wanted: Sequence[int]) -> set[int]:
        live = getattr(self.client, "get_live_nodes", None)
        if live is None:  # an older JAX: gone processes then stop the job through JAX itself
            return set(wanted)
        try:
            return set(live(list(range(self.num_processes))))
        except Exception:  # noqa: BLE001 - treat as unknown, ask again later
            return set(wanted)

    def fail(self, message: str) -> None:
        """Tell the others this process stopped, and why (they raise it at their next meeting)."""
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{_KEY}/failed/{self.process_id}", message[:2000], allow_overwrite=True)

    def wait_for(self, prefix: str, step: str, *, limit: float | None = None) -> dict[int, str]:
        """Poll until every process has a key under ``prefix``; HostError naming the process that
        failed, went silent, or (``limit`` seconds) did not come."""
        start, checked, poll = time.monotonic(), 0.0, self.poll
        label = _label(self.process_id, self.num_processes)
        while True:
            arrived = self._dir(prefix)
            if len(arrived) >= self.num_processes:
                return arrived
            missing = [p for p in range(self.num_processes) if p not in arrived]
            failed = self._dir(f"{_KEY}/failed/")
            for p in missing:
                if p in failed:
                    raise HostError(f"{label}: process {p} stopped before {step!r}: {failed[p]}")
            now = time.monotonic()
            if now - checked >= self.live_every:
                checked = now
                gone = [p for p in missing if p not in self._alive(missing)]
                if gone:  # it may have arrived, passed the meeting and ended since the arrivals were read
                    arrived = self._dir(prefix)
                    gone = [p for p in gone if p not in arrived]
                if gone:
                    raise HostError(f"{label}: process {', '.join(map(str, gone))} stopped answering before {step!r} "
                                    "(no heartbeat within --host-timeout: killed, crashed or its host lost); every "
                                    "finished record is kept: start all processes again to resume")
            if limit is not None and now - start > limit:
                raise HostError(f"{label}: process {', '.join(map(str, missing))} did not reach {step!r} within "
                                f"{limit:g} s")
            time.sleep(poll)
            poll = min(1.0, poll * 1.5)

    def meet(self, name: str, payload: Any = None) -> list[Any]:
        self.count += 1
        prefix = f"{_KEY}/meet/{self.count:05d}/"
        self.client.key_value_set(prefix + str(self.process_id), json.dumps({"step": name, "payload": payload}))
        arrived = {p: json.loads(v) for p, v in self.wait_for(prefix, name).items()}
        other = {p: e["step"] for p, e in arrived.items() if e["step"] != name}
        if other:
            p = min(other)
            raise HostError(f"{_label(self.process_id, self.num_processes)} is at step {name!r}, process {p} at "
                            f"{other[p]!r}: the processes run different commands")
        return [arrived[p]["payload"] for p in range(self.num_processes)]


_MEETINGS: _Meetings | None = None
_FAILED = False  # this process announced that it stops (fail): process 0 then waits only briefly at the end


def _meetings() -> _Meetings:
    global _MEETINGS
    if _MEETINGS is None or _MEETINGS.num_processes != process_count():
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
        if client is None:
            raise HostError(f"{_label()}: this multi-process job has no jax.distributed client "
                            "(call gj.distributed.initialize first)")
        _MEETINGS = _Meetings(client, process_index(), process_count())
    return _MEETINGS


def meet(name: str, payload: Any = None) -> list[Any]:
    """Wait until every process reached the step ``name``; return every process's ``payload``.

    Every process must call the same meetings in the same order (a process at another step is an
    error). One process: ``[payload]`` at once.

    Args:
      name: the step (named in errors).
      payload: JSON-able value this process shares (e.g. its host, its counts).

    Returns:
      ``[payload of process 0, ..., payload of process N - 1]``.

    Raises:
      HostError: a process reported an error, stopped answering, or is at another step (named).
    """
    if process_count() == 1:
        return [payload]
    return _meetings().meet(name, payload)


def fail(err: BaseException | str) -> None:
    """Tell the other processes that this one stops, with ``err`` as the reason (no-op alone)."""
    global _FAILED
    if process_count() > 1:
        _FAILED = True
        _meetings().fail(" ".join(str(err).split()) or type(err).__name__)


@contextlib.contextmanager
def main_first(name: str) -> Iterator[None]:
    """Process 0 runs the block first (e.g. trains and saves the tiny model), the others after it
    (e.g. load what it saved). Alone: just the block."""
    if not is_main():
        meet(name)
    yield
    if is_main():
        meet(name)


@contextlib.contextmanager
def session(job: Job | None, *, timeout: float = TIMEOUT, prefix: str = "gag-jax") -> Iterator[Job | None]:
    """One command on every process of ``job`` (from :func:`resolve`; None: this process alone):
    :func:`initialize` first.

    An exception leaving the block is announced to the other processes (:func:`fail`); on success
    process 0 waits until the others are done with the coordination service (it lives in process 0)
    before leaving.

    Yields:
      ``job``.
    """
    if job is not None:
        initialize(job, timeout=timeout, prefix=prefix)
    try:
        yield job
    except BaseException as err:
        fail(err)
        _leave(wait=10.0)  # process 0 gives the others a moment to read why before its service goes
        raise
    _leave(wait=10.0 if _FAILED else timeout)  # (a command that reports an error and returns, e.g. Ctrl-C)


def _leave(wait: float) -> None:
    """The others say they are done with the coordination service; process 0 waits (at most ``wait``
    seconds, and not for a process that is gone) so that its service outlives their last call."""
    if process_count() == 1:
        return
    meetings = _meetings()
    if not is_main():
        with contextlib.suppress(Exception):
            meetings.client.key_value_set(f"{_KEY}/left/{process_index()}", "1", allow_overwrite=True)
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(HostError):
            left = meetings._dir(f"{_KEY}/left/")
            others = [p for p in range(1, meetings.num_processes) if p not in left]
            if not others or not set(others) & meetings._alive(others):
                return
        time.sleep(0.2)


# ----------------------------------------------------------------------------- the run's stages


def hello() -> dict[str, Any]:
    """The job for the manifest (one meeting): ``{"processes": N}`` and, with several processes,
    each one's host and local device count and a token process 0 drew (``"job"``), by which the
    others recognise its manifest."""
    if process_count() == 1:
        return {"processes": 1}
    mine = {"host": socket.gethostname(), "local_devices": jax.local_device_count(),
            "job": secrets.token_hex(8) if is_main() else None}
    everyone = meet("hello", mine)
    return {"processes": len(everyone), "job": everyone[0]["job"],
            "machines": [{"process": p, "host": e["host"], "local_devices": e["local_devices"]}
                         for p, e in enumerate(everyone)]}


def agree(manifest_file: str, config, specs, job: Mapping[str, Any], *, visible_within: float = 30.0) -> None:
    """After process 0 checked and wrote the manifest: every other process checks its own options
    against it (``records._check_resume``, the resume check) and its rows against process 0's.

    Raises:
      HostError: the manifest of this job is not visible here (``--out`` not shared) or a process
        stopped (named).
      RunMismatchError: this process's options differ from process 0's (the message names the option).
    """
    from gag_jax.experiments.records import RunMismatchError, _check_resume

    if process_count() == 1:
        return
    rows = [s.name for s in specs]
    main_rows = meet("manifest", rows)[0]
    if not is_main():
        try:
            deadline = time.monotonic() + visible_within
            manifest = _read_json(manifest_file)
            while (manifest or {}).get("hosts", {}).get("job") != job.get("job") and time.monotonic() < deadline:
                time.sleep(0.5)
                manifest = _read_json(manifest_file)
            if (manifest or {}).get("hosts", {}).get("job") != job.get("job"):
                raise HostError(f"{_label()} does not see the manifest process 0 wrote to {manifest_file}: --out "
                                "must be a folder every process sees (a shared filesystem)")
            try:
                _check_resume(manifest, config)
            except RunMismatchError as err:
                raise RunMismatchError(f"{_label()} has other options than process 0: {err}") from None
            if rows != main_rows:
                raise RunMismatchError(f"{_label()} computes the rows {', '.join(rows)}, process 0 "
                                       f"{', '.join(main_rows)}: give every process the same --methods / --table")
        except BaseException as err:
            fail(err)
            raise
    meet("options agreed")


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _has_selection(out_dir: str, b: int) -> bool:
    from gag_jax.experiments.records import _load_npz, selection_path
    from gag_jax.experiments.stages import _SELECTION_KEYS

    path = selection_path(out_dir, b)
    rec = _load_npz(path) if os.path.exists(path) else None
    return rec is not None and all(k in rec for k in _SELECTION_KEYS)


def select(batches, model, out_dir: str, confidence: float | None, batch_size: int, *, progress: bool = True,
           **options):
    """:func:`gag_jax.experiments.stages.select` shared by every process (alone: the same call).

    Process 0 lists the data batches without a selection record; each process computes its block
    (:func:`share`); after they meet every process reads every record into the plan, and the plans
    are checked equal (same data, same device rounding of the batch). Files a process could not
    read are reported by process 0.

    Returns:
      the :class:`~gag_jax.experiments.stages.Plan`, the same on every process.

    Raises:
      HostError: the processes built different plans, or a process stopped (named).
    """
    from gag_jax.experiments import stages

    if process_count() == 1:
        return stages.select(batches, model, out_dir, confidence, batch_size, progress=progress, **options)
    missing = _ranges([b for b in range(len(batches)) if not _has_selection(out_dir, b)]) if is_main() else None
    todo = meet("selection listed", missing)[0]
    stages.select(batches, model, out_dir, confidence, batch_size, progress=progress and is_main(),
                  only=set(share(_expand(todo))), **options)
    skipped = [dataclasses.asdict(s) for s in getattr(batches, "skipped", [])]
    everyone = meet("selection", skipped)
    if is_main() and isinstance(getattr(batches, "skipped", None), list):
        from gag_jax.data._common import SkippedFile

        known = {(s.name, s.path) for s in batches.skipped}
        for entries in everyone[1:]:
            for entry in entries:
                if (entry["name"], entry["path"]) not in known:
                    known.add((entry["name"], entry["path"]))
                    batches.skipped.append(SkippedFile(**entry))
    plan = stages.select(batches, model, out_dir, confidence, batch_size, progress=False, **options)
    prints = meet("plan", [plan.batch_size, plan.num_kept, plan.num_seen, _digest(plan.rows, plan.targets)])
    for p, other in enumerate(prints):
        if other != prints[0]:
            raise HostError(f"process {p} built another plan than process 0 (batch size, images kept, seen: "
                            f"{other[:3]} vs {prints[0][:3]}): every process needs the same data and the same number "
                            "of local devices (GAG_JAX_DEVICES)")
    return plan


def _digest(*arrays) -> str:
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()[:16]


def evaluate_plan(plan, batches, model, specs, out_dir: str, *, progress: bool = True, **options) -> dict[str, int]:
    """:func:`gag_jax.experiments.stages.evaluate_plan` shared by every process (alone: the same call).

    Process 0 lists the evaluated batches with a missing record; each process computes its block
    (:func:`share`) and writes its records; after they meet, process 0 computes whatever it still
    cannot see (nothing when ``out_dir`` is shared).

    Returns:
      ``{"computed": records written by every process, "reused": records found from earlier runs,
      "computed_by_process": [records written by process 0, 1, ...]}`` (process 0 also counts what
      it computed after the meeting; the others do not know it).
    """
    from gag_jax.experiments import stages
    from gag_jax.experiments.records import _is_record, record_path

    if process_count() == 1:
        return stages.evaluate_plan(plan, batches, model, specs, out_dir, progress=progress, **options)
    missing = None
    if is_main():
        missing = _ranges([k for k in range(len(plan))
                           if any(not _is_record(record_path(out_dir, s.name, k)) for s in specs)])
    todo = meet("records listed", missing)[0]
    counts = stages.evaluate_plan(plan, batches, model, specs, out_dir, progress=progress and is_main(),
                                  only=set(share(_expand(todo))), **options)
    by_process = [c["computed"] for c in meet("records", counts)]
    if is_main():  # normally nothing left: on a folder every process sees, each record is found
        by_process[0] += stages.evaluate_plan(plan, batches, model, specs, out_dir, progress=False,
                                              **options)["computed"]
    computed = sum(by_process)
    return {"computed": computed, "reused": len(plan) * len(specs) - computed, "computed_by_process": by_process}
