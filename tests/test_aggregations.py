"""Aggregations against independent numpy computations; streaming == stacked for every chunking."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax import aggregations


def numpy_guided(grads, p, guide_axes="channel"):
    """Eq. 2-5 written out with numpy, one (image, channel) at a time."""
    _, b, h, w, c = grads.shape
    out = np.zeros((b, h, w, c))
    for i in range(b):
        var_img = np.var(grads[:, i], axis=0, ddof=1)  # (h, w, c)
        mag = np.abs(grads[:, i]).sum(0)
        if guide_axes == "image":
            q = np.quantile(var_img, p) if p > 0 else None
            guide = np.ones_like(var_img) if p == 0 else np.where(var_img >= q, 1.0, var_img)
            out[i] = mag * guide
            continue
        for ch in range(c):
            v = var_img[..., ch]
            if p == 0:
                guide = np.ones_like(v)
            else:
                q = np.quantile(v, p)
                guide = np.where(v >= q, 1.0, v)
            out[i, ..., ch] = mag[..., ch] * guide
    return out


@pytest.mark.parametrize("p", [0.0, 0.5, 0.85])
@pytest.mark.parametrize("guide_axes", ["channel", "image"])
def test_guided_matches_numpy(p, guide_axes):
    grads = np.random.default_rng(0).normal(size=(20, 2, 9, 7, 3)).astype(np.float32)
    got = gj.aggregations.guided(jnp.asarray(grads), p, guide_axes=guide_axes)
    np.testing.assert_allclose(np.asarray(got), numpy_guided(grads.astype(np.float64), p, guide_axes), rtol=1e-5, atol=1e-5)


def stream(aggregation, signals, interpreted, chunk):
    n = signals.shape[0]
    state = aggregation.init(signals.shape[1:])
    for start in range(0, n, chunk):
        part = signals[start:start + chunk]
        part_i = interpreted[start:start + chunk]
        pad = chunk - part.shape[0]
        weights = jnp.concatenate([jnp.ones(part.shape[0]), jnp.zeros(pad)])
        if pad:  # padded rows hold garbage that the weights must mask out
            garbage = 1e3 * jnp.ones((pad,) + part.shape[1:])
            part = jnp.concatenate([part, garbage])
            part_i = jnp.concatenate([part_i, garbage])
        state = aggregation.update(state, part_i, part, weights)
    return aggregation.finalize(state)


@pytest.mark.parametrize("chunk", [1, 3, 7, 20])
def test_streaming_equals_stacked(chunk):
    rng = np.random.default_rng(1)
    # a large common offset makes a naive sum-of-squares variance lose precision; Chan's merge must not
    grads = jnp.asarray(100.0 + rng.normal(size=(20, 2, 6, 5, 3)), jnp.float32)
    np.testing.assert_allclose(stream(aggregations.guide(0.85), grads, jnp.abs(grads), chunk),
                               gj.aggregations.guided(grads, 0.85), rtol=2e-4)
    np.testing.assert_allclose(stream(aggregations.variance(), grads, grads, chunk),
                               np.var(np.asarray(grads, np.float64), axis=0, ddof=1), rtol=2e-3)
    np.testing.assert_allclose(stream(aggregations.mean(), grads, grads, chunk),
                               np.asarray(grads, np.float64).mean(0), rtol=1e-5)
    np.testing.assert_allclose(stream(aggregations.total(), grads, grads, chunk),
                               np.asarray(grads, np.float64).sum(0), rtol=1e-5)


def test_percentile_zero_is_absolute_grad():
    grads = jax.random.normal(jax.random.PRNGKey(0), (5, 1, 4, 4, 3))
    np.testing.assert_allclose(gj.aggregations.guided(grads, 0.0), jnp.abs(grads).sum(0), rtol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_percentile_out_of_range(bad):
    with pytest.raises(ValueError, match="percentile"):
        gj.aggregations.guided(jnp.zeros((3, 1, 4, 4, 3)), bad)


def test_guided_wrong_rank():
    with pytest.raises(ValueError, match="grads"):
        gj.aggregations.guided(jnp.zeros((3, 4, 4, 3)), 0.5)
