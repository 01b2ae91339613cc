"""PyTorch baselines written the way the authors' published code works (the benchmark's reference).

* ``guided_absolute_grad``: model in eval mode; a loop over the n samples, each one forward and one
  backward of the summed target logits of a batch of B noisy copies (noise std =
  ``noise_level * (max - min)`` of the whole batch), as the authors' published code does; then
  ``torch.var`` and ``torch.quantile`` over the n gradients (per image and channel), float32.
* ``rcap_loop`` / ``deletion_insertion_loop``: the metrics image by image, one forward pass per
  recovered / perturbed copy (``np.percentile`` thresholds, softmax of the target).

Images here are NCHW float32 tensors, normalised; saliency maps ``(B, H, W)``. Everything is
imported lazily so the benchmark runs (and says it skipped the baseline) where torch is absent.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_QUANTILE_LIMIT = 2 ** 24  # torch.quantile refuses larger inputs


def available() -> bool:
    """True when torch and torchvision import."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def device():
    """The torch device the baseline runs on: ``cuda`` when available, else ``cpu``."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(dev) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def resnet50(num_classes: int = 1000, seed: int = 0):
    """torchvision ``resnet50`` with random weights (seeded), in eval mode, on CPU."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None, num_classes=num_classes).eval()


def guided_absolute_grad(model, images, labels, n: int = 20, noise_level: float = 0.15,
                         percentile: float = 0.85, chunk: Optional[int] = None):
    """Guided AbsoluteGrad, authors' style: ``(B, C, H, W)`` images -> ``(B, H, W)`` maps in [0, 1].

    Args:
      model: a torch classifier in eval mode.
      images: ``(B, C, H, W)`` float32 tensor (normalised), on the model's device.
      labels: ``(B,)`` int64 tensor.
      n, noise_level, percentile: as in the paper (20, 0.15, 0.85).
      chunk: noisy copies per forward/backward (``None``: ``B``, one sample of the whole batch per
        call, the authors' loop; ``n * B`` stacks every copy into one call).

    Returns:
      ``(B, H, W)`` float32 tensor.
    """
    import torch

    B = images.shape[0]
    sigma = noise_level * (images.max() - images.min())
    noisy = images.unsqueeze(0) + sigma * torch.randn((n,) + tuple(images.shape), device=images.device)
    noisy = noisy.reshape((n * B,) + tuple(images.shape[1:]))
    targets = labels.repeat(n)
    step = B if chunk is None else chunk  # sample-major order: a step of B is one noisy copy of the batch
    grads = []
    for start in range(0, n * B, step):
        x = noisy[start:start + step].detach().requires_grad_(True)
        logits = model(x)
        logits.gather(1, targets[start:start + step, None]).sum().backward()
        grads.append(x.grad.detach())
    grads = torch.cat(grads).reshape((n, B) + tuple(images.shape[1:]))
    magnitude = grads.abs().sum(0)
    variance = torch.var(grads, dim=0)  # unbiased, over the n samples
    flat = variance.flatten(2)  # (B, C, H*W)
    if flat.numel() <= _QUANTILE_LIMIT:
        q = torch.quantile(flat, percentile, dim=2)
    else:
        q = torch.stack([torch.quantile(v, percentile, dim=1) for v in flat])
    guide = torch.where(variance >= q[..., None, None], torch.ones_like(variance), variance)
    saliency = (magnitude * guide).sum(1)
    lo = saliency.flatten(1).min(1).values[:, None, None]
    hi = saliency.flatten(1).max(1).values[:, None, None]
    return torch.where(hi > lo, (saliency - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(saliency))


def _prob(model, x, label) -> float:
    import torch

    with torch.no_grad():
        return float(torch.softmax(model(x), dim=1)[0, label])


def _normalisation(dev):
    import torch

    mean = torch.tensor(IMAGENET_MEAN, device=dev)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=dev)[:, None, None]
    return mean, std


def rcap_loop(model, images, labels, saliency, lower_bound: int = 50, interval: int = 10) -> np.ndarray:
    """RCAP image by image: for each ``k`` a recovered image (black elsewhere in pixel space), one
    forward pass, ``ratio_k * prob_k`` averaged over k. Returns ``(B,)`` numpy."""
    import torch

    mean, std = _normalisation(images.device)
    out = []
    for b in range(images.shape[0]):
        sal = saliency[b].detach().cpu().numpy()
        black = ((0.0 - mean) / std).expand_as(images[b])
        total, scores = sal.sum(), []
        for p in range(100 - interval, lower_bound - 1, -interval):
            q = np.percentile(sal, p)
            keep = torch.from_numpy(sal >= q).to(images.device)
            recovered = torch.where(keep[None], images[b], black)
            ratio = sal[sal >= q].sum() / total if total > 0 else 1.0
            scores.append(ratio * _prob(model, recovered[None], int(labels[b])))
        out.append(np.mean(scores))
    return np.asarray(out)


def _blur(x, kernel: int = 33, sigma: float = 16.0):
    import torch
    import torch.nn.functional as F

    r = kernel // 2
    t = torch.arange(kernel, dtype=torch.float32, device=x.device) - r
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, kernel, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, kernel).repeat(c, 1, 1, 1), groups=c)


def deletion_insertion_loop(model, images, labels, saliency, steps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion AUC image by image (RISE style): ``steps`` fractions 0, 0.1, ..., one
    forward pass per point; deletion sets the most salient pixels to 0, insertion puts them back
    into a blurred copy. Returns ``(dauc (B,), iauc (B,))`` numpy."""
    import torch

    dauc, iauc = [], []
    for b in range(images.shape[0]):
        x = images[b:b + 1]
        blurred = _blur(x)
        sal = saliency[b].detach().cpu().numpy()
        label = int(labels[b])
        deletion, insertion = [], []
        for i in range(steps):
            f = i / steps
            q = np.quantile(sal, 1.0 - f)
            mask = torch.from_numpy(sal > q).to(x.device)[None, None]
            deletion.append(_prob(model, torch.where(mask, torch.zeros_like(x), x), label))
            insertion.append(_prob(model, torch.where(mask, x, blurred), label))
        dx = 1.0 / steps
        dauc.append(sum((a + c) * dx / 2 for a, c in zip(deletion, deletion[1:])))
        iauc.append(sum((a + c) * dx / 2 for a, c in zip(insertion, insertion[1:])))
    return np.asarray(dauc), np.asarray(iauc)


def metrics_loop(model, images, labels, saliency) -> dict:
    """RCAP + DAUC + IAUC of a batch, image by image (25 single-image forward passes each)."""
    dauc, iauc = deletion_insertion_loop(model, images, labels, saliency)
    return {"rcap": rcap_loop(model, images, labels, saliency), "dauc": dauc, "iauc": iauc}

