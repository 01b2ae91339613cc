"""``python -m benchmarks.gpu_check``: the CPU smoke run writes its table and JSON; the time budget and
the target verdicts behave (the GPU numbers themselves come from an accelerator run)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import gpu_check, measure

pytestmark = pytest.mark.slow  # the accelerator check's CPU smoke run; CI runs it, -m "not slow" skips it


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    result = gpu_check.main(["--smoke", "--out", str(out)])
    return out, result


def _table(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_smoke_writes_one_table_and_a_json(smoke, capsys):
    out, result = smoke
    markdown = (out / "gpu_check.md").read_text()
    data = json.loads((out / "gpu_check.json").read_text())
    table = _table(markdown)
    assert table[0] == list(gpu_check.COLUMNS) and set(table[1]) == {"---"}
    parts = [row[0] for row in table[2:]]
    assert parts == ["gpu tests", "gag", "gag", "memory", "metrics", "metrics", "metrics"]
    assert all(len(row) == len(gpu_check.COLUMNS) for row in table)
    assert markdown.count("| part |") == 1  # one table
    # the JSON holds every part's numbers
    assert data["meta"]["smoke"] is True and data["meta"]["platform"] == "cpu" and data["meta"]["n"] == 4
    assert [(r["batch"], r["dtype"]) for r in data["gag"]] == [(2, "bfloat16"), (2, "float32")]
    for row in data["gag"]:
        assert row["expl_s"] > 0 and row["compile_s"] > 0 and row["mem_bytes"] > 0 and row["mfu"] is None
        assert row.get("torch_expl_s") is None  # the tiny model has no torch twin: a note says so
    assert any("no torch counterpart" in note for note in data["notes"])
    assert [n for n, _ in data["memory"]["temp_bytes"]] == [4, 40] and data["memory"]["chunk"] == 2
    assert data["metrics"]["rcap_img_s"] > 0 and data["metrics"]["di_img_s"] > 0
    # combined rate of running both = harmonic combination of the two rates
    np.testing.assert_allclose(1 / data["metrics"]["jax_img_s"],
                               1 / data["metrics"]["rcap_img_s"] + 1 / data["metrics"]["di_img_s"], rtol=1e-9)
    assert data["tests"]["files"] == ["tests/test_gpu.py"]
    assert data["tests"]["status"] == "ran" and data["tests"]["counts"].get("failed", 0) == 0
    assert (out / "gpu_tests.log").is_file()
    assert result["meta"] == data["meta"]


def test_budget_skips_with_a_note():
    notes: list[str] = []
    assert measure.Budget(None).allows(1e9, "anything", notes) and not notes
    spent = measure.Budget(0.0)
    assert not spent.allows(5.0, "gag batch 64", notes)
    assert len(notes) == 1 and notes[0].startswith("gag batch 64: skipped by the time budget")
    roomy = measure.Budget(100.0)
    assert roomy.allows(10.0, "x", notes) and not roomy.allows(10.0, "y", notes, reserve_s=95.0)
    assert "kept for later parts" in notes[-1]


def test_gag_rows_under_an_exhausted_budget_are_skipped_rows():
    notes: list[str] = []
    rows = measure.gag_rows(None, None, None, None, configs=[(2, 2)], dtypes=["float32"], size=8, n=2, repeats=1,
                            seed=0, torch_chunk=None, notes=notes, budget=measure.Budget(0.0), estimate_s=1.0)
    assert rows == [dict(batch=2, dtype="float32", chunk=2, error="skipped (time budget)")]
    assert "GAG batch 2 float32" in notes[0]


def _gpu_result(bf16_expl_s, bf16_torch, f32_expl_s, f32_torch, temps, metrics_ratio):
    gag = [dict(batch=64, dtype=dtype, chunk=4, expl_s=e, torch_expl_s=t, compile_s=1.0, mem_bytes=1, peak_bytes=2,
                mfu=0.5, wall_s=3.0) for dtype, e, t in (("bfloat16", bf16_expl_s, bf16_torch),
                                                          ("float32", f32_expl_s, f32_torch))]
    metrics = dict(batch=8, rcap_img_s=10.0 * metrics_ratio, di_img_s=10.0 * metrics_ratio,
                   jax_img_s=5.0 * metrics_ratio, torch_rcap_img_s=10.0, torch_di_img_s=10.0, torch_img_s=5.0,
                   seconds=1.0)
    return dict(meta=dict(platform="gpu", n=20), gag=gag, metrics=metrics,
                memory=dict(batch=64, dtype="bfloat16", chunk=4, temp_bytes=temps, seconds=1.0))


def test_verdicts_follow_the_spec_targets():
    good = gpu_check.table_rows(_gpu_result(900.0, 100.0, 300.0, 100.0, [(20, 1000), (200, 1000)], 25.0))
    assert [r["met"] for r in good] == ["yes"] * 6
    bad = gpu_check.table_rows(_gpu_result(700.0, 100.0, 150.0, 100.0, [(20, 1000), (200, 5000)], 10.0))
    assert [r["met"] for r in bad] == ["NO"] * 6  # < 800 expl/s; f32 1.5x < 2x; memory grows; metrics 10x
    fast_but_close = gpu_check.table_rows(_gpu_result(900.0, 200.0, 300.0, 100.0, [(20, 1000), (200, 1000)], 25.0))
    assert fast_but_close[0]["met"] == "NO" and fast_but_close[0]["ratio"] == "4.50x"  # 900 expl/s but 4.5x < 6x
    on_cpu = _gpu_result(900.0, 100.0, 300.0, 100.0, [(20, 1000), (200, 1000)], 25.0)
    on_cpu["meta"]["platform"] = "cpu"
    assert [r["met"] for r in gpu_check.table_rows(on_cpu)] == ["n/a", "n/a", "yes", "n/a", "n/a", "n/a"]


def test_memory_chunk_leaves_a_loop():
    assert gpu_check._memory_chunk(20, 64) == 4  # the GAG row's chunk (4 x 64 = 256 images per call)
    assert gpu_check._memory_chunk(4, 2) == 2  # auto would be all of n: one chunk, no loop
