"""Shared fixtures: a generated synthetic MVTec-layout root, Hydra composition, the ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")
SHARED = Path(os.environ.get("ADBENCH_SHARED", REPO.parent / "shared"))
MVTEC_SHARED = SHARED / "data" / "mvtec_ad"
TORCH_HOME_SHARED = SHARED / "torch_home"

os.environ.setdefault("ADBENCH_PROGRESS", "0")


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """The config ``python -m adbench OVERRIDES`` would run with."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide synthetic dataset root (categories generated on first use by the datamodule)."""
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def small_synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic root for fast end-to-end runs: 12 train, 6 good and 3 per defect test images."""
    from adbench.data.synthetic import ensure_category

    root = tmp_path_factory.mktemp("synthetic_small")
    for cat in ("washer", "weave"):
        ensure_category(root, cat, seed=0, n_train=12, n_test_good=6, n_per_defect=3, size=128)
    return root


def small_synthetic_overrides(root: Path, category: str = "washer") -> list[str]:
    """Overrides matching :func:`small_synthetic_root`, 128 px images without crop."""
    return [
        "dataset=synthetic", f"dataset.root={root}", f"category={category}", "dataset.generator.n_train=12",
        "dataset.generator.n_test_good=6", "dataset.generator.n_per_defect=3", "dataset.generator.size=128",
        "dataset.image_size=128", "dataset.crop_size=null", "dataset.batch_size=8", "progress=false",
    ]


@pytest.fixture(scope="session")
def shared_torch_home() -> Path:
    """TORCH_HOME with torchvision's ImageNet MobileNetV2 weights; skips when ../shared is absent."""
    ckpt = TORCH_HOME_SHARED / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} not found (../shared absent)")
    os.environ["TORCH_HOME"] = str(TORCH_HOME_SHARED)
    return TORCH_HOME_SHARED


@pytest.fixture(scope="session")
def mvtec_bottle() -> Path:
    """Root of the real MVTec AD holding bottle; skips when ../shared is absent."""
    if not (MVTEC_SHARED / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"{MVTEC_SHARED / 'bottle'} not found (../shared absent)")
    return MVTEC_SHARED


REAL_CATEGORIES = ("bottle", "transistor")


def real_category_root(category: str) -> Path:
    """Root of the real MVTec AD holding ``category``; skips the test when ../shared lacks it."""
    if not (MVTEC_SHARED / category / "train" / "good").is_dir():
        pytest.skip(f"{MVTEC_SHARED / category} not found (../shared absent)")
    return MVTEC_SHARED


_BASELINES: dict[tuple[str, str], dict] = {}


def real_baseline_metrics(category: str, method: str = "pixel_gaussian", extra: tuple[str, ...] = ()) -> dict:
    """Metrics of a reference baseline (``mean_image`` / ``pixel_gaussian``) on a real category, default
    transform, computed once per test session (seconds). Acceptance tests assert a margin over these."""
    key = (category, method, *extra)
    if key not in _BASELINES:
        import tempfile

        from adbench.run import run

        root = real_category_root(category)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose_cfg([f"method={method}", "dataset=mvtec", f"dataset.root={root}", f"category={category}",
                               f"results_dir={tmp}", "progress=false", *extra])
            _BASELINES[key] = run(cfg)["metrics"]
    return _BASELINES[key]


def best_baseline(category: str, metric: str, extra: tuple[str, ...] = ()) -> float:
    """The better of the two reference baselines on ``metric`` for a real category."""
    return max(real_baseline_metrics(category, m, extra)[metric] for m in ("mean_image", "pixel_gaussian"))
