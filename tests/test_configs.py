"""Every config file composes; the overrides the README promises work; presets reach the method."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from adbench.registry import list_methods

from .conftest import REPO, compose_cfg

CONF = REPO / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("method", _options("method"))
@pytest.mark.parametrize("preset", _options("preset"))
@pytest.mark.parametrize("dataset", _options("dataset"))
def test_every_method_preset_dataset_composes(method, preset, dataset):
    cfg = compose_cfg([f"method={method}", f"preset={preset}", f"dataset={dataset}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.method.name == method and cfg.preset.name == preset and cfg.dataset.name == dataset


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_composes(experiment):
    OmegaConf.to_container(compose_cfg([f"experiment={experiment}"]), resolve=True)


def test_every_method_config_is_registered_and_vice_versa():
    assert set(_options("method")) == set(list_methods())


def test_method_presets_name_existing_pairs():
    methods, presets = set(_options("method")), set(_options("preset"))
    for stem in _options("method_preset"):
        m, _, p = stem.rpartition("_")
        assert m in methods and p in presets, f"conf/method_preset/{stem}.yaml matches no method/preset pair"


def test_documented_overrides():
    cfg = compose_cfg(["dataset=synthetic", "dataset.root=/tmp/somewhere", "method.backbone.name=mobilenet_v2",
                       "method.backbone.weights=none", "results_dir=/tmp/res", "seed=7", "device=cpu", "preset=cpu"])
    assert cfg.category == "washer"  # synthetic picks its own default category
    assert cfg.dataset.root == "/tmp/somewhere" and cfg.seed == 7 and cfg.device == "cpu"
    assert cfg.method.backbone.weights == "none" and cfg.results_dir == "/tmp/res"
    assert compose_cfg(["category=cable"]).category == "cable"
    assert compose_cfg([]).category == "bottle" and compose_cfg([]).dataset.root.endswith("mvtec_ad")


def test_preset_cpu_reaches_method_but_cli_wins():
    assert compose_cfg([]).method.backbone.name == "wide_resnet50_2"  # paper default
    assert compose_cfg(["preset=cpu"]).method.backbone.name == "mobilenet_v2"
    assert compose_cfg(["preset=cpu", "method.backbone.name=resnet18"]).method.backbone.name == "resnet18"


def test_data_root_env_var(monkeypatch):
    monkeypatch.setenv("ADBENCH_MVTEC_ROOT", "/data/mvtec")
    assert compose_cfg([]).dataset.root == "/data/mvtec"
