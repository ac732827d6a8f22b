"""MVTec-layout datamodule: pairing by stem, transforms, batches, and every bad-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adbench.data import DataError, MVTecDataModule, SyntheticDataModule, denormalize
from adbench.data.synthetic import ensure_category, generate_category


def _img(path: Path, size=(40, 30), value=128, mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


def make_mvtec(root: Path, category: str = "bottle") -> Path:
    """A minimal valid category: 3 train, 2 good test, 2 'crack' test images with masks (stems 000, 001)."""
    c = root / category
    for i in range(3):
        _img(c / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _img(c / "test" / "good" / f"{i:03d}.png")
        _img(c / "test" / "crack" / f"{i:03d}.png", value=30)
        m = np.zeros((30, 40), np.uint8)
        m[5 + i : 10 + i, 5:15] = 255
        c.joinpath("ground_truth", "crack").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(c / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def dm(root: Path, category: str = "bottle", **kw) -> MVTecDataModule:
    return MVTecDataModule(root, category, image_size=kw.pop("image_size", 32), crop_size=kw.pop("crop_size", 24), **kw)


def test_valid_layout_batches_and_order(tmp_path):
    d = dm(make_mvtec(tmp_path)).setup()
    assert [s.path.name for s in d.train_samples] == ["000.png", "001.png", "002.png"]
    assert [(s.defect_type, s.path.name) for s in d.test_samples] == [
        ("crack", "000.png"), ("crack", "001.png"), ("good", "000.png"), ("good", "001.png")]
    batch = next(iter(d.test_dataloader()))
    assert set(batch) == {"image", "path"}  # methods never get labels
    assert batch["image"].shape == (4, 3, 24, 24)
    full = d.test_dataset(with_labels=True)[0]
    assert set(full) == {"image", "mask", "label", "defect_type", "path"}
    labels, masks, types = d.test_targets()
    assert labels.tolist() == [1, 1, 0, 0] and types == ["crack", "crack", "good", "good"]
    assert masks.shape == (4, 24, 24) and masks.dtype == bool
    assert masks[0].any() and not masks[2:].any()  # good images get all-zero masks
    assert set(np.unique(d.test_dataset(with_labels=True).mask(0).numpy())) <= {0, 1}
    x = denormalize(batch["image"])
    assert torch.allclose(x[2], torch.full_like(x[2], 128 / 255), atol=0.01)


def test_masks_pair_by_stem_not_sort_order(tmp_path):
    root = make_mvtec(tmp_path)
    gt = root / "bottle" / "ground_truth" / "crack"
    # masks whose sort order differs from their images': only stems may pair them
    m = np.zeros((30, 40), np.uint8)
    m[0:3, 0:3] = 255
    Image.fromarray(m).save(gt / "001_mask.png")
    d = dm(root, crop_size=None, image_size=40).setup()
    mask1 = d.test_dataset(with_labels=True).mask(1).numpy()
    assert mask1[:2, :2].all() and mask1.sum() < 20
    assert d.test_samples[1].mask_path.name == "001_mask.png"


def test_no_crop_and_other_sizes(tmp_path):
    d = dm(make_mvtec(tmp_path), image_size=48, crop_size=None).setup()
    assert d.out_size == (48, 48)
    assert next(iter(d.train_dataloader()))["image"].shape[-2:] == (48, 48)


def test_grayscale_images_become_rgb(tmp_path):
    root = make_mvtec(tmp_path)
    _img(root / "bottle" / "train" / "good" / "003.png", mode="L")
    d = dm(root).setup()
    assert d.train_dataset()[3]["image"].shape == (3, 24, 24)


@pytest.mark.parametrize("case, pattern", [
    ("missing_root", "dataset root not found: .*nowhere.*dataset.root"),
    ("unknown_category", "unknown category 'bottel'.*known categories"),
    ("missing_category", "category 'cable' not found: .*mvtec.com"),
    ("empty_train", "empty split: no images found under .*train"),
    ("defect_without_mask", "defect image without mask: .*crack/001.png"),
    ("mask_without_image", "mask without image: .*002_mask.png"),
    ("truncated_image", "unreadable or truncated image: .*train/good/001.png"),
    ("random_bytes", "unreadable or truncated image: .*test/good/000.png"),
    ("size_mismatch", "mask/image size mismatch: .*000_mask.png"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, pattern):
    root = make_mvtec(tmp_path / "mvtec")
    c = root / "bottle"
    category = "bottle"
    if case == "missing_root":
        root = tmp_path / "nowhere"
    elif case == "unknown_category":
        category = "bottel"
    elif case == "missing_category":
        category = "cable"
    elif case == "empty_train":
        for p in (c / "train" / "good").iterdir():
            p.unlink()
    elif case == "defect_without_mask":
        (c / "ground_truth" / "crack" / "001_mask.png").unlink()
    elif case == "mask_without_image":
        shutil.copy(c / "ground_truth" / "crack" / "000_mask.png", c / "ground_truth" / "crack" / "002_mask.png")
    elif case == "truncated_image":
        p = c / "train" / "good" / "001.png"
        p.write_bytes(p.read_bytes()[:60])
    elif case == "random_bytes":
        (c / "test" / "good" / "000.png").write_bytes(np.random.default_rng(0).bytes(500))
    elif case == "size_mismatch":
        Image.new("L", (20, 20)).save(c / "ground_truth" / "crack" / "000_mask.png")
    with pytest.raises(DataError, match=pattern) as info:
        dm(root, category).setup()
    assert "\n" not in str(info.value)


def test_synthetic_is_deterministic_and_exact(tmp_path):
    a = generate_category(tmp_path / "a", "weave", seed=3, n_train=3, n_test_good=2, n_per_defect=2, size=64)
    b = generate_category(tmp_path / "b", "weave", seed=3, n_train=3, n_test_good=2, n_per_defect=2, size=64)
    c = generate_category(tmp_path / "c", "weave", seed=4, n_train=3, n_test_good=2, n_per_defect=2, size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 3 + 2 + 3 * 2 * 2
    for f in files:
        assert np.array_equal(np.asarray(Image.open(a / f)), np.asarray(Image.open(b / f)))
    assert not np.array_equal(np.asarray(Image.open(a / files[-1])), np.asarray(Image.open(c / files[-1])))
    # a defect changes exactly the masked pixels (relative to the same normal image would need the rng; instead
    # check the masks are non-empty, binary, and that each defect image differs strongly inside its mask)
    for kind in ("patch", "scratch", "spot"):
        m = np.asarray(Image.open(a / "ground_truth" / kind / "000_mask.png"))
        assert set(np.unique(m)) == {0, 255}


def test_synthetic_generated_on_first_use_and_reused(tmp_path):
    d = SyntheticDataModule(tmp_path, "washer", image_size=64, crop_size=None, n_train=4, n_test_good=2,
                            n_per_defect=1, synth_size=64).setup()
    assert len(d.train_samples) == 4 and len(d.test_samples) == 5
    first = d.root / "washer" / "train" / "good" / "000.png"  # these settings' own folder under tmp_path
    stamp = first.stat().st_mtime_ns
    again = ensure_category(tmp_path, "washer", seed=0, n_train=4, n_test_good=2, n_per_defect=1, size=64)
    assert again == d.root / "washer" and first.stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="unknown synthetic category 'bottle'"):
        SyntheticDataModule(tmp_path, "bottle").setup()


def test_synthetic_generation_never_deletes_a_folder_it_did_not_make(tmp_path):
    """A ``root/washer`` without the generator's marker (the user's own folder) is left alone with one error line;
    other settings go beside a generated copy, ``generate_category`` replaces it whole, through a staging folder
    that does not stay."""
    import pytest as _pytest

    from adbench.data.errors import DataError
    from adbench.data.synthetic import ensure_category

    mine = tmp_path / "washer" / "train" / "good"
    mine.mkdir(parents=True)
    (mine / "keep.png").write_bytes(b"user data")
    with _pytest.raises(DataError, match="was not generated by adbench"):
        ensure_category(tmp_path, "washer", n_train=2, n_test_good=1, n_per_defect=1, size=64)
    assert (mine / "keep.png").read_bytes() == b"user data"

    from adbench.data.synthetic import generate_category

    gen = tmp_path / "gen"
    first = ensure_category(gen, "weave", n_train=2, n_test_good=1, n_per_defect=1, size=64)
    other = ensure_category(gen, "weave", n_train=3, n_test_good=1, n_per_defect=1, size=64)  # beside, not over it
    assert first == gen / "weave" and other == gen / "size64-n_train3-n_test_good1-n_per_defect1" / "weave"
    assert [len(list((c / "train" / "good").iterdir())) for c in (first, other)] == [2, 3]
    generate_category(gen, "weave", n_train=3, n_test_good=1, n_per_defect=1, size=64)  # asked for: replaced whole
    assert len(list((gen / "weave" / "train" / "good").iterdir())) == 3
    assert sorted(p.name for p in gen.iterdir()) == [".weave.lock", other.parent.name, "weave"]  # no staging left
