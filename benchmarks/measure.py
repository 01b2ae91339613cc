"""Measurements shared by ``benchmarks.run`` (the sweep) and ``benchmarks.gpu_check`` (the timed check).

Each ``bench_*`` function measures one thing on one device and returns a plain dict (a row):

* :func:`bench_gag`: gag-jax Guided AbsoluteGrad throughput, compile time, memory and MFU;
* :func:`bench_torch`: the authors'-style PyTorch GAG (``benchmarks.torch_reference``);
* :func:`bench_metrics`: RCAP and DAUC + IAUC, ``gj.metrics`` vs the per-image PyTorch loop;
* :func:`temp_memory`: the compiled GAG's temporary memory for several n at one chunk size;

and :func:`gag_rows` runs the GAG grid (batch x chunk x dtype, torch once per batch), optionally
inside a :class:`Budget`. Benchmarks are repository tools: they are not installed with the
package; :func:`in_checkout` says whether this file sits in a source checkout (then
``benchmarks/RESULTS.md`` is the checkout's results log).
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import torch_reference
from gag_jax import distributed as gd
from gag_jax import gradients

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Dense peak TFLOP/s per device. float32 is the TF32 tensor-core peak: XLA's default precision
# runs float32 convolutions and matmuls on TF32 tensor cores on these GPUs.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bfloat16": 756.0, "float32": 378.0},
    "H100 NVL": {"bfloat16": 835.0, "float32": 417.5},
    "H100": {"bfloat16": 989.4, "float32": 494.7},  # SXM (HBM3)
    "H200": {"bfloat16": 989.4, "float32": 494.7},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
}


def in_checkout() -> bool:
    """True when this file sits in a gag-jax source checkout (``pyproject.toml`` and ``gag_jax/`` beside it)."""
    return (ROOT / "pyproject.toml").is_file() and (ROOT / "gag_jax").is_dir() and RESULTS.is_file()


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
    """Peak dense TFLOP/s of a device kind (e.g. ``"NVIDIA H100 80GB HBM3"``) for ``dtype``; None if unknown."""
    for name, peaks in PEAK_TFLOPS.items():  # most specific names first
        if all(part in device_kind for part in name.split()):
            return peaks.get(dtype)
    return None


def auto_chunk(n: int, batch: int, max_items: int = 256) -> int:
    """Largest divisor ``c`` of n with ``c * batch <= max_items`` (at least 1): samples per vmapped
    chunk, so one chunk is a model batch of at most ``max_items`` images and no sample is padding."""
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * batch <= max_items:
            best = c
    return best


class Budget:
    """A global wall-clock budget: parts ask :meth:`allows` before they start and are skipped with a
    note (rather than overrunning) when the time left is less than their estimate.

    Args:
      seconds: the whole budget (None: unlimited).
    """

    def __init__(self, seconds: Optional[float] = None):
        self.start = time.monotonic()
        self.seconds = seconds

    def used(self) -> float:
        """Seconds since the budget started."""
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left (``inf`` when unlimited)."""
        return math.inf if self.seconds is None else self.seconds - self.used()

    def allows(self, need_s: float, what: str, notes: list[str], reserve_s: float = 0.0) -> bool:
        """True when ``need_s`` seconds fit with ``reserve_s`` kept for later parts; else appends a note."""
        left = self.left() - reserve_s
        if left >= need_s:
            return True
        kept = f", {reserve_s:.0f} s kept for later parts" if reserve_s else ""
        notes.append(f"{what}: skipped by the time budget ({max(self.left(), 0.0):.0f} s left{kept}; "
                     f"needs about {need_s:.0f} s).")
        return False


# ---------------------------------------------------------------------------- low-level helpers


def _flops(stage) -> float:
    """FLOPs from a ``Lowered`` or ``Compiled`` stage's ``cost_analysis()`` (nan when unavailable)."""
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return -1
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def peak_device_bytes(device) -> Optional[int]:
    """The device allocator's high-water mark (``memory_stats()['peak_bytes_in_use']``); None where absent."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, result)`` of one call of ``fn``, its arrays waited for (``jax.block_until_ready``)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (``jax.block_until_ready``)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_outputs(out_dir, stem: str, markdown: str, data: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``DIR/stem.md`` and ``DIR/stem.json`` (creating DIR); returns both paths."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    md.write_text(markdown, encoding="utf-8")
    js.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return md, js


def torch_description() -> str:
    """``"torch X on DEVICE (N threads)"`` or ``"torch absent"``."""
    try:
        import torch
    except ImportError:
        return "torch absent"
    return f"torch {torch.__version__} on {torch_reference.device()} ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------- models


def build_model(name: str, size: int, seed: int, with_torch: bool):
    """``(flax constructor(dtype) -> module, variables, torch model or None, num_classes, note)``.

    ``resnet50`` with torch: torchvision's ResNet-50 (random weights, seeded) ported to Flax, so both
    frameworks run the same weights; without torch: the Flax ResNet-50, random init. ``tiny``:
    ``ResNetTiny`` (10 classes, no torch counterpart).
    """
    from gag_jax.models import resnet

    if name == "resnet50":
        template = resnet.ResNet50()
        if with_torch:
            from gag_jax.models import porter

            torch_model = torch_reference.resnet50(seed=seed)
            variables = porter.convert(torch_model.state_dict(), template, resnet.torch_prefix, (1, size, size, 3))
            variables = jax.tree_util.tree_map(jnp.asarray, variables)
            return (lambda dtype: resnet.ResNet50(dtype=dtype)), variables, torch_model, 1000, \
                "torchvision resnet50, random weights (seeded), ported to Flax"
        variables = template.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))
        return (lambda dtype: resnet.ResNet50(dtype=dtype)), variables, None, 1000, "Flax ResNet-50, random init"
    if name == "tiny":
        template = resnet.ResNetTiny()
        variables = template.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))
        return (lambda dtype: resnet.ResNetTiny(dtype=dtype)), variables, None, 10, \
            "ResNetTiny (no torch counterpart: baseline skipped)"
    raise ValueError(f"unknown model {name!r}; expected resnet50 or tiny")


def gradient_flops(module, variables, size: int) -> float:
    """Model FLOPs of one gradient pass (forward + backward of the target logit) for one ``size``² image,
    from the lowered (not compiled) program's cost analysis; linear in the batch."""
    grad = jax.jit(lambda v, x, y: gradients.logit_gradient()(functools.partial(module.apply, v), x, y))
    one = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    lowered = grad.lower(variables, one, jax.ShapeDtypeStruct((1,), jnp.int32))
    try:
        return _flops(lowered)
    except Exception:  # noqa: BLE001 - older jax: only the compiled stage has a cost analysis
        return _flops(lowered.compile())


# ---------------------------------------------------------------------------- measurements


def bench_gag(make_module, variables, device, *, batch: int, size: int, n: int, dtype: str,
              chunk: Optional[int], repeats: int, seed: int, flops_per_grad: Optional[float] = None) -> dict:
    """Time gag-jax GAG on one device; returns a row dict.

    Args:
      make_module: ``dtype -> flax module``.
      variables: its variables (on ``device``).
      device: a ``jax.Device``.
      batch, size, n, dtype, chunk: images per call, input side, noisy samples, compute dtype name,
        samples per vmapped chunk (None: all n).
      repeats: timed runs (median, after one warm-up).
      seed: images, labels and noise.
      flops_per_grad: :func:`gradient_flops` (computed here when None).

    Returns:
      ``dict(batch, dtype, chunk, seconds, expl_s, compile_s, mem_bytes, peak_bytes, gflop_per_expl, mfu)``;
      ``mem_bytes`` is the compiled program's arguments + outputs + temporaries, ``peak_bytes`` the
      device allocator's high-water mark so far in this process (None without ``memory_stats()``),
      ``mfu`` None where the device's peak is unknown.
    """
    mesh = gd.make_mesh([device])
    module = make_module(DTYPES[dtype])
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=batch, mesh=mesh,
                                  n=n, chunk_size=chunk, donate=False)  # the timed loop reuses its inputs
    start = time.perf_counter()
    compiled = sharded.lower((batch, size, size, 3)).compile()
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, 10, size=batch)
    (gimages, glabels), _ = sharded.shard(images, labels)
    key = gd.replicate(jax.random.PRNGKey(seed), mesh)
    seconds = median_seconds(lambda: compiled(sharded.model, gimages, glabels, key), repeats)
    if flops_per_grad is None:
        flops_per_grad = gradient_flops(make_module(jnp.float32), variables, size)
    model_flops = flops_per_grad * n * batch
    peak = peak_tflops(device.device_kind, dtype)
    return dict(batch=batch, dtype=dtype, chunk=chunk if chunk is not None else n, seconds=seconds,
                expl_s=batch / seconds, compile_s=compile_s, mem_bytes=_memory_bytes(compiled),
                peak_bytes=peak_device_bytes(device), gflop_per_expl=model_flops / batch / 1e9,
                mfu=(model_flops / seconds / (peak * 1e12)) if peak else None)


def bench_torch(torch_model, *, batch: int, size: int, n: int, repeats: int, seed: int,
                chunk: Optional[int]) -> dict:
    """Time the authors'-style PyTorch GAG on the same batch size; returns ``{"expl_s", "device"}``."""
    import torch

    dev = torch_reference.device()
    model = torch_model.to(dev).eval()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.standard_normal((batch, 3, size, size), dtype=np.float32)).to(dev)
    labels = torch.from_numpy(rng.integers(0, 10, size=batch)).to(dev)
    torch.manual_seed(seed)

    def once():
        out = torch_reference.guided_absolute_grad(model, images, labels, n=n, chunk=chunk)
        torch_reference.synchronize(dev)
        return out

    once()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # hand cached blocks back before the next JAX program
    return {"expl_s": batch / statistics.median(times), "device": str(dev)}


def _combined(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """Images/s of running two metrics one after the other, from each one's images/s."""
    return None if not a or not b else 1.0 / (1.0 / a + 1.0 / b)


def bench_metrics(make_module, variables, torch_model, device, *, batch: int, size: int, repeats: int,
                  seed: int, chunk: Optional[int]) -> dict:
    """RCAP and DAUC + IAUC on one batch: gag-jax (batched, jitted) vs the per-image PyTorch loop.

    Returns:
      ``dict(batch, rcap_img_s, di_img_s, jax_img_s, jax_first_s, torch_rcap_img_s, torch_di_img_s,
      torch_img_s)``: images/s of RCAP, of DAUC + IAUC and of the three together (``jax_first_s``:
      the first call of both, compile included); the ``torch_*`` entries are None without a torch model.
    """
    import gag_jax as gj

    module = make_module(jnp.float32)
    per_call = {} if chunk is None else {"copies_per_call": chunk}  # None: the metrics' own default
    rng = np.random.default_rng(seed)
    images_np = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels_np = rng.integers(0, 10, size=batch)
    saliency_np = rng.random((batch, size, size), dtype=np.float32)
    with jax.default_device(device):
        logits = gj.ModelFunctions.from_module(module, jax.device_put(variables, device), mean=gj.IMAGENET_MEAN,
                                               std=gj.IMAGENET_STD)
        images, labels, saliency = (jax.device_put(a, device) for a in (images_np, labels_np, saliency_np))

        def rcap():
            return gj.metrics.rcap(logits, images, labels, saliency, **per_call)["rcap"]

        def di():
            d = gj.metrics.deletion_insertion(logits, images, labels, saliency, **per_call)
            return d["dauc"], d["iauc"]

        start = time.perf_counter()
        jax.block_until_ready((rcap(), di()))
        first_s = time.perf_counter() - start
        rcap_s = median_seconds(rcap, repeats, warmup=0)
        di_s = median_seconds(di, repeats, warmup=0)
    row = dict(batch=batch, rcap_img_s=batch / rcap_s, di_img_s=batch / di_s, jax_first_s=first_s,
               torch_rcap_img_s=None, torch_di_img_s=None)
    if torch_model is not None:
        import torch

        dev = torch_reference.device()
        model = torch_model.to(dev).eval()
        t_images = torch.from_numpy(np.ascontiguousarray(images_np.transpose(0, 3, 1, 2))).to(dev)
        t_labels = torch.from_numpy(labels_np).to(dev)
        t_sal = torch.from_numpy(saliency_np)
        torch_reference.metrics_loop(model, t_images[:1], t_labels[:1], t_sal[:1])  # warm-up

        def loop_seconds(fn):
            times = []
            for _ in range(max(1, repeats // 2)):
                start = time.perf_counter()
                fn(model, t_images, t_labels, t_sal)
                torch_reference.synchronize(dev)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        row["torch_rcap_img_s"] = batch / loop_seconds(torch_reference.rcap_loop)
        row["torch_di_img_s"] = batch / loop_seconds(torch_reference.deletion_insertion_loop)
    row["jax_img_s"] = _combined(row["rcap_img_s"], row["di_img_s"])
    row["torch_img_s"] = _combined(row["torch_rcap_img_s"], row["torch_di_img_s"])
    return row


def temp_memory(make_module, variables, device, *, batch: int, size: int, ns: Sequence[int], chunk: int,
                dtype: str) -> list[tuple[int, int]]:
    """``[(n, temp bytes)]`` of the compiled GAG at a fixed chunk size (streaming: all equal)."""
    mesh = gd.make_mesh([device])
    module = make_module(DTYPES[dtype])
    out = []
    for n in ns:
        sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=batch, mesh=mesh, n=n,
                                      chunk_size=chunk)
        analysis = sharded.lower((batch, size, size, 3)).compile().memory_analysis()
        out.append((n, int(analysis.temp_size_in_bytes) if analysis is not None else -1))
    return out


def gag_rows(make_module, variables, torch_model, device, *, configs: Sequence[tuple[int, Optional[int]]],
             dtypes: Sequence[str], size: int, n: int, repeats: int, seed: int, torch_chunk: Optional[int],
             notes: list[str], budget: Optional[Budget] = None, reserve_s: float = 0.0, estimate_s: float = 0.0,
             log: Callable[[str], None] = print) -> list[dict]:
    """GAG rows for every ``(batch, chunk)`` x dtype, each with the torch baseline of its batch.

    The torch loop runs once per batch (after that batch's first GAG row) and its explanations/s go
    into ``torch_expl_s`` of every row of that batch. A row that fails (e.g. out of memory) becomes
    ``{..., "error": text}`` and the grid goes on. With a ``budget``, a row starts only when the time
    left (less ``reserve_s``) exceeds the wall time of the previous row (compile included; ``estimate_s``
    for the first), else it is skipped with a note.
    """
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    flops_per_grad = None
    rows: list[dict] = []
    torch_cache: dict[int, Optional[float]] = {}
    estimate = estimate_s
    for batch, chunk in configs:
        for dtype in dtypes:
            what = f"GAG batch {batch} {dtype}"
            if budget is not None and not budget.allows(estimate, what, notes, reserve_s):
                rows.append(dict(batch=batch, dtype=dtype, chunk=chunk, error="skipped (time budget)"))
                continue
            start = time.perf_counter()
            try:
                if flops_per_grad is None:
                    flops_per_grad = gradient_flops(make_module(jnp.float32), variables, size)
                row = bench_gag(make_module, variables, device, batch=batch, size=size, n=n, dtype=dtype,
                                chunk=chunk, repeats=repeats, seed=seed, flops_per_grad=flops_per_grad)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: keep going
                row = dict(batch=batch, dtype=dtype, chunk=chunk, error=f"failed: {type(e).__name__}: {str(e)[:80]}")
                rows.append(row)
                log(f"{what}: {row['error']}")
                continue
            if torch_model is not None:
                if batch not in torch_cache and (budget is None or budget.allows(
                        row["compile_s"] / 2, f"torch baseline at batch {batch}", notes, reserve_s)):
                    try:
                        torch_cache[batch] = bench_torch(torch_model, batch=batch, size=size, n=n, repeats=repeats,
                                                         seed=seed, chunk=torch_chunk)["expl_s"]
                    except Exception as e:  # noqa: BLE001
                        torch_cache[batch] = None
                        notes.append(f"torch baseline failed at batch {batch}: {type(e).__name__}: {str(e)[:80]}")
                row["torch_expl_s"] = torch_cache.get(batch)
            row["wall_s"] = time.perf_counter() - start
            estimate = row["wall_s"]
            rows.append(row)
            log(f"{what}: {row['expl_s']:.2f} expl/s, compile {row['compile_s']:.1f} s")
    return rows


# ---------------------------------------------------------------------------- formatting


def mib(x: Optional[float]) -> str:
    """Bytes as MiB text (``"n/a"`` for None or negative)."""
    return "n/a" if x is None or x < 0 else f"{x / 2 ** 20:,.0f}" if x >= 2 ** 24 else f"{x / 2 ** 20:,.2f}"


def num(x: Optional[float], fmt: str = "{:,.1f}") -> str:
    """``fmt.format(x)``, or ``"n/a"`` for None."""
    return "n/a" if x is None else fmt.format(x)


def print_and_append(table: str, append: bool) -> str:
    """Print a benchmark's Markdown ``table``; with ``append``, add it to ``benchmarks/RESULTS.md``
    (only from a source checkout)."""
    print(table)
    if append:
        if not in_checkout():
            raise SystemExit("--append writes benchmarks/RESULTS.md of a source checkout; run from one")
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write("\n" + table)
    return table


PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")


def photo_files(folder: str | os.PathLike, count: int | None = None) -> list[str]:
    """The first ``count`` photos of ``folder`` in name order (read in place, never copied)."""
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(PHOTO_EXTENSIONS))
    return [os.path.join(folder, f) for f in names[:count]]


def real_photos(folder: str | os.PathLike, count: int, size: int, model):
    """``(images (count, size, size, 3) jnp, names)``: the first ``count`` photos of ``folder`` prepared
    with ``model``'s own input scaling (``gj.data.load_image_files``)."""
    import jax.numpy as jnp

    import gag_jax as gj

    _, images, names = gj.data.load_image_files(photo_files(folder, count), size, model=model)
    return jnp.asarray(images), names


def latest_section(heading_prefix: str, results: str | os.PathLike = RESULTS) -> str:
    """The newest section of ``RESULTS.md`` whose ``## `` heading starts with ``heading_prefix`` (heading
    and body, up to the next ``## `` heading): what a benchmark wrote, for the README."""
    text = pathlib.Path(results).read_text(encoding="utf-8")
    sections = ["## " + part for part in text.split("\n## ")[1:]]
    found = [s for s in sections if s[3:].startswith(heading_prefix)]
    if not found:
        raise SystemExit(f"{results}: no section whose heading starts with {heading_prefix!r}")
    return found[-1].strip() + "\n"


def main(argv=None) -> int:
    """``python -m benchmarks.measure readme HEADING SECTION [README]``: copy the newest RESULTS.md section
    whose heading starts with HEADING into README's section SECTION (between its markers)."""
    import argparse

    from gag_jax.experiments.readme import replace_section

    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("readme", help="copy a RESULTS.md section into the README")
    p.add_argument("heading")
    p.add_argument("section")
    p.add_argument("readme", nargs="?", default=str(ROOT / "README.md"))
    args = parser.parse_args(argv)
    body = latest_section(args.heading).split("\n", 1)[1].strip()  # the heading stays the README's own
    replace_section(args.readme, args.section, body)
    print(f"wrote the newest '{args.heading}...' section of {RESULTS.name} into {args.readme} ({args.section})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
