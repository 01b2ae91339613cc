"""Transformer explanations from attention: attention rollout and generic attention, and the capture
of a Flax model's attention probabilities (and their gradients) that they and token Grad-CAM read.

**Where the attention probabilities come from.** A Flax model built with
``gj.ModelFunctions.from_module`` (linen) or ``from_nnx`` (NNX), any architecture, whose attention is

* linen ``nn.MultiHeadDotProductAttention`` / NNX ``nnx.MultiHeadAttention``: the weights are the
  ones Flax sows with ``sow_weights=True`` (``intermediates/<path>/attention_weights``, after the
  softmax and before dropout; linen: the call is intercepted with ``nn.intercept_methods`` and run
  with ``sow_weights=True``, the ``intermediates`` collection mutable; NNX: the module's
  ``attention_fn`` gets a stand-in for its ``module`` argument whose ``sow`` keeps the weights).
  Their gradient is exact: the attention output ``x = A V`` (per head) is the input of the
  module's ``out`` projection, so ``dL/dA = (dL/dx) V^T`` with ``dL/dx`` taken at that input and
  ``V`` the values the ``attention_fn`` received (grouped-query heads repeated as Flax does).
  An attention in ``decode`` mode (an autoregressive cache) is refused;
* a user's submodule named ``attn_probs`` that returns the probabilities ``(B, heads, T, T)``
  (e.g. an identity applied to them: ``gag_jax.models``' ViT does this): its output, gradient by
  adding a zero to it;
* a user's module that sows them as ``self.sow("intermediates", "attention", probs)`` (NNX:
  ``self.sow(nnx.Intermediate, "attention", probs)``): rollout only (a sown value is not on the
  path to the logits, so it has no gradient; ``generic_attention`` says so).

The attention layers are used in the order the forward pass calls them (a module called twice
counts twice); their probabilities must be self-attention over the same ``T`` tokens.

**Tokens to maps.** The first ``prefix_tokens`` tokens are the CLS token (and registers): row 0 is
read, columns ``prefix_tokens:`` are the patches, laid out row-major on the patch grid ``grid=(h, w)``
(inferred: the model's ``grid_size`` if it has one, else the factorisation of ``T - prefix`` closest to
the image's aspect ratio: a square for a square image); the grid map is upsampled
bilinearly to the image (as Grad-CAM's). ``prefix_tokens=None`` reads the model's
``num_prefix_tokens`` attribute when it has one (timm's name; the shipped ViT has it), else 1.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gag_jax._validation import check_choice, check_fraction
from gag_jax.model import ModelFunctions, _LinenTap, _NnxTap

__all__ = ["attention_rollout", "capture_attention", "default_token_layer", "generic_attention", "generic_relevance",
           "model_grid", "patch_grid", "prefix_tokens_of", "rollout", "token_layers", "tokens_to_grid", "upsample"]

SOWN_NAME = "attention"
"""The name under which a user's module sows its attention probabilities (``intermediates/.../attention``)."""

PROBS_MODULE = "attn_probs"
"""The name of a submodule whose output is a block's attention probabilities ``(B, heads, T, T)``."""

_LOOKED_FOR = ("linen nn.MultiHeadDotProductAttention / NNX nnx.MultiHeadAttention layers, submodules named "
               f"{PROBS_MODULE!r} returning (B, heads, T, T), or probabilities sown as 'intermediates/.../{SOWN_NAME}'")


# ---------------------------------------------------------------------------------------------
# the capture: one forward pass that records every layer's output and every attention


@dataclasses.dataclass
class _Event:
    """One attention call: ``kind`` ``"probs"`` (an ``attn_probs`` output), ``"mha"`` (a Flax
    multi-head attention), ``"sown"`` (sown under ``SOWN_NAME``); ``mix_at``: how many layer
    outputs had been returned when its probabilities were applied to the values."""

    kind: str
    path: str
    mix_at: int
    probs: Any = None
    values: Any = None  # "mha": the values (B, T, heads_kv, d) the attention_fn received
    delta_shape: tuple | None = None  # where a zero is added: the probs ("probs"), the output ("mha")
    delta_dtype: Any = None


def _path(parts) -> str:
    return "/".join(str(p) for p in parts)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _linen_run(module, variables, images, deltas):
    import flax.linen as nn

    layers: list[tuple[str, Any]] = []
    events: list[_Event] = []
    open_mha: list[_Event] = []
    calls: dict[str, int] = {}  # path -> number of calls so far (a module called twice sows twice)
    mha_calls: list[tuple[_Event, str, int]] = []
    entered: list[tuple[str, int, int]] = []  # (path, call number, layers returned at its return)

    def add(delta_index, x):
        return x if deltas is None else x + deltas[delta_index].astype(x.dtype)

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or context.module.path == ():
            return next_fun(*args, **kwargs)
        m = context.module
        path = _path(m.path)
        number = calls.get(path, 0)
        calls[path] = number + 1
        if isinstance(m, nn.MultiHeadDotProductAttention):
            if m.decode:
                raise ValueError(f"attention layer {path!r} runs in decode mode (an autoregressive cache): the "
                                 "attention methods need full self-attention (decode=False)")
            event = _Event("mha", path, -1)
            open_mha.append(event)
            try:
                out = next_fun(*args, **{**kwargs, "sow_weights": True})
            finally:
                open_mha.pop()
            mha_calls.append((event, path, number))
        elif open_mha and m.name in ("value", "out") and isinstance(m.parent, nn.MultiHeadDotProductAttention):
            event = open_mha[-1]
            if m.name == "value":
                out = next_fun(*args, **kwargs)
                event.values = out
            else:  # the attention output A V enters the output projection here
                x = args[0]
                event.mix_at, event.delta_shape, event.delta_dtype = len(layers), tuple(x.shape), x.dtype
                events.append(event)
                out = next_fun(add(len(events) - 1, x), *args[1:], **kwargs)
        elif m.name == PROBS_MODULE:
            probs = next_fun(*args, **kwargs)
            event = _Event("probs", path, len(layers) + 1, probs, None, tuple(probs.shape), probs.dtype)
            events.append(event)
            out = add(len(events) - 1, probs)
        else:
            out = next_fun(*args, **kwargs)
        if _is_array(out):
            layers.append((path, out))
        entered.append((path, number, len(layers)))
        return out

    clean = {k: v for k, v in variables.items() if k != "intermediates"}  # no values sown earlier
    with nn.intercept_methods(interceptor):
        logits, state = module.apply(clean, images, mutable=["intermediates"])
    sown = state.get("intermediates", {})

    def lookup(path, name, number):
        node = sown
        for part in path.split("/") if path else []:
            node = node.get(part, {}) if hasattr(node, "get") else {}
        values = node.get(name, ()) if hasattr(node, "get") else ()
        return values[number] if number < len(values) else None

    for event, path, number in mha_calls:
        event.probs = lookup(path, "attention_weights", number)
        if event.probs is None:
            raise ValueError(f"attention layer {path!r} did not sow its weights: its attention_fn must take and "
                             "use the 'module' argument as flax.linen.dot_product_attention does")
    # probabilities sown under SOWN_NAME, in the order of their module's calls
    for path, number, returned in entered:
        probs = lookup(path, SOWN_NAME, number)
        if probs is not None and _is_array(probs) and probs.ndim == 4:
            events.append(_Event("sown", path, returned, probs))
    return logits, _ordered(events), layers


def _ordered(events: list[_Event]) -> list[_Event]:
    """Events in the order their probabilities were applied; a sown value whose module also has an
    ``attn_probs`` submodule (the same probabilities) is dropped."""
    probs_parents = {e.path.rsplit("/", 1)[0] for e in events if e.kind == "probs"}
    kept = [e for e in events if not (e.kind == "sown" and e.path in probs_parents)]
    order = sorted(range(len(kept)), key=lambda i: (kept[i].mix_at, i))
    return [kept[i] for i in order]


class _Catcher:
    """Stands in for the ``module`` argument of a Flax ``attention_fn``: keeps what it sows."""

    def __init__(self):
        self.sown = []

    def __bool__(self):
        return True

    def sow(self, collection, name, value, *args, **kwargs):
        self.sown.append(value)
        return True


class _LayerRecorder:
    """Stands in for an NNX submodule: calls it and records its output (``attn_probs``: adds the delta)."""

    def __init__(self, inner, path, state):
        self.inner, self.path, self.state = inner, path, state

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        layers, events, deltas = self.state
        out = self.inner(*args, **kwargs)
        if self.path.rsplit("/", 1)[-1] == PROBS_MODULE and _is_array(out):
            events.append(_Event("probs", self.path, len(layers) + 1, out, None, tuple(out.shape), out.dtype))
            if deltas is not None:
                out = out + deltas[len(events) - 1].astype(out.dtype)
        if _is_array(out):
            layers.append((self.path, out))
        return out


def _nnx_run(graphdef, variables, images, deltas):
    from flax import nnx

    module = nnx.merge(graphdef, variables)  # a copy made in this trace: free to change
    layers: list[tuple[str, Any]] = []
    events: list[_Event] = []
    state = (layers, events, deltas)
    nodes = dict(nnx.iter_graph(module))
    for parts, node in nodes.items():
        if not isinstance(node, nnx.Module) or not parts:
            continue
        path = _path(parts)
        if isinstance(node, nnx.MultiHeadAttention):
            if node.decode:
                raise ValueError(f"attention layer {path!r} runs in decode mode (an autoregressive cache): the "
                                 "attention methods need full self-attention (decode=False)")
            object.__setattr__(node, "attention_fn", _nnx_attention_fn(node.attention_fn, path, state))
        object.__setattr__(node, "sow", _nnx_sow(node.sow, path, state))
        if not callable(node):  # a container (nnx.List, nnx.Dict): its members are recorded
            continue
        parent, last = nodes[parts[:-1]], parts[-1]
        recorder = _LayerRecorder(node, path, state)
        if isinstance(last, int):
            parent[last] = recorder
        else:
            object.__setattr__(parent, last, recorder)
    logits = module(images)
    return logits, _ordered(events), layers


def _nnx_attention_fn(inner, path, state):
    layers, events, deltas = state

    def attention_fn(query, key, value, *args, module=None, **kwargs):
        catcher = _Catcher()
        out = inner(query, key, value, *args, module=catcher, **kwargs)
        if not catcher.sown:
            raise ValueError(f"attention layer {path!r} did not sow its weights: its attention_fn must take and use "
                             "the 'module' argument as flax.nnx.dot_product_attention does")
        events.append(_Event("mha", path, len(layers), catcher.sown[-1], value, tuple(out.shape), out.dtype))
        return out if deltas is None else out + deltas[len(events) - 1].astype(out.dtype)

    return attention_fn


def _nnx_sow(inner, path, state):
    layers, events, _ = state

    def sow(variable_type, name, value, *args, **kwargs):
        if name == SOWN_NAME and _is_array(value) and value.ndim == 4:
            events.append(_Event("sown", path, len(layers), value))
        return inner(variable_type, name, value, *args, **kwargs)

    return sow


def _run(model: ModelFunctions, images, deltas=None):
    """``(logits, events, layers)`` of one forward pass, ``deltas[i]`` added at event ``i``."""
    tap = model._statics.tap
    if isinstance(tap, _LinenTap):
        return _linen_run(tap.module, model.variables, images, deltas)
    if isinstance(tap, _NnxTap):
        return _nnx_run(tap.graphdef, model.variables, images, deltas)
    raise ValueError("the attention methods and token Grad-CAM need a Flax model: build it with "
                     "gj.ModelFunctions.from_module (linen) or gj.ModelFunctions.from_nnx; a plain callable or an "
                     "apply function has no layers to read")


@dataclasses.dataclass(frozen=True)
class _Plan:
    events: tuple  # (kind, path, mix_at, probs shape, delta shape, delta dtype)
    layers: tuple  # (path, shape) in the order the layers return


def _plan(model: ModelFunctions, images) -> _Plan:
    """The layers and attention calls of a forward pass (abstract: shapes only, nothing computed)."""
    found = {}

    def forward(x):
        logits, events, layers = _run(model, x)
        found["events"] = tuple((e.kind, e.path, e.mix_at, tuple(e.probs.shape), e.delta_shape, e.delta_dtype)
                                for e in events)
        found["layers"] = tuple((p, tuple(o.shape)) for p, o in layers)
        return logits

    jax.eval_shape(forward, jax.ShapeDtypeStruct(images.shape, images.dtype))
    return _Plan(found["events"], found["layers"])


def _picked_total(logits, labels):
    return jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=1).astype(jnp.float32).sum()


def capture_attention(model: ModelFunctions, images: jax.Array, labels: jax.Array | None = None
                      ) -> tuple[list[jax.Array], list[jax.Array] | None]:
    """The attention probabilities of every attention call, in forward order, and their gradients.

    Args:
      model: a ``gj.ModelFunctions`` of a Flax model (``from_module`` / ``from_nnx``).
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int, or None for no gradients.

    Returns:
      ``(probs, grads)``: lists of ``(B, heads, T, T)`` float32 arrays, one per attention call;
      ``grads[l]`` is ``d logit_label / d probs[l]`` (None without ``labels``).

    Raises:
      ValueError: a model without layers or without attention (what was looked for is named), an
        attention in decode mode, gradients asked of probabilities that are only sown.
    """
    plan = _plan(model, images)
    if not plan.events:
        raise ValueError(f"found no attention in the model: looked for {_LOOKED_FOR}")
    if labels is None:
        _, events, _ = _run(model, images)
        return [e.probs.astype(jnp.float32) for e in events], None
    sown = [path for kind, path, *_ in plan.events if kind == "sown"]
    if sown:
        raise ValueError(f"the attention of {sown[0]!r} is only sown (intermediates/.../{SOWN_NAME}), so it has no "
                         f"gradient: return it from a submodule named {PROBS_MODULE!r} (an identity on the "
                         "probabilities) or use flax's MultiHeadDotProductAttention / nnx.MultiHeadAttention")
    zeros = [jnp.zeros(shape, dtype) for *_, shape, dtype in plan.events]

    def total(deltas):
        logits, events, _ = _run(model, images, deltas)
        return _picked_total(logits, labels), [(e.probs, e.values) for e in events]

    grads, captured = jax.grad(total, has_aux=True)(zeros)
    probs_out, grads_out = [], []
    for (kind, *_), grad, (probs, values) in zip(plan.events, grads, captured):
        probs = probs.astype(jnp.float32)
        grad = grad.astype(jnp.float32)
        if kind == "mha":  # grad is dL/dx at x = A V, (B, T, heads, d): dL/dA = (dL/dx) V^T
            values = values.astype(jnp.float32)
            heads = probs.shape[-3]
            if values.shape[-2] != heads:  # grouped-query attention: query head h reads value head h // rep
                values = jnp.repeat(values, heads // values.shape[-2], axis=-2)
            grad = jnp.einsum("...qhd,...khd->...hqk", grad, values)
        probs_out.append(probs)
        grads_out.append(grad)
    return probs_out, grads_out


# ---------------------------------------------------------------------------------------------
# tokens to the patch grid


def _module_attribute(model: ModelFunctions, name: str):
    tap = model._statics.tap
    if isinstance(tap, _LinenTap):
        return getattr(tap.module, name, None)
    if isinstance(tap, _NnxTap):
        from flax import nnx

        return getattr(nnx.merge(tap.graphdef, model.variables), name, None)
    return None


def prefix_tokens_of(model: ModelFunctions, prefix_tokens: int | None = None) -> int:
    """``prefix_tokens`` if given, else the model's ``num_prefix_tokens`` attribute, else 1 (a CLS token).

    Raises:
      ValueError: a negative or non-integer count.
    """
    if prefix_tokens is None:
        declared = _module_attribute(model, "num_prefix_tokens")
        prefix_tokens = 1 if declared is None else declared
    if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
        raise ValueError(f"prefix_tokens must be an int >= 0 (the CLS and register tokens); got {prefix_tokens!r}")
    return prefix_tokens


def patch_grid(num_patches: int, image_hw: tuple[int, int], grid: Sequence[int] | None = None,
               declared: Sequence[int] | None = None) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of ``num_patches`` tokens: ``grid`` if given (checked), else the model's
    ``declared`` one (its ``grid_size``) when it holds them, else the ``h x w = num_patches`` closest to
    the image's aspect ratio (a square for a square image), if within a factor 1.5 of it.

    Raises:
      ValueError: ``grid`` does not hold ``num_patches`` tokens, or no grid is found (pass ``grid=(h, w)``).
    """
    if grid is not None:
        if len(tuple(grid)) != 2 or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(f"grid must be (h, w), two positive ints; got {grid!r}")
        h, w = grid
        if h * w != num_patches:
            raise ValueError(f"grid {tuple(grid)} holds {h * w} patch tokens; the layer has {num_patches}")
        return int(h), int(w)
    if declared is not None and len(tuple(declared)) == 2 and declared[0] * declared[1] == num_patches:
        return int(declared[0]), int(declared[1])
    height, width = image_hw
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0]
    if pairs:
        h, w = min(pairs, key=lambda hw: abs(math.log(hw[0] * width / (hw[1] * height))))
        if abs(math.log(h * width / (w * height))) <= math.log(1.5):
            return h, w
    raise ValueError(f"cannot lay {num_patches} patch tokens on a grid of the image's aspect ratio ({height}x{width}): "
                     "pass grid=(h, w), or prefix_tokens= if the count of CLS/register tokens is wrong")


def model_grid(model: ModelFunctions) -> tuple[int, int] | None:
    """The model's own patch grid (its ``grid_size`` attribute, as timm's ``patch_embed.grid_size``), or None."""
    declared = _module_attribute(model, "grid_size")
    try:
        return None if declared is None else (int(declared[0]), int(declared[1]))
    except (TypeError, IndexError, ValueError):
        return None


def tokens_to_grid(tokens: jax.Array, prefix_tokens: int, grid: tuple[int, int]) -> jax.Array:
    """``(B, T, ...)`` tokens without the first ``prefix_tokens``, row-major on ``grid``: ``(B, h, w, ...)``."""
    patches = tokens[:, prefix_tokens:]
    return patches.reshape(patches.shape[0], grid[0], grid[1], *patches.shape[2:])


def upsample(maps: jax.Array, image_shape: Sequence[int]) -> jax.Array:
    """``(B, h, w)`` maps resized bilinearly (half-pixel centres) to the images: ``(B, H, W, 1)`` float32."""
    batch, height, width = image_shape[0], image_shape[1], image_shape[2]
    return jax.image.resize(maps.astype(jnp.float32), (batch, height, width), method="bilinear")[..., None]


_BLOCK_NORM1 = re.compile(r"(^|/)blocks[_/](\d+)/norm1$")


def token_layers(model: ModelFunctions, images, prefix_tokens: int, grid=None) -> tuple[list[str], dict]:
    """The layers that token Grad-CAM can use, in forward order, and why the others cannot.

    A layer works when its output is ``(B, T, D)`` with ``T - prefix_tokens`` patch tokens on a grid
    and, for a model with prefix tokens, it is computed before the last attention applies its
    probabilities: after that, patch tokens reach a CLS read-out only through the CLS token and their
    gradient is zero (``prefix_tokens=0``, a model that averages its tokens, lifts that rule).

    Returns:
      ``(candidates, reasons)``: layer paths, and ``{path: reason}`` for the token-shaped ones refused.
    """
    plan = _plan(model, images)
    last_mix = max((e[2] for e in plan.events), default=None)
    last_attention = max(plan.events, key=lambda e: e[2])[1] if plan.events else None
    candidates, reasons, declared = [], {}, model_grid(model)
    for index, (path, shape) in enumerate(plan.layers):
        if len(shape) != 3 or shape[0] != images.shape[0] or shape[1] <= prefix_tokens:
            continue
        try:
            patch_grid(shape[1] - prefix_tokens, images.shape[1:3], grid, declared)
        except ValueError as err:
            reasons.setdefault(path, str(err))
            continue
        if prefix_tokens > 0 and last_mix is not None and index >= last_mix:
            reasons.setdefault(path, f"computed after the last attention ({last_attention!r}): its patch tokens reach "
                                     "the CLS read-out only through the CLS token, so their gradient is zero")
            continue
        if path not in candidates:
            candidates.append(path)
    return [c for c in candidates if c not in reasons], reasons


def default_token_layer(model: ModelFunctions, candidates: Sequence[str]) -> str | None:
    """The model's ``gradcam_layer`` attribute (the shipped ViT's), else the last block's ``norm1``
    (timm's layout: ``blocks_{i}/norm1``, NNX ``blocks/{i}/norm1``) among ``candidates``, or None."""
    declared = _module_attribute(model, "gradcam_layer")
    if isinstance(declared, str) and declared in candidates:
        return declared
    norms = [(int(m.group(2)), c) for c in candidates if (m := _BLOCK_NORM1.search(c))]
    return max(norms)[1] if norms else None


# ---------------------------------------------------------------------------------------------
# the methods


def _cls_row_map(model, relevance, images, prefix_tokens, grid):
    """Row 0 of ``(B, T, T)`` over the patch columns, on the grid, upsampled: ``(B, H, W, 1)``."""
    tokens = relevance.shape[-1]
    hw = patch_grid(tokens - prefix_tokens, images.shape[1:3], grid, model_grid(model))
    return upsample(tokens_to_grid(relevance[:, 0], prefix_tokens, hw), images.shape)


def _check_tokens(probs, prefix_tokens):
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1 or probs[0].shape[-1] != probs[0].shape[-2]:
        raise ValueError(f"the attention methods need self-attention over the same tokens in every layer; got "
                         f"probability shapes {sorted(shapes)}")
    if probs[0].shape[-1] <= prefix_tokens:
        raise ValueError(f"prefix_tokens={prefix_tokens} leaves no patch tokens of {probs[0].shape[-1]}")


def _fuse(probs, head_fusion):
    return {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[head_fusion](probs, axis=1)


def _discard(fused, discard_ratio):
    """Zero the lowest ``discard_ratio`` fraction of each ``(T, T)`` matrix, entry ``(0, 0)`` (CLS to
    CLS) kept, as jacobgil/vit-explain does."""
    batch, tokens, _ = fused.shape
    count = int(tokens * tokens * discard_ratio)
    if count == 0:
        return fused
    flat = fused.reshape(batch, tokens * tokens)
    _, lowest = jax.lax.top_k(-flat, count)
    drop = jnp.zeros(flat.shape, bool).at[jnp.arange(batch)[:, None], lowest].set(True).at[:, 0].set(False)
    return jnp.where(drop, 0.0, flat).reshape(fused.shape)


def rollout(probs: Sequence[jax.Array], head_fusion: str = "mean", discard_ratio: float = 0.0) -> jax.Array:
    """Attention rollout (Abnar & Zuidema 2020) of per-layer probabilities ``(B, heads, T, T)``: ``(B, T, T)``.

    Per layer: heads fused (mean / max / min), the lowest ``discard_ratio`` of the entries zeroed
    (CLS-to-CLS kept), the identity added, rows renormalised; the layers multiplied in order
    (``R = Â_L ... Â_1``).
    """
    result = None
    for p in probs:
        fused = _discard(_fuse(p.astype(jnp.float32), head_fusion), discard_ratio)
        a = fused + jnp.eye(fused.shape[-1], dtype=fused.dtype)
        a = a / a.sum(-1, keepdims=True)
        result = a if result is None else a @ result
    return result


def attention_rollout(model, images, labels, key=None, *, head_fusion="mean", discard_ratio=0.0,
                      prefix_tokens=None, grid=None) -> jax.Array:
    """Attention rollout (Abnar & Zuidema 2020): ``(B, H, W, 1)`` non-negative maps (not normalised).

    ``R = Â_L ... Â_1`` with ``Â = rownorm(discard(fuse_heads(A)) + I)``; the map is the CLS row of
    ``R`` over the patch tokens, on the patch grid, upsampled bilinearly to the image. The labels do
    not enter (rollout is class-agnostic) and nothing is random (``key`` is ignored).

    Differs from jacobgil/vit-explain (the widely used code) in two places, both bugs there: rows
    are renormalised (``a / a.sum(-1, keepdims=True)``; vit-explain divides entry ``(i, j)`` by row
    ``j``'s sum), and entries are discarded per image (vit-explain only changes the batch's first);
    the map is not divided by its maximum (``gj.explain`` min-max normalises). As there, entries
    are discarded before the identity is added and only entry ``(0, 0)`` is protected.

    Args:
      model: a ``gj.ModelFunctions`` of a Flax model with attention (see the module docstring).
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int (unused).
      key: unused.
      head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over the heads.
      discard_ratio: fraction in ``[0, 1)`` of each fused matrix's entries set to zero.
      prefix_tokens: CLS and register tokens ahead of the patches (None: the model's, else 1).
      grid: the patch grid ``(h, w)`` (None: inferred).

    Raises:
      ValueError: bad options, a model without attention (what was looked for is named), no grid.
    """
    del labels, key
    check_choice(head_fusion, "head_fusion", ("mean", "max", "min"))
    check_fraction(discard_ratio, "discard_ratio")
    prefix = prefix_tokens_of(model, prefix_tokens)
    probs, _ = capture_attention(model, images)
    _check_tokens(probs, prefix)
    return _cls_row_map(model, rollout(probs, head_fusion, discard_ratio), images, prefix, grid)


def generic_relevance(probs: Sequence[jax.Array], grads: Sequence[jax.Array]) -> jax.Array:
    """Chefer et al.'s relevance of self-attention layers: ``R = I``, then per layer
    ``R <- R + mean_heads((grad * A)^+) R``: ``(B, T, T)``."""
    relevance = None
    for p, g in zip(probs, grads):
        a_bar = jnp.mean(jax.nn.relu(g * p), axis=1)
        if relevance is None:
            relevance = jnp.broadcast_to(jnp.eye(a_bar.shape[-1], dtype=a_bar.dtype), a_bar.shape)
        relevance = relevance + a_bar @ relevance
    return relevance


def generic_attention(model, images, labels, key=None, *, prefix_tokens=None, grid=None) -> jax.Array:
    """Generic attention explainability (Chefer et al., ICCV 2021): ``(B, H, W, 1)`` non-negative maps.

    Per attention layer ``Ā = mean_heads((∇A ⊙ A)⁺)``, ``∇A`` the gradient of the label's logit with
    respect to the attention probabilities; ``R = I`` then ``R <- R + Ā R`` in forward order; the map
    is the CLS row of ``R`` over the patch tokens, on the patch grid, upsampled bilinearly (as in the
    authors' ``generate_relevance``, whose CLS row reads ``R[0, 1:]``). One forward and one backward
    pass. ``key`` is ignored.

    Args:
      model: a ``gj.ModelFunctions`` of a Flax model with attention whose probabilities lie on the
        path to the logits (not only sown; see the module docstring).
      images: ``(B, H, W, C)``.
      labels: ``(B,)`` int target classes.
      key: unused.
      prefix_tokens: CLS and register tokens ahead of the patches (None: the model's, else 1).
      grid: the patch grid ``(h, w)`` (None: inferred).

    Raises:
      ValueError: a model without attention, attention that is only sown, no grid.
    """
    del key
    prefix = prefix_tokens_of(model, prefix_tokens)
    probs, grads = capture_attention(model, images, labels)
    _check_tokens(probs, prefix)
    return _cls_row_map(model, generic_relevance(probs, grads), images, prefix, grid)
