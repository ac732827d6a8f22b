"""The report: overview first, reference rows, curves from the records, training curves, small thumbnails."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from adbench.report import build_report
from adbench.results import run_path, write_json_atomic
from adbench.viz import overlay_figure, thumbnail_jpeg


def _overlays(folder: Path) -> list[str]:
    """Six overlay PNGs like save_overlays writes (smooth image, a mask, a map)."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    img = np.stack([xx, yy, 0.5 + 0 * xx], -1)
    mask = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.02
    amap = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 20)
    out = []
    for kind in ("best", "worst"):
        for n in (1, 2, 3):
            fig = overlay_figure(img, mask, amap, f"{kind} {n}: broken/000.png  score 1.0", 0.0, 1.0)
            p = folder / f"{kind}_{n}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            out.append(str(p))
    return out


def _run(root: Path, method: str, category: str, seed: int, auroc: float, overlays: list[str], log=None,
         **method_cfg) -> None:
    cfg = {"method": {"name": method, **method_cfg}, "dataset": {"name": "mvtec"}, "category": category,
           "seed": seed, "preset": {"name": "cpu"}}
    rng = np.random.default_rng(seed)
    labels = [0] * 10 + [1] * 20
    scores = (np.array(labels) * auroc + rng.random(30)).tolist()
    fpr = np.linspace(0, 1, 61).tolist()
    write_json_atomic(run_path(root, cfg), {
        "status": "ok", "config": cfg, "finished_at": f"2026-11-29T10:00:0{seed}",
        "metrics": {"image_auroc": auroc, "pixel_auroc": 0.9, "aupro": 0.7, "auroc_misplaced": 0.5},
        "fit_s": 30.0, "predict_s": 5.0, "peak_rss_mb": 1200.0,
        "per_image": {"score": scores, "label": labels, "defect_type": ["good"] * 10 + ["misplaced"] * 20,
                      "file": [f"f{i}.png" for i in range(30)]},
        "curves": {"pixel_roc": {"fpr": fpr, "tpr": np.sqrt(fpr).tolist()},
                   "pro": {"fpr": (np.array(fpr) * 0.3).tolist(), "pro": np.sqrt(fpr).tolist()}},
        "train_log": log, "overlays": overlays})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ov = _overlays(root / "png")
    log = [{"stage": s, "step": i, "loss": 1 / (i + 1), "acc": 0.5 + i / 200} for s in ("image", "patch")
           for i in range(100)]
    for cat in ("bottle", "transistor"):
        for seed in (0, 1, 2):
            _run(root, "cutpaste", cat, seed, 0.95 - 0.01 * seed, ov, log, variant="3way")
        _run(root, "lora_mae", cat, 0, 0.80, ov, [{"stage": "train", "step": i, "loss": 1.0, "val_ratio": 0.99}
                                                   for i in range(50)])
        for ratio in (0.25, 0.1, 0.01):
            _run(root, "patchcore", cat, 0, 0.99, ov, coreset={"ratio": ratio})
        _run(root, "mean_image", cat, 0, 0.85, ov)
        _run(root, "pixel_gaussian", cat, 0, 0.90, ov)
    return root, build_report(root).read_text()


def test_overview_comes_first_with_published_figures_and_reference_rows(report):
    _, html = report
    assert html.index("Overview") < html.index("Cost beside quality") < html.index("ROC and PRO") \
        < html.index("Training curves") < html.index("Best and worst")
    assert "MVTec AD categories run: 2 of 15; not run: carpet, grid," in html
    assert "paper 100.0 (Δ -1.0)" in html  # PatchCore 10 % bottle: 99.0 vs 100.0
    assert "paper 98.3" in html and "± 1.0 (n=3)" in html  # CutPaste 3-way, three seeds
    assert "≤ reference" in html  # LoRA-MAE 80.0 below pixel Gaussian 90.0
    assert "<i>Reference</i>" in html and "mean image (ref.)" in html and "pixel Gaussian (ref.)" in html
    assert "misplaced" in html  # per-defect table
    assert "<b>bottle</b>: image AUROC 99.0 (PatchCore 25%, PatchCore 10%, PatchCore 1%);" in html  # best first
    assert "pixel AUROC 90.0 (PatchCore 25%, PatchCore 10%, PatchCore 1%, 4 more)" in html  # ties, in table order


def test_report_is_self_contained_and_small(report):
    _, html = report
    assert "<script" not in html
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", html)  # nothing fetched at view time
    svgs = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", html)
    decoded = [base64.b64decode(s).decode() for s in svgs]
    assert len(svgs) >= 1 + 2 + 2  # cost, curves per category, training curves of two methods
    assert any("image: loss" in d and "patch: acc" in d for d in decoded)  # CutPaste's two models
    assert any(">val_ratio<" in d for d in decoded)
    jpegs = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", html)
    assert len(jpegs) == 2 * 7 * 6  # per category one gallery per variant (7 variants), 6 thumbnails each
    # 2 categories x 7 variants x 6 thumbnails stays far below the 3 MB budget
    assert len(html.encode()) < 1.5e6


def test_thumbnail_drops_titles_and_is_small(tmp_path):
    from PIL import Image
    import io

    p = _overlays(tmp_path)[0]
    jpg = thumbnail_jpeg(p, width=330)
    im = Image.open(io.BytesIO(jpg))
    assert im.format == "JPEG" and im.width == 330 and len(jpg) < 25_000
    full = Image.open(p)
    assert im.height / im.width < full.height / full.width  # title rows cut away
    assert thumbnail_jpeg(tmp_path / "missing.png") is None


def test_report_without_runs(tmp_path):
    assert "No runs yet" in build_report(tmp_path).read_text()


def test_gallery_falls_back_to_a_seed_whose_overlays_exist(tmp_path):
    ov = _overlays(tmp_path / "png")
    _run(tmp_path, "cutpaste", "bottle", 0, 0.95, [str(tmp_path / "gone" / "best_1.png")], variant="scar")
    _run(tmp_path, "cutpaste", "bottle", 1, 0.94, ov, variant="scar")
    _run(tmp_path, "cutpaste", "bottle", 0, 0.95, [str(tmp_path / "gone" / "best_1.png")], variant="normal")
    html = build_report(tmp_path).read_text()
    assert "CutPaste scar (seed 1)</h3>" in html
    assert "CutPaste normal (seed" not in html  # no overlays anywhere: no empty gallery
    assert len(re.findall(r"data:image/jpeg;base64,", html)) == 6
