"""Data faults that used to pass silently or crash: symlink loops, 0/1 and mixed masks, truncated JPEGs,
decompression bombs. Each test failed before its fix (issue 13, items 5, 6, 7, 10)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench.data import DataError, MVTecDataModule
from adbench.data.folder import FolderDataModule, list_images
from adbench.data.transforms import transform_mask

from .test_data import make_mvtec


def _rgb(path: Path, seed: int = 0, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(path)


def bomb_png(path: Path, side: int = 20000) -> None:
    """A real ``side`` x ``side`` 1-bit black PNG (a few tens of KB on disk, over Pillow's pixel limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# 5. symlink loops -------------------------------------------------------------------------------------------


def test_symlink_loop_and_aliases_are_walked_once(tmp_path):
    good = tmp_path / "good"
    for i in range(4):
        _rgb(good / f"{i:03d}.png", i)
        _rgb(good / "sub" / f"{i:03d}.png", 10 + i)
    os.symlink(good, good / "loop")  # good/loop -> good: a loop
    os.symlink(good / "sub", good / "sub_again")  # a second name for sub/
    os.symlink(good / "000.png", good / "sub" / "zz_same_file.png")  # a second name for one file
    files = list_images(good)
    assert len(files) == 8, files
    rel = [f.relative_to(good).as_posix() for f in files]
    assert rel == [f"{i:03d}.png" for i in range(4)] + [f"sub/{i:03d}.png" for i in range(4)]
    assert len({os.path.realpath(f) for f in files}) == 8

    bad = tmp_path / "bad"
    _rgb(bad / "001.png", 99)
    dm = FolderDataModule(good, bad, image_size=32, crop_size=None, test_split=0.25).setup()
    assert len(dm.train_samples) + sum(s.label == 0 for s in dm.test_samples) == 8


def test_symlinked_folder_outside_is_still_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    for i in range(3):
        _rgb(outside / f"{i}.png", i)
    good = tmp_path / "good"
    _rgb(good / "a.png", 7)
    os.symlink(outside, good / "more")
    assert [f.relative_to(good).as_posix() for f in list_images(good)] == ["a.png", "more/0.png", "more/1.png",
                                                                           "more/2.png"]


# 6. one mask rule -------------------------------------------------------------------------------------------


def _write_masks(root: Path, style: dict[str, str]) -> None:
    """Rewrite bottle's crack masks: ``style[stem]`` is '255' (0/255), '1' (0/1) or '16' (16-bit, 0/1)."""
    for stem, kind in style.items():
        p = root / "bottle" / "ground_truth" / "crack" / f"{stem}_mask.png"
        m = np.asarray(Image.open(p)) > 0
        if kind == "1":
            Image.fromarray(m.astype(np.uint8)).save(p)
        elif kind == "16":
            Image.fromarray(m.astype(np.uint16)).save(p)  # mode I;16 with values 0/1
        else:
            Image.fromarray(m.astype(np.uint8) * 255).save(p)


@pytest.mark.parametrize("style", [{"000": "1", "001": "1"}, {"000": "1", "001": "255"}, {"000": "16", "001": "255"}])
def test_mvtec_layout_masks_any_nonzero_is_anomalous(tmp_path, style):
    ref_root = make_mvtec(tmp_path / "ref")
    root = make_mvtec(tmp_path / "alt")
    _write_masks(root, style)
    for kw in ({"image_size": 32, "crop_size": 24}, {"image_size": 90, "crop_size": None}):  # down- and upsampled
        _, ref, _ = MVTecDataModule(ref_root, "bottle", **kw).setup().test_targets()
        _, got, _ = MVTecDataModule(root, "bottle", **kw).setup().test_targets()
        assert got[:2].any(axis=(1, 2)).all()  # 0/1 masks are not read as empty
        np.testing.assert_array_equal(got, ref)  # same ground truth whatever the encoding


def test_folder_and_mvtec_read_one_mask_alike(tmp_path):
    root = make_mvtec(tmp_path / "m")
    _write_masks(root, {"000": "1", "001": "255"})
    c = root / "bottle"
    _, mv, _ = MVTecDataModule(root, "bottle", image_size=32, crop_size=24).setup().test_targets()
    fd = FolderDataModule(c / "train" / "good", c / "test" / "crack", test_normal_dir=c / "test" / "good",
                          mask_dir=c / "ground_truth" / "crack", image_size=32, crop_size=24).setup()
    _, fm, _ = fd.test_targets()
    order = [str(s.path) for s in fd.test_samples]
    mv_order = [str(s.path) for s in MVTecDataModule(root, "bottle").setup().test_samples]
    np.testing.assert_array_equal(fm, mv[[mv_order.index(p) for p in order]])


def test_binarise_before_nearest_resize():
    m = np.zeros((10, 10), np.uint8)
    m[2:8, 2:8] = 1  # 0/1 mask
    for image_size, crop in ((5, None), (20, 16), (10, None)):
        a = transform_mask(Image.fromarray(m), image_size, crop)
        b = transform_mask(Image.fromarray(m * 255), image_size, crop)
        assert a.any() and a.dtype == b.dtype and (a == b).all() and set(a.unique().tolist()) <= {0, 1}
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[4, 4, 2] = 1  # colour masks: any channel counts
    assert transform_mask(Image.fromarray(rgb), 10, None)[4, 4] == 1


# 7. truncated JPEG --------------------------------------------------------------------------------------------


def _truncated_jpeg(path: Path) -> None:
    a = (np.random.default_rng(3).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("where", ["train/good/009.jpg", "test/good/009.jpg"])
def test_truncated_jpeg_fails_the_upfront_check(tmp_path, where):
    root = make_mvtec(tmp_path)
    bad = root / "bottle" / where
    _truncated_jpeg(bad)
    with pytest.raises(DataError) as info:
        MVTecDataModule(root, "bottle", image_size=32, crop_size=None).setup()
    msg = str(info.value)
    assert msg.startswith(f"unreadable or truncated image: {bad} (OSError: image file is truncated")
    assert "\n" not in msg and msg.endswith("replace or remove the file")


def test_truncated_png_fails_the_upfront_check(tmp_path):
    root = make_mvtec(tmp_path)
    bad = root / "bottle" / "train" / "good" / "001.png"
    a = (np.random.default_rng(4).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(bad)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match="unreadable or truncated image: .*001.png"):
        MVTecDataModule(root, "bottle", image_size=32, crop_size=None).setup()


# 10. decompression bombs --------------------------------------------------------------------------------------


def test_decompression_bomb_is_one_line_in_the_data_check(tmp_path):
    root = make_mvtec(tmp_path)
    bad = root / "bottle" / "train" / "good" / "005.png"
    bomb_png(bad)
    assert bad.stat().st_size < 200_000
    for dmod in (MVTecDataModule(root, "bottle", image_size=32, crop_size=None),
                 FolderDataModule(root / "bottle" / "train" / "good", root / "bottle" / "test" / "crack",
                                  image_size=32, crop_size=None)):
        with pytest.raises(DataError) as info:
            dmod.setup()
        msg = str(info.value)
        assert msg.startswith(f"image too large: {bad} (Image size (400000000 pixels) exceeds limit")
        assert "\n" not in msg and msg.endswith("or remove the file")
    # without the up-front check the loader says the same
    dmod = MVTecDataModule(root, "bottle", image_size=32, crop_size=None, check=False).setup()
    ds = dmod.train_dataset()
    with pytest.raises(DataError, match="image too large"):
        ds[[s.path for s in ds.samples].index(bad)]
