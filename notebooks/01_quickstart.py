# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quick start: explain a real photo
#
# Two photos that ship with scikit-image, the EfficientNet-Lite0 ImageNet classifier whose
# weights ship with gag-jax (`models.load("efficientnet_lite0")`, no download, no PyTorch),
# Guided AbsoluteGrad (**GAG**) and four other gradient methods, and the three metrics of the
# paper that need no ground truth: **RCAP** (higher is better), **Deletion AUC** (DAUC, lower is
# better) and **Insertion AUC** (IAUC, higher is better).
#
# The images are resized to **128 x 128** so that this notebook runs in about a minute on two
# CPU cores (most of it is compiling each method once). The model's native size is 224:
# pass 224 instead of 128 to `prepare_pixels` for full-size maps.
#
# Setup, from the repository root: `pip install -e ".[demo]"`.

# %%
import jax
import matplotlib.pyplot as plt
import skimage

import gag_jax as gj
from gag_jax import models

model = models.model_functions(*models.load("efficientnet_lite0"))  # shipped ImageNet weights
scaling = model.scaling  # the model carries its input scaling: Lite0 takes (x - 127) / 128
images = gj.data.prepare_pixels([skimage.data.chelsea(), skimage.data.stereo_motorcycle()[0]], 128, model=model)
pixels, labels = gj.pixels.to_pixels(images, **scaling).clip(0, 1), model.logits(images).argmax(-1)  # display, top-1

# %% [markdown]
# ## Explain
#
# `gj.explain(method, model, images, labels, key=...)` returns one `(B, H, W)` map in [0, 1] per
# image. Every method uses n = 20 samples (noisy copies or path steps) by default; the same key
# gives the same map. The first call of each method compiles it; later calls with the same
# shapes reuse the compiled program.
#
# A map is the sum over the colour channels of the attribution's absolute value, min-max
# normalised per image (`gj.to_saliency`; `reduce="sum"` keeps the sign). GAG sums gradient
# magnitudes and down-weights the pixels whose gradient variance under noise is below the
# 85th percentile of the image (the variance guide).

# %%
methods = ["gag", "vg", "sg", "ig", "gradcam"]
maps = {m: gj.explain(m, model, images, labels, key=jax.random.PRNGKey(0)) for m in methods}

fig, axes = plt.subplots(len(images), len(methods) + 1, figsize=(13, 4.6), subplot_kw={"xticks": [], "yticks": []})
for i, row in enumerate(axes):
    row[0].imshow(pixels[i]), row[0].set_title(models.imagenet_classes()[labels[i]])
    for ax, m in zip(row[1:], methods):
        ax.imshow(pixels[i]), ax.imshow(maps[m][i], cmap="jet", alpha=0.5), ax.set_title(m)

# %% [markdown]
# ## Score
#
# RCAP recovers the top 10 %, 20 %, ..., 50 % most salient pixels on a black image and multiplies
# the model's probability of the class by the share of the map's total saliency in that part
# (notebook 03 takes it apart). DAUC / IAUC delete pixels from the photo / insert them into a
# blurred copy in order of saliency and integrate the probability of the class. The values
# printed are means over the two photos; two images are far too few to rank methods
# (notebook 04 runs the paper's tables on a dataset).

# %%
for m, s in maps.items():
    r = gj.metrics.score(model.logits, images, labels, s, metrics="rcap,dauc,iauc", **scaling)
    print(f"{m:8s} RCAP {r['rcap'].mean():.3f}   DAUC {r['dauc'].mean():.3f}   IAUC {r['iauc'].mean():.3f}")

# %% [markdown]
# ## Next
#
# * `02_compose_your_own.ipynb`: build a new explainer from the four seams and run it on your
#   own Flax model.
# * `03_rcap_explained.ipynb`: what RCAP measures, and why Deletion/Insertion AUC cannot see
#   visual noise.
# * `04_reproduce_a_case.ipynb`: the paper's Tables 1-3 on the synthetic dataset, and the
#   commands for ImageNet-S, ISIC and Places365.
