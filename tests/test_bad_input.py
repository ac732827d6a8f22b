"""Bad input: one test per case, each a one-line error naming the file or option and the fix, raised before
any model work. Cases already covered elsewhere (reused, not duplicated): MVTec-layout files and unknown or
missing categories in tests/test_data.py::test_bad_input_is_one_clear_line; results_dir not writable and
unknown method exit code in tests/test_cli.py; random bytes named .png in tests/test_properties.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import adbench.run as run_mod
from adbench.api import Prediction
from adbench.checkpoint import MANIFEST, load_checkpoint
from adbench.data.errors import ConfigError, DataError, ScoreError
from adbench.predict import load, main as predict_main
from adbench.run import run

from .conftest import REPO, compose_cfg
from .test_folder import folder_overrides, make_folders
from .test_predict import patchcore_checkpoint  # noqa: F401 - shared session fixture


def one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.fixture()
def folders(small_synthetic_root, tmp_path) -> dict[str, Path]:
    return make_folders(small_synthetic_root / "washer", tmp_path / "data")


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if a method gets built: the error must come before any model work."""
    def refuse(name):
        raise AssertionError(f"method {name} was built before the input error was raised")

    monkeypatch.setattr(run_mod, "get_method", refuse)


def run_folder(folders, tmp_path, *extra):
    return run(compose_cfg([*folder_overrides(folders, tmp_path / "results"), *extra]))


def test_corrupt_or_truncated_image(folders, tmp_path, no_model):
    bad = folders["normal_dir"] / "003.png"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    assert one_line(info.value).startswith(f"unreadable or truncated image: {bad} (")
    assert "replace or remove the file" in str(info.value)
    assert not (tmp_path / "results" / "runs").exists()


@pytest.mark.parametrize("fault", ["truncated_jpeg", "decompression_bomb"])
def test_truncated_jpeg_or_bomb_stops_the_run_before_the_model(folders, tmp_path, no_model, fault):
    from .test_data_faults import bomb_png

    if fault == "truncated_jpeg":  # PIL's verify() passes it; only a full decode finds it (it used to fail after fit)
        bad = folders["test_normal_dir"] / "zz.jpg"
        Image.open(folders["test_normal_dir"] / "000.png").convert("RGB").save(bad, quality=90)
        bad.write_bytes(bad.read_bytes()[:800])
        expected = f"unreadable or truncated image: {bad} (OSError: image file is truncated"
    else:
        bad = folders["normal_dir"] / "huge.png"
        bomb_png(bad)
        expected = f"image too large: {bad} (Image size (400000000 pixels) exceeds limit"
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    assert one_line(info.value).startswith(expected)
    assert not (tmp_path / "results" / "runs").exists()


def test_mixed_grayscale_rgb_and_other_modes_are_converted(folders, tmp_path):
    rng = np.random.default_rng(0)
    src = np.asarray(Image.open(folders["normal_dir"] / "000.png"))  # [H, W, 3]
    g = folders["normal_dir"]
    Image.fromarray(src).convert("L").save(g / "100_gray.png")
    Image.fromarray(src).convert("RGBA").save(g / "101_rgba.png")
    Image.fromarray(src).convert("P").save(g / "102_palette.png")
    Image.fromarray(src).convert("LA").save(g / "103_gray_alpha.png")
    Image.fromarray((np.asarray(Image.fromarray(src).convert("L")).astype(np.uint16) * 257)).save(g / "104_16bit.png")
    Image.fromarray(src).convert("CMYK").save(g / "105_cmyk.jpg")
    Image.fromarray((rng.random((128, 128)) * 255).astype(np.uint8)).save(folders["test_normal_dir"] / "100_gray.png")
    rec = run_folder(folders, tmp_path)
    assert rec["status"] == "ok" and rec["n_train"] + rec["n_calibration"] == 12 + 6
    assert 0 <= rec["metrics"]["image_auroc"] <= 1


def test_mask_size_differs_from_image(folders, tmp_path, no_model):
    m = folders["mask_dir"] / "spot" / "001_mask.png"
    Image.open(m).resize((64, 64)).save(m)
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    msg = one_line(info.value)
    assert msg.startswith(f"mask/image size mismatch: {m} is 64x64 but ") and "masks must have their image's size" in msg


def test_mask_without_image(folders, tmp_path, no_model):
    extra = folders["mask_dir"] / "scratch" / "099_mask.png"
    shutil.copy(folders["mask_dir"] / "scratch" / "000_mask.png", extra)
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    msg = one_line(info.value)
    assert msg.startswith(f"mask without image: {extra}") and "remove the mask or add the image" in msg


def test_image_without_mask(folders, tmp_path, no_model):
    (folders["mask_dir"] / "patch" / "002_mask.png").unlink()
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    msg = one_line(info.value)
    assert msg.startswith(f"image without mask: {folders['abnormal_dir'] / 'patch' / '002.png'}")
    assert "remove dataset.mask_dir for image metrics only" in msg


def test_empty_train_folder(folders, tmp_path, no_model):
    for p in folders["normal_dir"].iterdir():
        p.unlink()
    (folders["normal_dir"] / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as info:
        run_folder(folders, tmp_path)
    assert one_line(info.value).startswith("empty train folder: no images (.png, .jpg") and "dataset.normal_dir" in str(info.value)


def test_missing_and_wrong_folder_options(folders, tmp_path, no_model):
    cfg = compose_cfg(["dataset=folder", f"results_dir={tmp_path}", f"dataset.abnormal_dir={folders['abnormal_dir']}"])
    with pytest.raises(ConfigError, match=r"^dataset=folder needs dataset.normal_dir=DIR \(a folder of normal"):
        run(cfg)
    with pytest.raises(DataError, match=r"^dataset.normal_dir=/no/such not found: .* pass dataset.normal_dir=DIR"):
        run_folder(folders, tmp_path, "dataset.normal_dir=/no/such")
    with pytest.raises(ConfigError, match="is inside dataset.normal_dir=.*keep normal training images in a folder of their own"):
        run_folder(folders, tmp_path, f"dataset.abnormal_dir={folders['normal_dir']}")
    with pytest.raises(ConfigError, match=r"^calibration.holdout=1.5 must be in \[0, 1\)"):
        run_folder(folders, tmp_path, "calibration.holdout=1.5")


@pytest.mark.parametrize("args, expected", [
    (["method=nosuch"], "error: unknown method=nosuch; available: "),
    (["dataset=nope"], "error: unknown dataset=nope; available: folder, mvtec, synthetic"),
    (["dataset=folder", "dataset.normal_dirr=x"], "error: unknown option dataset.normal_dirr; did you mean dataset.normal_dir?"),
])
def test_unknown_method_dataset_or_option_cli(args, expected):
    p = subprocess.run([sys.executable, "-m", "adbench", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith(expected) and p.stderr.count("\n") == 1, p.stderr


def test_nan_or_inf_scores_are_reported_never_written(small_synthetic_root, tmp_path, monkeypatch):
    from methods.patchcore.method import PatchCore

    real_predict = PatchCore.predict

    def broken(self, loader):
        p = real_predict(self, loader)
        p.image_scores[1] = np.nan
        p.anomaly_maps[2, 5, 5] = np.inf
        return Prediction(p.image_scores, p.anomaly_maps)

    monkeypatch.setattr(PatchCore, "predict", broken)
    from .conftest import small_synthetic_overrides

    cfg = compose_cfg(["preset=tiny", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root)])
    with pytest.raises(ScoreError) as info:
        run(cfg)
    msg = one_line(info.value)
    assert msg.startswith("method patchcore produced NaN/inf scores on the test images: 1 image score(s) and 1 map value(s)")
    assert "(first: " + str(small_synthetic_root / "washer" / "test" / "good" / "001.png") in msg and "Fix:" in msg
    assert not list(tmp_path.glob("runs/**/*.json"))  # nothing written as a metric


def test_predict_output_not_writable(patchcore_checkpoint, small_synthetic_root, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    blocker = tmp_path / "file"
    blocker.write_text("")
    img = small_synthetic_root / "washer" / "test" / "good" / "000.png"
    assert predict_main([f"checkpoint={ckpt}", f"input={img}", f"output={blocker / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: output={blocker / 'out'} is not writable (") and err.count("\n") == 1


def test_predict_corrupt_input_and_unknown_option(patchcore_checkpoint, tmp_path, capsys):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert predict_main([f"checkpoint={ckpt}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: unreadable or truncated image: {tmp_path / 'in' / 'a.png'}")
    assert not (tmp_path / "o").exists()  # stopped before the model or the outputs
    assert predict_main([f"checkpoint={ckpt}", "input=x", "output=y", "treshold=3"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown option treshold=3; known options: checkpoint, input")
    with pytest.raises(ConfigError, match=r"tensor input values must lie in \[0, 1\]"):
        load(ckpt, device="cpu").predict(torch.randn(3, 32, 32) * 3)


def test_checkpoint_from_another_method(patchcore_checkpoint, tmp_path):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    with pytest.raises(ConfigError) as info:
        load_checkpoint(ckpt, method="lora_mae")
    assert one_line(info.value) == (f"checkpoint {ckpt} holds a 'patchcore' model, not 'lora_mae'; pass a lora_mae "
                                    f"checkpoint or drop method=")
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    state = torch.load(copy / "patchcore.pt", weights_only=True)
    state["method"] = "lora_mae"  # method files of another method under a patchcore manifest
    torch.save(state, copy / "patchcore.pt")
    with pytest.raises(ConfigError, match=r"patchcore.pt is truncated or modified"):  # the manifest's sizes first
        load_checkpoint(copy)
    _drop_file_list(copy)  # a manifest without a file list: the method file's own header is checked
    with pytest.raises(ConfigError) as info:
        load_checkpoint(copy)
    assert "is a checkpoint of method 'lora_mae', not 'patchcore'; retrain with this adbench" in one_line(info.value)


def _drop_file_list(ckpt: Path) -> None:
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest.pop("files", None)
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


def test_checkpoint_incompatible_version(patchcore_checkpoint, tmp_path):  # noqa: F811
    ckpt, _ = patchcore_checkpoint
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ConfigError) as info:
        load_checkpoint(copy)
    assert one_line(info.value).startswith(f"checkpoint {copy} has format 99, this adbench reads format 1; retrain")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    state = torch.load(copy / "patchcore.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, copy / "patchcore.pt")
    _drop_file_list(copy)  # else the manifest's sizes and SHA-256 answer first
    with pytest.raises(ConfigError, match=r"has checkpoint version 99, this adbench reads 1; retrain with this adbench"):
        load_checkpoint(copy)
    with pytest.raises(ConfigError, match=r"^checkpoint=/no/where not found; pass checkpoint=DIR"):
        load_checkpoint("/no/where")
