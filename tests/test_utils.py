"""Small shared helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_rss_is_the_process_own_not_its_parents():
    import torch

    ballast = torch.ones(3 * 2**27)  # 1.5 GiB resident in this (parent) process
    ballast.add_(1)
    code = "from adbench.utils import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    child = float(out.strip().splitlines()[-1])
    assert 0 < child < 1000, child  # the child imports torch (~0.5 GB); ru_maxrss would report >= 1.5 GiB
    del ballast
