# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # RCAP explained
#
# ReCover And Predict (the paper's section 4, eq. 5) scores a saliency map M of an image with
# target class c:
#
# * the percentiles p_k = 100 - k * interval, k = 1..j (defaults lower_bound = 50,
#   interval = 10: p = 90, 80, 70, 60, 50);
# * the recovered image I_k: the image where M >= percentile_{p_k}(M), **black** elsewhere
#   (zero in pixel space);
# * ratio_k = sum(M over the recovered pixels) / sum(M): how much of the map's saliency lies in
#   the recovered part (**visual noise level**: a map that spreads saliency over the rest of the
#   image has low ratios);
# * prob_k = softmax(model(I_k))[c]: whether the recovered pixels are the ones the model needs
#   (**localization**);
# * RCAP = mean_k ratio_k * prob_k.
#
# This notebook takes one photo apart, reproduces the paper's Figure 4 (Propositions 1 and 2)
# on synthetic maps, and runs the reversed "R" variants of section 4.3. The photo is resized to
# 128 x 128 to keep the notebook to about a minute on two CPU cores.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from skimage import data

import gag_jax as gj
from gag_jax import models

SIZE = 128
model = models.model_functions(*models.load("efficientnet_lite0"))
logits_fn = model.logits
photo = data.stereo_motorcycle()[0]                 # the left view of scikit-image's stereo pair
scaling = model.scaling                             # Lite0's input scaling: (x - 127) / 128
images = gj.data.prepare_pixels([photo], SIZE, model=model)  # (1, SIZE, SIZE, 3), normalised as the model expects
pixels = np.asarray(gj.pixels.to_pixels(images, **scaling))  # the same image in [0, 1] pixel space
probabilities = jax.nn.softmax(logits_fn(images))[0]
label = int(jnp.argmax(probabilities))
print(f"predicted {models.imagenet_classes()[label]!r} (class {label}) with probability {probabilities[label]:.3f}")

# %% [markdown]
# ## 1. The partitions of one image
#
# The paper's Figure 3 compares SmoothGrad, AbsoluteGrad (GAG with p = 0) and Guided
# AbsoluteGrad. The three maps go through `gj.metrics.rcap` as one batch of three (the same
# image three times); it returns per image the ratios, the probabilities and the percentile
# values (`thresholds`) it used.

# %%
methods = ["sg", "ag", "gag"]
key = jax.random.PRNGKey(0)
sal = jnp.concatenate([gj.explain(m, model, images, jnp.array([label]), key=key) for m in methods])
batch_images, batch_labels = jnp.repeat(images, len(methods), 0), jnp.full((len(methods),), label)
out = gj.metrics.rcap(logits_fn, batch_images, batch_labels, sal, **scaling)
percentiles = np.asarray(out["percentiles"])
for m, score in zip(methods, out["rcap"]):
    print(f"{m:4s} RCAP {float(score):.4f}")

# %% [markdown]
# Rebuild the recovered images by hand from the thresholds, run them through the model, and
# check the result against what `rcap` computed.

# %%
keep = np.asarray(sal)[:, None] >= np.asarray(out["thresholds"])[:, :, None, None]      # (3, j, H, W)
recovered = np.where(keep[..., None], pixels[:, None], 0.0)                             # black elsewhere
probs = jax.nn.softmax(logits_fn(gj.pixels.from_pixels(recovered.reshape(-1, SIZE, SIZE, 3), **scaling)))[:, label]
ratios = np.where(keep, np.asarray(sal)[:, None], 0).sum((2, 3)) / np.asarray(sal).sum((1, 2))[:, None]
prob_gap = float(np.abs(probs.reshape(keep.shape[:2]) - out["probs"]).max())
ratio_gap = float(np.abs(ratios - out["ratios"]).max())
print(f"largest difference in probabilities {prob_gap:.2e}, in ratios {ratio_gap:.2e}")

# %%
j = len(percentiles)
fig, axes = plt.subplots(len(methods), j + 1, figsize=(2.1 * (j + 1), 2.3 * len(methods)))
for i, (m, row) in enumerate(zip(methods, axes)):
    row[0].imshow(sal[i], cmap="jet"), row[0].set_title(f"{m}: RCAP {float(out['rcap'][i]):.3f}", fontsize=9)
    for k, ax in enumerate(row[1:]):
        ax.imshow(recovered[i, k])
        ratio, prob = float(out["ratios"][i, k]), float(out["probs"][i, k])
        ax.set_title(f"I_{percentiles[k]:.0f}: ratio {ratio:.2f}\nprob {prob:.2f}", fontsize=8)
for ax in axes.flat:
    ax.axis("off")

fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
for ax, (title, values) in zip(axes, [("ratio_k", out["ratios"]), ("prob_k", out["probs"]),
                                      ("ratio_k x prob_k", out["ratios"] * out["probs"])]):
    for m, v in zip(methods, values):
        ax.plot(percentiles, v, "o-", label=m)
    ax.set_title(title), ax.set_xlabel("percentile p_k"), ax.invert_xaxis()
axes[0].legend()
plt.show()

# %% [markdown]
# Read the rows from left to right: each recovered image adds the next 10 % of pixels in order
# of saliency. A map whose top pixels cover the object makes the model confident early
# (prob_k); a map whose saliency is concentrated in those pixels keeps ratio_k high. RCAP
# needs both at once.

# %% [markdown]
# ## 2. Propositions 1 and 2 on synthetic maps (Figure 4)
#
# Figure 4 of the paper: a centred object covering 20 % of the image, and four Gaussian maps.
# M1 is centred on the object and narrow; M2 has the same centre and a wider spread (noisier);
# M3 is as narrow as M1 but shifted by 30 % of the width and height towards the lower right; M4
# is shifted and wide (the worst).
#
# The model is a closed form whose confidence grows with how much of the object is visible:
# logit_1 = 12 * (mean pixel value over the object - 1/2), logit_0 = 0. The object is white on a
# dark background, so recovering more of it raises the probability of class 1 and recovering
# background does nothing.
#
# * **Proposition 1** (localization): with similar noise levels, the map whose Focus Area covers
#   more of the object scores higher: RCAP(M1) > RCAP(M3) and RCAP(M2) > RCAP(M4).
# * **Proposition 2** (visual noise): when two maps recover the same pixels (M1 and M2 rank the
#   pixels identically, so their recovered images and probabilities are the same), the noisier
#   one scores lower: RCAP(M1) > RCAP(M2).
#
# Deletion / Insertion AUC only use the ranking of the pixels, so they cannot tell M1 from M2.
# The cell checks every claim with `assert`.

# %%
S = 40
yy, xx = np.mgrid[0:S, 0:S] + 0.5
half = S * np.sqrt(0.2) / 2                                       # centred square, 20 % of the pixels
obj = ((np.abs(yy - S / 2) <= half) & (np.abs(xx - S / 2) <= half)).astype(np.float32)
mean, std = np.asarray(gj.IMAGENET_MEAN, np.float32), np.asarray(gj.IMAGENET_STD, np.float32)

def object_model(x):                                              # (B, S, S, 3) normalised -> (B, 2)
    visible = jnp.sum((x * std + mean) * obj[None, :, :, None], axis=(1, 2, 3)) / (3 * obj.sum())
    return jnp.stack([jnp.zeros_like(visible), 12.0 * (visible - 0.5)], axis=-1)

background = np.random.default_rng(0).uniform(0.0, 0.15, (S, S, 3))
syn_pixels = np.where(obj[..., None] > 0, 1.0, background).astype(np.float32)[None]
syn_images = jnp.repeat(gj.pixels.from_pixels(syn_pixels, gj.IMAGENET_MEAN, gj.IMAGENET_STD), 4, 0)
syn_labels = jnp.ones((4,), jnp.int32)

def gaussian_map(cy, cx, sigma):
    g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return ((g - g.min()) / (g.max() - g.min())).astype(np.float32)

centre, shifted, narrow, wide = S / 2, S / 2 + 0.3 * S, 0.135 * S, 0.3 * S
fig4 = {"M1": gaussian_map(centre, centre, narrow), "M2": gaussian_map(centre, centre, wide),
        "M3": gaussian_map(shifted, shifted, narrow), "M4": gaussian_map(shifted, shifted, wide)}
syn_maps = jnp.asarray(np.stack(list(fig4.values())))
syn_rcap = gj.metrics.rcap(object_model, syn_images, syn_labels, syn_maps,   # ImageNet-standardised pixels
                           mean=gj.IMAGENET_MEAN, std=gj.IMAGENET_STD)
syn_di = gj.metrics.deletion_insertion(object_model, syn_images, syn_labels, syn_maps)

r = dict(zip(fig4, np.asarray(syn_rcap["rcap"])))
print(f"{'map':4s}{'RCAP':>8s}{'mean ratio':>12s}{'mean prob':>11s}{'DAUC':>8s}{'IAUC':>8s}")
for i, name in enumerate(fig4):
    ratio, prob = float(syn_rcap["ratios"][i].mean()), float(syn_rcap["probs"][i].mean())
    print(f"{name:4s}{r[name]:8.3f}{ratio:12.3f}{prob:11.3f}{float(syn_di['dauc'][i]):8.3f}{float(syn_di['iauc'][i]):8.3f}")

print("Proposition 1: RCAP(M1) > RCAP(M3):", r["M1"] > r["M3"], "  RCAP(M2) > RCAP(M4):", r["M2"] > r["M4"])
same_probs = np.allclose(syn_rcap["probs"][0], syn_rcap["probs"][1], atol=1e-6)
print("Proposition 2: M1 and M2 recover the same pixels (equal probs):", same_probs,
      "  RCAP(M1) > RCAP(M2):", r["M1"] > r["M2"])
same_auc = all(np.allclose(syn_di[k][0], syn_di[k][1], atol=1e-6) for k in ("dauc", "iauc"))
print("DAUC and IAUC of M1 and M2 are equal:", same_auc)
assert r["M1"] > r["M3"] and r["M2"] > r["M4"] and same_probs and r["M1"] > r["M2"] and same_auc

# %%
fig, axes = plt.subplots(1, 7, figsize=(20, 3), gridspec_kw={"width_ratios": [1] * 5 + [1.6, 1.6]})
axes[0].imshow(obj, cmap="viridis"), axes[0].set_title("(a) ground truth")
for ax, (letter, (name, m)) in zip(axes[1:5], zip("bcde", fig4.items())):
    ax.imshow(m, cmap="jet"), ax.contour(m >= np.percentile(m, 50), [0.5], colors="w")
    ax.contour(obj, [0.5], colors="k", linestyles="--")
    ax.set_title(f"({letter}) {name}: RCAP {r[name]:.3f}", fontsize=9)
t = np.arange(S)                                                  # the image's diagonal (t, t)
for ax, letter, pair in [(axes[5], "f", ("M1", "M2")), (axes[6], "g", ("M3", "M4"))]:
    ax.axvspan(S / 2 - half, S / 2 + half, color="gold", alpha=0.4, label="object")
    for name in pair:
        m = fig4[name]
        line, = ax.plot(t, m[t, t], label=name)
        focus = m[t, t] >= np.percentile(m, 50)                   # on the map's Focus Area
        ax.fill_between(t, 0, m[t, t], where=focus, color=line.get_color(), alpha=0.25)
    ax.set_xlabel("position along the diagonal"), ax.set_title(f"({letter}) profiles"), ax.legend(fontsize=7)
for ax in axes[:5]:
    ax.axis("off")

# %% [markdown]
# In (b)-(e) the white contour is the Focus Area (the top 50 % of the map) and the dashed black
# square the object. (f)-(g) follow the maps along the image's diagonal: the shaded area under
# a curve is the part of the diagonal in that map's Focus Area, the gold band the object.
#
# ## 3. Reversed variants ("R", Table 2 part 3)
#
# To test whether the probabilities really follow localization without ground truth, the paper
# *reverses* a map: keep the top l = 7 % of the saliency values in place and swap the lowest
# m = 10 % with the band just below the kept top (percentiles 83 to 93). The values of the map
# are unchanged, only their locations move, so a part of the Focus Area lands on pixels the
# map found unimportant. `gj.reverse(maps, key, keep=0.07, swap=0.10)` does it (the key breaks
# ties at random).

# %%
rev = gj.reverse(sal, jax.random.PRNGKey(1))
assert np.allclose(np.sort(np.asarray(rev).reshape(3, -1)), np.sort(np.asarray(sal).reshape(3, -1)))   # same values

fig, axes = plt.subplots(2, len(methods), figsize=(2.6 * len(methods), 5.2))
for i, m in enumerate(methods):
    axes[0, i].imshow(sal[i], cmap="jet"), axes[0, i].set_title(m)
    axes[1, i].imshow(rev[i], cmap="jet"), axes[1, i].set_title(f"{m} R")
for ax in axes.flat:
    ax.axis("off")
plt.show()

columns = ["rcap", "dauc", "iauc"]
print(f"{'map':8s}" + "".join(f"{c.upper():>8s}{'R':>8s}" for c in columns))
cases = [(methods, logits_fn, batch_images, batch_labels, sal, scaling),
         (list(fig4), object_model, syn_images, syn_labels, syn_maps,
          {"mean": gj.IMAGENET_MEAN, "std": gj.IMAGENET_STD})]  # synthetic: ImageNet statistics
for names, fn, x, y, s, norm in cases:
    original = gj.metrics.score(fn, x, y, s, metrics=columns, **norm)
    reversed_ = gj.metrics.score(fn, x, y, gj.reverse(s, jax.random.PRNGKey(1)), metrics=columns, **norm)
    for i, name in enumerate(names):
        print(f"{name:8s}" + "".join(f"{original[c][i]:8.3f}{reversed_[c][i]:8.3f}" for c in columns))

# %% [markdown]
# The photo's rows use EfficientNet-Lite0, the M rows the object model above. Reversal keeps
# the map's values and its top 7 %, so it can only move saliency from the band just below the
# top onto unimportant pixels: RCAP, which recovers the top 10 % to 50 %, sees that directly
# through prob_k. The paper (Table 2, parts 2 and 3) finds every reversed variant worse on every
# metric on its datasets.
