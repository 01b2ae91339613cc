"""The gag-jax benchmark sweep: GAG throughput, memory, compile time and MFU vs the authors'-style PyTorch loop.

A repository tool (not installed with the package): run ``python -m benchmarks.run`` from a source
checkout. In one process, on one device, it times (functions in ``benchmarks.measure``):

1. gag-jax Guided AbsoluteGrad (n = 20) on ResNet-50 with random weights, float32 and bfloat16
   compute (gradient statistics always accumulate in float32), at several batch sizes:
   explanations/s (median of ``--repeats`` timed runs after a warm-up, ``jax.block_until_ready``),
   compile time (ahead-of-time ``lower().compile()``), memory (the compiled program's
   ``memory_analysis()``: arguments + outputs + temporaries; plus the device's
   ``peak_bytes_in_use`` where ``memory_stats()`` exists), and model-FLOP utilisation: the FLOPs of
   one gradient pass from the lowered HLO's ``cost_analysis()`` times n, per second, over the
   device's peak (table ``PEAK_TFLOPS``; "n/a" for CPUs and unknown devices);
2. the PyTorch baseline written like the authors' code (``benchmarks.torch_reference``) on the same
   weights (a torchvision ResNet-50 ported with ``models.porter``) and the same batch;
3. RCAP and DAUC + IAUC on a batch: ``gj.metrics`` (batched, jitted) vs the per-image PyTorch loop;
4. the compiled GAG's temporary memory for n = 20 and n = 200 at a fixed chunk size (streaming:
   equal).

It prints Markdown tables and writes them with a JSON copy to ``--out`` (default: the current
directory) as ``benchmark.md`` / ``benchmark.json``; run from a checkout it also appends the tables
to the checkout's ``benchmarks/RESULTS.md`` (``--results PATH`` elsewhere, ``--results ''`` not at all).
On a CPU use small sizes, e.g. ``--size 64 --batch-sizes 2 --n 20``. For the timed all-in-one
accelerator check see ``benchmarks.gpu_check``.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Optional, Sequence

import jax

from benchmarks import measure, torch_reference

# ---------------------------------------------------------------------------- report


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
            f"| {r['chunk']} | {r['expl_s']:,.2f} | {r['compile_s']:.1f} | {measure.mib(r['mem_bytes'])} "
            f"| {measure.mib(r['peak_bytes'])} | {r['gflop_per_expl']:,.3g} | {mfu} "
            f"| {measure.num(r.get('torch_expl_s'), '{:,.2f}')} | {measure.num(ratio, '{:.2f}x')} |")
    if metrics is not None:
        lines += ["", "| metrics | batch | gag-jax images/s | torch per-image loop images/s | ratio |",
                  "|---|---|---|---|---|"]
        for name, ours, theirs in (("RCAP", "rcap_img_s", "torch_rcap_img_s"),
                                   ("DAUC + IAUC", "di_img_s", "torch_di_img_s"),
                                   ("RCAP + DAUC + IAUC", "jax_img_s", "torch_img_s")):
            ratio = metrics[ours] / metrics[theirs] if metrics.get(theirs) else None
            lines.append(f"| {name} | {metrics['batch']} | {metrics[ours]:,.2f} "
                         f"| {measure.num(metrics.get(theirs), '{:,.2f}')} | {measure.num(ratio, '{:.2f}x')} |")
        lines += ["", f"- metrics: first call of both (compile included) {metrics['jax_first_s']:.1f} s"]
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
    p.add_argument("--metrics-chunk", type=int, default=None,
                   help="perturbed copies per model call in gj.metrics (default: theirs)")
    p.add_argument("--memory-n", default="20,200", help="n values for the streaming-memory check ('' skips)")
    p.add_argument("--memory-chunk", type=int, default=10, help="chunk size for the streaming-memory check")
    p.add_argument("--torch-chunk", type=int, default=0,
                   help="noisy copies per torch forward/backward in the baseline (0: one batch of B per call, "
                        "looping over the n samples as the authors' code does)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".", help="directory for benchmark.md and benchmark.json (default: here)")
    p.add_argument("--results", default=str(measure.RESULTS) if measure.in_checkout() else "",
                   help="Markdown file the tables are appended to (default: the checkout's benchmarks/RESULTS.md "
                        "when run from a checkout, else none; '' = none)")
    p.add_argument("--note", action="append", default=[], help="extra note line for the report (repeatable)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Run the benchmark (see module docstring); returns the Markdown it printed and wrote."""
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
    make_module, variables, torch_model, _, model_note = measure.build_model(args.model, args.size, args.seed,
                                                                             with_torch)
    variables = jax.device_put(variables, device)
    if device.platform == "cpu":
        notes.append("CPU run: no peak FLOP/s is defined for CPUs, so MFU is n/a; memory is the compiled "
                     "program's memory_analysis() (the CPU client has no memory_stats()).")

    meta = dict(device=device.device_kind, platform=device.platform, date=datetime.date.today().isoformat(),
                model=args.model, model_note=model_note, size=args.size, n=args.n, repeats=args.repeats,
                torch=measure.torch_description() if with_torch else "torch absent",
                host=f"{platform.machine()}, {os.cpu_count()} CPUs visible",
                baseline=("authors'-style PyTorch GAG (a loop over the n samples, backward of summed target logits, "
                          f"torch.var + torch.quantile, float32; {args.torch_chunk or 'B (one sample of the batch)'} copies per "
                          "backward)")
                if torch_model is not None else "none")

    configs: list[tuple[int, Optional[int]]] = []
    for batch in _ints(args.batch_sizes):
        for text in [c.strip().lower() for c in args.chunk_size.split(",") if c.strip()]:
            chunk = measure.auto_chunk(args.n, batch) if text == "auto" else None if text == "none" else int(text)
            configs += [(batch, chunk)] if (batch, chunk) not in configs else []
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    try:
        rows = measure.gag_rows(make_module, variables, torch_model, device, configs=configs, dtypes=dtypes,
                                size=args.size, n=args.n, repeats=args.repeats, seed=args.seed,
                                torch_chunk=args.torch_chunk or None, notes=notes,
                                log=lambda text: print(text, file=sys.stderr, flush=True))
    except ValueError as err:
        raise SystemExit(str(err)) from None

    metrics = None
    if args.metrics_batch > 0:
        metrics = measure.bench_metrics(make_module, variables, torch_model, device, batch=args.metrics_batch,
                                        size=args.size, repeats=args.repeats, seed=args.seed,
                                        chunk=args.metrics_chunk)

    memory = []
    memory_ns = _ints(args.memory_n)
    first_batch = _ints(args.batch_sizes)[0]
    if memory_ns:
        memory = measure.temp_memory(make_module, variables, device, batch=first_batch, size=args.size,
                                     ns=memory_ns, chunk=args.memory_chunk, dtype=dtypes[0])
    meta.update(memory_chunk=args.memory_chunk, memory_batch=first_batch, memory_dtype=dtypes[0])

    text = report(meta, rows, metrics, memory, notes)
    print(text)
    md, js = measure.write_outputs(args.out, "benchmark", text, dict(meta=meta, gag=rows, metrics=metrics,
                                                                    memory=memory, notes=notes))
    print(f"wrote {md} and {js}", file=sys.stderr)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"appended the tables to {args.results}", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
