"""The accelerator check: every performance target in one command, inside a time budget.

Run from a source checkout on a machine with one GPU (see ``benchmarks/GPU_CHECK.md``)::

    python -m benchmarks.gpu_check --out DIR

In order, each part first checking the time left of ``--budget`` (default 320 s) and skipping itself
with a note rather than overrunning:

1. ``tests``: the ``gpu``-marked tests (``pytest -m gpu`` on the test files that carry the mark), in a
   subprocess started before this process touches the GPU; its output goes to ``DIR/gpu_tests.log``;
2. ``gag``: Guided AbsoluteGrad n = 20 on ResNet-50 at 224², bfloat16 and float32, batch 64 and 128:
   explanations/s, compile time, peak device memory, MFU, and the authors'-style PyTorch loop on the
   same GPU, weights and batch in this process (the ratio);
3. ``memory``: the compiled GAG's temporary memory at n = 20 and n = 200 (one chunk size);
4. ``metrics``: RCAP and DAUC + IAUC images/s, ``gj.metrics`` vs the per-image PyTorch loop.

It writes one Markdown table (``DIR/gpu_check.md``) and a JSON file (``DIR/gpu_check.json``) after
every part (so a killed run leaves what it measured) and prints the table at the end. Nothing
beyond jax, flax, numpy and (optionally) torch + torchvision and pytest is needed, and no network:
a missing piece skips its part with a note. ``--smoke`` runs the same code on the CPU at tiny sizes
(ResNetTiny, 32 px, batch 2, n 4) for CI. The measurements are ``benchmarks.measure``'s, shared with
``benchmarks.run``.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from typing import Optional, Sequence

import jax

from benchmarks import measure, torch_reference

STEM = "gpu_check"
DEFAULT_BUDGET_S = 320.0
TESTS_TIMEOUT_S = 120.0

# Sizes of the real check (the performance targets) and of the CPU smoke run.
FULL = dict(model="resnet50", size=224, batches=(64, 128), dtypes=("bfloat16", "float32"), n=20,
            memory_ns=(20, 200), metrics_batch=32, repeats=3)
SMOKE = dict(model="tiny", size=32, batches=(2,), dtypes=("bfloat16", "float32"), n=4,
             memory_ns=(4, 40), metrics_batch=2, repeats=1)

# The performance targets (for ResNet-50 at 224² on one H100; judged only on a GPU).
TARGET_EXPL_S = {"bfloat16": 800.0}
TARGET_RATIO = {"bfloat16": 6.0, "float32": 2.0}
TARGET_METRICS_RATIO = 20.0
COLUMNS = ("part", "setting", "measured", "baseline", "ratio", "target", "met", "wall s")


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _memory_chunk(n: int, batch: int) -> int:
    """The GAG rows' chunk size (:func:`measure.auto_chunk`), or a smaller divisor when that is all of n
    (one chunk has no loop, so nothing would show whether memory grows with n)."""
    chunk = measure.auto_chunk(n, batch)
    return chunk if chunk < n else max([1] + [c for c in range(1, n) if n % c == 0])


# ---------------------------------------------------------------------------- parts


def run_gpu_tests(out_dir, budget: measure.Budget, notes: list[str], smoke: bool,
                  timeout_s: float = TESTS_TIMEOUT_S) -> dict:
    """``pytest -m gpu`` on the checkout's test files that use the ``gpu`` mark, in a subprocess.

    Returns ``dict(status, files, counts, seconds)``; ``status`` is ``ran``, ``timeout`` or ``skipped``.
    """
    tests = measure.ROOT / "tests"
    files = sorted(str(p.relative_to(measure.ROOT)) for p in tests.glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text(encoding="utf-8")) if tests.is_dir() else []
    result = dict(status="skipped", files=files, counts={}, seconds=0.0)
    if not files:
        notes.append("gpu tests: skipped, no tests/ folder with gpu-marked tests (not a source checkout).")
        return result
    if importlib.util.find_spec("pytest") is None:
        notes.append("gpu tests: skipped, pytest is not installed.")
        return result
    timeout = min(timeout_s, budget.left())
    if timeout < 10:
        budget.allows(10, "gpu tests", notes)
        return result
    env = dict(os.environ)
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=measure.ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        output, result["status"] = proc.stdout + proc.stderr, "ran"
        result["returncode"] = proc.returncode
    except subprocess.TimeoutExpired as err:
        output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        result["status"] = "timeout"
        notes.append(f"gpu tests: stopped after {timeout:.0f} s (time budget).")
    result["seconds"] = time.perf_counter() - start
    result["command"] = " ".join(command)
    (out_dir / "gpu_tests.log").write_text(output, encoding="utf-8")
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    result["summary"] = summary[-1].strip("= ") if summary else ""
    result["counts"] = {name.rstrip("s") if name.startswith("error") else name: int(count) for count, name in
                        re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", result["summary"])}
    return result


def _environment(device, smoke: bool, budget_s: Optional[float]) -> dict:
    import flax

    commit = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=measure.ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip() or commit
    except (OSError, subprocess.SubprocessError):
        pass
    return dict(device=device.device_kind, platform=device.platform, date=datetime.date.today().isoformat(),
                time=datetime.datetime.now().isoformat(timespec="seconds"), smoke=smoke, budget_s=budget_s,
                jax=jax.__version__, flax=flax.__version__, torch=measure.torch_description(),
                python=platform.python_version(), host=f"{platform.machine()}, {os.cpu_count()} CPUs visible",
                commit=commit)


# ---------------------------------------------------------------------------- table


def _met(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else "yes" if ok else "NO"


def table_rows(result: dict) -> list[dict]:
    """The Markdown table's rows (dicts keyed by :data:`COLUMNS`) from a result dict."""
    on_gpu = result["meta"]["platform"] == "gpu"
    rows = []
    tests = result.get("tests")
    if tests is not None:
        counts = tests["counts"]
        ok = None if tests["status"] != "ran" or not counts.get("passed") else \
            not counts.get("failed") and not counts.get("error")
        rows.append({"part": "gpu tests", "setting": "pytest -m gpu " + " ".join(tests["files"]),
                     "measured": tests.get("summary") or tests["status"], "baseline": "", "ratio": "",
                     "target": "all pass", "met": _met(ok), "wall s": f"{tests['seconds']:.0f}"})
    for r in result.get("gag", []):
        setting = f"GAG n {result['meta']['n']}, {r['dtype']}, batch {r['batch']}, chunk {r.get('chunk')}"
        target = " and ".join(([f">= {TARGET_EXPL_S[r['dtype']]:,.0f} expl/s"] if r["dtype"] in TARGET_EXPL_S else [])
                              + [f">= {TARGET_RATIO[r['dtype']]:g}x"])
        if "error" in r:
            rows.append({"part": "gag", "setting": setting, "measured": r["error"], "baseline": "", "ratio": "",
                         "target": target, "met": "n/a", "wall s": ""})
            continue
        ratio = r["expl_s"] / r["torch_expl_s"] if r.get("torch_expl_s") else None
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        ok = None
        if on_gpu and ratio is not None:
            ok = ratio >= TARGET_RATIO[r["dtype"]] and r["expl_s"] >= TARGET_EXPL_S.get(r["dtype"], 0.0)
        rows.append({"part": "gag", "setting": setting,
                     "measured": f"{r['expl_s']:,.1f} expl/s; compile {r['compile_s']:.1f} s; "
                                 f"peak {measure.mib(r['peak_bytes'])} MiB (program {measure.mib(r['mem_bytes'])} "
                                 f"MiB); MFU {mfu}",
                     "baseline": f"torch {measure.num(r.get('torch_expl_s'), '{:,.1f}')} expl/s",
                     "ratio": measure.num(ratio, "{:.2f}x"), "target": target, "met": _met(ok),
                     "wall s": f"{r['wall_s']:.0f}"})
    memory = result.get("memory")
    if memory and memory.get("temp_bytes"):
        (n0, t0), (n1, t1) = memory["temp_bytes"][0], memory["temp_bytes"][-1]
        rows.append({"part": "memory", "setting": f"GAG {memory['dtype']}, batch {memory['batch']}, chunk "
                     f"{memory['chunk']}: compiled temp at n {n0} vs n {n1}",
                     "measured": f"{measure.mib(t0)} MiB vs {measure.mib(t1)} MiB", "baseline": "",
                     "ratio": f"{t1 / t0:.3f}x" if t0 > 0 else "n/a", "target": "flat in n",
                     "met": _met(t1 <= 1.01 * t0 if t0 > 0 else None), "wall s": f"{memory['seconds']:.0f}"})
    metrics = result.get("metrics")
    if metrics:
        for name, ours, theirs in (("RCAP", "rcap_img_s", "torch_rcap_img_s"),
                                   ("DAUC + IAUC", "di_img_s", "torch_di_img_s"),
                                   ("RCAP + DAUC + IAUC", "jax_img_s", "torch_img_s")):
            ratio = metrics[ours] / metrics[theirs] if metrics.get(theirs) else None
            rows.append({"part": "metrics", "setting": f"{name}, batch {metrics['batch']}",
                         "measured": f"{metrics[ours]:,.1f} images/s",
                         "baseline": f"per-image loop {measure.num(metrics.get(theirs), '{:,.1f}')} images/s",
                         "ratio": measure.num(ratio, "{:.1f}x"), "target": f">= {TARGET_METRICS_RATIO:g}x",
                         "met": _met(ratio >= TARGET_METRICS_RATIO if on_gpu and ratio is not None else None),
                         "wall s": f"{metrics['seconds']:.0f}" if ours == "jax_img_s" else ""})
    return rows


def render(result: dict) -> str:
    """The Markdown report: a heading, one table, the notes."""
    meta = result["meta"]
    lines = [f"## gpu_check: {meta['device']} ({meta['platform']}), {meta['date']}"
             + (" (smoke run, tiny sizes)" if meta["smoke"] else ""), "",
             f"- model: {meta['model_note']}; input {meta['size']}x{meta['size']}; GAG n = {meta['n']}, noise 0.15, "
             f"p = 0.85; median of {meta['repeats']} runs after a warm-up",
             f"- jax {meta['jax']}, flax {meta['flax']}, {meta['torch']}; Python {meta['python']}; host "
             f"{meta['host']}; commit {meta['commit']}",
             f"- time: {result['elapsed_s']:.0f} s" + (f" of a {meta['budget_s']:.0f} s budget" if meta["budget_s"]
                                                       else " (no budget)"), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in table_rows(result)]
    lines += [""] + [f"- {note}" for note in result["notes"]] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_check.md, gpu_check.json and gpu_tests.log")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (ResNetTiny, 32 px, batch 2, n 4): for CI")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all parts together (default {DEFAULT_BUDGET_S:g}; smoke: unlimited)")
    p.add_argument("--skip", action="append", default=[], choices=("tests", "gag", "torch", "memory", "metrics"),
                   help="leave a part out (repeatable)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3; smoke 1)")
    p.add_argument("--torch-chunk", type=int, default=0,
                   help="noisy copies per torch forward/backward in the baseline (0: one batch of B per call, "
                        "looping over the n samples as the authors' code does)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the check (see the module docstring); returns the result dict also written as JSON."""
    args = parse_args(argv)
    if not args.smoke:  # read when JAX creates the GPU client: grow on demand, so torch can share the GPU
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sizes = dict(SMOKE if args.smoke else FULL)
    if args.repeats is not None:
        sizes["repeats"] = args.repeats
    budget_s = args.budget if args.budget is not None else (None if args.smoke else DEFAULT_BUDGET_S)
    budget = measure.Budget(budget_s)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    result: dict = {"meta": {}, "elapsed_s": 0.0, "notes": notes}

    def save() -> str:
        result["elapsed_s"] = budget.used()
        text = render(result)
        measure.write_outputs(out_dir, STEM, text, result)
        return text

    # 1. tests, in a subprocess, before this process claims the GPU
    if "tests" not in args.skip:
        _log("gpu tests ...")
        result["tests"] = run_gpu_tests(out_dir, budget, notes, args.smoke)

    device = jax.devices("cpu")[0] if args.smoke else jax.devices()[0]
    if device.platform != "gpu" and not args.smoke:
        notes.append(f"no GPU: JAX's default device is {device.platform}; these are not accelerator numbers.")
    want_torch = "torch" not in args.skip and sizes["model"] == "resnet50"
    with_torch = want_torch and torch_reference.available()
    if want_torch and not with_torch:
        notes.append("torch baselines skipped: torch and torchvision do not both import (no torch ResNet-50); "
                     "the Flax ResNet-50 runs with random weights, no ratios.")
    if sizes["model"] != "resnet50":
        notes.append("torch baselines skipped: the tiny model has no torch counterpart (smoke run).")
    make_module, variables, torch_model, _, model_note = measure.build_model(sizes["model"], sizes["size"],
                                                                             args.seed, with_torch)
    variables = jax.device_put(variables, device)
    result["meta"] = dict(_environment(device, args.smoke, budget_s), model=sizes["model"], model_note=model_note,
                          size=sizes["size"], n=sizes["n"], repeats=sizes["repeats"],
                          baseline=("authors'-style PyTorch GAG (a loop over the n samples, backward of summed target "
                                    f"logits, torch.var + torch.quantile, float32; "
                                    f"{args.torch_chunk or 'B (one sample of the batch)'} copies per backward)") if torch_model is not None else "none")
    notes.append("peak = the JAX allocator's high-water mark so far in this process (rows run in table order); "
                 "program = the compiled program's arguments + outputs + temporaries.")
    save()

    # 2. GAG rows, batch by batch, keeping time for the memory and metrics parts
    size, n = sizes["size"], sizes["n"]
    result["gag"] = []
    compile_s = 0.0
    if "gag" not in args.skip:
        for batch in sizes["batches"]:
            reserve = 0.0 if not compile_s else compile_s * (("memory" not in args.skip) + ("metrics" not in args.skip))
            estimate = next((r["wall_s"] for r in reversed(result["gag"]) if "wall_s" in r), 0.0)
            result["gag"] += measure.gag_rows(
                make_module, variables, torch_model, device, configs=[(batch, measure.auto_chunk(n, batch))],
                dtypes=sizes["dtypes"], size=size, n=n, repeats=sizes["repeats"], seed=args.seed,
                torch_chunk=args.torch_chunk or None, notes=notes, budget=budget, reserve_s=reserve,
                estimate_s=estimate, log=_log)
            compile_s = max([compile_s] + [r["compile_s"] for r in result["gag"] if "compile_s" in r])
            save()

    # 3. streaming memory: compile only, at the first batch's chunk size (shapes already autotuned)
    if "memory" not in args.skip and budget.allows(compile_s, "memory", notes, reserve_s=compile_s
                                                   if "metrics" not in args.skip else 0.0):
        _log("memory ...")
        batch, dtype = sizes["batches"][0], sizes["dtypes"][0]
        chunk = _memory_chunk(sizes["memory_ns"][0], batch)
        start = time.perf_counter()
        try:
            temp = measure.temp_memory(make_module, variables, device, batch=batch, size=size,
                                       ns=sizes["memory_ns"], chunk=chunk, dtype=dtype)
            result["memory"] = dict(batch=batch, dtype=dtype, chunk=chunk, temp_bytes=temp,
                                    seconds=time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - report and go on
            notes.append(f"memory: failed: {type(e).__name__}: {str(e)[:120]}")
        save()

    # 4. metrics: RCAP and DAUC + IAUC vs the per-image loop
    if "metrics" not in args.skip and budget.allows(compile_s, "metrics", notes):
        _log("metrics ...")
        start = time.perf_counter()
        try:
            metrics = measure.bench_metrics(make_module, variables, torch_model, device, batch=sizes["metrics_batch"],
                                            size=size, repeats=sizes["repeats"], seed=args.seed, chunk=None)
            result["metrics"] = dict(metrics, seconds=time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - report and go on
            notes.append(f"metrics: failed: {type(e).__name__}: {str(e)[:120]}")

    text = save()
    print(text)
    _log(f"wrote {out_dir / (STEM + '.md')} and {out_dir / (STEM + '.json')}")
    return result


if __name__ == "__main__":
    main()
