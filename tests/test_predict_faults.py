"""``python -m adbench.predict`` under faults: outputs all or nothing, tables replaced atomically, bad files
(truncated JPEG, decompression bomb) in one line, ``on_error=skip``, option checks, output inside input.
Each test failed before its fix (issue 13, items 7, 10, 13 and "production prediction")."""

from __future__ import annotations

import csv
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import adbench.predict as predict_mod
from adbench.predict import main

from .test_data_faults import bomb_png
from .test_predict import patchcore_checkpoint  # noqa: F401 - shared session fixture


@pytest.fixture()
def inputs(small_synthetic_root, tmp_path) -> Path:
    """Six good images (the synthetic washer's normal test images) in a folder of their own."""
    folder = tmp_path / "in"
    shutil.copytree(small_synthetic_root / "washer" / "test" / "good", folder)
    return folder


def truncated_jpeg(path: Path) -> None:
    a = (np.random.default_rng(5).random((128, 128, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:1500])


def outputs(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden ones included, relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_truncated_jpeg_stops_before_the_model_and_writes_nothing(patchcore_checkpoint, inputs, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    bad = inputs / "zz_last.jpg"
    truncated_jpeg(bad)
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "batch_size=1", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: unreadable or truncated image: {bad} (OSError: image file is truncated")
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("fault", ["data", "enospc"])
def test_a_failure_midway_leaves_the_previous_outputs_untouched(patchcore_checkpoint, inputs, tmp_path, capsys,  # noqa: F811
                                                                monkeypatch, fault):
    ckpt, _ = patchcore_checkpoint
    out = tmp_path / "out"
    args = [f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "batch_size=1", "progress=false"]
    assert main(args) == 0
    before = {name: (out / name).read_bytes() for name in outputs(out)}
    assert "predictions.csv" in before and len(before) == 2 + 2 * 6
    capsys.readouterr()

    real_write, calls = predict_mod.write_image_outputs, []

    def failing_write(det, r, name, output, *scale):  # the 5th image fails: 4 were already written
        calls.append(name)
        if len(calls) == 5:
            if fault == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise predict_mod.DataError(f"unreadable or truncated image: {r.path} (OSError: gone); replace or remove the file")
        return real_write(det, r, name, output, *scale)

    monkeypatch.setattr(predict_mod, "write_image_outputs", failing_write)
    # a second, different run into the same folder: threshold=-1 would change every decision
    assert main(args + ["threshold=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    if fault == "enospc":
        assert err.startswith(f"error: cannot write the outputs to output={out} (No space left on device)")
    assert {name: (out / name).read_bytes() for name in outputs(out)} == before  # nothing half-written


def test_tables_are_replaced_atomically(patchcore_checkpoint, inputs, tmp_path, monkeypatch, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    out = tmp_path / "out"
    args = [f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false"]
    assert main(args) == 0
    old_csv, old_json = (out / "predictions.csv").read_bytes(), (out / "predictions.json").read_bytes()

    def full_disk(self, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", full_disk)
    assert main(args + ["threshold=-1"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert (out / "predictions.csv").read_bytes() == old_csv  # the old table, whole, not a truncated new one
    assert not [n for n in outputs(out) if n.endswith(".tmp") or n.startswith(".adbench-predict")]
    assert json.loads(old_json)["threshold_source"] == "calibration"


def test_decompression_bomb_is_one_line_in_predict(patchcore_checkpoint, inputs, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    bomb = inputs / "huge.png"
    bomb_png(bomb)
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: image too large: {bomb} (Image size (400000000 pixels) exceeds limit")
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(predict_mod.DataError, match="image too large"):
        predict_mod.load(ckpt, device="cpu").predict(bomb)


def test_on_error_skip_scores_the_rest_and_lists_the_skipped(patchcore_checkpoint, inputs, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    truncated_jpeg(inputs / "b_truncated.jpg")
    bomb_png(inputs / "c_huge.png")
    (inputs / "d_random.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "on_error=skip", "progress=false"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 3 of 9 file(s) skipped (on_error=skip), the other 6 scored; first: "
                              f"unreadable or truncated image: {inputs / 'b_truncated.jpg'}")
    assert err[-1].endswith(f"every skipped file is a status=skipped row of {out / 'predictions.csv'}")
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 9 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    skipped = {Path(r["path"]).name: r for r in rows if r["status"] == "skipped"}
    assert sorted(skipped) == ["b_truncated.jpg", "c_huge.png", "d_random.png"]
    assert skipped["c_huge.png"]["reason"].startswith("image too large:")
    assert skipped["b_truncated.jpg"]["reason"].startswith("unreadable or truncated image:")
    assert all(r["decision"] == "skipped" and r["score"] == "" and r["map"] == "" for r in skipped.values())
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and all((out / r["map"]).is_file() and (out / r["overlay"]).is_file() for r in ok)
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["n_skipped"] == 3 and meta["n_images"] == 9
    assert [p["score"] is None for p in meta["predictions"]].count(True) == 3
    # without on_error=skip the same folder stops at the first bad file, writing nothing new
    out2 = tmp_path / "out2"
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out2}", "progress=false"]) == 2
    assert not out2.exists()


def test_on_error_skip_with_only_bad_files(patchcore_checkpoint, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    inp = tmp_path / "in"
    inp.mkdir()
    truncated_jpeg(inp / "a.jpg")
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={inp}", f"output={out}", "on_error=skip", "progress=false"]) == 1
    assert "1 of 1 file(s) skipped" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["status"] for r in rows] == ["skipped"]


@pytest.mark.parametrize("option, expected", [
    ("batch_size=x", "error: batch_size=x is not a positive integer; pass batch_size=N (e.g. batch_size=8)"),
    ("batch_size=0", "error: batch_size=0 is not a positive integer; pass batch_size=N (e.g. batch_size=8)"),
    ("threshold=nan", "error: threshold=nan is not a finite number; pass threshold=X"),
    ("progress=maybe", "error: progress=maybe must be true or false"),
    ("on_error=ignore", "error: on_error=ignore must be stop or skip"),
    ("device=nonsense", "error: device=nonsense: "),
])
def test_bad_options_are_one_line(patchcore_checkpoint, inputs, tmp_path, capsys, option, expected):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    out = tmp_path / "out"
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false", option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert not outputs(out)


@pytest.mark.parametrize("where", [".", "sub", "sub/deeper"])
def test_output_inside_input_is_refused(patchcore_checkpoint, inputs, tmp_path, capsys, where):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    out = inputs / where
    before = outputs(inputs)
    assert main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output={out} is inside input={inputs}: the maps and overlays") and err.count("\n") == 1
    assert outputs(inputs) == before


# Issue 20 -------------------------------------------------------------------------------------------------------


def test_inputs_with_the_same_stem_get_outputs_of_their_own(patchcore_checkpoint, small_synthetic_root, tmp_path,  # noqa: F811
                                                            capsys):
    """Case 4: ``a.png`` and ``a.jpg`` once both wrote ``a.npy``; the run failed with a message about free space and
    left ``a.npy`` and ``a_overlay.png`` without a ``predictions.csv``."""
    ckpt, _ = patchcore_checkpoint
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    test = small_synthetic_root / "washer" / "test"
    shutil.copy(test / "good" / "000.png", inp / "a.png")
    Image.open(test / "spot" / "000.png").convert("RGB").save(inp / "a.jpg", quality=95)
    assert main([f"checkpoint={ckpt}", f"input={inp}", f"output={out}", "progress=false"]) == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert sorted(rows) == ["a.jpg", "a.png"]
    assert {rows["a.png"]["map"], rows["a.jpg"]["map"]} == {"a.png.npy", "a.jpg.npy"}
    assert {rows["a.png"]["overlay"], rows["a.jpg"]["overlay"]} == {"a.png_overlay.png", "a.jpg_overlay.png"}
    det = predict_mod.load(ckpt, device="cpu")
    for name, row in rows.items():  # each map is its own image's
        assert np.allclose(np.load(out / row["map"]), det.predict(inp / name).anomaly_map, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fail_at", [1, 3, "predictions.json", "predictions.csv"])
@pytest.mark.parametrize("first_run", [True, False])
def test_a_failure_while_moving_outputs_into_place_leaves_output_as_it_was(patchcore_checkpoint, inputs, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys, fail_at, first_run):
    """Case 4: every failure after the staging folder leaves ``output=`` as it was (nothing at all on a first run):
    the renames into place are undone, replaced files put back."""
    ckpt, _ = patchcore_checkpoint
    out = tmp_path / "out"
    args = [f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false"]
    if not first_run:
        assert main(args) == 0
    before = {name: (out / name).read_bytes() for name in outputs(out)}
    capsys.readouterr()
    real_replace, moved = predict_mod.os.replace, []

    def failing_replace(src, dst, *a, **k):
        if Path(dst).parent.resolve() == out.resolve() or out.resolve() in Path(dst).resolve().parents:
            if not Path(dst).name.startswith("."):  # a rename into place (not a replaced file set aside)
                moved.append(Path(dst).name)
                if fail_at == len(moved) or fail_at == Path(dst).name:
                    raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(predict_mod.os, "replace", failing_replace)
    assert main(args + ["threshold=-1"]) == 2  # threshold=-1: every decision and overlay would change
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write the outputs to output={out} (Input/output error); pass a writable "
                          f"output=DIR; nothing in {out} was changed") and err.count("\n") == 1
    assert {name: (out / name).read_bytes() for name in outputs(out)} == before
    assert not out.exists() if first_run else not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_model_error_after_staging_leaves_no_output_folder(patchcore_checkpoint, inputs, tmp_path, monkeypatch):  # noqa: F811
    """Case 4: an exception of any kind while scoring (here a RuntimeError of the model) leaves nothing in output=,
    not even the folder the run created."""
    ckpt, _ = patchcore_checkpoint
    out = tmp_path / "new" / "out"

    def broken(self, images, paths):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(predict_mod.Detector, "score", broken)
    with pytest.raises(RuntimeError, match="device-side assert"):
        main([f"checkpoint={ckpt}", f"input={inputs}", f"output={out}", "progress=false"])
    assert not out.exists()


@pytest.mark.parametrize("bad_checkpoint", ["missing", "modified"])
def test_on_error_skip_with_only_bad_files_still_checks_the_checkpoint(patchcore_checkpoint, tmp_path, capsys,  # noqa: F811
                                                                       bad_checkpoint):
    """Case 11: with every file bad the checkpoint was never loaded: ``checkpoint=/nonexistent`` gave exit 1 and
    "3 of 3 skipped"."""
    ckpt, _ = patchcore_checkpoint
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        truncated_jpeg(inp / name)
    if bad_checkpoint == "missing":
        bad, expected = tmp_path / "nonexistent", f"error: checkpoint={tmp_path / 'nonexistent'} not found"
    else:
        bad = tmp_path / "ckpt"
        shutil.copytree(ckpt, bad)
        (bad / "patchcore.pt").write_bytes((bad / "patchcore.pt").read_bytes()[:-10] + b"0123456789")
        expected = f"error: {bad / 'patchcore.pt'} is corrupt or modified"
    assert main([f"checkpoint={bad}", f"input={inp}", f"output={out}", "on_error=skip", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "skipped" not in err
    assert not out.exists()
