"""scripts/gpu_check.sh in its CPU mode (tiny sizes): every check runs and the JSON holds sane numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_gpu_check_runs_on_cpu(tmp_path):
    data = "synthetic"  # small generated images: seconds (the real bottle PNGs are 900 px)
    out = tmp_path / "out"
    p = _run(str(out), "device=cpu", f"data={data}")
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["size"] == "tiny" and rep["env"]["device"] == "cpu" and rep["errors"] == {}
    assert rep["data"] == data and rep["env"]["versions"]["torch"] and "faiss_gpu" in rep["env"]

    pc = rep["patchcore"]
    assert set(pc["runs"]) == {"autocast_fp16", "float32"} and pc["n_test"] == 6
    for r in pc["runs"].values():
        assert not r["autocast_active"] and r["peak_gpu_mb"] is None  # autocast is CUDA only
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["pixel_auroc"] <= 1.0 and r["fit_s"] > 0
    assert pc["score_max_rel_diff_autocast_vs_fp32"] < 1e-5  # both float32 on CPU
    c = pc["coreset"]
    assert c["same_indices_device_vs_cpu"] and c["same_indices_accelerated_vs_plain"] and c["overlap_device_vs_cpu"] == 1
    assert 0 < c["n_select"] < c["n_points"]
    s = pc["search"]
    assert s["backend"] == "faiss-cpu" and s["same_neighbour_fraction"] > 0.99 and s["max_abs_distance_diff"] < 1e-3

    for name in ("cutpaste", "lora_mae", "vae_energy"):
        r = rep[name]
        assert r["steps"] >= 2 and r["steps_per_s"] > 0 and r["peak_gpu_mb"] is None, (name, r)
        assert r["final_loss"] is None or math.isfinite(r["final_loss"])
    assert rep["lora_mae"]["n_trainable"] > 0

    table = (out / "gpu_check.md").read_text()
    assert "PatchCore float32" in table and "greedy coreset" in table and "vae_energy training" in table
    assert "**error**" not in table


def test_gpu_check_asks_for_wheels_when_a_dependency_is_missing(tmp_path):
    shadow = tmp_path / "shadow" / "loralib"  # makes `import loralib` fail, as on a machine without it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    p = _run(str(tmp_path / "out"), "device=cpu",
             env={"PYTHONPATH": f"{shadow.parent}:{os.environ.get('PYTHONPATH', '')}", "WHEELS": ""})
    assert p.returncode == 2
    assert "lacks loralib; put their wheels in a folder and pass WHEELS=DIR" in p.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_vae_on_a_texture_crops_what_it_has(tmp_path):
    """Paper sizes on a texture (synthetic weave at 256 -> 224 px): VAE-energy never upsamples, so the check
    resizes textures to the largest size its 128 px crops tile (128) instead of failing on the paper's 512."""
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), str(tmp_path / "out"), "--device", "cpu",
                        "--size", "paper", "--data", "synthetic", "--category", "weave", "--only", "vae_energy",
                        "--steps", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    rep = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert rep["category"] == "weave" and rep["errors"] == {}
    assert rep["vae_energy"]["texture_resize"].startswith("128 ") and rep["vae_energy"]["steps"] >= 1
