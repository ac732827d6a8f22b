"""``python -m adbench [OVERRIDES]``: Hydra entry point around :func:`adbench.run.run`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("adbench")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its import chatter is not for users


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .data.errors import ConfigError, DataError
    from .run import run

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        record = run(cfg)
    except (DataError, ConfigError) as err:
        if multirun:  # one bad job must not end the sweep
            log.error("job failed: %s", err)
            return None
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return record["metrics"].get("image_auroc")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
