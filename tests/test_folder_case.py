"""The user's-folder case (``gag-jax evaluate --case folder``): class folders named by words,
``labels.txt`` lines that cannot work, masks of another shape, classes the model does not have.

Every bad input must stop the run with one line naming it (``file:line``, the folder or the mask;
exit status 2 at the command line, no output folder left behind); a mask that cannot be decoded
leaves only its own image out. Expected class indices are read here from
``models/imagenet_classes.txt`` itself, independently of the loader.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from gag_jax import cli
from gag_jax import data as gd

NAMES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gag_jax", "imagenet_classes.txt")
with open(NAMES_FILE, encoding="utf-8") as _f:
    IMAGENET_NAMES = [line.strip() for line in _f if line.strip()]
MISSING_TF = [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]
BACKENDS = ["files", pytest.param("tfds", marks=pytest.mark.skipif(bool(MISSING_TF), reason="tensorflow not installed"))]
FAST = ["--compile-cache", "none", "--no-progress", "--backend", "files"]
SCALING = {"mean": gd.IMAGENET_MEAN, "std": gd.IMAGENET_STD}  # the loaders have no default scaling


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("GAG_JAX_COMPILE_CACHE", "none")


def _photo(path, h=16, w=16, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _mask(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(mask, np.uint8) * 255).save(path)


from test_data import _all_rows as _rows  # noqa: E402  (the valid rows of every batch)


def _main(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _error_line(err):
    """The one error line of a refused command (no traceback, nothing else on stderr)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def tiny5(tmp_path_factory):
    """An untrained 5-class tiny CNN checkpoint (a model that is not an ImageNet-1000 one)."""
    import jax
    import jax.numpy as jnp

    from gag_jax.experiments.tiny import TinyCNN, save_tiny

    module = TinyCNN(num_classes=5)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    path = tmp_path_factory.mktemp("tiny") / "tiny5.msgpack"
    save_tiny(variables, path, num_classes=5, width=module.width)
    return path


# ------------------------------------------------------------------- 4. class folders named by words

def test_word_named_class_folders_resolve_to_the_imagenet_class_of_that_name(tmp_path):
    # any case, "_" or " " between words; index-, wnid- and word-named folders side by side
    for folder in ("espresso", "Egyptian_cat", "egyptian cat", "TABBY", "3", "n01443537"):
        _photo(str(tmp_path / folder / "a.png"))
    batches = gd.load_case("folder", tmp_path, image_size=16, backend="files", **SCALING)
    labels = dict(zip(_rows(batches)["names"].tolist(), _rows(batches)["labels"].tolist()))
    assert labels == {
        "espresso/a.png": IMAGENET_NAMES.index("espresso"),
        "Egyptian_cat/a.png": IMAGENET_NAMES.index("Egyptian cat"),
        "egyptian cat/a.png": IMAGENET_NAMES.index("Egyptian cat"),
        "TABBY/a.png": IMAGENET_NAMES.index("tabby"),
        "3/a.png": 3,
        "n01443537/a.png": 1,  # goldfish: second of the sorted ImageNet-1k wnids
    }
    assert batches.num_classes == 1000 and batches.class_names[IMAGENET_NAMES.index("espresso")] == "espresso"
    batches.check_model_classes(1000)  # an ImageNet model takes them


def test_folder_names_that_are_no_class_or_several_stop_the_listing_naming_them(tmp_path):
    _photo(str(tmp_path / "words" / "cat" / "a.png"))
    _photo(str(tmp_path / "words" / "espresso" / "a.png"))
    with pytest.raises(gd.DatasetLayoutError) as err:
        gd.load_case("folder", tmp_path / "words", backend="files", **SCALING)
    message = str(err.value)
    assert "\n" not in message and "cat/" in message and "espresso/" not in message
    # a name shared by two classes after case folding: ambiguous, both indices named
    keys = {}
    for i, name in enumerate(IMAGENET_NAMES):
        keys.setdefault(name.casefold(), []).append(i)
    twice = next(k for k, v in keys.items() if len(v) > 1)
    _photo(str(tmp_path / "twice" / twice / "a.png"))
    with pytest.raises(gd.DatasetLayoutError) as err:
        gd.load_case("folder", tmp_path / "twice", backend="files", **SCALING)
    assert all(str(i) in str(err.value) for i in keys[twice]) and f"{twice}/" in str(err.value)


def test_word_folders_need_a_1000_class_model_or_the_models_class_names(tmp_path):
    for folder in ("square", "Circle"):
        _photo(str(tmp_path / folder / "a.png"))
    (tmp_path / "names.txt").write_text("triangle\ncircle\nsquare\nstar\nring\n")
    listed = gd.load_case("folder", tmp_path, image_size=16, backend="files", class_names=tmp_path / "names.txt", **SCALING)
    rows = _rows(listed)
    assert dict(zip(rows["names"].tolist(), rows["labels"].tolist())) == {"Circle/a.png": 1, "square/a.png": 2}
    listed.check_model_classes(5)
    # ImageNet names with a 5-class model: refused, the folders named
    _photo(str(tmp_path / "in" / "espresso" / "a.png"))
    batches = gd.load_case("folder", tmp_path / "in", image_size=16, backend="files", **SCALING)
    with pytest.raises(gd.DatasetLayoutError, match=r"espresso/.*5 outputs.*class_names"):
        batches.check_model_classes(5)


def test_evaluate_refuses_word_folders_for_a_non_imagenet_model_and_leaves_no_output(tmp_path, capsys, tiny5):
    for folder in ("espresso", "Egyptian_cat"):
        _photo(str(tmp_path / "data" / folder / "a.png"))
    out = tmp_path / "out"
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", tmp_path / "data", "--model", "tiny",
                        "--checkpoint", tiny5, "--image-size", "16", "--methods", "vg", "--confidence", "none",
                        "--out", out, *FAST], capsys)
    line = _error_line(err)
    assert rc == 2 and "Egyptian_cat/" in line and "espresso/" in line and "5 outputs" in line
    assert not out.exists()
    _photo(str(tmp_path / "data" / "cat" / "a.png"))  # no class of that name: refused before the model loads
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", tmp_path / "data", "--image-size", "16",
                        "--confidence", "none", "--out", out, *FAST], capsys)
    assert rc == 2 and "cat/" in _error_line(err) and not out.exists()


# ------------------------------------------------------------------------------ 5. labels.txt lines

@pytest.mark.parametrize("lines, line_no, words", [
    ("a.png\t1\nb.png\t2\na.png\t3\n", 3, ["listed again", "first at line 1"]),
    ("a.png\t1\n\n./b.png\t2\nb.png\t2\n", 4, ["listed again", "first at line 3"]),  # same file, same label
    ("a.png\t1\nb.png\t-1\n", 2, ["negative"]),
])
def test_duplicate_or_negative_labels_line_is_named_file_colon_line(tmp_path, lines, line_no, words):
    for stem in ("a", "b"):
        _photo(str(tmp_path / f"{stem}.png"))
    (tmp_path / "labels.txt").write_text(lines)
    with pytest.raises(gd.DatasetLayoutError) as err:
        gd.load_case("folder", tmp_path, backend="files", **SCALING)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'labels.txt'}:{line_no}: ") and "\n" not in message
    assert all(w in message for w in words)


def test_evaluate_exits_2_on_a_duplicate_labels_line(tmp_path, capsys):
    for stem in ("a", "b"):
        _photo(str(tmp_path / "data" / f"{stem}.png"))
    (tmp_path / "data" / "labels.txt").write_text("a.png\t1\nb.png\t2\na.png\t5\n")
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", tmp_path / "data", "--image-size", "16",
                        "--out", tmp_path / "out", *FAST], capsys)
    assert rc == 2 and f"{tmp_path / 'data' / 'labels.txt'}:3:" in _error_line(err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ 6. masks

def test_mask_at_another_resolution_is_resized_but_another_aspect_ratio_is_refused(tmp_path):
    _photo(str(tmp_path / "a.png"), 16, 24)
    small = np.zeros((8, 12), bool)  # the image's aspect ratio, half the resolution
    small[2:6, 3:9] = True
    _mask(str(tmp_path / "masks" / "a.png"), small)
    (tmp_path / "labels.txt").write_text("a.png\t3\n")
    rows = _rows(gd.load_case("folder", tmp_path, image_size=(16, 24), resize_mode="squash", backend="files", **SCALING))
    np.testing.assert_array_equal(rows["masks"][0], np.kron(small, np.ones((2, 2), bool)).astype(np.float32))
    _mask(str(tmp_path / "masks" / "a.png"), np.ones((16, 16), bool))  # square mask of a 3:2 image
    with pytest.raises(gd.DatasetLayoutError) as err:
        gd.load_case("folder", tmp_path, image_size=16, backend="files", **SCALING)
    message = str(err.value)
    assert str(tmp_path / "masks" / "a.png") in message and "aspect" in message and "\n" not in message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("broken", ["garbage", "truncated"])
def test_an_undecodable_mask_leaves_out_its_image_only(tmp_path, backend, broken):
    masks = {}
    for i, stem in enumerate(("a", "b", "c")):
        _photo(str(tmp_path / "data" / f"{stem}.png"), 16, 16, seed=i)
        masks[stem] = np.zeros((16, 16), bool)
        masks[stem][2 + i:10, 3:12] = True
        _mask(str(tmp_path / "data" / "masks" / f"{stem}.png"), masks[stem])
    bad = tmp_path / "data" / "masks" / "b.png"
    # garbage: not even a header (caught when listing); truncated: the header reads, the pixels do not
    bad.write_bytes(b"not a png" if broken == "garbage" else bad.read_bytes()[:60])
    (tmp_path / "data" / "labels.txt").write_text("a.png\t1\nb.png\t2\nc.png\t3\n")
    with pytest.warns(UserWarning, match="b.png"):
        batches = gd.load_case("folder", tmp_path / "data", image_size=16, resize_mode="squash", backend=backend,
                               cache_dir=tmp_path / "tfds", **SCALING)
        rows = _rows(batches)
    assert rows["names"].tolist() == ["a.png", "c.png"] and rows["labels"].tolist() == [1, 3]
    for i, stem in enumerate(("a", "c")):
        np.testing.assert_array_equal(rows["masks"][i], masks[stem].astype(np.float32))
    assert [s.path for s in batches.skipped] == [str(bad)]


def test_evaluate_exits_2_naming_a_mask_of_another_aspect_ratio(tmp_path, capsys):
    _photo(str(tmp_path / "data" / "a.png"), 16, 24)
    _photo(str(tmp_path / "data" / "b.png"), 16, 24)
    _mask(str(tmp_path / "data" / "masks" / "a.png"), np.ones((8, 12), bool))
    _mask(str(tmp_path / "data" / "masks" / "b.png"), np.ones((24, 16), bool))
    (tmp_path / "data" / "labels.txt").write_text("a.png\t1\nb.png\t2\n")
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", tmp_path / "data", "--image-size", "16",
                        "--out", tmp_path / "out", *FAST], capsys)
    line = _error_line(err)
    assert rc == 2 and str(tmp_path / "data" / "masks" / "b.png") in line and "masks/a.png" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- 7. classes the model does not have

def test_a_class_beyond_the_models_outputs_names_its_labels_line(tmp_path):
    for stem in ("a", "b", "c"):
        _photo(str(tmp_path / f"{stem}.png"))
    (tmp_path / "labels.txt").write_text("a.png\t7\nb.png\t5000\nc.png\t5000\n")
    batches = gd.load_case("folder", tmp_path, backend="files", **SCALING)
    batches.check_model_classes(5001)
    with pytest.raises(gd.DatasetLayoutError) as err:
        batches.check_model_classes(1000)
    assert str(err.value).startswith(f"{tmp_path / 'labels.txt'}:2: class 5000") and "1000" in str(err.value)
    # class folders named by index: the folder is named
    _photo(str(tmp_path / "ints" / "2" / "a.png"))
    _photo(str(tmp_path / "ints" / "9" / "a.png"))
    with pytest.raises(gd.DatasetLayoutError, match=r"ints.9.*class 9 is beyond the model's 5 outputs"):
        gd.load_case("folder", tmp_path / "ints", backend="files", **SCALING).check_model_classes(5)


def test_evaluate_exits_2_naming_the_line_of_a_class_the_model_lacks(tmp_path, capsys, tiny5):
    for stem in ("a", "b"):
        _photo(str(tmp_path / "data" / f"{stem}.png"))
    (tmp_path / "data" / "labels.txt").write_text("a.png\t1\nb.png\t7\n")
    rc, _, err = _main(["evaluate", "--case", "folder", "--data-dir", tmp_path / "data", "--model", "tiny",
                        "--checkpoint", tiny5, "--image-size", "16", "--out", tmp_path / "out", *FAST], capsys)
    line = _error_line(err)
    assert rc == 2 and f"{tmp_path / 'data' / 'labels.txt'}:2: class 7" in line
    assert "checkpoint with" not in line and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- end to end

def test_evaluate_word_folders_with_class_names_and_one_undecodable_mask(tmp_path, capsys, tiny5):
    """A 5-class model, folders named by its class names: every readable image is evaluated with its
    class; the image whose mask cannot be decoded is named once and left out."""
    from gag_jax.experiments import runner

    data = tmp_path / "data"
    for i, (folder, stem) in enumerate((("square", "s1"), ("square", "s2"), ("Ring", "r1"))):
        _photo(str(data / folder / f"{stem}.png"), seed=i)
        _mask(str(data / "masks" / folder / f"{stem}.png"), np.eye(16, dtype=bool))
    (data / "masks" / "square" / "s2.png").write_bytes(b"broken")
    (tmp_path / "names.txt").write_text("triangle\ncircle\nsquare\nstar\nring\n")
    rc, out, err = _main(["evaluate", "--case", "folder", "--data-dir", data, "--model", "tiny", "--checkpoint",
                          tiny5, "--case-option", f"class_names={tmp_path / 'names.txt'}", "--image-size", "16",
                          "--batch-size", "4", "--methods", "vg", "--confidence", "none", "--no-figures",
                          "--out", tmp_path / "out", *FAST], capsys)
    assert rc == 0, err
    assert len([line for line in err.splitlines() if "s2.png" in line]) == 1
    record = np.load(runner.record_path(str(tmp_path / "out"), "vg", 0))
    valid = record["valid"]
    assert dict(zip(record["names"][valid].tolist(), record["labels"][valid].tolist())) == {
        "Ring/r1.png": 4, "square/s1.png": 2}
