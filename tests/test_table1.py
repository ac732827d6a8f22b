"""Table 1: seeds per category, reference rows, mean ± std over seeds, per-defect AUROC, one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from adbench.results import run_path, write_json_atomic
from adbench.table1 import build, per_defect, to_markdown
from adbench.table1.__main__ import main, parse_seeds, run_sweeps, seed_groups

from .conftest import REPO


def _fake(root: Path, method: str, category: str, seed: int, metrics: dict, finished_at: str = "2026-11-29T10:00:00",
          **method_cfg) -> None:
    cfg = {"method": {"name": method, **method_cfg}, "dataset": {"name": "mvtec"}, "category": category,
           "seed": seed, "preset": {"name": "cpu"}}
    write_json_atomic(run_path(root, cfg), {"status": "ok", "config": cfg, "finished_at": finished_at,
                                            "metrics": metrics, "fit_s": 10.0, "predict_s": 2.0,
                                            "peak_rss_mb": 900.0})


def test_parse_seeds_per_category():
    cats = ["bottle", "transistor"]
    assert parse_seeds("0", cats) == {"bottle": [0], "transistor": [0]}
    assert parse_seeds("0,1,2", cats) == {"bottle": [0, 1, 2], "transistor": [0, 1, 2]}
    assert parse_seeds("bottle=0,1,2,transistor=0", cats) == {"bottle": [0, 1, 2], "transistor": [0]}
    assert parse_seeds("bottle=2,1,0", cats) == {"bottle": [0, 1, 2], "transistor": [0]}  # unnamed: seed 0
    assert parse_seeds("3,bottle=0,1", cats) == {"bottle": [0, 1], "transistor": [3]}  # leading seeds: default
    with pytest.raises(ValueError, match="names category 'cable', which is not run"):
        parse_seeds("cable=0,1", cats)
    with pytest.raises(ValueError, match="'x' is not a seed"):
        parse_seeds("0,x", cats)


def test_sweeps_group_categories_by_seeds_and_run_references_once(tmp_path, capsys):
    seeds = {"bottle": [0, 1, 2], "transistor": [0]}
    assert seed_groups(seeds, first_only=False) == [([0, 1, 2], ["bottle"]), ([0], ["transistor"])]
    assert seed_groups(seeds, first_only=True) == [([0], ["bottle", "transistor"])]
    cmds = run_sweeps(["cutpaste", "pixel_gaussian"], seeds, "cpu", tmp_path / "data", tmp_path / "r", dry_run=True)
    flat = [" ".join(c) for c in cmds]
    # the reference runs once per input geometry of the table's methods (cpu: 256->224, LoRA-MAE 72->64, VAE 256)
    assert len(cmds) == 5
    assert "category=bottle seed=0,1,2" in flat[0] and "method.variant=normal,scar,3way" in flat[0]
    assert "category=transistor seed=0 " in flat[1]
    assert all("method=pixel_gaussian" in f and "category=bottle,transistor seed=0 " in f for f in flat[2:])
    assert [f.split("dataset.image_size=")[1] for f in flat[2:]] == \
        ["256 dataset.crop_size=224", "72 dataset.crop_size=64", "256 dataset.crop_size=null"]
    assert all("resume=true" in f for f in flat)
    only = run_sweeps(["patchcore", "cutpaste"], seeds, "cpu", tmp_path, tmp_path, dry_run=True, seed_methods=["cutpaste"])
    assert [" ".join(c).split("category=")[1].split(" resume")[0] for c in only] == \
        ["bottle,transistor seed=0", "bottle seed=0,1,2", "transistor seed=0"]


def test_table_mean_std_over_seeds_reference_rows_and_defects(tmp_path):
    for seed, auc in enumerate([0.90, 0.92, 0.94]):
        _fake(tmp_path, "lora_mae", "bottle", seed, {"image_auroc": auc, "pixel_auroc": 0.9, "aupro": 0.6,
                                                     "auroc_broken_large": auc, "auroc_contamination": 0.8})
    # a stale record of seed 0 (older, other config) must not count
    _fake(tmp_path, "lora_mae", "bottle", 0, {"image_auroc": 0.10}, "2026-11-01T10:00:00", epochs=1)
    _fake(tmp_path, "lora_mae", "transistor", 0, {"image_auroc": 0.70, "auroc_misplaced": 0.4})
    _fake(tmp_path, "pixel_gaussian", "bottle", 0, {"image_auroc": 0.987, "pixel_auroc": 0.917, "aupro": 0.742,
                                                    "auroc_broken_large": 1.0})
    methods = ["lora_mae", "pixel_gaussian"]
    table = build(tmp_path, "cpu", methods)
    row = table[(table.method == "lora_mae") & (table.category == "bottle")].iloc[0]
    assert row.image_auroc == 92.0 and row.image_auroc_std == 2.0 and row.n_runs == 3 and row.seeds == "0,1,2"
    assert row.role == "method" and row.pixel_auroc_std == 0.0
    ref = table[(table.method == "pixel_gaussian") & (table.category == "bottle")].iloc[0]
    assert ref.role == "reference" and ref.label == "pixel Gaussian (ref.)" and ref.image_auroc == 98.7
    defects = per_defect(tmp_path, "cpu", methods)
    bl = defects[(defects.method == "lora_mae") & (defects.defect == "broken_large")].iloc[0]
    assert bl.auroc == 92.0 and bl.auroc_std == 2.0 and bl.n_runs == 3
    mis = defects[defects.defect == "misplaced"].iloc[0]
    assert mis.category == "transistor" and mis.auroc == 40.0
    md = to_markdown(table, "cpu", "make table1", defects)
    assert "Categories run: bottle, transistor (2/15). Not run: carpet," in md
    # no per-image scores in these records: no interval ('[–]'), no verdict
    assert "| bottle | LoRA-MAE | 92.0 ± 2.0 [–] | – | – | 90.0 ± 0.0 [–] | 60.0 ± 0.0 [–] | – / – / – | 3 (0,1,2) |" in md
    block = md[md.index("## Categories run"):md.index("## Per-defect")]
    assert block.index("| bottle | LoRA-MAE") < block.index("| bottle | *pixel Gaussian (ref.)* | 98.7 [–] |")
    assert "| *pixel Gaussian (ref.)* | 100.0 | – |" in md  # per-defect row, contamination not recorded
    assert "| method | bent_lead" not in md and "| method | misplaced |" in md


def test_reference_rows_one_per_input_geometry(tmp_path):
    def ref(size, crop, auc):
        cfg = {"method": {"name": "pixel_gaussian"}, "dataset": {"name": "mvtec", "image_size": size,
               "crop_size": crop}, "category": "bottle", "seed": 0, "preset": {"name": "cpu"}}
        write_json_atomic(run_path(tmp_path, cfg), {"status": "ok", "config": cfg, "finished_at": "2026-11-29T10:00",
                                                    "metrics": {"image_auroc": auc, "pixel_auroc": auc, "aupro": 0.5}})
    ref(72, 64, 0.95)
    ref(256, 224, 0.90)
    table = build(tmp_path, "cpu", ["pixel_gaussian"])
    rows = table[table.category == "bottle"]
    assert list(rows.label) == ["pixel Gaussian (ref., 256→224 px)", "pixel Gaussian (ref., 72→64 px)"]
    assert list(rows.pixel_auroc) == [90.0, 95.0]


def test_cli_no_run_writes_tables_and_report(tmp_path):
    _fake(tmp_path, "patchcore", "bottle", 0, {"image_auroc": 1.0, "pixel_auroc": 0.98, "aupro": 0.94},
          coreset={"ratio": 0.1})
    _fake(tmp_path, "mean_image", "bottle", 0, {"image_auroc": 0.875, "pixel_auroc": 0.844, "aupro": 0.56})
    assert main(["--preset", "cpu", "--results", str(tmp_path), "--no-run", "--methods", "mean_image"]) == 0
    csv = pd.read_csv(tmp_path / "table1.csv")
    assert set(csv.method) >= {"patchcore", "mean_image"}  # every table method shown, not only the one run
    assert (tmp_path / "table1_defects.csv").is_file() and (tmp_path / "report.html").is_file()
    html = (tmp_path / "report.html").read_text()
    assert "PatchCore 10%" in html and "mean image (ref.)" in html
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_rejects_bad_seeds(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "bottle" / "train" / "good").mkdir(parents=True)
    assert main(["--data", str(data), "--results", str(tmp_path / "r"), "--seeds", "cable=0"]) == 2
    assert "error: --seeds names category 'cable', which is not run (run: bottle)" in capsys.readouterr().err


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_imports_flow_one_way_records_tables_report():
    pkg = REPO / "adbench"
    records, tables, report = _imports(pkg / "results.py"), _imports(pkg / "table1" / "__init__.py"), \
        _imports(pkg / "report.py")
    assert not {i for i in records if "table1" in i or "report" in i}
    assert not {i for i in tables if "report" in i}
    assert "..results" in tables and ".table1" in report


def test_a_tiled_run_never_replaces_the_paper_protocol_row(tmp_path):
    """A newer tiled PatchCore run is a variant of its own: Table 1's 'PatchCore 10%' row stays the untiled run."""
    _fake(tmp_path, "patchcore", "bottle", 0, {"image_auroc": 0.99, "pixel_auroc": 0.98, "aupro": 0.9},
          "2026-11-29T10:00:00", coreset={"ratio": 0.1})
    cfg = {"method": {"name": "patchcore", "coreset": {"ratio": 0.1}},
           "dataset": {"name": "mvtec", "image_size": None, "crop_size": None, "tiling": {"size": 256, "stride": 256}},
           "category": "bottle", "seed": 0, "preset": {"name": "cpu"}}
    write_json_atomic(run_path(tmp_path, cfg), {"status": "ok", "config": cfg, "finished_at": "2026-11-30T10:00:00",
                                                "metrics": {"image_auroc": 0.50, "pixel_auroc": 0.5, "aupro": 0.5}})
    table = build(tmp_path, "cpu", ["patchcore"])
    row = table[(table.label == "PatchCore 10%") & (table.category == "bottle")].iloc[0]
    assert row.image_auroc == 99.0 and row.n_runs == 1
    from adbench.results import variant_of

    assert variant_of("patchcore", cfg) == "coreset 10%, native size, 256 px tiles"
