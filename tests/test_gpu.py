"""GPU checks (skipped on CPU): the same maps on GPU as on CPU, and bf16 compute close to float32."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.models.resnet import ResNetTiny

pytestmark = pytest.mark.gpu


def _resnet(dtype):
    module = ResNetTiny(num_classes=10, dtype=dtype)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    return module, variables


def test_gag_on_gpu_equals_cpu():
    module, variables = _resnet(jnp.float32)
    images = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 64, 3))
    labels = jnp.arange(4)
    key = jax.random.PRNGKey(2)
    model_fn = functools.partial(module.apply, variables)
    on_gpu = gj.explain("gag", model_fn, jax.device_put(images, jax.devices("gpu")[0]), labels, key=key)
    with jax.default_device(jax.devices("cpu")[0]):
        cpu_vars = jax.device_put(variables, jax.devices("cpu")[0])
        on_cpu = gj.explain("gag", functools.partial(module.apply, cpu_vars),
                            jax.device_put(images, jax.devices("cpu")[0]), labels, key=key)
    # TF32 convolutions on the GPU: compare the ranking of the top pixels, not bits
    a, b = np.asarray(on_gpu).reshape(4, -1), np.asarray(on_cpu).reshape(4, -1)
    for row_a, row_b in zip(a, b):
        top_a = set(np.argsort(row_a)[-200:])
        top_b = set(np.argsort(row_b)[-200:])
        assert len(top_a & top_b) >= 150


def test_bfloat16_compute_keeps_float32_statistics():
    module32, variables = _resnet(jnp.float32)
    module16 = module32.clone(dtype=jnp.bfloat16)
    images = jax.random.normal(jax.random.PRNGKey(3), (4, 64, 64, 3))
    labels = jnp.arange(4)
    key = jax.random.PRNGKey(4)
    raw16 = gj.explain("gag", functools.partial(module16.apply, variables), images, labels, key=key, postprocess=False)
    raw32 = gj.explain("gag", functools.partial(module32.apply, variables), images, labels, key=key, postprocess=False)
    assert raw16.dtype == jnp.float32
    corr = [np.corrcoef(np.asarray(x).ravel(), np.asarray(y).ravel())[0, 1] for x, y in zip(raw16, raw32)]
    assert min(corr) > 0.9, corr
