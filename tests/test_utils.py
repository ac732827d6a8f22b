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


def test_write_text_atomic_keeps_the_old_file_on_failure_and_leaves_no_temp(tmp_path):
    from adbench.utils import file_mode, write_atomic, write_text_atomic

    path = tmp_path / "table1.md"
    write_text_atomic(path, "old\n")
    assert path.read_text() == "old\n" and (path.stat().st_mode & 0o777) == file_mode()

    def half_then_fail(f):
        f.write("new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table1.md"]
