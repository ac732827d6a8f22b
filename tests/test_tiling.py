"""Tiling: tile geometry, cut/stitch, the TiledMethod adapter, every method tiled end to end, a high-resolution
synthetic category where tiling finds small defects that a resize misses, and prediction at unseen sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adbench.api import Prediction
from adbench.data.errors import ConfigError
from adbench.registry import list_methods
from adbench.results import config_hash
from adbench.run import run
from adbench.tiling import TiledMethod, TileDataset, Tiling, cut, stitch

from .conftest import compose_cfg, small_synthetic_overrides


def test_boxes_cover_the_image_and_end_at_the_edges():
    t = Tiling(64, 48)
    assert t.origins(64) == [0]
    assert t.origins(128) == [0, 48, 64]  # the last tile is moved back to end at the edge
    assert t.origins(160) == [0, 48, 96]
    boxes = t.boxes(100, 130)
    covered = np.zeros((100, 130), dtype=int)
    for y, x in boxes:
        covered[y:y + 64, x:x + 64] += 1
    assert covered.min() >= 1 and max(y for y, _ in boxes) == 36 and max(x for _, x in boxes) == 66


@pytest.mark.parametrize("node, message", [
    ({"size": 4, "stride": None}, "dataset.tiling.size=4"),
    ({"size": 64, "stride": 80}, "dataset.tiling.stride=80"),
    ({"size": 64, "stride": 0}, "dataset.tiling.stride=0"),
    ({"size": "big", "stride": None}, "dataset.tiling.size='big'"),
    ({"size": None, "stride": 32}, "dataset.tiling.stride=32 needs dataset.tiling.size"),
])
def test_bad_tiling_options_are_one_line_errors(node, message):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Tiling.from_cfg(OmegaConf.create(node))


def test_tiling_off_and_default_stride():
    from omegaconf import OmegaConf

    assert Tiling.from_cfg(None) is None
    assert Tiling.from_cfg(OmegaConf.create({"size": None, "stride": None})) is None
    assert Tiling.from_cfg(OmegaConf.create({"size": 32, "stride": None})) == Tiling(32, 32)
    with pytest.raises(ConfigError, match="smaller than dataset.tiling.size=64"):
        Tiling(64, 64).boxes(48, 100)


def test_cut_then_stitch_gives_the_image_back_and_overlaps_are_averaged():
    x = torch.arange(100 * 130, dtype=torch.float32).reshape(1, 100, 130)
    t = Tiling(64, 40)
    boxes = t.boxes(100, 130)
    tiles = cut(x, boxes, 64)  # [T, 1, 64, 64]
    assert tiles.shape == (len(boxes), 1, 64, 64)
    assert np.array_equal(stitch(tiles[:, 0].numpy(), boxes, (100, 130)), x[0].numpy())
    # each tile's map = its index: a pixel in k tiles gets the mean of their indices
    maps = np.stack([np.full((64, 64), float(k)) for k in range(len(boxes))])
    out = stitch(maps, boxes, (100, 130))
    total, count = np.zeros((100, 130)), np.zeros((100, 130))
    for k, (y, xx) in enumerate(boxes):
        total[y:y + 64, xx:xx + 64] += k
        count[y:y + 64, xx:xx + 64] += 1
    assert np.allclose(out, total / count)
    assert len(np.unique(count)) > 1  # the case has overlaps


class _EchoMethod:
    """Map = the tile's first channel, score = its maximum: stitching must give the image back."""

    def __init__(self):
        self.fitted_on: list[tuple[int, ...]] = []
        self.paths: list[str] = []

    def fit(self, loader):
        for b in loader:
            self.fitted_on.append(tuple(b["image"].shape))
            self.paths += list(b["path"])

    def predict(self, loader):
        maps = torch.cat([b["image"][:, 0] for b in loader])  # [T, s, s]
        return Prediction(maps.flatten(1).max(1).values.numpy(), maps.numpy())


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "path": f"img{i}.png"}


def test_tiled_method_fits_on_tiles_and_stitches_maps_at_each_image_size():
    g = torch.Generator().manual_seed(0)
    train = [torch.rand(3, 100, 130, generator=g) for _ in range(3)]
    inner = _EchoMethod()
    tm = TiledMethod(inner, Tiling(64, 40), batch_size=5, images_per_call=2)
    tm.fit(torch.utils.data.DataLoader(_Images(train), batch_size=4))
    n_tiles = len(Tiling(64, 40).boxes(100, 130))
    assert sum(s[0] for s in inner.fitted_on) == 3 * n_tiles and all(s[1:] == (3, 64, 64) for s in inner.fitted_on)
    assert len(set(inner.paths)) == 3 * n_tiles  # one name per tile (feature caches key on it)
    test = [torch.rand(3, 100, 130, generator=g) for _ in range(5)]
    pred = tm.predict(torch.utils.data.DataLoader(_Images(test), batch_size=3))
    assert pred.anomaly_maps.shape == (5, 100, 130)
    for k, img in enumerate(test):
        assert np.allclose(pred.anomaly_maps[k], img[0].numpy())
        assert pred.image_scores[k] == pytest.approx(float(img[0].max()))
    assert tm.fitted_on is inner.fitted_on  # the wrapped method's attributes (train_log, timings) show through


def test_tile_dataset_reads_each_image_once_in_order():
    class Counting(_Images):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return super().__getitem__(i)

    ds = TileDataset(Counting([torch.zeros(3, 96, 96)] * 3), Tiling(32, 32), [(96, 96)] * 3)
    assert len(ds) == 27 and ds[26]["path"] == "img2.png#64,64"
    Counting.reads = 0
    _ = [ds[k] for k in range(len(ds))]
    assert Counting.reads == 3


def test_tiling_off_keeps_the_config_hash():
    cfg = compose_cfg(["method=patchcore"])
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(cfg, resolve=True)
    without = {**resolved, "dataset": {k: v for k, v in resolved["dataset"].items() if k != "tiling"}}
    assert config_hash(resolved) == config_hash(without)  # records written before tiling keep their hashes
    on = compose_cfg(["method=patchcore", "dataset.tiling.size=112"])
    assert config_hash(OmegaConf.to_container(on, resolve=True)) != config_hash(resolved)


def test_native_size_without_tiling_is_a_one_line_error(small_synthetic_root, tmp_path):
    cfg = compose_cfg(["method=mean_image", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root),
                       "dataset.image_size=null"])
    with pytest.raises(ConfigError, match="dataset.image_size=null .* needs tiling"):
        run(cfg)


def test_tile_larger_than_the_images_is_a_one_line_error(small_synthetic_root, tmp_path):
    cfg = compose_cfg(["method=mean_image", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root),
                       "dataset.tiling.size=256"])
    with pytest.raises(ConfigError, match="smaller than dataset.tiling.size=256"):
        run(cfg)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_runs_tiled(name, small_synthetic_root, tmp_path):
    """128 px images in 64 px tiles with overlap (stride 48): maps come back at 128 px, metrics are defined."""
    cfg = compose_cfg([f"method={name}", "preset=tiny", f"results_dir={tmp_path}", "save_model=true",
                       *small_synthetic_overrides(small_synthetic_root), "dataset.tiling.size=64",
                       "dataset.tiling.stride=48"])
    record = run(cfg)
    m = record["metrics"]
    assert m["pixel_auroc"] is not None and m["image_auroc"] is not None
    assert record["config"]["dataset"]["tiling"] == {"size": 64, "stride": 48}

    from adbench.predict import Detector

    det = Detector(record["checkpoint"], batch_size=5)
    assert det.model.batch_size == 5  # predict's batch_size= is the tiles per batch
    img = small_synthetic_root / "washer" / "test" / "spot" / "000.png"
    r = det.predict(img)
    assert r.anomaly_map.shape == (128, 128)
    assert r.score == pytest.approx(record["per_image"]["score"][record["per_image"]["file"].index("spot/000.png")],
                                    rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def highres_root(tmp_path_factory):
    """512 px synthetic washers with defects at a quarter of the usual size (spots of 4-9 px radius)."""
    from adbench.data.synthetic import ensure_category

    root = tmp_path_factory.mktemp("highres")
    ensure_category(root, "washer", seed=0, size=512, n_train=10, n_test_good=5, n_per_defect=3, defect_scale=0.25)
    return root


def _highres_overrides(root, tmp_path):
    return ["method=patchcore", "preset=tiny", "dataset=synthetic", f"dataset.root={root}", "category=washer",
            "dataset.generator.size=512", "dataset.generator.n_train=10", "dataset.generator.n_test_good=5",
            "dataset.generator.n_per_defect=3", "dataset.generator.defect_scale=0.25", "dataset.crop_size=null",
            "dataset.batch_size=16", "progress=false", f"results_dir={tmp_path}"]


def test_tiling_finds_small_defects_that_a_resize_misses(highres_root, tmp_path):
    """The same PatchCore on 512 px images: resized to 128 px whole, the small defects are all but erased; cut
    into 128 px tiles at full resolution, they are found (pixel AUROC about 0.70 -> 0.99 with this seed)."""
    resized = run(compose_cfg([*_highres_overrides(highres_root, tmp_path), "dataset.image_size=128"]))
    tiled = run(compose_cfg([*_highres_overrides(highres_root, tmp_path), "dataset.image_size=512",
                             "dataset.tiling.size=128"]))
    assert tiled["metrics"]["pixel_auroc"] >= resized["metrics"]["pixel_auroc"] + 0.15
    assert tiled["metrics"]["image_auroc"] >= resized["metrics"]["image_auroc"] + 0.1
    assert tiled["metrics"]["pixel_auroc"] >= 0.95


def test_native_size_tiling_predicts_images_of_unseen_sizes(highres_root, tmp_path):
    """``dataset.image_size=null``: each image at its own size. ``predict`` then takes an image of a size never seen
    in training (a 640 x 384 crop holding a defect) and returns its map at that size, with the defect on top;
    the ONNX Runtime engine tiles the same way."""
    record = run(compose_cfg([*_highres_overrides(highres_root, tmp_path), "dataset.image_size=null",
                              "dataset.tiling.size=128", "dataset.tiling.stride=96", "save_model=true"]))
    assert record["metrics"]["pixel_auroc"] >= 0.95
    src = highres_root / "washer" / "test" / "spot" / "000.png"
    mask = np.asarray(Image.open(highres_root / "washer" / "ground_truth" / "spot" / "000_mask.png")) > 0
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    top = int(np.clip(cy - 200, 0, 512 - 384))
    # 384 rows of the test image around the defect, widened to 640 px with a mirrored strip on the right
    crop = np.asarray(Image.open(src).convert("RGB"))[top:top + 384]
    wide = np.concatenate([crop, crop[:, ::-1][:, :128]], axis=1)  # [384, 640, 3]
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    from adbench.predict import load

    det = load(record["checkpoint"])
    r = det.predict(path)
    assert r.anomaly_map.shape == (384, 640) and r.image.shape == (384, 640, 3)
    peak = np.unravel_index(np.argmax(r.anomaly_map), r.anomaly_map.shape)
    assert abs(peak[0] - (cy - top)) <= 24 and abs(peak[1] - cx) <= 24, (peak, (cy - top, cx))

    from adbench.export import export_onnx

    onnx_path = export_onnx(record["checkpoint"], tmp_path / "tiled.onnx")
    r2 = load(onnx_path, engine="onnxruntime").predict(path)
    assert r2.anomaly_map.shape == (384, 640)
    assert np.allclose(r2.anomaly_map, r.anomaly_map, rtol=1e-3, atol=1e-3 * float(np.abs(r.anomaly_map).max()))
    assert r2.score == pytest.approx(r.score, rel=1e-3)


@pytest.fixture(scope="module")
def mixed_folder(small_synthetic_root, tmp_path_factory):
    """A folder dataset of images at their own sizes: normal images at 128 x 128 and 112 x 96 (W x H), anomalous
    spots with masks at 128 x 128, normal test images at 128 x 128."""
    root = tmp_path_factory.mktemp("mixed")
    src = small_synthetic_root / "washer"
    for d in ("normal", "test_normal", "test_mixed", "abn/spot", "masks/spot"):
        (root / d).mkdir(parents=True)
    for i, f in enumerate(sorted((src / "train" / "good").glob("*.png"))):
        im = Image.open(f)
        (im.resize((112, 96)) if i % 2 else im).save(root / "normal" / f"{i:03d}.png")
    for i, f in enumerate(sorted((src / "test" / "good").glob("*.png"))[:3]):
        Image.open(f).save(root / "test_normal" / f"{i:03d}.png")
        (Image.open(f).resize((112, 96)) if i else Image.open(f)).save(root / "test_mixed" / f"{i:03d}.png")
    for i, f in enumerate(sorted((src / "test" / "spot").glob("*.png"))):
        Image.open(f).save(root / "abn" / "spot" / f.name)
        Image.open(src / "ground_truth" / "spot" / f"{f.stem}_mask.png").save(root / "masks" / "spot" / f.name)
    return root


def _folder_overrides(root, tmp_path, *extra):
    return ["method=mean_image", "preset=tiny", "dataset=folder", f"dataset.normal_dir={root / 'normal'}",
            f"dataset.test_normal_dir={root / 'test_normal'}", f"dataset.abnormal_dir={root / 'abn'}",
            f"dataset.mask_dir={root / 'masks'}", "category=mixed", "dataset.image_size=null",
            "dataset.crop_size=null", "dataset.tiling.size=64", "dataset.tiling.stride=48", "dataset.batch_size=8",
            "progress=false", f"results_dir={tmp_path}", *extra]


def test_native_size_calibration_scores_held_out_images_of_several_sizes(mixed_folder, tmp_path):
    """calibration.holdout holds out training images of two sizes: each is scored at its own size (no collate
    error), and the threshold is their scores' quantile."""
    record = run(compose_cfg(_folder_overrides(mixed_folder, tmp_path, "calibration.holdout=0.5")))
    cal = record["calibration"]
    assert cal["n_images"] == 6 and len(cal["scores"]) == 6
    assert cal["threshold"] == pytest.approx(float(np.quantile(cal["scores"], 0.99)))


def test_native_size_test_images_of_several_sizes_are_one_line_before_fitting(mixed_folder, tmp_path):
    from adbench.data.errors import DataError

    cfg = compose_cfg(_folder_overrides(mixed_folder, tmp_path, f"dataset.test_normal_dir={mixed_folder / 'test_mixed'}"))
    with pytest.raises(DataError, match="the test images have 2 different sizes"):
        run(cfg)


def test_native_size_image_smaller_than_a_tile_is_named(mixed_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"normal/\d+.png is 112x96 px, smaller than dataset.tiling.size=100"):
        run(compose_cfg(_folder_overrides(mixed_folder, tmp_path, "dataset.tiling.size=100",
                                          "dataset.tiling.stride=null")))


def test_native_size_with_a_centre_crop_is_refused(small_synthetic_root, tmp_path):
    """image_size=null with crop_size=224 would tile only the central 224 px of each image: refused, not silent."""
    cfg = compose_cfg(["method=mean_image", f"results_dir={tmp_path}", *small_synthetic_overrides(small_synthetic_root),
                       "dataset.image_size=null", "dataset.crop_size=96", "dataset.tiling.size=64"])
    with pytest.raises(ConfigError, match="dataset.crop_size=96 with dataset.image_size=null"):
        run(cfg)


def test_predict_cli_tiled_small_image_skipped_and_map_size(mixed_folder, tmp_path):
    """``adbench.predict`` on a native-size tiled checkpoint: an image smaller than a tile is a named DataError that
    on_error=skip skips (the others are scored); predictions.json's map_size is null (each map has its image's
    size), not the tile size."""
    import json

    from adbench.predict import main as predict_main

    record = run(compose_cfg(_folder_overrides(mixed_folder, tmp_path, "save_model=true")))
    inp = tmp_path / "in"
    inp.mkdir()
    Image.open(mixed_folder / "abn" / "spot" / "000.png").save(inp / "big.png")
    Image.open(mixed_folder / "abn" / "spot" / "000.png").resize((40, 50)).save(inp / "small.png")
    out = tmp_path / "out"
    args = [f"checkpoint={record['checkpoint']}", f"input={inp}", f"output={out}", "progress=false"]
    assert predict_main(args) != 0  # on_error=stop: the small image stops the run, naming it
    assert predict_main([*args, "on_error=skip"]) == 1  # 1: some files were skipped
    meta = json.loads((out / "predictions.json").read_text())
    assert meta["map_size"] is None
    rows = {Path(r["path"]).name: r for r in meta["predictions"]}
    assert rows["small.png"]["status"] == "skipped" and "smaller than the model's 64 px tiles" in rows["small.png"]["reason"]
    assert rows["big.png"]["status"] == "ok" and np.load(out / rows["big.png"]["map"]).shape == (128, 128)


def test_predictions_json_map_size_of_a_resized_tiled_model(small_synthetic_root, tmp_path):
    """Tiled at image_size=128 in 64 px tiles: the maps are 128 x 128, and predictions.json says so."""
    import json

    from adbench.predict import main as predict_main

    record = run(compose_cfg(["method=mean_image", f"results_dir={tmp_path}", "save_model=true",
                              *small_synthetic_overrides(small_synthetic_root), "dataset.tiling.size=64"]))
    out = tmp_path / "out"
    img = small_synthetic_root / "washer" / "test" / "spot" / "000.png"
    assert predict_main([f"checkpoint={record['checkpoint']}", f"input={img}", f"output={out}", "progress=false"]) == 0
    assert json.loads((out / "predictions.json").read_text())["map_size"] == [128, 128]


@pytest.mark.filterwarnings("ignore:'adbench.export' found in sys.modules")  # runpy in a process that imported it
def test_python_m_adbench_export_sees_the_method_exporters(small_synthetic_root, tmp_path, monkeypatch, capsys):
    """``python -m adbench.export`` runs the file as __main__; it must still see the exporters the method packages
    register (it said "methods with an exporter: none" for every method)."""
    import runpy
    import sys

    record = run(compose_cfg(["method=mean_image", f"results_dir={tmp_path}", "save_model=true",
                              *small_synthetic_overrides(small_synthetic_root), "dataset.tiling.size=64"]))
    monkeypatch.setattr(sys, "argv", ["adbench.export", f"checkpoint={record['checkpoint']}",
                                      f"output={tmp_path / 'm.onnx'}"])
    with pytest.raises(SystemExit):
        runpy.run_module("adbench.export", run_name="__main__")
    err = capsys.readouterr().err
    assert "methods with an exporter: none" not in err and "patchcore" in err


def test_tiled_predict_bounds_the_tiles_per_call():
    """Large images: the tiles scored per call stay near ``max_tiles`` (at least one whole image per call)."""
    calls = []

    class Spy(_EchoMethod):
        def predict(self, loader):
            pred = super().predict(loader)
            calls.append(len(pred.image_scores))
            return pred

    test = [torch.rand(3, 100, 130) for _ in range(5)]  # 6 tiles each
    pred = TiledMethod(Spy(), Tiling(64, 40), batch_size=4, images_per_call=8, max_tiles=13).predict(
        torch.utils.data.DataLoader(_Images(test), batch_size=5))
    assert calls == [12, 12, 6] and pred.anomaly_maps.shape == (5, 100, 130)
    calls.clear()
    TiledMethod(Spy(), Tiling(64, 40), max_tiles=4).predict(torch.utils.data.DataLoader(_Images(test[:2]), batch_size=2))
    assert calls == [6, 6]


def test_native_size_test_loader_holds_one_image_per_batch(mixed_folder):
    from adbench.calibration import calibration_loader
    from adbench.data.folder import FolderDataModule

    dm = FolderDataModule(mixed_folder / "normal", mixed_folder / "abn", test_normal_dir=mixed_folder / "test_normal",
                          image_size=None, crop_size=None, batch_size=8).setup()
    assert dm.test_dataloader().batch_size == 1 and dm.train_dataloader().batch_size == 8
    assert calibration_loader(dm.train_samples[:3], None, None, 8).batch_size == 1
    assert calibration_loader(dm.train_samples[:3], 64, None, 8).batch_size == 8


def test_results_table_keeps_tiled_and_untiled_runs_apart(tmp_path):
    """``python -m adbench.results``: a tiled run and an untiled one of the same method and category are two rows
    (with their input), not one row averaging them as if they were seeds."""
    from adbench.results import build_table, run_path, write_json_atomic

    for tiles, stride, auroc in ((None, None, 0.6), (64, None, 1.0), (64, 48, 0.8)):
        cfg = {"method": {"name": "mean_image"}, "dataset": {"name": "synthetic", "image_size": 256, "crop_size": None,
                                                             "tiling": {"size": tiles, "stride": stride}},
               "category": "washer", "seed": 0, "preset": {"name": "tiny"}}
        write_json_atomic(run_path(tmp_path, cfg), {"status": "ok", "config": cfg,
                                                     "metrics": {"image_auroc": auroc, "pixel_auroc": 0.9}})
    out = build_table(tmp_path).set_index(["input", "category"])
    assert out.loc[("256 px", "washer"), "image_auroc"] == pytest.approx(0.6)
    assert out.loc[("256 px, 64 px tiles", "washer"), "image_auroc"] == pytest.approx(1.0)
    assert out.loc[("256 px, 64 px tiles every 48 px", "washer"), "image_auroc"] == pytest.approx(0.8)


@pytest.mark.parametrize("name, message", [("lora_mae", "not divisible by the patch size"),
                                           ("vae_energy", "upsample"), ("cutpaste", "larger than the 32x32")])
def test_a_method_size_error_under_tiling_names_the_tile_size(name, message, small_synthetic_root, tmp_path):
    """A method's own error about its input size (raised when it is built or fitted) says that with tiling its
    input is the tile: the option to change is dataset.tiling.size, not only dataset.image_size."""
    tile = {"lora_mae": "36", "cutpaste": "32"}.get(name, "8")  # cutpaste: 16 tiles per image keep it seconds
    cfg = compose_cfg([f"method={name}", "preset=tiny", f"results_dir={tmp_path}",
                       *small_synthetic_overrides(small_synthetic_root), f"dataset.tiling.size={tile}"])
    with pytest.raises(ConfigError, match=f"{message}.*dataset.tiling.size"):
        run(cfg)


def test_default_stride_and_the_same_stride_spelled_out_share_a_hash():
    """stride=null means stride=size: the same run, so the same record (resume skips it), not a second one."""
    from omegaconf import OmegaConf

    def h(*o):
        return config_hash(OmegaConf.to_container(compose_cfg(["method=patchcore", *o]), resolve=True))

    assert h("dataset.tiling.size=112") == h("dataset.tiling.size=112", "dataset.tiling.stride=112")
    assert h("dataset.tiling.size=112") != h("dataset.tiling.size=112", "dataset.tiling.stride=96")
    assert h("dataset.tiling.size=112") != h()


def test_a_tiled_run_says_how_many_tiles_it_fits_on(small_synthetic_root, mixed_folder, tmp_path, capsys):
    """The tile count grows as (side / stride)^2: the run prints it before any model work."""
    run(compose_cfg(["method=mean_image", f"results_dir={tmp_path / 'a'}", *small_synthetic_overrides(small_synthetic_root),
                     "dataset.tiling.size=64", "dataset.tiling.stride=32"]))
    assert "tiling: 64 px tiles every 32 px, 9 per 128x128 image, 108 training tiles" in capsys.readouterr().out
    run(compose_cfg(_folder_overrides(mixed_folder, tmp_path / "b", "calibration.holdout=0")))
    # 6 images of 128 x 128 (3 x 3 tiles of 64 every 48) and 6 of 112 x 96 (2 x 2 tiles)
    assert "of each image at its own size, 78 training tiles" in capsys.readouterr().out


def test_synthetic_folder_is_regenerated_when_only_defect_scale_changes(tmp_path):
    """A category generated with defect_scale=0.25 is not reused for defect_scale=1 (the record would claim the
    usual defects while the data held quarter-size ones), and back: each scale has a folder of its own."""
    import json

    from adbench.data.synthetic import ensure_category

    kw = dict(seed=0, n_train=1, n_test_good=1, n_per_defect=1, size=64)
    marker = lambda cdir: json.loads(next(cdir.glob(".adbench*")).read_text())  # noqa: E731
    quarter = ensure_category(tmp_path, "washer", defect_scale=0.25, **kw)
    assert marker(quarter)["defect_scale"] == 0.25
    usual = ensure_category(tmp_path, "washer", defect_scale=1.0, **kw)
    assert "defect_scale" not in marker(usual) and usual != quarter
    assert ensure_category(tmp_path, "washer", **kw) == usual
    assert "defect_scale" not in marker(usual)
    assert ensure_category(tmp_path, "washer", defect_scale=0.25, **kw) == quarter
    assert marker(quarter)["defect_scale"] == 0.25
    with pytest.raises(ConfigError, match="defect_scale=0.0 must be a number > 0"):
        ensure_category(tmp_path, "washer", defect_scale=0.0, **kw)


def test_input_labels_of_tiled_runs():
    from adbench.results import input_label

    assert input_label({"image_size": None, "crop_size": None, "tiling": {"size": 96, "stride": None}}) == \
        "native size, 96 px tiles"
    assert input_label({"image_size": 512, "crop_size": None, "tiling": {"size": 128, "stride": 96}}) == \
        "512 px, 128 px tiles every 96 px"
    assert input_label({"image_size": 256, "crop_size": 224, "tiling": {"size": None, "stride": None}}) == "256→224 px"


def test_checkpoint_without_manifest_keeps_its_tiling(small_synthetic_root, tmp_path):
    """A checkpoint folder whose manifest is gone falls back to its config.yaml: a tiled one must still load as
    tiled (tile-sized model, maps at the image size), not as an untiled model of the image size."""
    from adbench.checkpoint import MANIFEST
    from adbench.predict import Detector

    record = run(compose_cfg(["method=mean_image", f"results_dir={tmp_path}", "save_model=true",
                              *small_synthetic_overrides(small_synthetic_root), "dataset.tiling.size=64",
                              "dataset.tiling.stride=48"]))
    img = small_synthetic_root / "washer" / "test" / "spot" / "000.png"
    before = Detector(record["checkpoint"]).predict(img)
    (Path(record["checkpoint"]) / MANIFEST).unlink()
    det = Detector(record["checkpoint"])
    assert det.manifest["tiling"] == {"size": 64, "stride": 48} and det.manifest["out_size"] == [64, 64]
    after = det.predict(img)
    assert after.anomaly_map.shape == (128, 128) and after.score == pytest.approx(before.score, rel=1e-5)
