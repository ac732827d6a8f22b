"""One-line errors for command-line overrides Hydra cannot apply (unknown method, dataset, option).

Hydra's own messages span several lines and, for a misspelt key, suggest ``+key=value`` (which would add the
typo to the config). :func:`explain` composes the config first and turns such failures into one line that
names the option and the fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _flat_keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    out = []
    for k in cfg.keys():
        v = cfg._get_node(k)
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, DictConfig):
            out += _flat_keys(v, key + ".")
    return out


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def explain(argv: list[str]) -> str | None:
    """None when ``argv`` (single-run overrides) composes; else the one-line error to show."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if not argv or any(a.startswith("-") for a in argv):  # flags, --help, multirun: Hydra handles those
        return None
    try:
        _compose(argv)
        return None
    except MissingConfigException as err:
        missing = str(getattr(err, "missing_cfg_file", "") or "")
        group, _, value = missing.partition("/")
        options = ", ".join(getattr(err, "options", None) or [])
        if group and value:
            return f"unknown {group}={value}; available: {options} (conf/{group}/)"
        return " ".join(str(err).split("\n")[0:1])
    except ConfigCompositionException as err:
        m = re.match(r"Could not override '([^']+)'", str(err))
        if not m:
            return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        key = m.group(1)
        rest = [a for a in argv if a.split("=", 1)[0].lstrip("+~") != key]
        try:
            keys = _flat_keys(_compose(rest))
        except Exception:  # noqa: BLE001 - suggestions are a bonus
            keys = []
        close = difflib.get_close_matches(key, keys, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"unknown option {key}; {hint}list the options with: python -m adbench {' '.join(rest)} --cfg job"
                .replace("  ", " "))
