"""`make bench`'s deployment figures: latency at batch 1, throughput at batch 16, each kNN index against exact."""

from __future__ import annotations

import pytest


def test_deploy_case_measures_latency_and_each_index(tmp_path, capsys):
    from adbench.bench import print_deploy, run_deploy

    case = dict(kind="deploy", dataset="synthetic", root=str(tmp_path / "synthetic"), category="washer", n_train=6,
                ratio=0.1, weights="none", embed_dim=0, latency_images=3, throughput_batches=1)
    r = run_deploy(case)
    assert r["embed_dim"] == 128 and r["latency_images"] == 3 and r["bank_rows"] == int(6 * 28 * 28 * 0.1)
    assert 0 < r["latency_median_ms"] <= r["latency_p95_ms"] and r["throughput_img_s"] > 0
    assert [ix["index"] for ix in r["indexes"]] == ["flat", "hnsw", "ivf"]
    flat = r["indexes"][0]
    assert flat["n_queries"] == r["n_test"] * 28 * 28
    for ix in r["indexes"]:
        assert ix["search_s"] > 0 and ix["build_s"] > 0
    # approximate search on a 470-row bank: the same image ranking as exact to within a few pairs
    assert r["indexes"][1]["metrics"]["image_auroc"] == pytest.approx(flat["metrics"]["image_auroc"], abs=0.05)
    r["label"] = "deploy synthetic"
    print_deploy({"cases": [r]})
    out = capsys.readouterr().out
    assert "batch 1 median ms" in out and "hnsw" in out and "ivf" in out and "deploy synthetic" in out
