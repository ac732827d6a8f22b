"""Staging folders: a run writes into a hidden folder of its own, then renames the results into place.

Each staging folder holds a marker naming its process and host, so a later run removes the folders of killed
runs (process gone, same host) and never a folder it did not make.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

MARKER = ".adbench-staging.json"


def make_staging(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix>-XXXX`` marked as this process's; stale ones of ``prefix`` are removed first."""
    remove_stale(parent, prefix)
    staging = Path(tempfile.mkdtemp(prefix=prefix + "-", dir=parent))
    (staging / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return staging


def remove_stale(parent: Path, prefix: str) -> None:
    """Delete ``parent/<prefix>*`` folders whose marker names a process of this host that no longer runs."""
    for d in parent.glob(prefix + "*"):
        try:
            info = json.loads((d / MARKER).read_text())
            if info.get("host") != socket.gethostname():
                continue
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not ours, unreadable, or its process still runs
