# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Reproduce a case: the paper's Tables 1-3
#
# `gag-jax evaluate` runs one case (dataset + model) x methods x metrics and writes the tables in
# the layout of the paper:
#
# * **Table 1**: the percentile p of Guided AbsoluteGrad's variance guide (GAG-0 ... GAG-85);
# * **Table 2**: Grad-CAM, GAG, AbsoluteGrad and the gradient methods, and the reversed "R"
#   variants (Proposition 1);
# * **Table 3**: the gradient-processing variants (+, -, A, G, GA) of SG, IG, Guided IG, BlurIG
#   and GB, each divided by its original method.
#
# Stage 1 keeps the images that the model classifies with probability > 0.9 on the ground-truth
# class (the paper's selection); stage 2 computes every method's maps and metrics batch by
# batch and writes each finished (method, batch) to disk at once, so an interrupted run resumes
# where it stopped.
#
# This notebook runs the pipeline on the **synthetic case**, which needs no data: 32 x 32
# images of five shapes with exact object masks (so Log-Cosh Dice and MAE are computed too), and
# a small CNN that `evaluate` trains in seconds on a separate synthetic draw. To keep the
# notebook to a couple of minutes on two CPU cores it uses 32 images and, for Table 3, only
# SmoothGrad's variants. The last section gives the commands for ImageNet-S, ISIC and Places365.
# The notebook calls the command-line entry point in-process (`gag_jax.cli.main`), so every
# command shown is exactly what you would type in a shell.

# %%
import csv
import json
import pathlib
import shlex
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import gag_jax as gj
from gag_jax.cli import build_parser
from gag_jax.cli import main as gag_jax_cli
from gag_jax.data import CASE_IMAGE_SIZES, LAYOUTS, make_synthetic
from gag_jax.experiments.modelzoo import CASE_MODELS, load_model

OUT = pathlib.Path(tempfile.mkdtemp(prefix="gag_jax_synthetic_"))  # use a directory of yours to keep the results


def run(command):
    print("$", command, flush=True)
    status = gag_jax_cli(shlex.split(command)[1:])
    assert status == 0, f"exit status {status}"


print("results in", OUT)

# %% [markdown]
# ## Table 2
#
# The first run trains the synthetic-case CNN (saved as `tiny_model.msgpack` in the results
# directory), selects the confident images and evaluates the 15 rows of Table 2. `--no-progress`
# only hides the progress bars.

# %%
run(f"gag-jax evaluate --case synthetic --table 2 --limit 32 --out {OUT} --no-progress")

# %% [markdown]
# ## Table 1
#
# The same results directory: the model and the selection are reused, only the new rows are
# computed.

# %%
run(f"gag-jax evaluate --case synthetic --table 1 --limit 32 --out {OUT} --no-progress")
display(Image(filename=str(OUT / "table1_p_ablation.png")))

# %% [markdown]
# ## Table 3
#
# `--methods` picks rows by name: `<method>.pos` (+), `.neg` (-), `.abs` (A), `.guide` (G),
# `.guide_abs` (GA). Here only SmoothGrad's five variants; SmoothGrad itself was computed for
# Table 2 and is reused. `gag-jax evaluate --case synthetic --table 3` alone runs all five
# methods' variants. Each Table 3 cell is the variant's value divided by the original's, so
# 1.0 means no change.

# %%
variants = "sg.pos,sg.neg,sg.abs,sg.guide,sg.guide_abs"
run(f"gag-jax evaluate --case synthetic --table 3 --methods {variants} --limit 32 --out {OUT} --no-progress")

# %% [markdown]
# ## Resuming
#
# Running a command again recomputes nothing that is on disk. The same mechanism resumes an
# interrupted run (Ctrl-C, a killed job): at most the batch in flight is lost. A run with
# different options in the same directory is refused rather than mixed.

# %%
run(f"gag-jax evaluate --case synthetic --table 2 --limit 32 --out {OUT} --no-progress")
manifest = json.loads((OUT / "manifest.json").read_text())
print("status:", manifest["status"], "| plan:", manifest["plan"], "| last run:", manifest["counts"])

# %% [markdown]
# ## What is on disk
#
# Besides the tables (`table<N>.csv` with the standard errors, `table<N>.md`), every method has
# one `.npz` record per batch under `records/<method>/` with the per-image values: RCAP with its
# ratios and probabilities, the deletion and insertion curves, Log-Cosh Dice and MAE. The
# figure below is drawn from those records: the spread of RCAP over the images, per Table 2 row.
# `rcap_curves.png` (rewritten by each `evaluate` run, here the Table 2 run just above) shows the
# mean ratio_k and prob_k per method.
# (`evaluate` draws its figures with matplotlib's file-only Agg backend; `%matplotlib inline`
# switches this kernel back to inline plots.)

# %%
# %matplotlib inline
rows = list(csv.DictReader((OUT / "table2.csv").read_text().splitlines()))
per_image = {}
for row in rows:
    valid = [np.load(f) for f in sorted((OUT / "records" / row["method"]).glob("batch_*.npz"))]
    per_image[row["label"]] = np.concatenate([r["rcap"][r["valid"]] for r in valid])
fig, ax = plt.subplots(figsize=(11, 3.2))
ax.boxplot(list(per_image.values()), showmeans=True)
ax.set_xticks(range(1, len(per_image) + 1), list(per_image), rotation=45), ax.set_ylabel("RCAP per image")
ax.set_title(f"Table 2 rows, {len(next(iter(per_image.values())))} selected synthetic images")
display(Image(filename=str(OUT / "rcap_curves.png")))

# %% [markdown]
# ## The same numbers in Python
#
# The runner is a loop over `gj.explain` and `gj.metrics.score`. Here is the GAG row by hand on the same
# data and model: select the confident images, explain, score. The key differs from the
# runner's (it derives one per method and batch), so the values differ by the random draw;
# the row's standard error from the CSV is printed for scale. The selection is deterministic
# and is checked against the run's.

# %%
model, _ = load_model("tiny", OUT / "tiny_model.msgpack")
data = make_synthetic(32, size=32, seed=0)                 # what --case synthetic --limit 32 generates
keep = np.asarray(gj.metrics.select_confident(model.logits, data["images"], data["labels"], 0.9))
images, labels, masks = data["images"][keep], data["labels"][keep], data["masks"][keep]
assert keep.sum() == manifest["plan"]["images_kept"]

maps = gj.explain("gag", model, images, labels, key=jax.random.PRNGKey(0))
metrics = ["rcap", "dauc", "iauc", "log_cosh_dice", "mae"]
by_hand = gj.metrics.score(model.logits, images, labels, maps, masks, metrics=metrics)
row = next(r for r in rows if r["method"] == "gag")
print(f"GAG on {int(keep.sum())} images      by hand    table (+- s.e.)")
for metric in metrics:
    table, sem = float(row[f"synthetic_{metric}"]), float(row[f"synthetic_{metric}_sem"])
    print(f"  {metric:14s} {float(np.mean(by_hand[metric])):12.4f}   {table:.4f} +- {sem:.4f}")

# %% [markdown]
# ## Your data: ImageNet-S, ISIC, Places365
#
# The three cases of the paper read a copy of the dataset you already have (nothing is
# downloaded) and a checkpoint you give. Install the extras first:
# `pip install -e ".[data,torch]"` (TensorFlow to prepare a tensorflow-datasets copy once, which
# later runs read quickly; PyTorch to read `.pth` checkpoints). Without TensorFlow the images
# are decoded from the files on every pass (`--backend files`). Without PyTorch at evaluation
# time, convert the checkpoint once with `gag-jax port` and pass the `.msgpack`.
#
# ```bash
# # ImageNet-S: ResNet-50 with torchvision's IMAGENET1K_V1 weights, 256 x 256
# gag-jax evaluate --case imagenet_s --data-dir /data/ImageNetS919 \
#     --checkpoint /models/resnet50-0676ba61.pth --table 1,2,3 --out runs/imagenet_s
#
# # ISIC: EfficientNet-B0 fine-tuned on the ISIC diagnoses, 448 x 448
# gag-jax evaluate --case isic --data-dir /data/isic \
#     --checkpoint /models/efficientnet_b0_isic.pth --table 1,2,3 --out runs/isic
#
# # Places365: DenseNet-161 with the Places365 checkpoint (365 classes), 224 x 224
# gag-jax evaluate --case places365 --data-dir /data/places365 \
#     --checkpoint /models/densenet161_places365.pth.tar --table 1,2,3 --out runs/places365
#
# # the paper's layout: one table with a column group per case
# gag-jax tables runs/imagenet_s runs/isic runs/places365 --table 1,2,3 --out runs/paper
#
# # optional: convert a torch checkpoint once, then evaluate without PyTorch
# gag-jax port /models/resnet50-0676ba61.pth --model resnet50 --out /models/resnet50.msgpack
# ```
#
# Replace the paths with yours. Useful options: `--limit N` (first N images, for a trial run),
# `--batch-size`, `--chunk-size` (samples per vmapped chunk, to bound memory), `--image-size`,
# `--confidence none` (keep every image), `--metrics rcap,dauc,iauc`. The cell below prints the
# directory layout each case expects (from the package itself, so it cannot go stale) and
# checks that every command above parses.

# %%
for case in ("imagenet_s", "isic", "places365"):
    side = CASE_IMAGE_SIZES[case]
    print(f"--case {case}: model {CASE_MODELS[case]}, {side} x {side}; --data-dir layout:")
    print(LAYOUTS[case])

commands = [
    ("gag-jax evaluate --case imagenet_s --data-dir /data/ImageNetS919 --checkpoint /models/resnet50-0676ba61.pth"
     " --table 1,2,3 --out runs/imagenet_s"),
    ("gag-jax evaluate --case isic --data-dir /data/isic --checkpoint /models/efficientnet_b0_isic.pth"
     " --table 1,2,3 --out runs/isic"),
    ("gag-jax evaluate --case places365 --data-dir /data/places365 --checkpoint /models/densenet161_places365.pth.tar"
     " --table 1,2,3 --out runs/places365"),
    "gag-jax tables runs/imagenet_s runs/isic runs/places365 --table 1,2,3 --out runs/paper",
    "gag-jax port /models/resnet50-0676ba61.pth --model resnet50 --out /models/resnet50.msgpack",
]
parser = build_parser()
for command in commands:
    args = parser.parse_args(shlex.split(command)[1:])
    print("parses:", args.command, getattr(args, "case", ""))
