"""The open engine (issue 22): a user's method, metric and model, named as ``module:attribute`` on the
command line or registered in Python, run through ``evaluate``, ``explain``, ``demo`` and ``sanity`` like
the built-in ones: rows and columns in records, tables and manifest, sweeps shared, resumable; bad
references refused in one line with nothing written.

The user's code is a throwaway package written to a temporary folder and put on ``sys.path``.
"""
from __future__ import annotations

import json
import pathlib
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import gag_jax as gj
from gag_jax import cli, user_code
from gag_jax.experiments import runner
from gag_jax.experiments.jobs import Job
from gag_jax.experiments.tables import read_table_csv

FAST = ["--compile-cache", "none", "--no-progress"]

USER_METHODS = '''
import gag_jax as gj


def edge_grad(n=20, noise_level=0.15, chunk_size=None):
    """Mean squared gradient at n noisy copies: SmoothGrad's sweep, another reading."""
    return gj.chain(gj.modifications.gaussian_noise(n, noise_level), gj.gradients.logit_gradient(),
                    gj.interpretations.square(), gj.aggregations.mean(), chunk_size=chunk_size)


def not_a_method(n=2):
    return "nothing"
'''

USER_METRICS = '''
def centre_mass(model, images, labels, maps):
    """Share of the map inside the central half of the image (higher: more central)."""
    h, w = maps.shape[1:]
    inner = maps[:, h // 4:3 * h // 4, w // 4:3 * w // 4].sum((1, 2))
    return inner / (maps.sum((1, 2)) + 1e-12)
'''

USER_NETS = '''
import flax.linen as nn
import jax
import jax.numpy as jnp

import gag_jax as gj


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(7, name="head")(x.mean((1, 2)))


def build():
    module = Net()
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    return gj.ModelFunctions.from_module(module, variables, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def not_a_model():
    return {"weights": 1}
'''


@pytest.fixture()
def user_package(tmp_path, monkeypatch):
    """A package ``lab_<n>`` with methods, metrics and nets modules, importable for this test only."""
    name = f"lab_{tmp_path.name.replace('-', '_')}"
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module, text in (("methods", USER_METHODS), ("metrics", USER_METRICS), ("nets", USER_NETS)):
        (package / f"{module}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield name
    for registered in ("edge_grad",):
        if registered in gj.METHOD_RECORDS and registered not in gj.explainers.BUILT_IN_METHODS:
            gj.unregister_method(registered)
    if "centre_mass" in gj.metrics.metric_names():
        gj.metrics.unregister("centre_mass")
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]


def _folder(root, count=3, side=(20, 24)):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    lines = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*side, 3), dtype=np.uint8)).save(root / f"p{i}.png")
        lines.append(f"p{i}.png\t{i % 7}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def _main(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow  # ~20 s: CI runs it
def test_users_method_metric_and_model_run_through_evaluate_on_a_folder(user_package, tmp_path, capsys):
    photos = _folder(tmp_path / "photos")
    out = tmp_path / "run"
    args = ["evaluate", "--case", "folder", "--data-dir", photos, "--model", f"{user_package}.nets:build",
            "--methods", f"gag,ig,{user_package}.methods:edge_grad", "--image-size", "16", "--n", "2",
            "--metrics", f"rcap,dauc,{user_package}.metrics:centre_mass", "--confidence", "none",
            "--batch-size", "2", "--backend", "files", "--out", out, *FAST]
    rc, _, err = _main(args, capsys)
    assert rc == 0, err
    rows = {r["method"]: r for r in read_table_csv(str(out / "table2.csv"))}
    assert set(rows) == {"gag", "ig", "edge_grad"}
    assert all(np.isfinite(float(rows[m]["folder_centre_mass"])) for m in rows)

    # the records hold the user's column, equal to the metric computed here from the stored maps' model
    model = user_code.user_model(f"{user_package}.nets:build")
    record = np.load(runner.record_path(str(out), "edge_grad", 0))
    assert record["centre_mass"].shape == (2,) and "rcap" in record and "dauc" in record

    manifest = json.loads((out / "manifest.json").read_text())
    methods = {m["name"]: m for m in manifest["methods"]}
    assert methods["edge_grad"]["source"]["module"] == f"{user_package}.methods"
    assert len(methods["edge_grad"]["source"]["sha256"]) == 64
    metrics = {m["name"]: m for m in manifest["metrics"]}
    assert metrics["centre_mass"]["source"]["module"] == f"{user_package}.metrics"
    assert manifest["model_source"]["module"] == f"{user_package}.nets"
    # edge_grad reads SmoothGrad's noise sweep: it shares GAG's (same n, noise and gradient seam)
    sweeps = manifest["cost"]["sweeps"]
    assert any({"gag", "edge_grad"} <= set(s["rows"]) for s in sweeps), sweeps
    assert manifest["cost"]["gradient_evaluations_per_image"] == 2 + 2  # the noise sweep + IG's path

    # resumable like the built-in rows: a second run computes nothing
    rc, out_text, err = _main(args, capsys)
    assert rc == 0, err
    assert json.loads((out / "manifest.json").read_text())["counts"]["computed"] == 0

    # a fresh process (here: the registries emptied) reads the run back: the metric is imported again
    gj.unregister_method("edge_grad")
    gj.metrics.unregister("centre_mass")
    run = runner.load_run(str(out))
    assert "centre_mass" in run["metrics"] and gj.metrics.metric("centre_mass").label == "centre_mass"
    assert np.isfinite(run["results"]["edge_grad"]["centre_mass"])
    del model


@pytest.mark.slow  # ~15 s: CI runs it
def test_users_method_and_model_in_explain_demo_and_sanity(user_package, tmp_path, capsys):
    photos = _folder(tmp_path / "photos", count=2)
    model_ref, method_ref = f"{user_package}.nets:build", f"{user_package}.methods:edge_grad"
    rc, _, err = _main(["explain", photos / "p0.png", photos / "p1.png", "--model", model_ref, "--method",
                        f"vg,{method_ref}", "--size", "16", "--n", "2", "--out", tmp_path / "explained", *FAST], capsys)
    assert rc == 0, err
    rows = (tmp_path / "explained" / "explain.csv").read_text()
    assert "edge_grad" in rows
    maps = sorted(p.name for p in (tmp_path / "explained").rglob("*edge_grad*.npy"))
    assert len(maps) == 2
    saved = np.load(next((tmp_path / "explained").rglob("*edge_grad*.npy")))
    assert saved.shape == (16, 16) and 0.0 <= saved.min() and saved.max() <= 1.0

    rc, _, err = _main(["demo", "--images", photos / "p0.png", "--methods", f"sg,{method_ref}", "--size", "32",
                        "--n", "2", "--out", tmp_path / "demo", *FAST], capsys)  # the demo's model is Lite0
    assert rc == 0, err
    assert "edge_grad" in " ".join(p.name for p in (tmp_path / "demo").rglob("*"))

    rc, _, err = _main(["sanity", "--model", model_ref, "--methods", method_ref, "--images", photos / "p0.png",
                        "--size", "32", "--n", "2", "--out", tmp_path / "sanity", "--compile-cache", "none"], capsys)
    assert rc == 0, err
    assert "edge_grad" in (tmp_path / "sanity" / "sanity_summary.csv").read_text()


@pytest.mark.parametrize("flag, reference, needle", [
    ("--methods", "{pkg}.nomodule:edge_grad", "no module named"),
    ("--methods", "{pkg}.methods:edge_gradd", "has no attribute 'edge_gradd'"),
    ("--methods", "{pkg}.methods:not_a_method", "must return a gj.Explainer"),
    ("--metrics", "{pkg}.metrics:nothing", "has no attribute 'nothing'"),
    ("--model", "{pkg}.nets:not_a_model", "must return a gj.ModelFunctions"),
    ("--model", "{pkg}.nowhere:build", "no module named"),
])
def test_a_bad_reference_is_one_line_exit_2_and_writes_nothing(user_package, tmp_path, capsys, flag, reference,
                                                                needle):
    photos = _folder(tmp_path / "photos", count=1)
    args = {"--methods": "vg", "--metrics": "rcap", "--model": f"{user_package}.nets:build"}
    args[flag] = reference.format(pkg=user_package)
    out = tmp_path / "run"
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", photos, "--image-size", "16",
                        "--confidence", "none", "--backend", "files", "--out", out, *FAST,
                        *[x for k, v in args.items() for x in (k, v)]], capsys)
    errors = [line for line in err.strip().splitlines() if "error" in line]
    assert rc == 2 and len(errors) == 1 and needle in errors[0], err
    assert not out.exists()


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_throwaway_method_and_metric_through_the_public_registry_run_evaluate(tmp_path):
    """No file of the package changes: a method and a metric registered in Python are rows and columns."""
    def doubled_vg():
        return gj.chain(gj.modifications.identity(), gj.gradients.logit_gradient(), gj.interpretations.square(),
                        gj.aggregations.total())

    def map_mean(model, images, labels, maps):
        return maps.mean((1, 2))

    gj.register_method("doubled_vg", doubled_vg, label="VG²")
    gj.metrics.register("map_mean", map_mean, label="Mean", higher_is_better=False)
    try:
        job = Job(str(tmp_path / "run"), methods=("vg", "doubled_vg"), batch_size=4, progress=False)
        out = runner.evaluate_case(job, "synthetic", metrics="rcap,map_mean", limit=4, confidence=None,
                                   train_steps=20, figures=False, report=lambda *_: None)
        assert set(out["results"]) == {"vg", "doubled_vg"}
        for name in ("vg", "doubled_vg"):
            assert np.isfinite(out["results"][name]["map_mean"])
        table = (tmp_path / "run" / "table2.md").read_text()
        assert "VG²" in table and "Mean\u2193" in table
        # the square of VG's gradient, reduced and normalised, is not VG's map: the row is its own
        rec_vg = np.load(runner.record_path(str(tmp_path / "run"), "vg", 0))
        rec_sq = np.load(runner.record_path(str(tmp_path / "run"), "doubled_vg", 0))
        assert not np.allclose(rec_vg["map_mean"], rec_sq["map_mean"])
    finally:
        gj.unregister_method("doubled_vg")
        gj.metrics.unregister("map_mean")


def test_register_method_refusals():
    with pytest.raises(ValueError, match="built in"):
        gj.register_method("gag", lambda: None)
    with pytest.raises(ValueError, match="must return a gj.Explainer"):
        gj.register_method("broken", lambda n=2: 3)
    with pytest.raises(ValueError, match="letters"):
        gj.register_method("a b", lambda: None)


def test_metric_ranks_follow_each_metrics_direction_and_share_ties():
    from gag_jax.experiments import figures
    results = {"a": {"rcap": 0.5, "dauc": 0.2, "sparseness": 0.3}, "b": {"rcap": 0.7, "dauc": 0.1, "sparseness": 0.3},
               "c": {"rcap": 0.1, "dauc": 0.9}}
    ranks = figures.metric_ranks(results, ["rcap", "dauc", "sparseness"], ["a", "b", "c"])
    np.testing.assert_array_equal(ranks[:, 0], [2, 1, 3])          # RCAP: higher is better
    np.testing.assert_array_equal(ranks[:, 1], [2, 1, 3])          # DAUC: lower is better
    np.testing.assert_array_equal(ranks[:2, 2], [1.5, 1.5])        # a tie shares the mean rank
    assert np.isnan(ranks[2, 2])                                   # no value: no rank


def test_metric_options_reach_the_metric_and_its_cost_and_are_checked(tmp_path, capsys):
    from gag_jax.cli import _metric_options
    assert _metric_options(["max_sensitivity.samples=3", "pixel_flipping.features_in_step=64",
                            "rcap.baseline=blur"]) == {"max_sensitivity": {"samples": 3},
                                                       "pixel_flipping": {"features_in_step": 64},
                                                       "rcap": {"baseline": "blur"}}
    # cost: RCAP's 5 partitions + max-sensitivity's re-explanations (one gradient = 2 passes each) and its map
    three = gj.metrics.forward_passes_per_map(("rcap", "max_sensitivity"), {"max_sensitivity": {"samples": 3}})
    five = gj.metrics.forward_passes_per_map(("rcap", "max_sensitivity"), {"max_sensitivity": {"samples": 5}})
    assert five - three == 2 * 2
    rc, _, err = _main(["evaluate", "--case", "synthetic", "--metrics", "rcap", "--metric-option", "dauc.fractions=(0.5,)",
                        "--out", tmp_path / "run", *FAST], capsys)
    assert rc == 2 and "not among the metrics asked for" in err and not (tmp_path / "run").exists()
    rc, _, err = _main(["evaluate", "--case", "synthetic", "--metric-option", "samples=3", "--out", tmp_path / "run",
                        *FAST], capsys)
    assert rc == 2 and "METRIC.KEY=VALUE" in err


@pytest.mark.parametrize("section", ["metric-catalogue"])
def test_the_metric_catalogue_is_generated_from_the_records(section):
    """Regenerate with: python -c "from gag_jax.metrics import registry; from gag_jax.experiments import readme;
    readme.replace_section('README.md', 'metric-catalogue', registry.catalogue_markdown())" """
    from gag_jax.experiments.readme import markers
    from gag_jax.metrics import registry

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = (text.index(m) for m in markers(section))
    assert text[start + len(markers(section)[0]):end].strip() == registry.catalogue_markdown().strip()


USER_VIT = """
    import jax
    import numpy as np

    import gag_jax as gj
    from gag_jax.models.vit import ViT


    def build():
        module = ViT(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_dim=32, num_classes=7)
        variables = module.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))
        return gj.ModelFunctions.from_module(module, variables, mean=(0.5,) * 3, std=(0.5,) * 3)
"""


@pytest.mark.slow  # a ViT's attention methods end to end: CI runs it
def test_a_users_vit_runs_the_attention_methods_and_token_gradcam_through_evaluate(tmp_path, monkeypatch, capsys):
    """A transformer of the user's (``module:attribute``) in ``evaluate``: attention rollout, generic
    attention and Grad-CAM on tokens are rows like the others; each row's per-image RCAP in the records
    equals ``gj.metrics.rcap`` of ``gj.explain``'s maps computed here on the same images."""
    name = f"vitlab_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "code" / name).mkdir(parents=True)
    (tmp_path / "code" / name / "__init__.py").write_text("")
    (tmp_path / "code" / name / "nets.py").write_text(textwrap.dedent(USER_VIT))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    photos = _folder(tmp_path / "photos", count=2)
    out = tmp_path / "run"
    methods = ("attention_rollout", "generic_attention", "gradcam")
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", photos, "--model", f"{name}.nets:build",
                        "--methods", ",".join(methods), "--metrics", "rcap", "--image-size", "16",
                        "--confidence", "none", "--batch-size", "2", "--backend", "files", "--out", out, *FAST],
                       capsys)
    assert rc == 0, err
    assert {r["method"] for r in read_table_csv(str(out / "table2.csv"))} == set(methods)

    model = user_code.user_model(f"{name}.nets:build")
    from gag_jax.data import load_case

    data = next(iter(load_case("folder", str(photos), image_size=16, batch_size=2, backend="files",
                               mean=model.mean, std=model.std)))
    images, labels = jnp.asarray(data["images"]), jnp.asarray(data["labels"])
    for method in methods:
        record = np.load(runner.record_path(str(out), method, 0))
        np.testing.assert_array_equal(record["labels"], np.asarray(labels))
        maps = gj.explain(method, model, images, labels)
        expected = gj.metrics.rcap(model, images, labels, maps)["rcap"]
        np.testing.assert_allclose(record["rcap"], np.asarray(expected), atol=1e-5, err_msg=method)
    for module in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[module]
