"""Intervals from records to Table 1, the report and ``python -m adbench.compare`` (hand-made scores and maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adbench import intervals as iv
from adbench.compare import main as compare_main
from adbench.evaluate import compute_metrics
from adbench.results import run_path, write_json_atomic
from adbench.table1 import build, to_markdown

N_GOOD, N_BAD, SIZE = 12, 12, 16


def _case(quality: float, seed: int = 0):
    """Scores and maps of the same 24 test images: quality 0 is noise, higher separates the defects better."""
    rng = np.random.default_rng(100 + seed)
    labels = np.array([0] * N_GOOD + [1] * N_BAD)
    masks = np.zeros((len(labels), SIZE, SIZE), dtype=bool)
    for i in range(N_GOOD, len(labels)):
        masks[i, 4 + i % 6:8 + i % 6, 3:7] = True
    noise = np.random.default_rng(7).normal(size=masks.shape)  # the same noise for every method
    maps = (noise + quality * masks + 0.05 * rng.normal(size=masks.shape)).astype(np.float32)
    scores = maps.reshape(len(maps), -1).max(axis=1) + quality * labels
    return scores, labels, maps, masks


def _record(root: Path, method: str, quality: float, seed: int = 0, pixel: bool = True, **method_cfg) -> Path:
    scores, labels, maps, masks = _case(quality, seed)
    cfg = {"method": {"name": method, **method_cfg}, "dataset": {"name": "mvtec", "image_size": 256, "crop_size": 224},
           "category": "bottle", "seed": seed, "preset": {"name": "cpu"}}
    metrics = compute_metrics(scores, maps, labels, masks)
    rec = {"status": "ok", "config": cfg, "finished_at": f"2026-12-01T10:00:0{seed}", "metrics": metrics,
           "per_image": {"score": scores.tolist(), "label": labels.tolist(),
                         "file": [f"x/{i:03d}.png" for i in range(len(labels))]},
           **iv.uncertainty_fields(scores, labels, maps if pixel else None, masks if pixel else None)}
    path = run_path(root, cfg)
    write_json_atomic(path, json.loads(json.dumps(rec)))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    strong = _record(root, "patchcore", 3.0, coreset={"ratio": 0.1})
    for seed in (0, 1):
        _record(root, "lora_mae", 0.2, seed)
    ref = _record(root, "pixel_gaussian", 0.2)
    _record(root, "mean_image", 0.0)
    return root, strong, ref


def test_table_intervals_verdicts_and_seed_means(results):
    root, _, _ = results
    table = build(root, "cpu", ["patchcore", "lora_mae", "pixel_gaussian", "mean_image"])
    pc = table[(table.label == "PatchCore 10%") & (table.category == "bottle")].iloc[0]
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        assert pc[f"{m}_vs_ref"] == "better", m  # higher on every defective image, same noise elsewhere
        assert pc[f"{m}_ref"] == "pixel Gaussian (ref., 256→224 px)"
        assert pc[f"{m}_lo"] <= pc[m] <= pc[f"{m}_hi"]
    lm = table[(table.label == "LoRA-MAE") & (table.category == "bottle")].iloc[0]
    assert lm.n_runs == 2 and lm.image_auroc_lo is not None and lm.image_auroc_vs_ref == "indistinguishable"
    md = to_markdown(table, "cpu", "make table1")
    assert "| bottle † | PatchCore 10% |" in md and "| better / better / better |" in md
    assert "† Too few test images to rank methods by bottle:" in md  # 24 test images: wide intervals


def test_compare_cli_same_record_is_zero_and_better_is_better(results, capsys):
    root, strong, ref = results
    assert compare_main([str(strong), str(strong)]) == 0
    out = capsys.readouterr().out
    assert out.count("| +0.00 [+0.00, +0.00] | indistinguishable |") == 4
    assert compare_main([str(strong), str(ref)]) == 0
    out = capsys.readouterr().out
    assert out.count("| better |") == 4 and "24 test images (12 good, 12 defective)" in out
    assert compare_main([str(ref), str(strong)]) == 0
    assert capsys.readouterr().out.count("| worse |") == 4


def test_compare_folders_pairs_variants_and_names_missing_data(results, tmp_path, capsys):
    root, _, _ = results
    old = _record(tmp_path, "patchcore", 3.0, pixel=False, coreset={"ratio": 0.1})  # an older record: no maps
    assert compare_main([str(root / "runs" / "patchcore"), str(old.parent)]) == 0
    out = capsys.readouterr().out
    assert "A: patchcore coreset 10%" in out and "image AUROC" in out
    assert "| – (no pixel histograms) |" in out  # pixel metrics without histograms: no interval
    other = tmp_path / "other.json"
    rec = json.loads(old.read_text())
    rec["per_image"]["file"][0] = "y/000.png"
    other.write_text(json.dumps(rec))
    assert compare_main([str(old), str(other)]) == 2
    assert "not scored on the same test images" in capsys.readouterr().out


def test_report_shows_intervals_verdicts_and_error_bars(results, tmp_path):
    from adbench.report import build_report

    root, _, _ = results
    html = build_report(root, tmp_path / "report.html", preset="cpu").read_text()
    assert "95 % [" in html and "better than ref. [+" in html
    assert "metrics with 95 % test-set intervals" in html  # the error-bar figure
    assert "Too few test images to rank methods by" in html
