"""Folder datasets (users' own images): pairing, splits, image-only metrics, every method end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench.data.folder import FolderDataModule
from adbench.registry import list_methods
from adbench.run import run

from .conftest import REPO, compose_cfg


def make_folders(src: Path, dst: Path, masks: bool = True, mask_style: str = "suffix") -> dict[str, Path]:
    """User-style folders from a synthetic MVTec-layout category: good/, test_good/, bad/<defect>/, masks/<defect>/."""
    dirs = {"normal_dir": dst / "good", "test_normal_dir": dst / "test_good", "abnormal_dir": dst / "bad"}
    shutil.copytree(src / "train" / "good", dirs["normal_dir"])
    shutil.copytree(src / "test" / "good", dirs["test_normal_dir"])
    for d in sorted(p for p in (src / "test").iterdir() if p.name != "good"):
        shutil.copytree(d, dirs["abnormal_dir"] / d.name)
        if masks:
            (dst / "masks" / d.name).mkdir(parents=True, exist_ok=True)
            for m in (src / "ground_truth" / d.name).iterdir():
                if mask_style == "suffix":  # <stem>_mask.png, 0/255
                    shutil.copy(m, dst / "masks" / d.name / m.name)
                else:  # <stem>.png, 0/1 values
                    a = (np.asarray(Image.open(m)) > 0).astype(np.uint8)
                    Image.fromarray(a).save(dst / "masks" / d.name / m.name.replace("_mask", ""))
    if masks:
        dirs["mask_dir"] = dst / "masks"
    return dirs


def folder_overrides(dirs: dict[str, Path], results: Path) -> list[str]:
    return ["dataset=folder", *(f"dataset.{k}={v}" for k, v in dirs.items()), "category=washer_own",
            "dataset.image_size=128", "dataset.crop_size=null", "dataset.batch_size=8", "progress=false",
            f"results_dir={results}", "preset=tiny"]


@pytest.mark.parametrize("style", ["suffix", "plain_0_1"])
def test_masks_pair_by_stem_any_style(small_synthetic_root, tmp_path, style):
    dirs = make_folders(small_synthetic_root / "washer", tmp_path, mask_style=style)
    dm = FolderDataModule(**{k: v for k, v in dirs.items()}, image_size=128, crop_size=None).setup()
    assert len(dm.train_samples) == 12 and len(dm.test_samples) == 6 + 9 and dm.has_masks
    assert {s.defect_type for s in dm.test_samples} == {"good", "patch", "scratch", "spot"}
    for s in dm.test_samples:
        assert (s.mask_path is None) == (s.label == 0)
        if s.mask_path is not None:
            assert s.mask_path.parent.name == s.path.parent.name and s.mask_path.stem.startswith(s.path.stem)
    labels, masks, _ = dm.test_targets()
    assert labels.sum() == 9 and all(masks[i].any() for i in np.flatnonzero(labels))  # 0/1 masks count too
    assert not masks[labels == 0].any()


def test_split_off_normal_test_images_when_no_test_dir(small_synthetic_root, tmp_path):
    dirs = make_folders(small_synthetic_root / "washer", tmp_path, masks=False)
    del dirs["test_normal_dir"]
    a = FolderDataModule(**dirs, test_split=0.25, image_size=64, crop_size=None).setup()
    b = FolderDataModule(**dirs, test_split=0.25, image_size=64, crop_size=None).setup()
    good_test = [s.path for s in a.test_samples if s.label == 0]
    assert len(good_test) == 3 and len(a.train_samples) == 9
    assert not set(good_test) & {s.path for s in a.train_samples}
    assert good_test == [s.path for s in b.test_samples if s.label == 0]  # fixed by split_seed
    assert not a.has_masks and {s.defect_type for s in a.test_samples if s.label} == {"patch", "scratch", "spot"}


def test_flat_abnormal_folder_is_one_defect_type(tmp_path):
    for i in range(4):
        (tmp_path / "ok").mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), (100, 100, 100)).save(tmp_path / "ok" / f"{i}.jpg")
    (tmp_path / "ng").mkdir()
    Image.new("RGB", (32, 32), (10, 10, 10)).save(tmp_path / "ng" / "x.bmp")
    dm = FolderDataModule(tmp_path / "ok", tmp_path / "ng", image_size=32, crop_size=None).setup()
    assert [s.defect_type for s in dm.test_samples] == ["abnormal", "good"]


def test_symlinked_subfolders_are_followed_hidden_skipped(small_synthetic_root, tmp_path):
    src = small_synthetic_root / "washer"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scratch").symlink_to(src / "test" / "scratch")
    (tmp_path / "good").symlink_to(src / "train" / "good")
    (tmp_path / "bad" / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / ".cache" / "thumb.png")
    dm = FolderDataModule(tmp_path / "good", tmp_path / "bad", image_size=64, crop_size=None).setup()
    assert [s.defect_type for s in dm.test_samples if s.label] == ["scratch"] * 3


def test_grayscale_auto_and_16bit(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ok").mkdir()
    (tmp_path / "ng").mkdir()
    for i in range(3):
        Image.fromarray((rng.random((24, 24)) * 65535).astype(np.uint16)).save(tmp_path / "ok" / f"{i}.png")
    Image.fromarray((rng.random((24, 24)) * 255).astype(np.uint8)).save(tmp_path / "ng" / "0.png")
    dm = FolderDataModule(tmp_path / "ok", tmp_path / "ng", image_size=24, crop_size=None,
                          test_normal_dir=None, test_split=0.34).setup()
    assert dm.grayscale
    x = dm.train_dataset()[0]["image"]  # [3, 24, 24]; a 16-bit image spans the range, not clipped to white
    from adbench.data import denormalize

    v = denormalize(x)
    assert x.shape == (3, 24, 24) and 0.3 < float(v.mean()) < 0.7 and float(v.std()) > 0.15


def test_run_with_masks_reports_pixel_metrics(small_synthetic_root, tmp_path, capsys):
    dirs = make_folders(small_synthetic_root / "washer", tmp_path / "data")
    rec = run(compose_cfg(folder_overrides(dirs, tmp_path / "r")))
    m = rec["metrics"]
    assert rec["pixel_metrics"] is True and m["pixel_auroc"] is not None and m["aupro"] is not None
    assert rec["config"]["dataset"]["name"] == "folder" and "auroc_scratch" in m
    assert rec["n_calibration"] == 1 and rec["n_train"] == 11  # folder default: calibration.holdout=0.1
    assert "image metrics only" not in capsys.readouterr().out


@pytest.mark.parametrize("name", list_methods())
def test_every_method_on_folder_without_masks(name, small_synthetic_root, tmp_path, capsys):
    """No masks: image-level metrics only, stated in the output and in the record; works for every method."""
    dirs = make_folders(small_synthetic_root / "washer", tmp_path / "data", masks=False)
    rec = run(compose_cfg([f"method={name}", *folder_overrides(dirs, tmp_path / "r")]))  # preset=tiny
    out = capsys.readouterr().out
    assert "image metrics only" in out
    assert rec["pixel_metrics"] is False
    assert "pixel_auroc" not in rec["metrics"] and "aupro" not in rec["metrics"]
    assert 0 <= rec["metrics"]["image_auroc"] <= 1
