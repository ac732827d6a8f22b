"""One-line errors for command-line overrides Hydra cannot apply (unknown method, dataset, option).

Hydra's own messages span several lines and, for a misspelt key, suggest ``+key=value`` (which would add the
typo to the config). :func:`explain` parses and composes the config first and turns such failures into one line
that names the option and the fix (also an unquoted value with a space, and a scalar given for a group of options
such as ``dataset.tiling=32``).
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


def _quoted(value: str) -> str:
    """``value`` with each comma-separated element that is not a plain word in double quotes."""
    return ",".join(v if re.fullmatch(r"[A-Za-z0-9_./:+@~-]*", v) else f'"{v}"' for v in value.split(","))


def unparsable(argv: list[str]) -> str | None:
    """The one-line error for the first ``key=value`` argument Hydra's override grammar cannot parse (a space, a
    non-ASCII letter...), with the quoted form to pass instead; None when all parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException:
            key, _, value = arg.partition("=")
            return (f"cannot parse the override {arg!r}: a value with spaces or other special characters must be "
                    f"quoted; pass it as '{key}={_quoted(value)}'")
    return None


def scalar_for_group(argv: list[str]) -> str | None:
    """The one-line error for ``key=value`` where ``key`` holds a group of options (e.g. ``dataset.tiling=32``);
    None when there is none."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import DictConfig, OmegaConf

    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    scalars = {}
    for arg, o in zip(argv, OverridesParser.create().parse_overrides(argv)):
        if not o.is_delete() and o.key_or_group not in groups and isinstance(o.value(), (bool, int, float, str)):
            scalars[arg] = o
    if not scalars:
        return None
    base = _compose([a for a in argv if a not in scalars])
    for arg, o in scalars.items():
        node = OmegaConf.select(base, o.key_or_group)
        if isinstance(node, DictConfig) and len(node):
            keys = list(node.keys())
            return (f"{arg}: {o.key_or_group} holds options ({', '.join(map(str, keys))}), not one value; set one of "
                    f"them, e.g. {o.key_or_group}.{keys[0]}={o.value()}")
    return None


def explain(argv: list[str]) -> str | None:
    """None when ``argv`` parses and (single-run overrides) composes; else the one-line error to show."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    problem = unparsable(argv)
    if problem or not argv or any(a.startswith("-") for a in argv):  # flags, --help, multirun: Hydra handles those
        return problem
    try:
        _compose(argv)
        return scalar_for_group(argv)
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
