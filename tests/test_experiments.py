"""Experiments package: table specs, table writers (against hand-computed values), the resumable
runner (interrupt + resume == uninterrupted, finished batches never recomputed, damaged records
recomputed, option mismatch refused), figures and the tiny model's round trip."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gag_jax as gj
from gag_jax.data import load_case
from gag_jax.experiments import figures, runner, specs, stages, tables, tiny

# ----------------------------------------------------------------------------- specs


def test_table1_rows_are_gag_p_with_fractional_percentiles():
    rows = specs.table1_specs()
    assert [s.name for s in rows] == [f"gag-{p}" for p in (0, 15, 25, 35, 45, 55, 65, 75, 85)]
    assert [s.label for s in rows][-1] == "GAG-85"
    assert all(s.method == "gag" for s in rows)
    assert [dict(s.options)["percentile"] for s in rows] == pytest.approx([0, .15, .25, .35, .45, .55, .65, .75, .85])


def test_table2_rows_parts_and_reversed_variants():
    rows = specs.table2_specs()
    names = [s.name for s in rows]
    assert set(gj.METHODS) <= set(names)
    assert [s.name for s in rows if s.reverse] == ["sg_r", "ig_r", "gb_r", "guided_ig_r", "blur_ig_r"]
    assert all(s.part == 3 for s in rows if s.reverse)
    assert [s.part for s in rows if s.name == "gradcam"] == [1]
    assert {s.part for s in rows if not s.reverse and s.name != "gradcam"} == {2}


def test_table3_variants_options():
    rows = specs.table3_specs()
    assert len(rows) == 5 + 25
    by_name = {s.name: s for s in rows}
    assert dict(by_name["sg.pos"].options) == {"interpretation": "positive"}
    assert dict(by_name["ig.neg"].options) == {"interpretation": "negative"}
    assert dict(by_name["gb.abs"].options) == {"interpretation": "absolute"}
    assert dict(by_name["blur_ig.guide"].options) == {"guide": True}
    assert dict(by_name["guided_ig.guide_abs"].options) == {"guide": True, "interpretation": "absolute"}
    assert by_name["sg.guide_abs"].base == "sg" and by_name["sg.guide_abs"].variant == "GA"
    # every option is accepted by the explainer's validation
    for s in rows:
        gj.explainers.resolve_options(s.method, s.explain_options({"n": 4, "chunk_size": 2}))


def test_parse_methods_and_errors():
    got = specs.parse_methods(["gag,gag-45", "sg_r", "ig.guide_abs", "gag"])
    assert [s.name for s in got] == ["gag", "gag-45", "sg_r", "ig.guide_abs"]
    assert got[2].reverse and got[2].method == "sg"
    # Table 3 adds the missing original
    assert [s.name for s in specs.parse_methods(["ig.abs"], table=3)] == ["ig", "ig.abs"]
    for bad in ("bogus", "gag-100", "gradcam.abs", "sg.wrong"):
        with pytest.raises(ValueError):
            specs.parse_methods([bad])
    # overrides reach only methods that take them
    assert specs.base_spec("gradcam").explain_options({"n": 3}) == {}
    assert specs.base_spec("sg").explain_options({"n": 3, "chunk_size": None}) == {"n": 3}


# ----------------------------------------------------------------------------- tables


def _fake_results():
    res = {}
    for i, s in enumerate(specs.table3_specs()):
        res[s.name] = {"n": 4, "rcap": 0.1 + 0.01 * i, "dauc": 0.2, "iauc": 0.3 + 0.001 * i, "rcap_sem": 0.0,
                       "dauc_sem": 0.0, "iauc_sem": 0.0}
    return res


def test_table3_is_mean_over_bases_of_variant_over_original(tmp_path):
    res = _fake_results()
    rows = specs.table3_specs()
    out = tables.write_tables(3, rows, {"isic": res}, {"isic": ("rcap", "dauc", "iauc")}, str(tmp_path))
    got = {r["variant"]: r for r in tables.read_table_csv(out["csv"])}
    assert list(got) == ["+", "\u2212", "A", "G", "GA"]
    expect = np.mean([res[f"{b}.pos"]["rcap"] / res[b]["rcap"] for b in specs.TABLE3_BASES])
    assert float(got["+"]["isic_rcap"]) == pytest.approx(expect)
    assert float(got["GA"]["isic_dauc"]) == pytest.approx(1.0)
    ratios = tables.read_table_csv(out["ratios"])
    assert len(ratios) == 25 and {r["method"] for r in ratios} == set(specs.TABLE3_BASES)
    md = Path(out["md"]).read_text(encoding="utf-8")
    assert "| Variant | ISIC RCAP\u2191 | ISIC DAUC\u2193 | ISIC IAUC\u2191 |" in md


def test_table2_layout_columns_best_in_bold(tmp_path):
    rows = specs.table2_specs()
    res = {s.name: {"n": 3, "log_cosh_dice": 0.3, "mae": 0.5, "rcap": 0.1, "dauc": 0.2, "iauc": 0.4} for s in rows}
    res["gag"]["rcap"] = 0.9        # best gradient method
    res["gradcam"]["rcap"] = 0.95   # Grad-CAM is not ranked (part 1), as in the paper
    res2 = {s.name: {"n": 5, "rcap": 0.2, "dauc": 0.1, "iauc": 0.5} for s in rows}
    results = {"places365": res2, "imagenet_s": res}
    metrics = {"imagenet_s": ("log_cosh_dice", "mae", "rcap", "dauc", "iauc"), "places365": ("rcap", "dauc", "iauc")}
    out = tables.write_tables(2, rows, results, metrics, str(tmp_path))
    with open(out["csv"], newline="") as f:
        header = next(csv.reader(f))
    # ImageNet-S first (the paper's order), then Places365; mean and sem per metric
    assert header[:5] == ["method", "label", "part", "imagenet_s_n", "imagenet_s_log_cosh_dice"]
    assert "places365_iauc_sem" in header and header.index("places365_n") > header.index("imagenet_s_iauc")
    table = tables.read_table_csv(out["csv"])
    assert [r["method"] for r in table] == [s.name for s in rows]
    md = Path(out["md"]).read_text(encoding="utf-8")
    assert "**0.900000**" in md and "**0.950000**" not in md
    assert "| Method | ImageNet-S L_lc-dce\u2193 | ImageNet-S MAE\u2193 | ImageNet-S RCAP\u2191" in md
    assert "SG^R" in md


def test_table_cells_of_large_metrics_stay_readable_and_the_csv_keeps_every_digit(tmp_path):
    """The suite's infidelity (~1e8) and effective complexity (~5e4) beside RCAP's six decimals."""
    rows = [s for s in specs.table2_specs() if s.name in ("gag", "sg")]
    res = {"gag": {"n": 3, "rcap": 0.5551384, "infidelity": 377093322.666667, "effective_complexity": 50175.0},
           "sg": {"n": 3, "rcap": 0.2652561, "infidelity": 18494716.166667, "effective_complexity": 28181.0}}
    metrics = {"folder": ("rcap", "infidelity", "effective_complexity")}
    out = tables.write_tables(2, rows, {"folder": res}, metrics, str(tmp_path))
    md = Path(out["md"]).read_text(encoding="utf-8")
    gag_line = next(line for line in md.splitlines() if line.startswith("| GAG |"))
    assert [cell.strip("* |") for cell in gag_line.split(" | ")[1:]] == ["0.555138", "3.771e+08", "50175.0"]
    table = {r["method"]: r for r in tables.read_table_csv(out["csv"])}
    assert float(table["gag"]["folder_infidelity"]) == pytest.approx(377093322.666667, rel=1e-12)


# ----------------------------------------------------------------------------- runner


@pytest.fixture(scope="module")
def tiny_setup():
    """Untrained tiny CNN (the runner does not care about accuracy) on 16x16 synthetic shapes."""
    module = tiny.TinyCNN(num_classes=5, width=4)
    variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
    model = gj.ModelFunctions.from_module(module, variables)
    return model


def _config(**kw):
    base = {"case": "synthetic", "model_name": "tiny", "image_size": 16, "batch_size": 4, "confidence": None, "seed": 3,
            "metrics": ("log_cosh_dice", "mae", "rcap", "dauc", "iauc"), "method_overrides": {"n": 2}}
    base.update(kw)
    return runner.RunConfig(**base)


def _run(out, model, rows, **kw):
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    return runner.run(_config(), rows, str(out), batches=batches, model=model, progress=False, **kw)


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_interrupted_run_resumes_without_recomputing_and_matches(tmp_path, tiny_setup, monkeypatch):
    rows = specs.parse_methods(["gag", "sg_r"])
    full = _run(tmp_path / "full", tiny_setup, rows)
    assert full["counts"] == {"computed": 4, "reused": 0}  # 7 images -> 2 batches x 2 methods

    calls = []
    original = stages.explain_rows

    def counting(todo, *a, **k):  # every row of a batch is explained at once (shared sweeps)
        calls.extend(spec.name for spec in todo)
        return original(todo, *a, **k)

    def stop(name, batch):  # as if Ctrl-C came right after the first record was written
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "explain_rows", counting)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "resumed", tiny_setup, rows, on_record=stop)
    assert calls == ["gag", "sg_r"]
    first_record = runner.record_path(str(tmp_path / "resumed"), "gag", 0)
    stamp = os.stat(first_record).st_mtime_ns
    manifest = (tmp_path / "resumed" / "manifest.json").read_text()
    assert '"status": "interrupted"' in manifest

    calls.clear()
    resumed = _run(tmp_path / "resumed", tiny_setup, rows)
    assert sorted(calls) == ["gag", "sg_r", "sg_r"]          # the finished batch is not recomputed
    assert resumed["counts"] == {"computed": 3, "reused": 1}
    assert os.stat(first_record).st_mtime_ns == stamp          # ... nor rewritten
    for name in ("gag", "sg_r"):
        for metric in ("rcap", "dauc", "iauc", "log_cosh_dice", "mae"):
            assert resumed["results"][name][metric] == full["results"][name][metric]
        assert resumed["results"][name]["n"] == 7

    # a third run computes nothing at all
    calls.clear()
    again = _run(tmp_path / "resumed", tiny_setup, rows)
    assert calls == [] and again["counts"] == {"computed": 0, "reused": 4}


def test_ctrl_c_keeps_finished_batches(tmp_path, tiny_setup):
    rows = specs.parse_methods(["vg"])

    def interrupt(name, batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tiny_setup, rows, on_record=interrupt)
    assert os.path.exists(runner.record_path(str(tmp_path), "vg", 0))
    assert '"status": "interrupted"' in (tmp_path / "manifest.json").read_text()
    assert _run(tmp_path, tiny_setup, rows)["counts"] == {"computed": 1, "reused": 1}


def test_damaged_record_is_recomputed_and_mismatch_refused(tmp_path, tiny_setup):
    rows = specs.parse_methods(["vg"])
    first = _run(tmp_path, tiny_setup, rows)
    path = runner.record_path(str(tmp_path), "vg", 1)
    with open(path, "wb") as f:
        f.write(b"truncated by a hard kill")
    second = _run(tmp_path, tiny_setup, rows)
    assert second["counts"] == {"computed": 1, "reused": 1}
    assert second["results"]["vg"]["rcap"] == first["results"]["vg"]["rcap"]
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    with pytest.raises(runner.RunMismatchError, match="seed"):
        runner.run(_config(seed=4), rows, str(tmp_path), batches=batches, model=tiny_setup, progress=False)


def test_collect_means_and_standard_errors_equal_numpy_over_the_records(tmp_path, tiny_setup):
    rows = specs.parse_methods(["vg"])
    out = _run(tmp_path, tiny_setup, rows)
    records = [np.load(runner.record_path(str(tmp_path), "vg", k)) for k in range(2)]
    for metric in ("rcap", "dauc", "mae"):
        values = np.concatenate([r[metric][r["valid"]] for r in records]).astype(np.float64)
        assert values.shape == (7,)
        assert out["results"]["vg"][metric] == pytest.approx(values.mean(), rel=1e-12)
        assert out["results"]["vg"][metric + "_sem"] == pytest.approx(values.std(ddof=1) / np.sqrt(7), rel=1e-9)
    ratios = np.concatenate([r["rcap_ratios"][r["valid"]] for r in records]).astype(np.float64)
    np.testing.assert_allclose(out["results"]["vg"]["rcap_ratios"], ratios.mean(0), rtol=1e-12)
    loaded = runner.load_run(str(tmp_path))
    assert loaded["case"] == "synthetic" and [s.name for s in loaded["specs"]] == ["vg"]
    assert loaded["results"]["vg"]["rcap"] == out["results"]["vg"]["rcap"]
    with pytest.raises(FileNotFoundError, match="not an evaluate output directory"):
        runner.load_run(str(tmp_path / "records"))


def test_predicted_target_explains_the_top1_class_of_every_image(tmp_path, tiny_setup):
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    top1 = np.concatenate([np.asarray(tiny_setup.logits(b["images"])).argmax(-1)[b["valid"]] for b in batches])
    plan = runner.select(batches, tiny_setup, str(tmp_path), None, 4, progress=False, target="predicted")
    assert plan.num_kept == 7 and plan.targets.tolist() == top1.tolist()


def test_rows_for_table_follow_the_papers_order_and_specs_for_adds_table3_originals():
    computed = specs.parse_methods(["vg", "gag-85", "gag", "gradcam", "gag-15", "sg_r", "ig.abs"])
    assert [s.name for s in specs.rows_for_table(1, computed)] == ["gag-15", "gag-85"]
    assert [s.name for s in specs.rows_for_table(2, computed)] == ["gradcam", "gag", "vg", "sg_r"]
    assert [s.name for s in specs.rows_for_table(3, computed)] == ["ig.abs"]
    assert [s.name for s in specs.specs_for((2, 3), ["ig.abs"])] == ["ig", "ig.abs"]
    assert [s.name for s in specs.specs_for((1, 2))][:10] == [s.name for s in specs.table1_specs()] + ["gradcam"]


def test_confidence_selection_keeps_only_confident_rows(tmp_path, tiny_setup):
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    probs = np.concatenate([np.asarray(gj.metrics.target_probs(tiny_setup.logits, b["images"], b["labels"]))[b["valid"]]
                            for b in batches])
    threshold = float(np.median(probs))
    plan = runner.select(batches, tiny_setup, str(tmp_path), threshold, 4, progress=False)
    assert plan.num_seen == 7
    assert plan.num_kept == int((probs > threshold).sum())
    flat = [b * 4 + r for b, r in plan.rows]
    assert flat == [i for i in range(7) if probs[i] > threshold]


def test_parse_metrics():
    assert runner.parse_metrics(None, has_masks=False) == ("rcap", "dauc", "iauc")
    assert runner.parse_metrics("iauc,dice", has_masks=True) == ("log_cosh_dice", "iauc")
    with pytest.raises(ValueError, match="masks"):
        runner.parse_metrics(["mae"], has_masks=False)
    with pytest.raises(ValueError, match="unknown metric"):
        runner.parse_metrics(["auc"], has_masks=True)


# ----------------------------------------------------------------------------- figures, tiny model


def test_figures_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (2, 20, 20, 3), dtype=np.uint8)
    maps = {"gag": rng.random((2, 20, 20)), "sg": rng.random((2, 20, 20))}
    paths = [
        figures.method_grid(str(tmp_path / "grid.png"), pixels, maps, row_titles=["a", "b"],
                            scores={"gag": np.array([0.1, 0.2])}),
        figures.rcap_partitions(str(tmp_path / "parts.png"), pixels[0], maps["gag"][0],
                                ratios=[0.9, 0.8, 0.7, 0.6, 0.5], probs=[0.5] * 5),
        figures.rcap_curves(str(tmp_path / "curves.png"), {"gag": {"rcap_ratios": [1] * 5, "rcap_probs": [.5] * 5}}),
        figures.p_ablation_curve(str(tmp_path / "p.png"), {"isic": {"gag-0": {"rcap": 0.3}, "gag-85": {"rcap": 0.5}}},
                                 {"isic": ("rcap",)}),
        figures.save_overlay(str(tmp_path / "o.png"), pixels[0], maps["sg"][0]),
    ]
    out = figures.synthetic_propositions(str(tmp_path / "fig4.png"), size=40)
    paths.append(out["path"])
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Figure 4: Proposition 1 (M1 > M3) and Proposition 2 (M1 > M2) hold with coverage as prob
    r = out["rcap"]
    assert r["M1"] > r["M3"] and r["M1"] > r["M2"] and r["M1"] > r["M4"]


def test_tiny_checkpoint_round_trip(tmp_path):
    module = tiny.TinyCNN(num_classes=3, width=4)
    variables = module.init(jax.random.PRNGKey(1), np.zeros((1, 16, 16, 3), np.float32))
    path = str(tmp_path / "t.msgpack")
    tiny.save_tiny(variables, path, num_classes=3, width=4)
    m2, v2 = tiny.load_tiny(path)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, x)), np.asarray(m2.apply(v2, x)))
    fns = gj.ModelFunctions.from_module(m2, v2)
    np.testing.assert_allclose(np.asarray(fns.head(fns.features(x))), np.asarray(fns.logits(x)), rtol=1e-6)
    with open(tmp_path / "bad.msgpack", "wb") as f:
        f.write(b"not msgpack")
    with pytest.raises(ValueError, match="tiny-model checkpoint"):
        tiny.load_tiny(str(tmp_path / "bad.msgpack"))


def test_grid_scores_have_three_significant_digits():
    assert [figures._significant(v) for v in (0.000123456, 0.0815, 0.17449, 1.0)] == ["0.000123", "0.0815", "0.174", "1"]


def test_area_layers_are_the_fraction_of_pixels_under_the_curve():
    values = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])  # sorted, 3 columns of 2 pixels
    truth = np.array([True, False, True, True, False, False])
    focus, gt = figures._area_layers(values, truth, columns=3, rows=4)  # levels 0.875, 0.625, 0.375, 0.125
    np.testing.assert_allclose(focus, [[0.5, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0.5]])
    np.testing.assert_allclose(gt, [[0.5, 0, 0], [0.5, 0, 0], [0.5, 1, 0], [0.5, 1, 0]])


def test_demo_table_goes_into_the_readme_between_the_markers(tmp_path):
    from gag_jax.experiments.demo import README_MARKERS, demo_markdown, update_readme

    scores = {m: {"rcap": np.array([0.1, 0.3]), "dauc": np.array([0.2, 0.2]), "iauc": np.array([0.5, 0.7])}
              for m in ("vg", "gag", "gradcam")}
    scores["vg"]["rcap"] = np.array([0.0, 0.1])
    text = demo_markdown("efficientnet_lite0", 160, 20, [("cat", 285, "Egyptian cat", 0.9), ("cup", 967, "espresso", 0.8)],
                         scores, {"vg": 1.0, "gag": 2.5, "gradcam": 0.5})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "RCAP" not in line]
    methods = [r.split("|")[1].strip() for r in rows if r.split("|")[1].strip() in ("Grad-CAM", "GAG", "VG")]
    assert methods == ["Grad-CAM", "GAG", "VG"]  # the paper's Table 2 order
    assert "| GAG | **0.200000** |" in text and "| VG | 0.050000 |" in text  # means; bold among gradient methods
    vg_row = next(r for r in rows if r.startswith("| VG |"))
    assert vg_row.endswith("| 1.0 |") and "| 2.5 |" in text  # seconds column
    assert "| cat | Egyptian cat | 0.900 |" in text
    table = tmp_path / "demo_table.md"
    table.write_text(text)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_MARKERS[0]}\nold table\n{README_MARKERS[1]}\noutro\n")
    update_readme(str(readme), str(table))
    new = readme.read_text()
    assert new.startswith("intro\n") and new.endswith(f"{README_MARKERS[1]}\noutro\n") and "old table" not in new
    assert text.strip() in new
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="demo-table"):
        update_readme(str(readme), str(table))


def test_runner_gives_ig_the_black_baseline_of_the_data_scaling():
    """IG of a linear model is exactly w * (x - black), with black = (0 - mean) / std of the data's own
    scaling (not ImageNet's); the runner passes the scaling only to methods that take it."""
    from gag_jax.experiments.runner import explain_batch
    from gag_jax.experiments.specs import input_scaling, spec_from_name

    mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.5)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 8, 3)).astype(np.float32)
    images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)

    def model_fn(x):
        score = (x * weights).sum(axis=(1, 2, 3))
        return jnp.stack([score, -score], axis=-1)

    maps = explain_batch(spec_from_name("ig"), model_fn, jnp.asarray(images), jnp.zeros(2, jnp.int32),
                         jax.random.PRNGKey(0), {"n": 4, **input_scaling(mean, std)})
    black = (0.0 - np.asarray(mean)) / np.asarray(std)
    expected = np.abs(weights * (images - black)).sum(-1)
    expected = (expected - expected.min(axis=(1, 2), keepdims=True)) / np.ptp(expected, axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(maps), expected, atol=1e-5)
    assert "mean" not in spec_from_name("gag").explain_options(input_scaling(mean, std))


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_an_images_map_does_not_depend_on_the_batch_size_and_the_manifest_counts_the_cost(tmp_path, tiny_setup):
    rows = specs.parse_methods(["gag", "ag", "gag-85", "vargrad", "ig", "sg_r"])
    batches4 = load_case("synthetic", batch_size=4, image_size=16, num_images=7, seed=3)
    batches3 = load_case("synthetic", batch_size=3, image_size=16, num_images=7, seed=3)
    by4 = runner.run(_config(batch_size=4), rows, str(tmp_path / "b4"), batches=batches4, model=tiny_setup,
                     progress=False)
    by3 = runner.run(_config(batch_size=3), rows, str(tmp_path / "b3"), batches=batches3, model=tiny_setup,
                     progress=False)
    for row in by4["results"]:
        for metric in ("rcap", "dauc", "iauc", "mae"):
            np.testing.assert_allclose(by3["results"][row][metric], by4["results"][row][metric], rtol=1e-5,
                                       err_msg=f"{row} {metric}")
    # gag and gag-85 are one row computed once: the same records
    np.testing.assert_array_equal(by4["results"]["gag"]["rcap"], by4["results"]["gag-85"]["rcap"])
    cost = json.loads((tmp_path / "b4" / "manifest.json").read_text())["cost"]
    # one noise sweep (n = 2) for gag / ag / gag-85 / vargrad / sg (sg_r reverses sg's maps), one IG path (n = 2)
    assert cost["gradient_evaluations_per_image"] == 4
    assert {frozenset(s["rows"]) for s in cost["sweeps"]} == {frozenset({"gag", "ag", "gag-85", "vargrad"}),
                                                              frozenset({"ig"})}  # sg_r: sg's sweep, reversed
    # selection 1 + 5 distinct maps x (RCAP 5 + deletion / insertion 20)
    assert cost["forward_passes_per_image"] == 1 + 5 * 25
    assert cost["devices"]["count"] == jax.device_count() and "selection" in cost["seconds"]


def test_a_run_gives_its_scaling_to_a_model_without_one_and_refuses_a_model_with_another(tmp_path, tiny_setup):
    """One source of the input scaling: the model. A scaling-less model is given the run's (its IG black
    baseline then is the data's pixel 0, as for the shipped models); a model with another is refused."""
    assert tiny_setup.mean is None
    given = runner.model_with_scaling(tiny_setup, gj.IMAGENET_MEAN, gj.IMAGENET_STD)
    np.testing.assert_allclose(given.mean, gj.IMAGENET_MEAN)
    np.testing.assert_allclose(given.std, gj.IMAGENET_STD)
    other = tiny_setup.replace(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batches = load_case("synthetic", batch_size=4, image_size=16, num_images=4, seed=3)
    with pytest.raises(ValueError, match=r"model's input scaling \(mean \(0.5, 0.5, 0.5\).*normalised with"):
        runner.run(_config(), specs.parse_methods(["ig"]), str(tmp_path / "run"), batches=batches, model=other,
                   progress=False)
    assert not os.path.exists(tmp_path / "run")  # refused before anything is written
