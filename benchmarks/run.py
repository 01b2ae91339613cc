"""The gag-jax benchmark: GAG throughput, memory, compile time and MFU vs the authors'-style PyTorch loop.

Run ``python -m benchmarks.run`` (or ``gag-jax bench``). In one process, on one device, it times:

1. gag-jax Guided AbsoluteGrad (n = 20) on ResNet-50 with random weights, float32 and bfloat16
   compute (gradient statistics always accumulate in float32), at several batch sizes:
   explanations/s (median of ``--repeats`` timed runs after a warm-up, ``jax.block_until_ready``),
   compile time (ahead-of-time ``lower().compile()``), memory (the compiled program's
   ``memory_analysis()``: arguments + outputs + temporaries; plus the device's
   ``peak_bytes_in_use`` where ``memory_stats()`` exists), and model-FLOP utilisation: the FLOPs of
   one gradient pass from the compiled HLO ``cost_analysis()`` times n, per second, over the
   device's peak (table ``PEAK_TFLOPS``; "n/a" for CPUs and unknown devices);
2. the PyTorch baseline written like the authors' code (``benchmarks.torch_reference``) on the same
   weights (a torchvision ResNet-50 ported with ``models.porter``) and the same batch;
3. RCAP + DAUC + IAUC on a batch: ``gj.metrics`` (batched, jitted) vs the per-image PyTorch loop;
4. the compiled GAG's temporary memory for n = 20 and n = 200 at a fixed chunk size (streaming:
   equal).

It prints Markdown tables and appends them to ``benchmarks/RESULTS.md`` (``--results``).
On a CPU use small sizes, e.g. ``--size 64 --batch-sizes 2 --n 20``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import torch_reference
from gag_jax import distributed as gd
from gag_jax import gradients

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
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


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
    """Peak dense TFLOP/s of a device kind (e.g. ``"NVIDIA H100 80GB HBM3"``) for ``dtype``; None if unknown."""
    for name, peaks in PEAK_TFLOPS.items():  # most specific names first
        if all(part in device_kind for part in name.split()):
            return peaks.get(dtype)
    return None


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return -1
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _peak_device_bytes(device) -> Optional[int]:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def auto_chunk(n: int, batch: int, max_items: int = 256) -> int:
    """Largest divisor ``c`` of n with ``c * batch <= max_items`` (at least 1): samples per vmapped
    chunk, so one chunk is a model batch of at most ``max_items`` images and no sample is padding."""
    best = 1
    for c in range(1, n + 1):
        if n % c == 0 and c * batch <= max_items:
            best = c
    return best


# ---------------------------------------------------------------------------- models


def build_model(name: str, size: int, seed: int, with_torch: bool):
    """``(flax constructor(dtype) -> module, variables, torch model or None, num_classes, note)``."""
    from models import resnet

    if name == "resnet50":
        template = resnet.ResNet50()
        if with_torch:
            from models import porter

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


# ---------------------------------------------------------------------------- measurements


def bench_gag(make_module, variables, device, *, batch: int, size: int, n: int, dtype: str,
              chunk: Optional[int], repeats: int, seed: int) -> dict:
    """Time gag-jax GAG on one device; returns a row dict."""
    mesh = gd.make_mesh([device])
    module = make_module(DTYPES[dtype])
    sharded = gd.ShardedExplainer("gag", module, variables=variables, batch_size=batch, mesh=mesh,
                                  n=n, chunk_size=chunk)
    start = time.perf_counter()
    compiled = sharded.lower((batch, size, size, 3)).compile()
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, 10, size=batch)
    (gimages, glabels), _ = sharded.shard(images, labels)
    key = gd.replicate(jax.random.PRNGKey(seed), mesh)
    seconds = _median_seconds(lambda: compiled(sharded.variables, gimages, glabels, key), repeats)

    # Model FLOPs: one gradient pass (forward + backward of the target logits), from the compiled
    # HLO's cost analysis, at batch 1 (linear in the batch), times n samples per image.
    grad = jax.jit(lambda v, x, y: gradients.logit_gradient()(functools.partial(module.apply, v), x, y))
    one = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    flops_per_grad = _flops(grad.lower(variables, one, jax.ShapeDtypeStruct((1,), jnp.int32)).compile())
    model_flops = flops_per_grad * n * batch
    peak = peak_tflops(device.device_kind, dtype)
    return dict(batch=batch, dtype=dtype, chunk=chunk if chunk is not None else n, seconds=seconds,
                expl_s=batch / seconds, compile_s=compile_s, mem_bytes=_memory_bytes(compiled),
                peak_bytes=_peak_device_bytes(device), gflop_per_expl=model_flops / batch / 1e9,
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
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"expl_s": batch / seconds, "device": str(dev)}


def bench_metrics(make_module, variables, torch_model, device, *, batch: int, size: int, repeats: int,
                  seed: int, chunk: Optional[int]) -> dict:
    """RCAP + DAUC + IAUC on one batch: gag-jax (batched, jitted) vs the per-image torch loop."""
    import gag_jax as gj
    from models import model_functions

    module = make_module(jnp.float32)
    rng = np.random.default_rng(seed)
    images_np = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels_np = rng.integers(0, 10, size=batch)
    saliency_np = rng.random((batch, size, size), dtype=np.float32)
    with jax.default_device(device):
        variables_d = jax.device_put(variables, device)
        logits = model_functions(module, variables_d)["logits"]
        images, labels, saliency = (jax.device_put(a, device) for a in (images_np, labels_np, saliency_np))

        def run():
            r = gj.metrics.rcap(logits, images, labels, saliency, batch_size=chunk)
            d = gj.metrics.deletion_insertion(logits, images, labels, saliency, batch_size=chunk)
            return r["rcap"], d["dauc"], d["iauc"]

        start = time.perf_counter()
        jax.block_until_ready(run())
        first_s = time.perf_counter() - start
        seconds = _median_seconds(run, repeats, warmup=0)
    row = dict(batch=batch, jax_img_s=batch / seconds, jax_first_s=first_s, torch_img_s=None)
    if torch_model is not None:
        import torch

        dev = torch_reference.device()
        model = torch_model.to(dev).eval()
        t_images = torch.from_numpy(np.ascontiguousarray(images_np.transpose(0, 3, 1, 2))).to(dev)
        t_labels = torch.from_numpy(labels_np).to(dev)
        t_sal = torch.from_numpy(saliency_np)
        torch_reference.metrics_loop(model, t_images[:1], t_labels[:1], t_sal[:1])  # warm-up
        times = []
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            torch_reference.metrics_loop(model, t_images, t_labels, t_sal)
            torch_reference.synchronize(dev)
            times.append(time.perf_counter() - start)
        row["torch_img_s"] = batch / statistics.median(times)
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


# ---------------------------------------------------------------------------- report


def _mib(x) -> str:
    return "n/a" if x is None or x < 0 else f"{x / 2 ** 20:,.0f}" if x >= 2 ** 24 else f"{x / 2 ** 20:,.2f}"


def _num(x, fmt="{:,.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def report(meta: dict, rows: list[dict], metrics: Optional[dict], memory: list[tuple[int, int]],
           notes: list[str]) -> str:
    """Markdown section for one benchmark run."""
    lines = [
        f"## {meta['device']} ({meta['platform']}), {meta['date']}",
        "",
        f"- model: {meta['model_note']}; input {meta['size']}x{meta['size']}; GAG n = {meta['n']}, "
        f"noise 0.15, p = 0.85; median of {meta['repeats']} runs after a warm-up",
        f"- jax {jax.__version__}, {meta['torch']}; host: {meta['host']}",
        f"- baseline: {meta['baseline']}",
        "",
        "| device | date | model | size | batch | dtype | chunk | expl/s | compile s | mem MiB | peak dev MiB "
        "| GFLOP/expl | MFU | torch expl/s | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {meta['device']} | {meta['date']} | {meta['model']} | {meta['size']} | {r['batch']} "
                         f"| {r['dtype']} | {r.get('chunk', '')} | {r['error']} | | | | | | | |")
            continue
        ratio = r["expl_s"] / r["torch_expl_s"] if r.get("torch_expl_s") else None
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {meta['device']} | {meta['date']} | {meta['model']} | {meta['size']} | {r['batch']} | {r['dtype']} "
            f"| {r['chunk']} | {r['expl_s']:,.2f} | {r['compile_s']:.1f} | {_mib(r['mem_bytes'])} "
            f"| {_mib(r['peak_bytes'])} | {r['gflop_per_expl']:,.3g} | {mfu} "
            f"| {_num(r.get('torch_expl_s'), '{:,.2f}')} | {_num(ratio, '{:.2f}x')} |")
    if metrics is not None:
        ratio = metrics["jax_img_s"] / metrics["torch_img_s"] if metrics.get("torch_img_s") else None
        lines += [
            "",
            "| metrics (RCAP + DAUC + IAUC) | batch | gag-jax images/s | first call s (compile) "
            "| torch per-image loop images/s | ratio |",
            "|---|---|---|---|---|---|",
            f"| {meta['device']} | {metrics['batch']} | {metrics['jax_img_s']:,.2f} | {metrics['jax_first_s']:.1f} "
            f"| {_num(metrics.get('torch_img_s'), '{:,.2f}')} | {_num(ratio, '{:.2f}x')} |",
        ]
    if memory:
        lines += ["", "| streaming memory: n | chunk | batch | dtype | compiled temp bytes |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {meta['memory_chunk']} | {meta['memory_batch']} | {meta['memory_dtype']} | {t:,} |"
                  for n, t in memory]
    lines += [""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet50", choices=("resnet50", "tiny"))
    p.add_argument("--size", type=int, default=224, help="input height = width (224; use 64 on a CPU)")
    p.add_argument("--batch-sizes", default="32,64,128", help="comma-separated batch sizes")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes: float32, bfloat16")
    p.add_argument("--n", type=int, default=20, help="noisy samples per image (20)")
    p.add_argument("--chunk-size", default="auto",
                   help="samples per vmapped chunk, comma-separated to sweep: an int, 'none' (all n at once) "
                        "or 'auto' (largest divisor of n with chunk * batch <= 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--metrics-batch", type=int, default=32, help="batch for RCAP + DAUC + IAUC (0 skips)")
    p.add_argument("--metrics-chunk", type=int, default=None, help="perturbed copies per model call in gj.metrics")
    p.add_argument("--memory-n", default="20,200", help="n values for the streaming-memory check ('' skips)")
    p.add_argument("--memory-chunk", type=int, default=10, help="chunk size for the streaming-memory check")
    p.add_argument("--torch-chunk", type=int, default=256,
                   help="noisy copies per torch forward/backward (bounds its memory; 0 = all n*B at once)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=RESULTS, help="Markdown file the tables are appended to ('' = none)")
    p.add_argument("--note", action="append", default=[], help="extra note line for the report (repeatable)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run the benchmark (see module docstring); returns the Markdown it printed and appended."""
    args = parse_args(argv)
    device = jax.devices()[0]
    with_torch = not args.no_torch and torch_reference.available()
    notes = list(args.note)
    if args.no_torch:
        notes.append("PyTorch baselines skipped (--no-torch).")
    elif not with_torch:
        notes.append("PyTorch baselines skipped: torch/torchvision are not installed.")
    if args.model != "resnet50" and with_torch:
        notes.append("PyTorch baselines skipped: the tiny model has no torchvision counterpart.")
    make_module, variables, torch_model, _, model_note = build_model(args.model, args.size, args.seed, with_torch)
    variables = jax.device_put(variables, device)
    if device.platform == "cpu":
        notes.append("CPU run: no peak FLOP/s is defined for CPUs, so MFU is n/a; memory is the compiled "
                     "program's memory_analysis() (the CPU client has no memory_stats()).")

    torch_version = "torch absent"
    if with_torch:
        import torch

        torch_version = f"torch {torch.__version__} on {torch_reference.device()} " \
                        f"({torch.get_num_threads()} threads)"
    meta = dict(device=device.device_kind, platform=device.platform, date=datetime.date.today().isoformat(),
                model=args.model, model_note=model_note, size=args.size, n=args.n, repeats=args.repeats,
                torch=torch_version, host=f"{platform.machine()}, {os.cpu_count()} CPUs visible",
                baseline=("authors'-style PyTorch GAG (stacked noisy copies, backward of summed target logits, "
                          f"torch.var + torch.quantile, float32; {args.torch_chunk or 'all'} copies per backward)")
                if torch_model is not None else "none")

    rows = []
    torch_cache: dict[int, Optional[float]] = {}
    configs = []
    for batch in _ints(args.batch_sizes):
        for text in [c.strip().lower() for c in args.chunk_size.split(",") if c.strip()]:
            chunk = auto_chunk(args.n, batch) if text == "auto" else None if text == "none" else int(text)
            configs += [(batch, chunk)] if (batch, chunk) not in configs else []
    for batch, chunk in configs:
        for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            if dtype not in DTYPES:
                raise SystemExit(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
            try:
                row = bench_gag(make_module, variables, device, batch=batch, size=args.size, n=args.n, dtype=dtype,
                                chunk=chunk, repeats=args.repeats, seed=args.seed)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: keep going
                row = dict(batch=batch, dtype=dtype, chunk=chunk, error=f"failed: {type(e).__name__}: {str(e)[:80]}")
                rows.append(row)
                print(f"batch {batch} {dtype}: {row['error']}", file=sys.stderr)
                continue
            if torch_model is not None:
                if batch not in torch_cache:
                    try:
                        torch_cache[batch] = bench_torch(torch_model, batch=batch, size=args.size, n=args.n,
                                                         repeats=args.repeats, seed=args.seed,
                                                         chunk=args.torch_chunk or None)["expl_s"]
                    except Exception as e:  # noqa: BLE001
                        torch_cache[batch] = None
                        notes.append(f"torch baseline failed at batch {batch}: {type(e).__name__}: {str(e)[:80]}")
                row["torch_expl_s"] = torch_cache[batch]
            rows.append(row)
            print(f"batch {batch} {dtype}: {row['expl_s']:.2f} expl/s, compile {row['compile_s']:.1f} s",
                  file=sys.stderr, flush=True)

    metrics = None
    if args.metrics_batch > 0:
        metrics = bench_metrics(make_module, variables, torch_model, device, batch=args.metrics_batch,
                                size=args.size, repeats=args.repeats, seed=args.seed, chunk=args.metrics_chunk)

    memory = []
    memory_ns = _ints(args.memory_n)
    first_batch = _ints(args.batch_sizes)[0]
    first_dtype = args.dtypes.split(",")[0].strip()
    if memory_ns:
        memory = temp_memory(make_module, variables, device, batch=first_batch, size=args.size, ns=memory_ns,
                             chunk=args.memory_chunk, dtype=first_dtype)
    meta.update(memory_chunk=args.memory_chunk, memory_batch=first_batch, memory_dtype=first_dtype)

    text = report(meta, rows, metrics, memory, notes)
    print(text)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return text


if __name__ == "__main__":
    main()
