"""The helpers every command shares (issue 22 item 3): top-1 prediction and batch rounding, each
written once, against numpy references written from their definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.experiments import modelzoo


def _linear(seed=0, k=5):
    w = np.random.default_rng(seed).normal(size=(12, k)).astype(np.float32)
    return w, gj.ModelFunctions(lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w), mean=(0.0,), std=(1.0,))


@pytest.mark.parametrize("batch_size", [None, 1, 3, 7, 9])
def test_predict_top1_is_the_softmax_argmax_whatever_the_batch(batch_size):
    w, model = _linear()
    x = np.random.default_rng(1).normal(size=(7, 2, 2, 3)).astype(np.float32)
    logits = x.reshape(7, -1).astype(np.float64) @ w
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(modelzoo.class_probabilities(model, x, batch_size=batch_size), probs, rtol=1e-5,
                               atol=1e-6)
    classes, p = modelzoo.predict_top1(model, x, batch_size=batch_size)
    assert classes.dtype == np.int32 and classes.shape == p.shape == (7,)
    np.testing.assert_array_equal(classes, probs.argmax(1))
    np.testing.assert_allclose(p, probs.max(1), rtol=1e-5)


def test_top1_of_takes_the_first_of_equal_classes():
    classes, p = modelzoo.top1_of(np.asarray([[0.2, 0.4, 0.4], [0.5, 0.1, 0.4]], np.float32))
    np.testing.assert_array_equal(classes, [1, 0])
    np.testing.assert_allclose(p, [0.4, 0.5])


def test_round_to_devices_is_the_next_multiple_of_the_device_count():
    mesh = gj.distributed.make_mesh(jax.devices()[:1])
    assert [gj.distributed.round_to_devices(b, mesh) for b in (1, 5)] == [1, 5]
    assert gj.distributed.round_to_devices(3, None) == 3
    d = len(jax.devices())
    mesh = gj.distributed.make_mesh()
    for b in range(1, 3 * d + 2):
        got = gj.distributed.round_to_devices(b, mesh)
        assert got % d == 0 and b <= got < b + d  # the smallest multiple of d not below b
