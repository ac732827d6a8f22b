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
    ort = r["onnx"]  # the same fitted model exported and run by ONNX Runtime, on the same images
    assert ort["engine"] == "onnxruntime" and 0 < ort["latency_median_ms"] <= ort["latency_p95_ms"]
    assert ort["throughput_img_s"] > 0 and ort["onnx_mb"] > 0
    assert ort["max_rel_score"] < 1e-4 and ort["max_rel_map"] < 1e-4, ort
    r["label"] = "deploy synthetic"
    print_deploy({"cases": [r]})
    out = capsys.readouterr().out
    assert "batch 1 median ms" in out and "hnsw" in out and "ivf" in out and "deploy synthetic" in out
    assert "onnxruntime" in out and "torch" in out
    del r["onnx"]  # a bench.json written before the ONNX rows still prints
    print_deploy({"cases": [r]})
    assert "onnxruntime" not in capsys.readouterr().out


def test_deploy_only_keeps_the_other_sections(tmp_path, monkeypatch, capsys):
    import json

    import adbench.bench as bench

    out = tmp_path / "bench.json"
    old = {"machine": {"cpus": 2, "threads": 2, "bandwidth_gb_s": 20.0}, "started": "then", "runs": [{"label": "x"}]}
    out.write_text(json.dumps(old))
    fake = {"category": "bottle", "embed_dim": 128, "bank_rows": 10, "latency_median_ms": 5.0, "latency_p95_ms": 6.0,
            "throughput_img_s": 100.0, "indexes": [{"index": "flat", "search_s": 1.0,
                                                    "metrics": {"image_auroc": 1.0, "pixel_auroc": 0.9, "aupro": 0.8}}]}
    cases = []
    monkeypatch.setattr(bench, "_child", lambda case, log: cases.append(case) or dict(fake))
    monkeypatch.setattr(bench, "measure_bandwidth", lambda *a, **k: 1.0)
    bench.main(["--deploy-only", "--out", str(out), "--deploy-categories", "bottle,transistor", "--paper-dim", "0",
                "--data", str(tmp_path), "--feature-cache", str(tmp_path / "cache")])
    new = json.loads(out.read_text())
    assert new["runs"] == old["runs"] and new["machine"] == old["machine"] and new["started"] == "then"
    assert [c["label"] for c in new["deploy"]["cases"]] == ["deploy mvtec/bottle", "deploy mvtec/transistor"]
    assert new["deploy"]["machine"]["bandwidth_gb_s"] == 1.0 and "finished" in new["deploy"]
    assert all(c.get("latency_images") is None and c["onnx"] for c in cases)  # latency everywhere by default
    assert cases[0]["feature_cache"] == str(tmp_path / "cache")
    assert "deploy mvtec/transistor" in capsys.readouterr().out
    cases.clear()
    bench.main(["--deploy-only", "--out", str(out), "--deploy-categories", "bottle,transistor", "--paper-dim", "0",
                "--data", str(tmp_path), "--latency-categories", "bottle", "--no-onnx"])
    assert cases[0].get("latency_images") is None and cases[1]["latency_images"] == 0
    assert not any(c["onnx"] for c in cases)
