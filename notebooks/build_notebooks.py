"""Write the project's notebooks from the cell sources below, with no outputs.

The ``.ipynb`` files in this folder are generated: edit this script, then run

    python notebooks/build_notebooks.py            # rewrite every notebook
    python notebooks/build_notebooks.py --check    # exit 1 if a notebook differs from this script
    python notebooks/build_notebooks.py --execute OUT_DIR
                                                   # also execute each one into OUT_DIR (with figures)

Cell ids are derived from the notebook name and the cell position, so the files are byte-for-byte
reproducible and a review shows only real changes. ``tests/test_notebooks.py`` executes every
notebook top to bottom and checks that the committed files match this script.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))


def md(source: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(source).strip("\n")


def code(source: str) -> tuple[str, str]:
    return "code", textwrap.dedent(source).strip("\n")


# --------------------------------------------------------------------------------------------
# 01  Quick start
# --------------------------------------------------------------------------------------------

QUICKSTART = [
    md("""
    # Quick start: explain a real photo

    Two photos that ship with scikit-image, the EfficientNet-Lite0 ImageNet classifier whose
    weights ship with gag-jax (`models.load("efficientnet_lite0")`, no download, no PyTorch),
    Guided AbsoluteGrad (**GAG**) and four other gradient methods, and the three metrics of the
    paper that need no ground truth: **RCAP** (higher is better), **Deletion AUC** (DAUC, lower is
    better) and **Insertion AUC** (IAUC, higher is better).

    The images are resized to **128 x 128** so that this notebook runs in about a minute on two
    CPU cores (most of it is compiling each method once). The model's native size is 224:
    set `SIZE = 224` for full-size maps.

    Setup, from the repository root: `pip install -e ".[demo]"`.
    """),
    code("""
    import jax, jax.numpy as jnp, numpy as np, matplotlib.pyplot as plt, gag_jax as gj, models
    from skimage import data

    SIZE = 128
    model = models.model_functions(*models.load("efficientnet_lite0"))  # shipped ImageNet weights
    classes = open(models.__file__.replace("__init__.py", "imagenet_classes.txt")).read().splitlines()
    images = gj.data.prepare_pixels([data.chelsea(), data.stereo_motorcycle()[0]], SIZE)  # (2, SIZE, SIZE, 3), ImageNet-normalised
    pixels = np.clip(gj.ops.to_pixels(images), 0, 1)           # back to [0, 1] RGB, for display
    labels = jnp.argmax(model["logits"](images), axis=-1)      # explain the predicted class
    """),
    md("""
    ## Explain

    `gj.explain(method, model, images, labels, key=...)` returns one `(B, H, W)` map in [0, 1] per
    image. Every method uses n = 20 samples (noisy copies or path steps) by default; the same key
    gives the same map. The first call of each method compiles it; later calls with the same
    shapes reuse the compiled program.

    VG, SG and IG keep the sign of the gradient, as in the paper, so after the per-image min-max
    normalisation "no attribution" sits in the middle of the colour scale. GAG sums gradient
    magnitudes and down-weights the pixels whose gradient variance under noise is below the
    85th percentile of the image (the variance guide).
    """),
    code("""
    methods = ["gag", "vg", "sg", "ig", "gradcam"]
    maps = {m: gj.explain(m, model, images, labels, key=jax.random.PRNGKey(0)) for m in methods}

    fig, axes = plt.subplots(len(images), len(methods) + 1, figsize=(13, 4.6))
    for i, row in enumerate(axes):
        row[0].imshow(pixels[i]), row[0].set_title(classes[labels[i]])
        for ax, m in zip(row[1:], methods):
            ax.imshow(pixels[i]), ax.imshow(maps[m][i], cmap="jet", alpha=0.5), ax.set_title(m)
    [ax.axis("off") for ax in axes.flat];
    """),
    md("""
    ## Score

    RCAP recovers the top 10 %, 20 %, ..., 50 % most salient pixels on a black image and multiplies
    the model's probability of the class by the share of the map's total saliency in that part
    (notebook 03 takes it apart). DAUC / IAUC delete pixels from the photo / insert them into a
    blurred copy in order of saliency and integrate the probability of the class. The values
    printed are means over the two photos; two images are far too few to rank methods
    (notebook 04 runs the paper's tables on a dataset).
    """),
    code("""
    for m, s in maps.items():
        r = {**gj.metrics.rcap(model["logits"], images, labels, s), **gj.metrics.deletion_insertion(model["logits"], images, labels, s)}
        print(f"{m:8s} RCAP {r['rcap'].mean():.3f}   DAUC {r['dauc'].mean():.3f}   IAUC {r['iauc'].mean():.3f}")
    """),
    md("""
    ## Next

    * `02_compose_your_own.ipynb`: build a new explainer from the four seams and run it on your
      own Flax model.
    * `03_rcap_explained.ipynb`: what RCAP measures, and why Deletion/Insertion AUC cannot see
      visual noise.
    * `04_reproduce_a_case.ipynb`: the paper's Tables 1-3 on the synthetic dataset, and the
      commands for ImageNet-S, ISIC and Places365.
    """),
]

# --------------------------------------------------------------------------------------------
# 02  Compose your own explainer
# --------------------------------------------------------------------------------------------

COMPOSE = [
    md("""
    # Compose your own explainer

    The paper writes every gradient method as **modification -> gradient -> interpretation ->
    aggregation**. gag-jax has exactly these four seams, and `gj.chain` composes them the way
    `optax.chain` composes gradient transformations:

    | seam | module | examples |
    |---|---|---|
    | modification (where the n gradients are taken) | `gj.modifications` | `identity`, `gaussian_noise`, `straight_path` (IG), `blur_path` (BlurIG), `guided_ig_path` |
    | gradient | `gj.gradients` | `logit_gradient` (d logit_c / d input) |
    | interpretation (per sample) | `gj.interpretations` | `raw`, `positive`, `negative`, `absolute`, `square` |
    | aggregation (over the n samples) | `gj.aggregations` | `total`, `mean`, `variance`, `guide` (eq. 2-5) |

    This notebook trains a small Flax CNN of its own on the synthetic shapes dataset (32 x 32
    images with exact object masks; training takes well under a minute on two CPU cores), rebuilds GAG from the
    seams, builds two new explainers (one with a modification written here), jits and vmaps them,
    and compares them with the presets against the exact masks.
    """),
    code("""
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn, matplotlib.pyplot as plt
    import gag_jax as gj
    from gag_jax import modifications, gradients, interpretations, aggregations
    from gag_jax.data import make_synthetic, SHAPES
    """),
    md("""
    ## 1. A model of your own

    Any function `images (B, H, W, C) -> logits (B, K)` can be explained. Two methods need a bit
    more: Grad-CAM needs the model split into `features` (the last convolutional block) and
    `head`, and Guided Backprop needs its ReLUs replaced by `gj.gradients.guided_relu` (same
    forward pass, guided backward pass). In a Flax module that is a field and two methods.
    """),
    code("""
    class TinyCNN(nn.Module):
        num_classes: int = len(SHAPES)
        guided_backprop: bool = False          # True: ReLUs with the Guided-Backprop backward pass

        def setup(self):
            self.convs = [nn.Conv(c, (3, 3)) for c in (16, 32, 32)]
            self.dense = nn.Dense(self.num_classes)

        def relu(self, x):
            return gj.gradients.guided_relu(x) if self.guided_backprop else nn.relu(x)

        def features(self, x):                 # (B, 32, 32, 3) -> (B, 8, 8, 32): Grad-CAM's layer
            for i, conv in enumerate(self.convs):
                x = self.relu(conv(nn.max_pool(x, (2, 2), (2, 2)) if i else x))
            return x

        def head(self, f):                     # features -> logits
            return self.dense(f.mean(axis=(1, 2)))

        def __call__(self, x):
            return self.head(self.features(x))
    """),
    md("""
    Train it for 300 steps on 1000 synthetic images (five shape classes: disc, square, triangle,
    ring, cross) and test it on 32 others. The synthetic images are normalised with the ImageNet
    mean and std, like the photos, so every metric's defaults apply.
    """),
    code("""
    SIZE = 32
    train, test = make_synthetic(1000, size=SIZE, seed=1), make_synthetic(32, size=SIZE, seed=2)
    net = TinyCNN()
    params = net.init(jax.random.PRNGKey(0), train["images"][:1])
    optimizer = optax.adam(3e-3)

    @jax.jit
    def train_step(params, opt_state, x, y):
        loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, rng = optimizer.init(params), np.random.default_rng(0)
    for step in range(300):
        batch = rng.integers(0, len(train["labels"]), 64)
        params, opt_state, loss = train_step(params, opt_state, train["images"][batch], train["labels"][batch])
    accuracy = float((net.apply(params, test["images"]).argmax(-1) == test["labels"]).mean())
    print(f"last training loss {float(loss):.3f}; accuracy on the {len(test['labels'])} test images {accuracy:.1%}")
    """),
    md("""
    `gj.ModelFunctions` bundles the four functions the explainers use. Build it once and reuse
    it: compiled explainers and metrics are cached on these function objects.
    """),
    code("""
    model = gj.ModelFunctions(
        logits=functools.partial(net.apply, params),
        features=functools.partial(net.apply, params, method="features"),
        head=functools.partial(net.apply, params, method="head"),
        guided_logits=functools.partial(net.clone(guided_backprop=True).apply, params),
    )
    images, labels, masks = test["images"], jnp.asarray(test["labels"]), test["masks"]
    key = jax.random.PRNGKey(0)
    """),
    md("""
    ## 2. The presets are compositions of the seams

    Guided AbsoluteGrad is Gaussian noise (n = 20, 15 % of the image's value range), the logit
    gradient, the absolute value, and the variance-guided sum. `chain` returns a pure function
    `explainer(model_fn, images, labels, key) -> (B, H, W, C)` raw attributions;
    `gj.to_saliency` sums the channels and min-max normalises each map. The samples are streamed
    through a `lax.scan` in chunks of `chunk_size`, so memory does not grow with n, and the result
    does not depend on the chunk size beyond float rounding.
    """),
    code("""
    gag = gj.chain(modifications.gaussian_noise(20, noise_level=0.15),
                   gradients.logit_gradient(),
                   interpretations.absolute(),
                   aggregations.guide(percentile=0.85),
                   chunk_size=10)

    explain_gag = jax.jit(lambda x, y, k: gj.to_saliency(gag(model.logits, x, y, k)))
    mine = explain_gag(images, labels, key)
    preset = gj.explain("gag", model, images, labels, key=key)
    gap = float(jnp.abs(mine - preset).max())
    print(f"chained GAG vs gj.explain('gag'): largest difference {gap:.2e}")
    assert gap < 1e-4
    """),
    md("""
    ## 3. A new explainer: blur path + absolute value + variance guide

    Swap the noise for BlurIG's path (gradients at the image blurred with sigma going from
    `max_sigma` down to 0) and keep GAG's absolute interpretation and variance guide. BlurIG's
    default `max_sigma = 50` is meant for 224-pixel photos; these images have 32 pixels, so 8.

    The presets expose the paper's Table 3 processing variants as options, and this combination
    is one of them, BlurIG-GA: `gj.explain("blur_ig", interpretation="absolute", guide=True)`.
    The cell checks that the two agree.
    """),
    code("""
    blur_gag = gj.chain(modifications.blur_path(20, max_sigma=8.0),
                        gradients.logit_gradient(),
                        interpretations.absolute(),
                        aggregations.guide(percentile=0.85))

    explain_blur = jax.jit(lambda x, y: gj.to_saliency(blur_gag(model.logits, x, y, key)))
    blur_maps = explain_blur(images, labels)
    table3 = gj.explain("blur_ig", model, images, labels, key=key, interpretation="absolute", guide=True, max_sigma=8.0)
    print(f"blur + |g| + guide vs BlurIG-GA preset: largest difference {float(jnp.abs(blur_maps - table3).max()):.2e}")
    """),
    md("""
    ## 4. A seam of your own

    A modification is a named tuple `Modification(num_samples, prepare, sample)`:
    `prepare(images, key)` runs once per batch, `sample(state, i)` returns the i-th modified
    batch and a factor that turns the gradient there into the sample's signal (1 for noise,
    the path weight for IG). `i` is traced, so sample i must depend only on i (here through
    `fold_in(key, i)`), which is what makes the result independent of the chunking.

    Pixel dropout: each sample turns a random 30 % of the pixels black (zero in pixel space).
    """),
    code("""
    def pixel_dropout(n=20, rate=0.3):
        def prepare(images, key):
            return images, modifications.make_baseline(images, "black"), key

        def sample(state, i):
            images, black, key = state
            drop = jax.random.bernoulli(jax.random.fold_in(key, i), rate, images.shape[:3] + (1,))
            return jnp.where(drop, black, images), jnp.ones(())

        return modifications.Modification(n, prepare, sample)

    dropout_gag = gj.chain(pixel_dropout(20, 0.3), gradients.logit_gradient(),
                           interpretations.absolute(), aggregations.guide(0.85), chunk_size=10)
    explain_dropout = jax.jit(lambda x, y, k: gj.to_saliency(dropout_gag(model.logits, x, y, k)))
    dropout_maps = explain_dropout(images, labels, key)
    print(dropout_maps.shape, dropout_maps.dtype, float(dropout_maps.min()), float(dropout_maps.max()))
    """),
    md("""
    ## 5. jit and vmap

    Explainers are pure functions of arrays, so `jax.vmap` composes with them like with any JAX
    function.

    * **Over images.** The blur path is deterministic and everything in it is per image
      (including the variance guide's percentile), so explaining the images one at a time under
      `vmap` gives the batch's maps.
    * **Over keys.** Explaining 8 images with 8 different keys in one vmapped call shows how
      much each stochastic method's maps move with the random draw: the mean over pixels of the
      per-pixel standard deviation across the 8 keys. (`chunk_size` bounds the memory: the 8
      copies each hold one chunk of samples at a time.) `gj.explainer(method)` returns a preset as
      a pure, un-jitted function for exactly this kind of use.
    """),
    code("""
    one_by_one = jax.vmap(lambda x, y: explain_blur(x[None], y[None])[0])(images, labels)
    print(f"vmap over single images vs the batch: largest difference {float(jnp.abs(one_by_one - blur_maps).max()):.2e}")

    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    x8, y8 = images[:8], labels[:8]                     # 8 keys x 20 samples x 8 images in one call
    stochastic = {"dropout + |g| + guide": lambda k: explain_dropout(x8, y8, k),
                  "gag": lambda k: gj.explainer("gag", chunk_size=5)(model, x8, y8, k),
                  "sg": lambda k: gj.explainer("sg", chunk_size=5)(model, x8, y8, k)}
    for name, fn in stochastic.items():
        spread = jax.jit(jax.vmap(fn))(keys).std(axis=0).mean()
        print(f"{name:24s} mean per-pixel std over 8 keys: {float(spread):.4f}")
    """),
    md("""
    ## 6. Compare with the presets

    The synthetic images come with exact object masks, so besides RCAP / DAUC / IAUC the maps
    can be scored against the ground truth with the paper's Log-Cosh Dice loss and MAE (both lower
    is better). The table below is sorted by RCAP. On 32 easy images of a small network this is a
    demonstration of the workflow, not a result about the methods.
    """),
    code("""
    presets = {"gag": {}, "ag": {}, "sg": {}, "ig": {}, "blur_ig": {"max_sigma": 8.0}, "gb": {}, "gradcam": {}}
    maps = {"blur + |g| + guide": blur_maps, "dropout + |g| + guide": dropout_maps,
            **{m: gj.explain(m, model, images, labels, key=key, **o) for m, o in presets.items()}}

    rows = {}
    for name, s in maps.items():
        r = gj.metrics.rcap(model.logits, images, labels, s)
        d = gj.metrics.deletion_insertion(model.logits, images, labels, s)
        rows[name] = {"RCAP": r["rcap"].mean(), "DAUC": d["dauc"].mean(), "IAUC": d["iauc"].mean(),
                      "LogCoshDice": gj.metrics.log_cosh_dice(s, masks).mean(), "MAE": gj.metrics.mae(s, masks).mean()}
    print(f"{'method':24s}" + "".join(f"{c:>12s}" for c in rows["gag"]))
    for name, row in sorted(rows.items(), key=lambda kv: -kv[1]["RCAP"]):
        print(f"{name:24s}" + "".join(f"{float(v):12.3f}" for v in row.values()))
    """),
    code("""
    show = list(maps)
    fig, axes = plt.subplots(4, len(show) + 2, figsize=(1.3 * (len(show) + 2), 1.5 * 4))
    for i, row in enumerate(axes):
        row[0].imshow(test["pixels"][i]), row[1].imshow(masks[i], cmap="gray")
        for ax, name in zip(row[2:], show):
            ax.imshow(maps[name][i], cmap="jet", vmin=0, vmax=1)
    for ax, title in zip(axes[0], ["input", "mask"] + [n.replace(" + ", "+\\n") for n in show]):
        ax.set_title(title, fontsize=7)
    [ax.axis("off") for ax in axes.flat];
    """),
]

# --------------------------------------------------------------------------------------------
# 03  RCAP explained
# --------------------------------------------------------------------------------------------

RCAP = [
    md("""
    # RCAP explained

    ReCover And Predict (the paper's section 4, eq. 5) scores a saliency map M of an image with
    target class c:

    * the percentiles p_k = 100 - k * interval, k = 1..j (defaults lower_bound = 50,
      interval = 10: p = 90, 80, 70, 60, 50);
    * the recovered image I_k: the image where M >= percentile_{p_k}(M), **black** elsewhere
      (zero in pixel space);
    * ratio_k = sum(M over the recovered pixels) / sum(M): how much of the map's saliency lies in
      the recovered part (**visual noise level**: a map that spreads saliency over the rest of the
      image has low ratios);
    * prob_k = softmax(model(I_k))[c]: whether the recovered pixels are the ones the model needs
      (**localization**);
    * RCAP = mean_k ratio_k * prob_k.

    This notebook takes one photo apart, reproduces the paper's Figure 4 (Propositions 1 and 2)
    on synthetic maps, and runs the reversed "R" variants of section 4.3. The photo is resized to
    128 x 128 to keep the notebook to about a minute on two CPU cores.
    """),
    code("""
    import jax, jax.numpy as jnp, numpy as np, matplotlib.pyplot as plt
    import gag_jax as gj, models
    from skimage import data

    SIZE = 128
    model = models.model_functions(*models.load("efficientnet_lite0"))
    logits_fn = model["logits"]
    photo = data.stereo_motorcycle()[0]                 # the left view of scikit-image's stereo pair
    images = gj.data.prepare_pixels([photo], SIZE)      # (1, SIZE, SIZE, 3), ImageNet-normalised
    pixels = np.asarray(gj.ops.to_pixels(images))       # the same image in [0, 1] pixel space
    classes = open(models.__file__.replace("__init__.py", "imagenet_classes.txt")).read().splitlines()
    label = int(jnp.argmax(logits_fn(images), axis=-1)[0])
    print(f"predicted {classes[label]!r} (class {label}) with probability {float(jax.nn.softmax(logits_fn(images))[0, label]):.3f}")
    """),
    md("""
    ## 1. The partitions of one image

    The paper's Figure 3 compares SmoothGrad, AbsoluteGrad (GAG with p = 0) and Guided
    AbsoluteGrad. The three maps go through `gj.metrics.rcap` as one batch of three (the same
    image three times); it returns per image the ratios, the probabilities and the percentile
    values (`thresholds`) it used.
    """),
    code("""
    methods = ["sg", "ag", "gag"]
    key = jax.random.PRNGKey(0)
    sal = jnp.concatenate([gj.explain(m, model, images, jnp.array([label]), key=key) for m in methods])
    batch_images, batch_labels = jnp.repeat(images, len(methods), 0), jnp.full((len(methods),), label)
    out = gj.metrics.rcap(logits_fn, batch_images, batch_labels, sal)
    percentiles = np.asarray(out["percentiles"])
    for m, score in zip(methods, out["rcap"]):
        print(f"{m:4s} RCAP {float(score):.4f}")
    """),
    md("""
    Rebuild the recovered images by hand from the thresholds, run them through the model, and
    check the result against what `rcap` computed.
    """),
    code("""
    keep = np.asarray(sal)[:, None] >= np.asarray(out["thresholds"])[:, :, None, None]      # (3, j, H, W)
    recovered = np.where(keep[..., None], pixels[:, None], 0.0)                             # black elsewhere
    probs = jax.nn.softmax(logits_fn(gj.ops.from_pixels(recovered.reshape(-1, SIZE, SIZE, 3))))[:, label]
    ratios = np.where(keep, np.asarray(sal)[:, None], 0).sum((2, 3)) / np.asarray(sal).sum((1, 2))[:, None]
    print(f"largest difference in probabilities {float(np.abs(probs.reshape(keep.shape[:2]) - out['probs']).max()):.2e}, "
          f"in ratios {float(np.abs(ratios - out['ratios']).max()):.2e}")
    """),
    code("""
    j = len(percentiles)
    fig, axes = plt.subplots(len(methods), j + 1, figsize=(2.1 * (j + 1), 2.3 * len(methods)))
    for i, (m, row) in enumerate(zip(methods, axes)):
        row[0].imshow(sal[i], cmap="jet"), row[0].set_title(f"{m}: RCAP {float(out['rcap'][i]):.3f}", fontsize=9)
        for k, ax in enumerate(row[1:]):
            ax.imshow(recovered[i, k])
            ax.set_title(f"I_{percentiles[k]:.0f}: ratio {float(out['ratios'][i, k]):.2f}\\nprob {float(out['probs'][i, k]):.2f}", fontsize=8)
    [ax.axis("off") for ax in axes.flat];

    fig, axes = plt.subplots(1, 3, figsize=(12, 3), sharey=True)
    for ax, (title, values) in zip(axes, [("ratio_k", out["ratios"]), ("prob_k", out["probs"]),
                                          ("ratio_k x prob_k", out["ratios"] * out["probs"])]):
        for m, v in zip(methods, values):
            ax.plot(percentiles, v, "o-", label=m)
        ax.set_title(title), ax.set_xlabel("percentile p_k"), ax.invert_xaxis()
    axes[0].legend();
    """),
    md("""
    Read the rows from left to right: each recovered image adds the next 10 % of pixels in order
    of saliency. A map whose top pixels cover the object makes the model confident early
    (prob_k); a map whose saliency is concentrated in those pixels keeps ratio_k high. RCAP
    needs both at once.
    """),
    md("""
    ## 2. Propositions 1 and 2 on synthetic maps (Figure 4)

    Figure 4 of the paper: a centred object covering 20 % of the image, and four Gaussian maps.
    M1 is centred on the object and narrow; M2 has the same centre and a wider spread (noisier);
    M3 is as narrow as M1 but shifted by 30 % of the width and height towards the lower right; M4
    is shifted and wide (the worst).

    The model is a closed form whose confidence grows with how much of the object is visible:
    logit_1 = 12 * (mean pixel value over the object - 1/2), logit_0 = 0. The object is white on a
    dark background, so recovering more of it raises the probability of class 1 and recovering
    background does nothing.

    * **Proposition 1** (localization): with similar noise levels, the map whose Focus Area covers
      more of the object scores higher: RCAP(M1) > RCAP(M3) and RCAP(M2) > RCAP(M4).
    * **Proposition 2** (visual noise): when two maps recover the same pixels (M1 and M2 rank the
      pixels identically, so their recovered images and probabilities are the same), the noisier
      one scores lower: RCAP(M1) > RCAP(M2).

    Deletion / Insertion AUC only use the ranking of the pixels, so they cannot tell M1 from M2.
    The cell checks every claim with `assert`.
    """),
    code("""
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
    syn_images = jnp.repeat(gj.ops.from_pixels(syn_pixels), 4, 0)
    syn_labels = jnp.ones((4,), jnp.int32)

    def gaussian_map(cy, cx, sigma):
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        return ((g - g.min()) / (g.max() - g.min())).astype(np.float32)

    centre, shifted, narrow, wide = S / 2, S / 2 + 0.3 * S, 0.135 * S, 0.3 * S
    fig4 = {"M1": gaussian_map(centre, centre, narrow), "M2": gaussian_map(centre, centre, wide),
            "M3": gaussian_map(shifted, shifted, narrow), "M4": gaussian_map(shifted, shifted, wide)}
    syn_maps = jnp.asarray(np.stack(list(fig4.values())))
    syn_rcap = gj.metrics.rcap(object_model, syn_images, syn_labels, syn_maps)
    syn_di = gj.metrics.deletion_insertion(object_model, syn_images, syn_labels, syn_maps)

    r = dict(zip(fig4, np.asarray(syn_rcap["rcap"])))
    print(f"{'map':4s}{'RCAP':>8s}{'mean ratio':>12s}{'mean prob':>11s}{'DAUC':>8s}{'IAUC':>8s}")
    for i, name in enumerate(fig4):
        print(f"{name:4s}{r[name]:8.3f}{float(syn_rcap['ratios'][i].mean()):12.3f}{float(syn_rcap['probs'][i].mean()):11.3f}"
              f"{float(syn_di['dauc'][i]):8.3f}{float(syn_di['iauc'][i]):8.3f}")

    print("Proposition 1: RCAP(M1) > RCAP(M3):", r["M1"] > r["M3"], "  RCAP(M2) > RCAP(M4):", r["M2"] > r["M4"])
    same_probs = np.allclose(syn_rcap["probs"][0], syn_rcap["probs"][1], atol=1e-6)
    print("Proposition 2: M1 and M2 recover the same pixels (equal probs):", same_probs, "  RCAP(M1) > RCAP(M2):", r["M1"] > r["M2"])
    same_auc = np.allclose(syn_di["dauc"][0], syn_di["dauc"][1], atol=1e-6) and np.allclose(syn_di["iauc"][0], syn_di["iauc"][1], atol=1e-6)
    print("DAUC and IAUC of M1 and M2 are equal:", same_auc)
    assert r["M1"] > r["M3"] and r["M2"] > r["M4"] and same_probs and r["M1"] > r["M2"] and same_auc
    """),
    code("""
    fig, axes = plt.subplots(1, 7, figsize=(20, 3), gridspec_kw={"width_ratios": [1] * 5 + [1.6, 1.6]})
    axes[0].imshow(obj, cmap="viridis"), axes[0].set_title("(a) ground truth")
    for ax, (letter, (name, m)) in zip(axes[1:5], zip("bcde", fig4.items())):
        ax.imshow(m, cmap="jet"), ax.contour(m >= np.percentile(m, 50), [0.5], colors="w")
        ax.contour(obj, [0.5], colors="k", linestyles="--"), ax.set_title(f"({letter}) {name}: RCAP {r[name]:.3f}", fontsize=9)
    t = np.arange(S)                                                  # the image's diagonal (t, t)
    for ax, letter, pair in [(axes[5], "f", ("M1", "M2")), (axes[6], "g", ("M3", "M4"))]:
        ax.axvspan(S / 2 - half, S / 2 + half, color="gold", alpha=0.4, label="object")
        for name in pair:
            m = fig4[name]
            line, = ax.plot(t, m[t, t], label=name)
            focus = m[t, t] >= np.percentile(m, 50)                   # on the map's Focus Area
            ax.fill_between(t, 0, m[t, t], where=focus, color=line.get_color(), alpha=0.25)
        ax.set_xlabel("position along the diagonal"), ax.set_title(f"({letter}) profiles"), ax.legend(fontsize=7)
    [ax.axis("off") for ax in axes[:5]];
    """),
    md("""
    In (b)-(e) the white contour is the Focus Area (the top 50 % of the map) and the dashed black
    square the object. (f)-(g) follow the maps along the image's diagonal: the shaded area under
    a curve is the part of the diagonal in that map's Focus Area, the gold band the object.

    ## 3. Reversed variants ("R", Table 2 part 3)

    To test whether the probabilities really follow localization without ground truth, the paper
    *reverses* a map: keep the top l = 7 % of the saliency values in place and swap the lowest
    m = 10 % with the band just below the kept top (percentiles 83 to 93). The values of the map
    are unchanged, only their locations move, so a part of the Focus Area lands on pixels the
    map found unimportant. `gj.reverse(maps, key, keep=0.07, swap=0.10)` does it (the key breaks
    ties at random).
    """),
    code("""
    rev = gj.reverse(sal, jax.random.PRNGKey(1))
    assert np.allclose(np.sort(np.asarray(rev).reshape(3, -1)), np.sort(np.asarray(sal).reshape(3, -1)))   # same values

    fig, axes = plt.subplots(2, len(methods), figsize=(2.6 * len(methods), 5.2))
    for i, m in enumerate(methods):
        axes[0, i].imshow(sal[i], cmap="jet"), axes[0, i].set_title(m)
        axes[1, i].imshow(rev[i], cmap="jet"), axes[1, i].set_title(f"{m} R")
    [ax.axis("off") for ax in axes.flat];

    def scores(fn, x, y, s):
        d = gj.metrics.deletion_insertion(fn, x, y, s)
        return np.asarray(gj.metrics.rcap(fn, x, y, s)["rcap"]), np.asarray(d["dauc"]), np.asarray(d["iauc"])

    print(f"{'map':8s}{'RCAP':>8s}{'R':>8s}{'DAUC':>8s}{'R':>8s}{'IAUC':>8s}{'R':>8s}")
    cases = [(methods, logits_fn, batch_images, batch_labels, sal),
             (list(fig4), object_model, syn_images, syn_labels, syn_maps)]
    for names, fn, x, y, s in cases:
        original, reversed_ = scores(fn, x, y, s), scores(fn, x, y, gj.reverse(s, jax.random.PRNGKey(1)))
        for i, name in enumerate(names):
            print(f"{name:8s}" + "".join(f"{o[i]:8.3f}{v[i]:8.3f}" for o, v in zip(original, reversed_)))
    """),
    md("""
    The photo's rows use EfficientNet-Lite0, the M rows the object model above. Reversal keeps
    the map's values and its top 7 %, so it can only move saliency from the band just below the
    top onto unimportant pixels: RCAP, which recovers the top 10 % to 50 %, sees that directly
    through prob_k. The paper (Table 2, parts 2 and 3) finds every reversed variant worse on every
    metric on its datasets.
    """),
]

# --------------------------------------------------------------------------------------------
# 04  Reproduce a case
# --------------------------------------------------------------------------------------------

REPRODUCE = [
    md("""
    # Reproduce a case: the paper's Tables 1-3

    `gag-jax evaluate` runs one case (dataset + model) x methods x metrics and writes the tables in
    the layout of the paper:

    * **Table 1**: the percentile p of Guided AbsoluteGrad's variance guide (GAG-0 ... GAG-85);
    * **Table 2**: Grad-CAM, GAG, AbsoluteGrad and the gradient methods, and the reversed "R"
      variants (Proposition 1);
    * **Table 3**: the gradient-processing variants (+, -, A, G, GA) of SG, IG, Guided IG, BlurIG
      and GB, each divided by its original method.

    Stage 1 keeps the images that the model classifies with probability > 0.9 on the ground-truth
    class (the paper's selection); stage 2 computes every method's maps and metrics batch by
    batch and writes each finished (method, batch) to disk at once, so an interrupted run resumes
    where it stopped.

    This notebook runs the pipeline on the **synthetic case**, which needs no data: 32 x 32
    images of five shapes with exact object masks (so Log-Cosh Dice and MAE are computed too), and
    a small CNN that `evaluate` trains in seconds on a separate synthetic draw. To keep the
    notebook to a couple of minutes on two CPU cores it uses 32 images and, for Table 3, only
    SmoothGrad's variants. The last section gives the commands for ImageNet-S, ISIC and Places365.
    The notebook calls the command-line entry point in-process (`gag_jax.cli.main`), so every
    command shown is exactly what you would type in a shell.
    """),
    code("""
    import json, pathlib, shlex, tempfile
    import numpy as np, matplotlib.pyplot as plt
    from IPython.display import Image, display
    import gag_jax as gj
    from gag_jax.cli import main as gag_jax_cli

    OUT = pathlib.Path(tempfile.mkdtemp(prefix="gag_jax_synthetic_"))   # use a directory of yours to keep the results

    def run(command):
        print("$", command, flush=True)
        status = gag_jax_cli(shlex.split(command)[1:])
        assert status == 0, f"exit status {status}"

    print("results in", OUT)
    """),
    md("""
    ## Table 2

    The first run trains the synthetic-case CNN (saved as `tiny_model.msgpack` in the results
    directory), selects the confident images and evaluates the 15 rows of Table 2. `--no-progress`
    only hides the progress bars.
    """),
    code("""
    run(f"gag-jax evaluate --case synthetic --table 2 --limit 32 --out {OUT} --no-progress")
    """),
    md("""
    ## Table 1

    The same results directory: the model and the selection are reused, only the new rows are
    computed.
    """),
    code("""
    run(f"gag-jax evaluate --case synthetic --table 1 --limit 32 --out {OUT} --no-progress")
    display(Image(filename=str(OUT / "table1_p_ablation.png")))
    """),
    md("""
    ## Table 3

    `--methods` picks rows by name: `<method>.pos` (+), `.neg` (-), `.abs` (A), `.guide` (G),
    `.guide_abs` (GA). Here only SmoothGrad's five variants; SmoothGrad itself was computed for
    Table 2 and is reused. `gag-jax evaluate --case synthetic --table 3` alone runs all five
    methods' variants. Each Table 3 cell is the variant's value divided by the original's, so
    1.0 means no change.
    """),
    code("""
    run(f"gag-jax evaluate --case synthetic --table 3 --methods sg.pos,sg.neg,sg.abs,sg.guide,sg.guide_abs --limit 32 --out {OUT} --no-progress")
    """),
    md("""
    ## Resuming

    Running a command again recomputes nothing that is on disk. The same mechanism resumes an
    interrupted run (Ctrl-C, a killed job): at most the batch in flight is lost. A run with
    different options in the same directory is refused rather than mixed.
    """),
    code("""
    run(f"gag-jax evaluate --case synthetic --table 2 --limit 32 --out {OUT} --no-progress")
    manifest = json.loads((OUT / "manifest.json").read_text())
    print("status:", manifest["status"], "| plan:", manifest["plan"], "| last run:", manifest["counts"])
    """),
    md("""
    ## What is on disk

    Besides the tables (`table<N>.csv` with the standard errors, `table<N>.md`), every method has
    one `.npz` record per batch under `records/<method>/` with the per-image values: RCAP with its
    ratios and probabilities, the deletion and insertion curves, Log-Cosh Dice and MAE. The
    figure below is drawn from those records: the spread of RCAP over the images, per Table 2 row.
    `rcap_curves.png` (rewritten by each `evaluate` run, here the Table 2 run just above) shows the
    mean ratio_k and prob_k per method.
    (`evaluate` draws its figures with matplotlib's file-only Agg backend; `%matplotlib inline`
    switches this kernel back to inline plots.)
    """),
    code("""
    %matplotlib inline
    import csv
    rows = list(csv.DictReader(open(OUT / "table2.csv")))
    per_image = {}
    for row in rows:
        valid = [np.load(f) for f in sorted((OUT / "records" / row["method"]).glob("batch_*.npz"))]
        per_image[row["label"]] = np.concatenate([r["rcap"][r["valid"]] for r in valid])
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.boxplot(list(per_image.values()), showmeans=True)
    ax.set_xticks(range(1, len(per_image) + 1), list(per_image), rotation=45), ax.set_ylabel("RCAP per image")
    ax.set_title(f"Table 2 rows, {len(next(iter(per_image.values())))} selected synthetic images")
    display(Image(filename=str(OUT / "rcap_curves.png")))
    """),
    md("""
    ## The same numbers in Python

    The runner is a loop over `gj.explain` and `gj.metrics`. Here is the GAG row by hand on the same
    data and model: select the confident images, explain, score. The key differs from the
    runner's (it derives one per method and batch), so the values differ by the random draw;
    the row's standard error from the CSV is printed for scale. The selection is deterministic
    and is checked against the run's.
    """),
    code("""
    from gag_jax.data import make_synthetic
    from gag_jax.experiments.modelzoo import load_model

    model, _ = load_model("tiny", OUT / "tiny_model.msgpack")
    data = make_synthetic(32, size=32, seed=0)                 # what --case synthetic --limit 32 generates
    keep = np.asarray(gj.metrics.select_confident(model.logits, data["images"], data["labels"], 0.9))
    images, labels, masks = data["images"][keep], data["labels"][keep], data["masks"][keep]
    assert keep.sum() == manifest["plan"]["images_kept"]

    import jax
    maps = gj.explain("gag", model, images, labels, key=jax.random.PRNGKey(0))
    by_hand = {"rcap": gj.metrics.rcap(model.logits, images, labels, maps)["rcap"],
               **{k: v for k, v in gj.metrics.deletion_insertion(model.logits, images, labels, maps).items() if k in ("dauc", "iauc")},
               "log_cosh_dice": gj.metrics.log_cosh_dice(maps, masks), "mae": gj.metrics.mae(maps, masks)}
    row = next(r for r in rows if r["method"] == "gag")
    print(f"GAG on {int(keep.sum())} images      by hand    table (+- s.e.)")
    for metric, values in by_hand.items():
        print(f"  {metric:14s} {float(np.mean(values)):12.4f}   {float(row['synthetic_' + metric]):.4f} +- {float(row['synthetic_' + metric + '_sem']):.4f}")
    """),
    md("""
    ## Your data: ImageNet-S, ISIC, Places365

    The three cases of the paper read a copy of the dataset you already have (nothing is
    downloaded) and a checkpoint you give. Install the extras first:
    `pip install -e ".[data,torch]"` (TensorFlow to prepare a tensorflow-datasets copy once, which
    later runs read quickly; PyTorch to read `.pth` checkpoints). Without TensorFlow the images
    are decoded from the files on every pass (`--backend files`). Without PyTorch at evaluation
    time, convert the checkpoint once with `gag-jax port` and pass the `.msgpack`.

    ```bash
    # ImageNet-S: ResNet-50 with torchvision's IMAGENET1K_V1 weights, 256 x 256
    gag-jax evaluate --case imagenet_s --data-dir /data/ImageNetS919 \\
        --checkpoint /models/resnet50-0676ba61.pth --table 1,2,3 --out runs/imagenet_s

    # ISIC: EfficientNet-B0 fine-tuned on the ISIC diagnoses, 448 x 448
    gag-jax evaluate --case isic --data-dir /data/isic \\
        --checkpoint /models/efficientnet_b0_isic.pth --table 1,2,3 --out runs/isic

    # Places365: DenseNet-161 with the Places365 checkpoint (365 classes), 224 x 224
    gag-jax evaluate --case places365 --data-dir /data/places365 \\
        --checkpoint /models/densenet161_places365.pth.tar --table 1,2,3 --out runs/places365

    # the paper's layout: one table with a column group per case
    gag-jax tables runs/imagenet_s runs/isic runs/places365 --table 1,2,3 --out runs/paper

    # optional: convert a torch checkpoint once, then evaluate without PyTorch
    gag-jax port /models/resnet50-0676ba61.pth --model resnet50 --out /models/resnet50.msgpack
    ```

    Replace the paths with yours. Useful options: `--limit N` (first N images, for a trial run),
    `--batch-size`, `--chunk-size` (samples per vmapped chunk, to bound memory), `--image-size`,
    `--confidence none` (keep every image), `--metrics rcap,dauc,iauc`. The cell below prints the
    directory layout each case expects (from the package itself, so it cannot go stale) and
    checks that every command above parses.
    """),
    code("""
    from gag_jax.cli import build_parser
    from gag_jax.data import CASE_IMAGE_SIZES, LAYOUTS
    from gag_jax.experiments.modelzoo import CASE_MODELS

    for case in ("imagenet_s", "isic", "places365"):
        print(f"--case {case}: model {CASE_MODELS[case]}, {CASE_IMAGE_SIZES[case]} x {CASE_IMAGE_SIZES[case]}; --data-dir layout:")
        print(LAYOUTS[case])

    commands = [
        "gag-jax evaluate --case imagenet_s --data-dir /data/ImageNetS919 --checkpoint /models/resnet50-0676ba61.pth --table 1,2,3 --out runs/imagenet_s",
        "gag-jax evaluate --case isic --data-dir /data/isic --checkpoint /models/efficientnet_b0_isic.pth --table 1,2,3 --out runs/isic",
        "gag-jax evaluate --case places365 --data-dir /data/places365 --checkpoint /models/densenet161_places365.pth.tar --table 1,2,3 --out runs/places365",
        "gag-jax tables runs/imagenet_s runs/isic runs/places365 --table 1,2,3 --out runs/paper",
        "gag-jax port /models/resnet50-0676ba61.pth --model resnet50 --out /models/resnet50.msgpack",
    ]
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        print("parses:", args.command, getattr(args, "case", ""))
    """),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_compose_your_own.ipynb": COMPOSE,
    "03_rcap_explained.ipynb": RCAP,
    "04_reproduce_a_case.ipynb": REPRODUCE,
}

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (a key of ``NOTEBOOKS``), outputs empty, deterministic cell ids."""
    stem = name.split("_")[0]
    cells = []
    for index, (kind, source) in enumerate(NOTEBOOKS[name]):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell["id"] = f"nb{stem}-{index:02d}"
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nb["metadata"] = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    return nb


def render(name: str) -> str:
    """The file contents of notebook ``name``."""
    nb = build(name)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def user_code_lines(name: str) -> int:
    """Lines of code in the code cells of ``name``: blank lines and comment-only lines not counted."""
    count = 0
    for kind, source in NOTEBOOKS[name]:
        if kind == "code":
            count += sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))
    return count


def execute(name: str, out_dir: str, timeout: int = 600) -> float:
    """Execute notebook ``name`` (cwd: this folder) and write it with outputs to ``out_dir``; seconds taken."""
    from nbclient import NotebookClient

    nb = build(name)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
    elapsed = time.perf_counter() - start
    os.makedirs(out_dir, exist_ok=True)
    nbformat.write(nb, os.path.join(out_dir, name))
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare the notebooks on disk with this script")
    parser.add_argument("--execute", metavar="OUT_DIR", help="also execute each notebook and write it to OUT_DIR")
    parser.add_argument("names", nargs="*", help="notebooks to handle (default: all)")
    args = parser.parse_args(argv)
    names = args.names or list(NOTEBOOKS)
    stale = []
    for name in names:
        path = os.path.join(HERE, name)
        text = render(name)
        if args.check:
            with open(path, encoding="utf-8") if os.path.exists(path) else open(os.devnull) as f:
                if f.read() != text:
                    stale.append(name)
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        if args.execute:
            print(f"{name}: executed in {execute(name, args.execute):.1f} s", flush=True)
    if stale:
        print("out of date (run python notebooks/build_notebooks.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
