"""gag-jax: Guided AbsoluteGrad and the gradient-saliency family in JAX."""
from gag_jax import gradients

__version__ = "0.1.0"
