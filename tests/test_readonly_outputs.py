"""Tables and report from a read-only results folder (a real read-only tmpfs): one line naming the folder and
``--out``, or the outputs written to ``--out``; and one-line errors for overrides Hydra cannot take."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adbench.overrides import explain
from adbench.report import main as report_main
from adbench.results import main as results_main
from adbench.results import run_path, write_json_atomic
from adbench.table1.__main__ import main as table1_main

from .conftest import REPO


@pytest.fixture
def read_only_results(tmp_path):
    """A results folder holding one record, on a tmpfs remounted read-only (root only; skips elsewhere)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        cfg = {"method": {"name": "patchcore", "coreset": {"ratio": 0.1}}, "dataset": {"name": "mvtec"},
               "category": "bottle", "seed": 0, "preset": {"name": "cpu"}}
        write_json_atomic(run_path(mnt, cfg), {"status": "ok", "config": cfg, "finished_at": "2026-11-29T10:00:00",
                                               "metrics": {"image_auroc": 0.98, "pixel_auroc": 0.97, "aupro": 0.9}})
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _one_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_tables_and_report_on_a_read_only_results_folder(read_only_results, tmp_path, capsys):
    ro = read_only_results
    for main, args in ((results_main, ["--results-dir", str(ro)]),
                       (table1_main, ["--no-run", "--preset", "cpu", "--results", str(ro)]),
                       (report_main, ["--results", str(ro)])):
        assert main(args) == 2
        line = _one_error(capsys.readouterr().err)
        assert f"{ro} is read-only" in line and "pass --out" in line, line

    out = tmp_path / "out"
    assert results_main(["--results-dir", str(ro), "--out", str(out)]) == 0
    assert "0.9800" in (out / "summary.md").read_text()
    assert table1_main(["--no-run", "--preset", "cpu", "--results", str(ro), "--out", str(out)]) == 0
    assert "98.0" in (out / "table1.md").read_text() and (out / "table1.csv").is_file()
    assert (out / "table1_defects.csv").is_file() and (out / "report.html").is_file()
    assert report_main(["--results", str(ro), "--out", str(out / "r.html")]) == 0
    assert "patchcore" in (out / "r.html").read_text().lower()
    assert "Traceback" not in capsys.readouterr().err


def test_a_scalar_for_a_group_of_options_is_one_line():
    assert explain(["method=mean_image", "dataset.tiling=32"]) == (
        "dataset.tiling=32: dataset.tiling holds options (size, stride), not one value; set one of them, "
        "e.g. dataset.tiling.size=32")
    assert explain(["method=mean_image", "dataset.tiling.size=32"]) is None
    assert explain(["method=mean_image", "dataset.tiling=null"]) is None  # null: tiling off


def test_an_unquoted_space_is_one_line_with_the_quoted_fix():
    line = explain(["method=mean_image", "category=pièce A"])
    assert line is not None and "\n" not in line
    assert line.startswith("cannot parse the override 'category=pièce A'") and """'category="pièce A"'""" in line
    assert explain(["-m", "category=pièce A,bottle"]) is not None  # sweeps too


def test_override_errors_from_the_command_line(tmp_path):
    env = {**os.environ, "ADBENCH_PROGRESS": "0"}
    for arg in ("category=pièce A", "dataset.tiling=32"):
        p = subprocess.run([sys.executable, "-m", "adbench", "method=mean_image", arg, f"results_dir={tmp_path}"],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and arg.split("=")[0] in _one_error(p.stderr)
