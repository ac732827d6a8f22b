"""Values that form paths under results_dir stay inside their folders; a system folder is no results_dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adbench.data.errors import ConfigError
from adbench.data.synthetic import generate_category
from adbench.results import run_path
from adbench.run import run

from .conftest import compose_cfg

CFG = {"method": {"name": "mean_image"}, "dataset": {"name": "mvtec"}, "category": "bottle", "seed": 0}


@pytest.mark.parametrize("key,value", [
    ("category", "../../x"), ("category", "a/b"), ("category", ".."), ("category", ""), ("category", "/etc"),
    ("method", "../x"), ("dataset", "../../x"), ("dataset", "."), ("seed", "../x"), ("seed", "zero"), ("category", 5), ("seed", True),
])
def test_run_path_refuses_values_that_leave_their_folder(tmp_path, key, value):
    cfg = {**CFG, key: {"name": value} if key in ("method", "dataset") else value}
    option = f"{key}.name" if key in ("method", "dataset") else key
    with pytest.raises(ConfigError, match=rf"^{option}="):
        run_path(tmp_path, cfg)


@pytest.mark.parametrize("folder", ["/", "/etc", "/usr", "/usr/lib/x", "/bin", "/proc", "/sys/x", "/dev", "~"])
def test_run_path_refuses_system_folders(folder):
    with pytest.raises(ConfigError, match=r"^results_dir=.* is (a system folder|your home folder)"):
        run_path(Path(folder).expanduser(), CFG)


def test_run_refuses_a_category_that_leaves_results_dir(tmp_path):
    # data at tmp/x, reached from dataset.root=tmp/a/b/c/d as category=../../../../x: the record would land in tmp/x
    (tmp_path / "a" / "b" / "c" / "d").mkdir(parents=True)
    generate_category(tmp_path, "washer", size=64, n_train=4, n_test_good=2, n_per_defect=1).rename(tmp_path / "x")
    cfg = compose_cfg(["method=mean_image", "dataset=mvtec", f"dataset.root={tmp_path / 'a/b/c/d'}",
                       "category=../../../../x", f"results_dir={tmp_path / 'r'}", "dataset.image_size=64",
                       "dataset.crop_size=null", "progress=false"])
    with pytest.raises(ConfigError, match=r"^category='../../../../x' would leave results_dir"):
        run(cfg)
    assert not list(tmp_path.glob("x/**/seed*.json")) and not list(tmp_path.glob("r/**/*.json"))


def test_run_refuses_a_system_results_dir(tmp_path):
    cfg = compose_cfg(["method=mean_image", "dataset=synthetic", f"dataset.root={tmp_path}", "results_dir=/proc"])
    with pytest.raises(ConfigError, match=r"^results_dir=/proc is a system folder"):
        run(cfg)


def test_ordinary_values_keep_their_paths(tmp_path):
    cfg = OmegaConf.to_container(compose_cfg(["method=mean_image", "category=bottle"]), resolve=True)
    assert run_path(tmp_path, cfg).parent == tmp_path / "runs" / "mean_image" / "mvtec" / "bottle"
    assert run_path(tmp_path, {**CFG, "category": "pièce A"}).parent.name == "pièce A"
