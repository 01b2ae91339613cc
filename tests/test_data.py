"""Data: synthetic set against analytic geometry, directory cases on tiny fake trees, bad inputs.

The fake trees mimic the public layouts (ImageNet-S, ISIC 2018/2019, Places365) with a handful of
16x16 files; expected masks and labels are built here independently of the loader. tfds-backed
tests skip when TensorFlow (the ``data`` extra) is not installed.
"""
from __future__ import annotations

import csv
import importlib.util
import os
import warnings

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image

from gag_jax import data as gd

MISSING = [m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None]
needs_tf = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install 'gag-jax[data]'): tfds cannot prepare image datasets"
)
BACKENDS = ["files", pytest.param("tfds", marks=needs_tf)]
MEAN = np.array(gd.IMAGENET_MEAN, np.float32)
STD = np.array(gd.IMAGENET_STD, np.float32)
SCALING = {"mean": gd.IMAGENET_MEAN, "std": gd.IMAGENET_STD}  # the loaders have no default scaling


# ------------------------------------------------------------------------------------------ helpers

def _noise_image(rng, size=16):
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _save(array, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _decoded(path):
    """The file as Pillow decodes it, RGB uint8 (the loader at the file's own size must give this)."""
    return np.asarray(Image.open(path).convert("RGB"))


def _box(y0, y1, x0, x1, size=16):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _all_rows(batches):
    """Concatenate the valid rows of every batch."""
    out = {}
    for batch in batches:
        for key, value in batch.items():
            if key != "valid":
                out.setdefault(key, []).append(value[batch["valid"]])
    return {k: np.concatenate(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------- fake trees

# ImageNet-1k indices of these wnids (torchvision order): 1 goldfish, 3 tiger shark.
WNIDS = {"n01443537": 1, "n01491361": 3}


@pytest.fixture
def imagenet_s_tree(tmp_path):
    """ImageNetS50/{validation,validation-segmentation}/<wnid>/...: 2 classes x 2 images, one image without mask."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imagenet-s" / "ImageNetS50"
    expected = {}
    for k, wnid in enumerate(sorted(WNIDS)):
        class_id = k + 1  # ImageNet-S id: 1-based rank among the sorted category folders
        for j in range(2):
            stem = f"ILSVRC2012_val_{10 * k + j:08d}"
            _save(_noise_image(rng), str(root / "validation" / wnid / f"{stem}.JPEG"))
            obj = _box(2 + j, 10 + j, 3, 12)
            ids = np.zeros((16, 16), np.int64)
            ids[obj] = class_id
            ids[14:, :] = 1000  # ignored band
            ids[0, :4] = 7  # another object
            seg = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
            _save(seg, str(root / "validation-segmentation" / wnid / f"{stem}.png"))
            expected[f"{wnid}/{stem}.JPEG"] = (obj, (obj | (ids == 7)), WNIDS[wnid], k)
    _save(_noise_image(rng), str(root / "validation" / "n01491361" / "ILSVRC2012_val_00000099.JPEG"))  # no mask
    return root, expected


@pytest.fixture
def isic_tree(tmp_path):
    """ISIC 2018 Task 1 training folders + the ISIC 2019 CSV; one image lacks a mask, one a label."""
    rng = np.random.default_rng(1)
    root = tmp_path / "isic"
    images = root / "ISIC2018_Task1-2_Training_Input"
    masks = root / "ISIC2018_Task1_Training_GroundTruth"
    expected = {}
    for i in range(4):
        _save(_noise_image(rng), str(images / f"ISIC_{i:07d}.jpg"))
        lesion = _box(4, 12, 2 + i, 10 + i)
        _save((lesion * 255).astype(np.uint8), str(masks / f"ISIC_{i:07d}_segmentation.png"))
        expected[f"ISIC_{i:07d}.jpg"] = lesion
    _save(_noise_image(rng), str(images / "ISIC_0000099.jpg"))  # no mask -> skipped
    columns = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    diagnoses = {"ISIC_0000000": "MEL", "ISIC_0000001": "NV", "ISIC_0000002": "SCC"}  # 3 has no row -> -1
    with open(root / "ISIC_2019_Training_GroundTruth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for image, diagnosis in diagnoses.items():
            writer.writerow([image] + ["1.0" if c == diagnosis else "0.0" for c in columns[1:]])
    return root, expected


@pytest.fixture
def places_tree(tmp_path):
    """val_256/ with 5 images (one corrupt) + places365_val.txt (one listed file missing)."""
    rng = np.random.default_rng(2)
    root = tmp_path / "places365"
    labels = {}
    for i in range(1, 6):
        name = f"Places365_val_{i:08d}.jpg"
        _save(_noise_image(rng), str(root / "val_256" / name))
        labels[name] = 10 * i
    (root / "val_256" / "Places365_val_00000003.jpg").write_bytes(b"this is not a jpeg")
    lines = [f"{n} {l}" for n, l in labels.items()] + ["Places365_val_00000077.jpg 5"]
    (root / "places365_val.txt").write_text("\n".join(lines) + "\n")
    return root, labels


# ------------------------------------------------------------------------------------------ synthetic

def _analytic_mask(shape, params, size):
    """Independent geometry: distances with hypot, the triangle with matplotlib's point-in-polygon."""
    cx, cy, a, b = params
    y, x = np.mgrid[0:size, 0:size] + 0.5
    if shape == "disc":
        return np.hypot(x - cx, y - cy) <= a
    if shape == "ring":
        r = np.hypot(x - cx, y - cy)
        return (r <= a) & (r >= b)
    if shape == "square":
        return np.maximum(abs(x - cx), abs(y - cy)) <= a
    if shape == "cross":
        horizontal = (abs(x - cx) <= a) & (abs(y - cy) <= b)
        vertical = (abs(x - cx) <= b) & (abs(y - cy) <= a)
        return horizontal | vertical
    if shape == "triangle":
        polygon = MplPath([(cx, cy - a), (cx - a, cy + a), (cx + a, cy + a)])
        return polygon.contains_points(np.stack([x.ravel(), y.ravel()], 1)).reshape(size, size)
    raise AssertionError(shape)


def test_synthetic_masks_match_analytic_shapes():
    data = gd.make_synthetic(25, size=40, seed=3)
    assert data["labels"].tolist() == [i % 5 for i in range(25)]
    for i in range(25):
        shape = gd.SHAPES[data["labels"][i]]
        expected = _analytic_mask(shape, data["params"][i], 40)
        np.testing.assert_array_equal(data["masks"][i], expected.astype(np.float32), err_msg=f"image {i} ({shape})")
        mask = expected
        assert mask.sum() > 20, "shape too small"
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()), "shape touches the border"
        # the drawn shape is what the mask says: a clear colour step between inside and outside
        inside = data["pixels"][i][mask].astype(float).mean(0)
        outside = data["pixels"][i][~mask].astype(float).mean(0)
        assert np.abs(inside - outside).max() > 40


def test_synthetic_contract_and_determinism():
    a = gd.make_synthetic(7, size=24, seed=11, num_classes=3)
    b = gd.make_synthetic(7, size=24, seed=11, num_classes=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["images"].dtype == np.float32 and a["images"].shape == (7, 24, 24, 3)
    assert a["pixels"].dtype == np.uint8 and a["masks"].dtype == np.float32 and a["labels"].dtype == np.int32
    assert set(np.unique(a["masks"])) <= {0.0, 1.0}
    assert a["labels"].max() == 2
    np.testing.assert_allclose(a["images"], (a["pixels"] / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)
    prefix = gd.make_synthetic(4, size=24, seed=11, num_classes=3)  # image i depends on (seed, i) only
    np.testing.assert_array_equal(prefix["pixels"], a["pixels"][:4])
    other = gd.make_synthetic(7, size=24, seed=12, num_classes=3)
    assert not np.array_equal(other["pixels"], a["pixels"])


def test_synthetic_batches_pad_the_ragged_batch():
    batches = gd.load_case("synthetic", batch_size=4, num_images=10, image_size=16, seed=5)
    assert len(batches) == 3 and batches.has_masks
    listed = list(batches)
    shapes = {tuple((k, v.shape) for k, v in sorted(b.items())) for b in listed}
    assert len(shapes) == 1, "every batch must have the same shapes"
    assert [b["valid"].tolist() for b in listed] == [[True] * 4, [True] * 4, [True, True, False, False]]
    last = listed[-1]
    for key in ("images", "masks", "names"):  # padding repeats the last real row (gd.pad_rows)
        np.testing.assert_array_equal(last[key][2:], np.repeat(last[key][1:2], 2, axis=0))
    reference = gd.make_synthetic(10, size=16, seed=5)
    rows = _all_rows(listed)
    for key in ("images", "pixels", "masks", "labels", "names"):
        np.testing.assert_array_equal(rows[key], reference[key])
    resumed = list(batches.iter_from(2))
    assert len(resumed) == 1 and np.array_equal(resumed[0]["images"], last["images"])
    batches.prefetch = False  # the background reader changes nothing but timing
    for a, b in zip(batches, listed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(batches.batch(1)["names"], listed[1]["names"])
    with pytest.raises(IndexError):
        batches.batch(3)


def test_iterate_batches_exact_multiple_has_no_padding():
    out = list(gd.iterate_batches({"x": np.arange(6)}, 3))
    assert [b["valid"].all() for b in out] == [True, True] and len(out) == 2


# ------------------------------------------------------------------------------------------ ImageNet-S

@pytest.mark.parametrize("backend", BACKENDS)
def test_imagenet_s_images_labels_class_masks(imagenet_s_tree, tmp_path, backend):
    root, expected = imagenet_s_tree
    with pytest.warns(UserWarning, match="ILSVRC2012_val_00000099"):
        # data_dir may be the parent holding one ImageNetS* variant
        batches = gd.load_case("imagenet_s", root.parent, image_size=16, batch_size=3, backend=backend, cache_dir=tmp_path / "tfds", **SCALING)
    assert batches.num_examples == 4 and len(batches) == 2 and batches.image_size == (16, 16)
    assert [s.name for s in batches.skipped] == ["n01491361/ILSVRC2012_val_00000099.JPEG"]
    assert "no segmentation mask" in batches.skipped[0].reason
    rows = _all_rows(batches)
    assert sorted(rows["names"]) == sorted(expected) and list(rows["names"]) == sorted(rows["names"])
    for i, name in enumerate(rows["names"]):
        obj, _, label, _ = expected[name]
        np.testing.assert_array_equal(rows["masks"][i], obj.astype(np.float32), err_msg=name)
        assert rows["labels"][i] == label
        np.testing.assert_array_equal(rows["pixels"][i], _decoded(str(root / "validation" / name)))
    np.testing.assert_allclose(rows["images"], (rows["pixels"] / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)


def test_imagenet_s_label_space_foreground_and_resize(imagenet_s_tree):
    root, expected = imagenet_s_tree
    with pytest.warns(UserWarning):
        batches = gd.load_case(
            "imagenet_s", root, image_size=32, batch_size=8, backend="files",
            label_space="imagenet_s", mask_mode="foreground", **SCALING
        )
    rows = _all_rows(batches)
    for i, name in enumerate(rows["names"]):
        _, foreground, _, k = expected[name]
        assert rows["labels"][i] == k
        # nearest-neighbour upsampling by 2 repeats every mask pixel in a 2x2 block
        np.testing.assert_array_equal(rows["masks"][i], np.kron(foreground, np.ones((2, 2))), err_msg=name)
    assert rows["images"].shape == (4, 32, 32, 3)


def test_imagenet_s_mask_without_the_class_is_skipped_and_named(imagenet_s_tree):
    root, _ = imagenet_s_tree
    bad = root / "validation-segmentation" / "n01443537" / "ILSVRC2012_val_00000001.png"
    ids = np.full((16, 16), 9, np.uint8)  # only another object, never class id 1
    Image.fromarray(np.stack([ids, 0 * ids, 0 * ids], -1)).save(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = gd.load_case("imagenet_s", root, image_size=16, batch_size=8, backend="files", **SCALING)
        batch = next(iter(batches))
    assert any(issubclass(w.category, UserWarning) for w in caught)
    assert batch["valid"].sum() == 3
    assert any(s.path == str(bad) and "class id 1" in s.reason for s in batches.skipped)


def test_imagenet_s_synsets_file_orders_labels(imagenet_s_tree, tmp_path):
    root, _ = imagenet_s_tree
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("n01491361 tiger shark\nn09999999 other\nn01443537 goldfish\n")
    with pytest.warns(UserWarning):
        batches = gd.load_case("imagenet_s", root, image_size=16, batch_size=8, backend="files", synsets=synsets, **SCALING)
    rows = _all_rows(batches)
    assert {n.split("/")[0]: int(l) for n, l in zip(rows["names"], rows["labels"])} == {"n01443537": 2, "n01491361": 0}


# ------------------------------------------------------------------------------------------------ ISIC

@pytest.mark.parametrize("backend", BACKENDS)
def test_isic_task1_masks_and_csv_labels(isic_tree, tmp_path, backend):
    root, expected = isic_tree
    with pytest.warns(UserWarning, match="ISIC_0000099"):
        batches = gd.load_case("isic", root, image_size=16, batch_size=3, backend=backend, cache_dir=tmp_path / "tfds", **SCALING)
    assert batches.num_classes == 8 and batches.has_masks and len(batches) == 2
    rows = _all_rows(batches)
    assert rows["names"].tolist() == sorted(expected)
    # MEL = 0, NV = 1, SCC = 7 in the ISIC 2019 order; no CSV row -> -1
    assert rows["labels"].tolist() == [0, 1, 7, -1]
    for i, name in enumerate(rows["names"]):
        np.testing.assert_array_equal(rows["masks"][i], expected[name].astype(np.float32))
        np.testing.assert_array_equal(rows["pixels"][i], _decoded(str(root / "ISIC2018_Task1-2_Training_Input" / name)))


def test_isic_classification_layout_binary_labels(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "isic"
    for i in range(3):
        _save(_noise_image(rng), str(root / "ISIC2018_Task3_Training_Input" / f"ISIC_{24306 + i:07d}.jpg"))
    gt = root / "ISIC2018_Task3_Training_GroundTruth"
    gt.mkdir()
    (gt / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
        "ISIC_0024306,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
        "ISIC_0024307,0.0,0.0,0.0,1.0,0.0,0.0,0.0\n"
        "ISIC_0024308,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
    )
    diagnosis = _all_rows(gd.load_case("isic", root, image_size=16, batch_size=4, backend="files", **SCALING))
    assert diagnosis["labels"].tolist() == [1, 3, 0]  # NV, AKIEC -> AK, MEL
    assert "masks" not in diagnosis
    malignant = gd.load_case("isic", root, image_size=16, batch_size=4, backend="files", labels="malignant", **SCALING)
    assert _all_rows(malignant)["labels"].tolist() == [0, 1, 1] and malignant.num_classes == 2


# ------------------------------------------------------------------------------------------- Places365

@pytest.mark.parametrize("backend", BACKENDS)
def test_places365_labels_and_bad_files_named(places_tree, tmp_path, backend):
    root, labels = places_tree
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = gd.load_case("places365", root, image_size=16, batch_size=2, backend=backend, cache_dir=tmp_path / "tfds", **SCALING)
        rows = _all_rows(batches)
    messages = " ".join(str(w.message) for w in caught)
    assert "Places365_val_00000003.jpg" in messages and "Places365_val_00000077.jpg" in messages
    reasons = {s.name: s.reason for s in batches.skipped}
    assert "cannot be decoded" in reasons["Places365_val_00000003.jpg"]
    assert "not found" in reasons["Places365_val_00000077.jpg"]
    good = [n for n in sorted(labels) if n != "Places365_val_00000003.jpg"]
    assert rows["names"].tolist() == good
    assert rows["labels"].tolist() == [labels[n] for n in good]
    for i, name in enumerate(good):
        np.testing.assert_array_equal(rows["pixels"][i], _decoded(str(root / "val_256" / name)))
    assert batches.num_classes == 365


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_file_raises_naming_it(places_tree, tmp_path, backend):
    root, _ = places_tree
    bad = str(root / "val_256" / "Places365_val_00000003.jpg")
    with pytest.raises(gd.BadImageError, match="Places365_val_00000003.jpg") as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        list(gd.load_case("places365", root, image_size=16, batch_size=2, backend=backend, on_error="raise", cache_dir=tmp_path / "tfds", **SCALING))
    assert info.value.path == bad


def test_places365_default_size_is_the_papers(places_tree):
    root, _ = places_tree
    with pytest.warns(UserWarning):
        batches = gd.load_case("places365", root, batch_size=8, backend="files", max_examples=2, **SCALING)
    batch = next(iter(batches))
    assert batches.image_size == (224, 224) and batch["images"].shape == (8, 224, 224, 3)
    assert batch["valid"].tolist() == [True, True] + [False] * 6


@needs_tf
def test_tfds_copy_is_reused_in_order_with_skips_recorded(places_tree, tmp_path):
    from gag_jax.data import layouts, tfds_builders

    root, _ = places_tree
    listing = layouts.list_places365(root)
    builder, split = tfds_builders.prepare(listing, (16, 16), cache_dir=tmp_path / "tfds")
    again, _ = tfds_builders.prepare(listing, (16, 16), cache_dir=tmp_path / "tfds")
    assert again.data_dir == builder.data_dir and again.is_prepared()
    names = [ex["name"].decode() for ex in again.as_data_source(split)]
    assert names == sorted(names) and len(names) == 4
    assert [s.name for s in tfds_builders.skipped_files(again)] == ["Places365_val_00000077.jpg", "Places365_val_00000003.jpg"]


# ------------------------------------------------------------------------------------------ bad inputs

def test_unknown_case_lists_the_cases():
    with pytest.raises(ValueError) as info:
        gd.load_case("imagenet", "/nowhere", **SCALING)
    for case in gd.CASES:
        assert case in str(info.value)


@pytest.mark.parametrize(
    "case, expected_in_message",
    [("imagenet_s", "validation-segmentation"), ("isic", "ISIC2018_Task1_Training_GroundTruth"), ("places365", "places365_val.txt")],
)
def test_missing_directory_names_it_and_the_layout(tmp_path, case, expected_in_message):
    missing = tmp_path / "not-there"
    with pytest.raises(gd.DatasetLayoutError) as info:
        gd.load_case(case, missing, backend="files", **SCALING)
    assert str(missing) in str(info.value) and expected_in_message in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_incomplete_layouts_name_what_is_missing(tmp_path, imagenet_s_tree):
    root, _ = imagenet_s_tree
    import shutil

    shutil.rmtree(root / "validation-segmentation")
    with pytest.raises(gd.DatasetLayoutError, match="validation-segmentation"):
        gd.load_case("imagenet_s", root, backend="files", **SCALING)
    (tmp_path / "p" / "val_256").mkdir(parents=True)
    with pytest.raises(gd.DatasetLayoutError, match="places365_val.txt"):
        gd.load_case("places365", tmp_path / "p", backend="files", **SCALING)


def test_bad_options_and_splits():
    with pytest.raises(TypeError, match="num_images"):
        gd.load_case("synthetic", labels="x")
    with pytest.raises(ValueError, match="train-semi"):
        gd.load_case("imagenet_s", "/nowhere", split="test", **SCALING)
    with pytest.raises(ValueError, match="resize_mode"):
        gd.load_case("synthetic", resize_mode="stretch")


# ---------------------------------------------------------------------------------------------- folder

@pytest.fixture
def folder_tree(tmp_path):
    """A user's folder: 3 wide photos (16x24) listed in labels.txt (one listed but missing), masks/
    for every photo, and a stray text file."""
    rng = np.random.default_rng(6)
    root = tmp_path / "photos"
    expected = {}
    for i, (stem, label) in enumerate((("cat", 281), ("cup", 967), ("bike", 670))):
        photo = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
        _save(photo, str(root / f"{stem}.png"))
        mask = np.zeros((16, 24), bool)
        mask[3:12, 2 + 4 * i:14 + 4 * i] = True
        _save((mask * 255).astype(np.uint8), str(root / "masks" / f"{stem}.png"))
        # centre crop of a 16x24 image to 16x16 keeps columns 4..19 (no resampling at this scale)
        expected[f"{stem}.png"] = (photo[:, 4:20], mask[:, 4:20], label)
    (root / "labels.txt").write_text("cat.png\t281\ttabby\ncup.png\t967\tespresso\nbike.png\t670\n"
                                     "gone.png\t1\n")
    (root / "notes.txt").write_text("not an image")
    return root, expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_with_labels_file_and_masks_center_crops(folder_tree, tmp_path, backend):
    root, expected = folder_tree
    with pytest.warns(UserWarning, match="gone.png"):
        batches = gd.load_case("folder", root, image_size=16, batch_size=2, backend=backend, cache_dir=tmp_path / "t",
                               resize_mode="center_crop", **SCALING)
    assert batches.has_masks and batches.has_labels and batches.resize_mode == "center_crop"
    assert batches.image_size == (16, 16) and batches.num_classes == 968
    assert batches.class_names[281] == "tabby" and batches.class_names[967] == "espresso"
    rows = _all_rows(batches)
    assert rows["names"].tolist() == sorted(expected)
    for i, name in enumerate(rows["names"]):
        pixels, mask, label = expected[name]
        np.testing.assert_array_equal(rows["pixels"][i], pixels)
        np.testing.assert_array_equal(rows["masks"][i], mask.astype(np.float32))
        assert rows["labels"][i] == label
    np.testing.assert_allclose(rows["images"], (rows["pixels"] / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)
    with pytest.warns(UserWarning, match="gone.png"):
        first_two = gd.load_case("folder", root, image_size=16, backend="files", max_examples=2, **SCALING)
    assert first_two.num_examples == 2 and first_two.resize_mode == "imagenet_eval"  # a folder's default


def test_imagenet_eval_resize_is_shorter_side_to_size_over_0875_then_the_centre(tmp_path):
    # 35 x 70 photo to 16: scale 16 / 35 / 0.875, so 35 -> 18.3 -> 18 px and 70 -> 36.6 -> 37 px; centre 16 x 16
    photo = np.random.default_rng(8).integers(0, 256, (35, 70, 3), dtype=np.uint8)
    _save(photo, str(tmp_path / "p.png"))
    (out,), _, _ = gd.load_image_files(tmp_path / "p.png", 16, resize_mode="imagenet_eval", **SCALING)
    expected = np.asarray(Image.fromarray(photo).resize((37, 18), Image.BILINEAR))[1:17, 10:26]
    np.testing.assert_array_equal(out, expected)


def test_folder_class_subfolders_and_unlabelled_images(tmp_path):
    rng = np.random.default_rng(7)
    # wnid folders -> ImageNet-1k indices (1 goldfish, 3 tiger shark), whatever else is present
    for wnid in WNIDS:
        _save(_noise_image(rng), str(tmp_path / "wnid" / wnid / "a.jpg"))
    rows = _all_rows(gd.load_case("folder", tmp_path / "wnid", image_size=16, backend="files", **SCALING))
    assert dict(zip(rows["names"].tolist(), rows["labels"].tolist())) == {
        f"{w}/a.jpg": i for w, i in WNIDS.items()}
    # integer folders are class indices (word-named folders: tests/test_folder_case.py)
    for name in ("7", "12"):
        _save(_noise_image(rng), str(tmp_path / "ints" / name / "x.png"))
    ints = gd.load_case("folder", tmp_path / "ints", image_size=16, backend="files", **SCALING)
    assert _all_rows(ints)["labels"].tolist() == [12, 7] and ints.num_classes == 13  # "12/x.png" < "7/x.png"
    # images alone: unlabelled (-1), no masks
    for stem in ("b", "a"):
        _save(_noise_image(rng), str(tmp_path / "plain" / f"{stem}.jpg"))
    plain = gd.load_case("folder", tmp_path / "plain", image_size=16, backend="files", **SCALING)
    rows = _all_rows(plain)
    assert rows["names"].tolist() == ["a.jpg", "b.jpg"] and rows["labels"].tolist() == [-1, -1]
    assert not plain.has_labels and not plain.has_masks and plain.num_classes is None


def test_folder_layout_errors_name_the_problem(tmp_path):
    with pytest.raises(gd.DatasetLayoutError, match="labels.txt"):
        gd.load_case("folder", tmp_path / "missing", **SCALING)
    (tmp_path / "empty").mkdir()
    with pytest.raises(gd.DatasetLayoutError, match="no usable folder examples"):
        gd.load_case("folder", tmp_path / "empty", backend="files", **SCALING)
    _save(_noise_image(np.random.default_rng(0)), str(tmp_path / "bad" / "a.png"))
    (tmp_path / "bad" / "labels.txt").write_text("a.png\tcat\n")
    with pytest.raises(gd.DatasetLayoutError, match=r"labels.txt:1"):
        gd.load_case("folder", tmp_path / "bad", backend="files", **SCALING)
    # a mask folder without the image's mask: the image is skipped and named
    (tmp_path / "bad" / "labels.txt").write_text("a.png\t3\n")
    (tmp_path / "bad" / "masks").mkdir()
    with pytest.raises(gd.DatasetLayoutError, match="no mask for it"):
        gd.load_case("folder", tmp_path / "bad", backend="files", **SCALING)


# ----------------------------------------------------------------------------------- load_image_files

def test_load_image_files_folder_skips_and_names_bad_file(tmp_path):
    rng = np.random.default_rng(5)
    a, b = _noise_image(rng, 20), _noise_image(rng, 12)
    _save(a, str(tmp_path / "a.png"))
    _save(b, str(tmp_path / "b.png"))
    (tmp_path / "c.jpg").write_bytes(b"\x89PNG garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    skipped = []
    with pytest.warns(UserWarning, match="c.jpg"):
        pixels, images, names = gd.load_image_files(tmp_path, 16, skipped=skipped, **SCALING)
    assert names == ["a.png", "b.png"] and pixels.shape == (2, 16, 16, 3) and pixels.dtype == np.uint8
    assert [s.name for s in skipped] == ["c.jpg"]
    np.testing.assert_array_equal(pixels[0], np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR)))
    np.testing.assert_allclose(images, (pixels / 255.0 - MEAN) / STD, rtol=1e-6, atol=1e-6)
    with pytest.raises(gd.BadImageError, match="c.jpg"):
        gd.load_image_files([tmp_path / "a.png", tmp_path / "c.jpg"], 16, on_error="raise", **SCALING)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        gd.load_image_files(tmp_path / "missing.png", 16, **SCALING)


def test_center_crop_keeps_the_centre(tmp_path):
    stripes = np.zeros((16, 32, 3), np.uint8)
    stripes[:, 8:24] = 255  # white centre, black left and right quarters
    _save(stripes, str(tmp_path / "s.png"))
    cropped, _, _ = gd.load_image_files(tmp_path / "s.png", 16, resize_mode="center_crop", **SCALING)
    squashed, _, _ = gd.load_image_files(tmp_path / "s.png", 16, **SCALING)
    assert (cropped == 255).all()
    assert (squashed[0, :, 0] < 10).all() and (squashed[0, :, 8] > 245).all()


def test_without_tensorflow_auto_reads_the_files_and_tfds_says_what_to_install(places_tree, tmp_path, monkeypatch):
    from gag_jax.data import tfds_builders

    monkeypatch.setattr(tfds_builders, "missing_requirements", lambda: ["tensorflow-cpu"])
    root, _ = places_tree
    with pytest.warns(UserWarning) as caught:
        batches = gd.load_case("places365", root, image_size=16, batch_size=8, cache_dir=tmp_path / "tfds", **SCALING)
    assert any("backend='files'" in str(w.message) for w in caught)
    assert batches.backend == "files"
    with pytest.raises(ImportError, match=r"gag-jax\[data\]"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gd.load_case("places365", root, image_size=16, backend="tfds", cache_dir=tmp_path / "tfds", **SCALING)
