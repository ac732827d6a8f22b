"""Staging folders: a run writes into a hidden folder of its own, then renames the results into place.

A staging folder is named ``<prefix>-<host>~<machine>-<pid>-<random>`` (:func:`adbench.utils.temp_name`): unique
across hosts, containers and processes. A later run removes only the folders that are provably stale (a killed
process of the same machine and pid namespace, or nothing changed in them for a week), never one it cannot tell
is abandoned.
"""

from __future__ import annotations

from pathlib import Path

from ..utils import make_temp_dir, remove_stale_temps


def make_staging(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix>-...`` of this process; stale ones of ``prefix`` are removed first."""
    return make_temp_dir(parent, prefix)


def remove_stale(parent: Path, prefix: str) -> None:
    """Delete the ``parent/<prefix>-...`` folders no running process can be using."""
    remove_stale_temps(parent, prefix)
