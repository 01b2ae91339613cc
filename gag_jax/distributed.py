"""Scale-out: shard the batch axis over all devices, on one host or many.

The explainers are pure functions of a *global* batch. Here they are jit-compiled once with
the batch axis sharded over a 1-D ``jax.sharding.Mesh`` (axis name ``"batch"``) via
``NamedSharding``; the model's variables are jit *arguments*, replicated on every device once
(not constants baked into the program). Because it is the same global computation, only
partitioned, the maps equal the unsharded ones: the noise of sample i is drawn for the whole
global batch from ``fold_in(key, i)``, and with ``jax_threefry_partitionable`` (the default)
the random bits of an element depend on its global index only, never on how the batch is
split or how many padding rows follow it.

Fixed shapes, no re-trace: a batch is padded to the fixed ``batch_size`` (a multiple of the
device count) by repeating its last image (so batch statistics such as
``noise_range="batch"`` are unchanged) and a ``valid`` mask says which rows are real; the
ragged last batch of a dataset therefore reuses the compiled program.

Multi-host (``jax.distributed``)::

    from gag_jax import distributed as gd
    gd.initialize("10.0.0.1:1234", num_processes=2, process_id=rank)   # before any other jax call
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=64)
    for step in range(gd.num_steps(len(dataset), 64)):
        idx, valid = gd.process_indices(len(dataset), 64, step)        # this process's rows only
        maps = sharded.explain_local(images_of(idx), labels_of(idx), key, valid=valid)
        if jax.process_index() == 0:
            save(maps)          # (number of valid rows of the global batch, H, W), in dataset order

For a stream of batches, ``sharded.explain_batches(batches, key)`` prefetches (pads and shards
inputs ahead, dispatches batch k + 1 before fetching batch k) so the device never waits.

Step ``s`` of the global iteration is dataset items ``[s*B, (s+1)*B)`` in order, whatever the
number of processes, so the gathered result equals a single-process run over the same batches.
"""
from __future__ import annotations

import collections
import functools
import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gag_jax import explainers as explainers_lib
from gag_jax.data._common import pad_rows  # one padding rule (repeat the last row)
from gag_jax.model import as_model_functions

AXIS = "batch"

__all__ = [
    "AXIS", "ShardedExplainer", "batch_sharding", "explain_sharded", "gather", "initialize", "make_mesh",
    "map_batches", "num_steps", "pad_rows", "prefetch", "process_indices", "process_rows", "replicate",
    "replicated_sharding", "round_to_devices", "rows_per_call", "shard_batch",
]


# ---------------------------------------------------------------------------- multi-host


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids: Sequence[int] | None = None,
               cpu_collectives: str | None = "gloo", initialization_timeout: int = 300,
               heartbeat_timeout: int = 100, shutdown_timeout: int = 300, recoverable: bool = False) -> None:
    """Join a multi-process JAX job (wraps ``jax.distributed.initialize``).

    Call it in every process before any other JAX call that touches devices.

    Args:
      coordinator_address: ``"host:port"`` of process 0 (the coordinator), e.g. ``"127.0.0.1:12345"``.
      num_processes: number of processes in the job.
      process_id: this process's rank in ``[0, num_processes)``. Any of these three None: JAX's
        cluster detection (SLURM, TPU pods, ...) and ``JAX_COORDINATOR_ADDRESS`` fill it in.
      local_device_ids: devices this process drives (``None``: JAX decides; on SLURM that is the
        device of the task's local id; ``[]``: every visible one).
      cpu_collectives: cross-process collectives for CPU devices (``"gloo"``, ``"mpi"``; this
        jax build defaults to gloo); only affects the CPU backend, harmless on GPUs. ``None``
        leaves the setting alone.
      initialization_timeout: seconds to wait for all processes to connect.
      heartbeat_timeout: seconds without a heartbeat after which a process counts as gone.
      shutdown_timeout: seconds the coordinator waits for the others at shutdown.
      recoverable: a process that goes away does not abort the others (JAX's experimental
        ``jax_enable_recoverability``, skipped where this JAX lacks it): the caller notices it
        (``gag_jax.experiments.hosts.meet``) instead of JAX terminating every process.
    """
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if recoverable:
        try:
            jax.config.update("jax_enable_recoverability", True)
        except AttributeError:  # pragma: no cover - an older JAX: a lost process aborts the job
            pass
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=initialization_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout,
                               shutdown_timeout_seconds=shutdown_timeout)


def num_steps(num_items: int, batch_size: int) -> int:
    """Number of global batches of ``batch_size`` needed for ``num_items`` items (last one padded)."""
    if num_items < 0 or batch_size < 1:
        raise ValueError(f"need num_items >= 0 and batch_size >= 1; got {num_items}, {batch_size}")
    return math.ceil(num_items / batch_size)


def process_rows(batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> slice:
    """The rows of every global batch that process ``process_index`` reads and feeds.

    Rows are split in contiguous, equal blocks in process order (the order of the mesh built by
    ``make_mesh``). ``batch_size`` must be a multiple of the process count.

    Returns:
      ``slice(p * b, (p + 1) * b)`` with ``b = batch_size // process_count``.
    """
    p = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if batch_size % count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the process count {count}")
    b = batch_size // count
    return slice(p * b, (p + 1) * b)


def process_indices(num_items: int, batch_size: int, step: int, process_index: int | None = None,
                    process_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices this process reads at global step ``step`` (its own shard), fixed length.

    Global step ``s`` covers items ``[s * batch_size, (s + 1) * batch_size)``; this process reads
    the rows ``process_rows(batch_size)`` of it. Past the end of the dataset the indices repeat
    the last item (padding, so every step has the same shape and repeats do not change batch
    statistics) and ``valid`` is False there.

    Args:
      num_items: dataset size (> 0).
      batch_size: global batch size (a multiple of the process count, and of the device count
        for ``ShardedExplainer``).
      step: global step in ``[0, num_steps(num_items, batch_size))``.

    Returns:
      ``(indices (batch_size // process_count,) int64, valid (same,) bool)``.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1; got {num_items}")
    if not 0 <= step < num_steps(num_items, batch_size):
        raise ValueError(f"step {step} out of range for {num_items} items in batches of {batch_size}")
    rows = process_rows(batch_size, process_index, process_count)
    global_rows = step * batch_size + np.arange(rows.start, rows.stop)
    valid = global_rows < num_items
    return np.minimum(global_rows, num_items - 1).astype(np.int64), valid


# ---------------------------------------------------------------------------- mesh and sharding


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """1-D mesh with axis ``"batch"`` over ``devices`` (default: every device of every process).

    Devices are ordered by (process index, id), so each process's devices hold a contiguous
    block of the batch (what ``process_rows`` assumes).
    """
    devices = jax.devices() if devices is None else list(devices)
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (AXIS,))


DEVICES_ENV = "GAG_JAX_DEVICES"
"""Environment variable restricting the commands to the first N local devices (default: all)."""


def local_mesh() -> Mesh | None:
    """The 1-D mesh the commands (evaluate, demo, explain) shard their batches over: every local
    device, or the first ``$GAG_JAX_DEVICES``; None with a single device (nothing to shard).

    Raises:
      ValueError: ``GAG_JAX_DEVICES`` is not a positive integer.
    """
    devices = jax.local_devices()
    wanted = os.environ.get(DEVICES_ENV)
    if wanted:
        if not wanted.isdigit() or int(wanted) < 1:
            raise ValueError(f"{DEVICES_ENV} must be a positive integer (devices to use); got {wanted!r}")
        devices = devices[:int(wanted)]
    return make_mesh(devices) if len(devices) > 1 else None


def round_to_devices(batch_size: int, mesh: Mesh | None) -> int:
    """``batch_size`` rounded up to a multiple of ``mesh``'s device count, so a batch shards evenly
    over its devices (the added rows are padding); unchanged without a mesh (``local_mesh()`` of one
    device). Every command rounds its batch here (``evaluate``, ``demo``, ``explain``, ``sanity``,
    :func:`shard_batch`, :class:`ShardedExplainer`).

    Examples:
      >>> round_to_devices(5, make_mesh(jax.devices()[:1]))
      5
    """
    if mesh is None:
        return int(batch_size)
    devices = mesh.devices.size
    return -(-int(batch_size) // devices) * devices


def shard_rows(arrays: Sequence[Any], mesh: Mesh | None) -> list:
    """Place each array's leading (batch) axis across ``mesh`` (NamedSharding); unchanged without a
    mesh or when the batch does not divide over its devices. jit then runs the computation SPMD
    over the devices; every image's result is the same as on one device (its key is its own)."""
    if mesh is None:
        return list(arrays)
    devices = mesh.devices.size
    if any(a is None or np.shape(a)[0] % devices for a in arrays):
        return list(arrays)
    sharding = batch_sharding(mesh)
    return [jax.device_put(a, sharding) for a in arrays]


def rows_per_call(n: int, batch_size: int | None, mesh: Mesh | None) -> int:
    """Rows per call of :func:`map_batches` for ``n`` rows: ``batch_size`` (None: all ``n``), at most
    ``n``, rounded up to the device count of ``mesh`` (:func:`round_to_devices`). A caller that asks
    for some of the batches counts them with it: ``num_steps(n, rows_per_call(n, batch_size, mesh))``."""
    return round_to_devices(min(batch_size or n, n), mesh)


def map_batches(fn, arrays: Sequence[Any], *, batch_size: int | None = None, shared: Sequence[Any] = (),
                mesh: Mesh | None | str = "local", batches: Iterable[int] | None = None,
                on_batch=None) -> Any:
    """``fn(*shared, *batch)`` over fixed-size batches of ``arrays``' leading axis: the one host-side
    batch loop of the commands (``demo``, ``explain``, ``sanity``, the model's class probabilities).

    Each batch is ``batch_size`` rows (rounded up to the device count, :func:`round_to_devices`);
    the last one is padded by repeating its last row (:func:`pad_rows`), so every call has one
    shape and ``fn`` (jit-compiled by the caller) compiles once; the rows are sharded over ``mesh``
    (:func:`shard_rows`), ``shared`` (e.g. the model) is replicated on its devices once, and the
    padding rows are dropped from the result. A row's result does not depend on its batch as long
    as ``fn`` treats rows independently (per-image keys: ``gj.keys``).

    Args:
      fn: ``fn(*shared, *batch) -> array (B, ...) or pytree of them``.
      arrays: arrays ``(N, ...)`` sharing ``N >= 1`` (host or device).
      batch_size: rows per call (None: all ``N`` in one call).
      shared: arguments passed whole to every call (replicated over the mesh).
      mesh: ``"local"`` (:func:`local_mesh`, the default), a mesh, or None (no sharding).
      batches: only these batch indices (0-based, in order); their rows' results are returned.
      on_batch: called with the number of real rows after each batch (progress bars).

    Returns:
      ``fn``'s output with every leaf a numpy array ``(M, ...)``: the real rows of the batches
      computed, in order (``M = N`` without ``batches``).

    Raises:
      ValueError: arrays of different lengths or none at all.

    Examples:
      >>> out = map_batches(lambda x: x * 2, [np.arange(5.0)], batch_size=2, mesh=None)
      >>> out.tolist()
      [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    lengths = {int(np.shape(a)[0]) for a in arrays}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"map_batches needs arrays sharing a leading axis of length >= 1; got lengths "
                         f"{sorted(lengths)}")
    (n,) = lengths
    mesh = local_mesh() if isinstance(mesh, str) and mesh == "local" else mesh
    size = rows_per_call(n, batch_size, mesh)
    if mesh is not None and shared:
        shared = replicate(tuple(shared), mesh)
    wanted = None if batches is None else set(batches)
    parts = []
    for index, start in enumerate(range(0, n, size)):
        if wanted is not None and index not in wanted:
            continue
        stop = min(start + size, n)
        padded, _ = pad_rows([a[start:stop] for a in arrays], size)
        out = fn(*shared, *shard_rows(padded, mesh))
        parts.append(jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[: stop - start], out))
        if on_batch is not None:
            on_batch(stop - start)
    if not parts:
        raise ValueError(f"map_batches: no batch among {sorted(wanted)} (there are {-(-n // size)})")
    return jax.tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *parts)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, other axes whole."""
    return NamedSharding(mesh, P(AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` (identical on all processes) on every device of ``mesh``."""
    sharding = replicated_sharding(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def shard_batch(arrays: Sequence[Any], mesh: Mesh, batch_size: int | None = None,
                valid: np.ndarray | None = None) -> tuple[list[jax.Array], jax.Array]:
    """Pad this process's rows and assemble global batch-sharded arrays.

    Single process: ``arrays`` are the whole batch. Multi-process: each process passes its own
    rows (``process_rows`` of the global batch), all of the same length.

    Args:
      arrays: host arrays ``(b, ...)`` with the same ``b`` (e.g. images ``(b, H, W, C)`` and
        labels ``(b,)``).
      mesh: from ``make_mesh``.
      batch_size: global batch size after padding (default: ``b * process_count`` rounded up
        to a multiple of the device count). Must be a multiple of the device count.
      valid: ``(b,)`` bool mask of real rows among ``arrays`` (default all real); combined with
        the padding mask.

    Returns:
      ``(global arrays (batch_size, ...) sharded over "batch", valid (batch_size,) bool global array)``.
    """
    arrays = [np.asarray(a) for a in arrays]
    b = arrays[0].shape[0]
    if any(a.shape[0] != b for a in arrays):
        raise ValueError(f"arrays must share their leading size; got {[a.shape for a in arrays]}")
    count = jax.process_count()
    devices = mesh.devices.size
    if batch_size is None:
        batch_size = round_to_devices(b * count, mesh)
    if batch_size % devices:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the device count {devices}")
    if batch_size % count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the process count {count}")
    local = batch_size // count
    own_valid = np.ones((b,), bool) if valid is None else np.asarray(valid, bool).reshape(b)
    padded = []
    for a in arrays:
        p, pad_mask = pad_rows(a, local)
        padded.append(p)
    mask = np.concatenate([own_valid, np.zeros((local - b,), bool)])
    sharding = batch_sharding(mesh)
    out = [jax.make_array_from_process_local_data(sharding, p, (batch_size,) + p.shape[1:]) for p in padded]
    valid_global = jax.make_array_from_process_local_data(sharding, mask, (batch_size,))
    return out, valid_global


def prefetch(batches: Iterable[Sequence[Any]], mesh: Mesh, batch_size: int, size: int = 2
             ) -> Iterator[tuple[list[jax.Array], jax.Array]]:
    """Pad and shard host batches ``size`` steps ahead, so transfers overlap the device's work.

    Args:
      batches: iterable of ``(images, labels)`` or ``(images, labels, valid)`` host arrays
        (this process's rows; see ``shard_batch``).
      mesh: from ``make_mesh``.
      batch_size: fixed global batch size (every batch, the ragged last one too, is padded to it).
      size: how many batches are in flight ahead of the consumer.

    Yields:
      ``(global arrays, valid)`` as ``shard_batch`` returns them.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1; got {size}")
    queue: collections.deque = collections.deque()
    iterator = iter(batches)

    def enqueue(count):
        for item in itertools.islice(iterator, count):
            item = tuple(item)
            valid = item[2] if len(item) > 2 else None
            queue.append(shard_batch(item[:2], mesh, batch_size, valid))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def _allgather(x):
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)


def gather(x: Any) -> Any:
    """Bring a (possibly multi-host) global array, or a pytree of them, to host memory.

    Every process receives the full array (process 0 is the one that usually writes it).

    Returns:
      numpy arrays of the global shapes.
    """
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, x)
    return jax.tree_util.tree_map(lambda a: np.asarray(_allgather(a)), x)


# ---------------------------------------------------------------------------- the sharded explainer


class ShardedExplainer:
    """An explainer compiled once, with the batch axis sharded over a 1-D device mesh.

    Args:
      method: one of ``gag_jax.METHODS``.
      model: a ``gj.ModelFunctions`` (its weights are jit arguments, replicated over the mesh once;
        its input scaling is used), an NNX module, a flax linen module with ``variables``, a
        function ``apply(variables, images)`` with ``variables``, or a plain ``images -> logits``
        (weights it reads from outside are compile-time constants).
      variables: the variables of a linen module / ``apply`` function (see :func:`gag_jax.model.as_model_functions`).
      batch_size: fixed global batch size every call is padded to (a multiple of the device
        count); ``None``: the first call's batch rounded up to a multiple of the device count.
      mesh: a 1-D mesh with axis ``"batch"`` (default ``make_mesh()``: all devices).
      postprocess: ``(B, H, W)`` maps in [0, 1] (True) or raw ``(B, H, W, C)`` (False).
      donate: donate the padded image buffer to the computation (only useful, and only done,
        when the output has the images' shape, i.e. ``postprocess=False``).
      **options: method options (``n``, ``noise_level``, ``percentile``, ``chunk_size`` ...).

    Attributes:
      traces: how many times the computation was traced (compiles happen only on traces).

    Call ``explainer(images (b, H, W, C), labels (b,), key)`` with ``b <= batch_size``: returns a
    numpy ``(b, H, W)`` array (all processes receive the whole result); in a multi-process job use
    ``explain_local`` with each process's own rows.
    """

    def __init__(self, method: str, model, *, variables: Any = None, batch_size: int | None = None,
                 mesh: Mesh | None = None, postprocess: bool = True, donate: bool = True, **options):
        self.method = method
        self.model = model
        self.mesh = make_mesh() if mesh is None else mesh
        if self.mesh.axis_names != (AXIS,):
            raise ValueError(f"mesh must be 1-D with axis {AXIS!r}; got axes {self.mesh.axis_names}")
        self.batch_size = batch_size
        if batch_size is not None:
            self._check_batch_size(batch_size)
        self.postprocess = postprocess
        self.traces = 0
        if not jax.config.jax_threefry_partitionable:
            warnings.warn("jax_threefry_partitionable is off: the noise of a row then depends on the padded batch "
                          "size and the sharding, so padded / sharded maps differ from gj.explain's", stacklevel=2)
        self._fn = explainers_lib.explainer_fn(method, postprocess=postprocess, **options)
        self.model = replicate(as_model_functions(model, variables), self.mesh)
        batch, repl = batch_sharding(self.mesh), replicated_sharding(self.mesh)
        self._donate = bool(donate and not postprocess)

        def global_fn(model, images, labels, key):
            self.traces += 1  # Python side effect: runs once per trace, never per call
            return self._fn(model, images, labels, key)

        self._jitted = jax.jit(global_fn, in_shardings=(repl, batch, batch, repl), out_shardings=batch,
                               donate_argnums=(1,) if self._donate else ())

    @property
    def variables(self):
        """The model's weights, replicated over the mesh."""
        return self.model.variables

    def _check_batch_size(self, batch_size: int) -> None:
        devices = self.mesh.devices.size
        if batch_size < 1 or batch_size % devices or batch_size % jax.process_count():
            raise ValueError(f"batch_size must be a positive multiple of the device count {devices} "
                             f"(and of the process count {jax.process_count()}); got {batch_size}")

    def step(self, images: jax.Array, labels: jax.Array, key: jax.Array) -> jax.Array:
        """Run on global, already sharded arrays (``shard_batch``); returns the global device array.

        Args:
          images: ``(batch_size, H, W, C)`` float32, batch-sharded (donated when ``donate``).
          labels: ``(batch_size,)`` int32, batch-sharded.
          key: PRNG key (same on all processes).

        Returns:
          ``(batch_size, H, W)`` (or ``(batch_size, H, W, C)``) float32 sharded over ``"batch"``.
        """
        return self._jitted(self.model, images, labels, replicate(key, self.mesh))

    def lower(self, images_shape: Sequence[int], labels_shape: Sequence[int] | None = None):
        """``jax.stages.Lowered`` for global inputs of these shapes (``.compile().memory_analysis()``,
        ``.cost_analysis()``)."""
        batch, repl = batch_sharding(self.mesh), replicated_sharding(self.mesh)
        images = jax.ShapeDtypeStruct(tuple(images_shape), jnp.float32, sharding=batch)
        labels = jax.ShapeDtypeStruct(tuple(labels_shape or images_shape[:1]), jnp.int32, sharding=batch)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl)
        return self._jitted.lower(self.model, images, labels, key)

    def shard(self, images, labels, valid=None):
        """Pad and shard host arrays: ``([images, labels], valid)`` (see ``shard_batch``)."""
        b = np.shape(images)[0]
        if self.batch_size is None:
            self.batch_size = round_to_devices(b * jax.process_count(), self.mesh)
            self._check_batch_size(self.batch_size)
        return shard_batch([np.asarray(images, np.float32), np.asarray(labels, np.int32)], self.mesh,
                           self.batch_size, valid)

    def explain_local(self, images, labels, key, valid=None) -> np.ndarray:
        """Explain this process's rows; gather the valid rows of the global batch to every process.

        Args:
          images: ``(b, H, W, C)`` this process's rows (``b <= batch_size // process_count``).
          labels: ``(b,)``.
          key: PRNG key (the same on every process).
          valid: optional ``(b,)`` bool: False for padding rows (``process_indices``).

        Returns:
          numpy ``(V, H, W)`` (or ``(V, H, W, C)``): the valid rows of the global batch, in
          global (process) order.
        """
        (gimages, glabels), gvalid = self.shard(images, labels, valid)
        return self._fetch(self.step(gimages, glabels, key), gvalid)

    def explain_batches(self, batches: Iterable[Sequence[Any]], key: jax.Array, prefetch_size: int = 2
                        ) -> Iterator[np.ndarray]:
        """Explain a stream of batches with input prefetch; yields each batch's valid maps (numpy).

        Batch ``k + 1`` is dispatched before batch ``k``'s result is fetched, and inputs are
        sharded ``prefetch_size`` batches ahead, so the device does not wait for the host.
        Every batch uses the same ``key`` (like calling ``gj.explain(..., key=key)`` per batch).

        Args:
          batches: iterable of ``(images, labels)`` or ``(images, labels, valid)`` of this
            process's rows (at most ``batch_size // process_count`` each).
          key: PRNG key (the same on every process).

        Yields:
          numpy ``(V, H, W)`` maps of the valid rows of each global batch, in order.
        """
        if self.batch_size is None:
            raise ValueError("explain_batches needs a fixed batch_size")
        pending = None
        for (images, labels), valid in prefetch(batches, self.mesh, self.batch_size, prefetch_size):
            out = self.step(images, labels, key)  # dispatched asynchronously
            if pending is not None:
                yield self._fetch(*pending)
            pending = (out, valid)
        if pending is not None:
            yield self._fetch(*pending)

    @staticmethod
    def _fetch(out, valid) -> np.ndarray:
        out_host, valid_host = gather((out, valid))
        return out_host[np.asarray(valid_host, bool)]

    def __call__(self, images, labels, key) -> np.ndarray:
        """Explain a batch ``(b, H, W, C)``, ``b <= batch_size``; returns numpy ``(b, H, W)`` maps."""
        return self.explain_local(images, labels, key)


@functools.lru_cache(maxsize=16)
def _cached(method, options, model_structure, postprocess, mesh, batch_size):
    """A ``ShardedExplainer`` per model *structure* (apply functions, not weights); ``explain_sharded``
    sets its ``model`` (the weights) at every call, so new weights reuse the compiled program."""
    del model_structure  # part of the cache key only
    return ShardedExplainer(method, lambda x: x, batch_size=batch_size, mesh=mesh, postprocess=postprocess,
                            **dict(options))


def explain_sharded(method: str, model, images, labels, key, *, mesh: Mesh | None = None,
                    batch_size: int | None = None, postprocess: bool = True, **options) -> np.ndarray:
    """``gj.explain`` with the batch sharded over every device (padding a ragged batch).

    Args:
      method: one of ``gag_jax.METHODS``.
      model: a ``gj.ModelFunctions`` (the compiled program is cached per method, options, mesh,
        batch size and the model's apply functions; its weights are arguments), or ``images -> logits``.
      images: ``(b, H, W, C)`` float32, normalised; labels ``(b,)`` int; key: PRNG key.
      batch_size: fixed global batch to pad to (default: ``b`` rounded up to the device count);
        pass your dataset's batch size so its ragged last batch reuses the compiled program.
      postprocess, **options: as in ``gj.explain``.

    Returns:
      numpy ``(b, H, W)`` maps equal to ``gj.explain(method, model, images, labels, key=key, ...)``.
    """
    mesh = make_mesh() if mesh is None else mesh
    if batch_size is None:
        batch_size = round_to_devices(np.shape(images)[0] * jax.process_count(), mesh)
    options = explainers_lib.resolve_options(method, options)
    model = as_model_functions(model)
    sharded = _cached(method, options, jax.tree_util.tree_structure(model), postprocess, mesh, batch_size)
    sharded.model = replicate(model, mesh)
    return sharded(images, labels, key)
