"""Bad backbone weights files: one line naming the file and what to do, never torch's advice to load them with
``weights_only=False`` (which would run whatever code the file holds) (issue 20, case 12)."""

from __future__ import annotations

import pytest
import torch

from adbench.backbones import WeightsError, build_backbone


def _module_pickle(path):
    torch.save(torch.nn.Linear(2, 2), path)  # a whole module: Python objects, not a state dict


def _junk(path):
    path.write_bytes(b"x" * 100)


def _truncated(path):
    torch.save(build_backbone("mobilenet_v2", "none").state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("make, what, fix", [
    (_module_pickle, "is not a plain state dict: it pickles Python objects (torch.nn.modules.linear.Linear), which "
                     "adbench does not unpickle", "torch.save(model.state_dict(), 'weights.pth')"),
    (_junk, "is corrupt or not a PyTorch weights file (UnpicklingError)", "download or save it again"),
    (_truncated, "is corrupt or not a PyTorch weights file (RuntimeError)", "download or save it again"),
    (_empty, "is empty", "download or save it again"),
])
def test_bad_weights_file_is_one_line_without_unsafe_advice(tmp_path, make, what, fix):
    path = tmp_path / "w.pth"
    make(path)
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", str(path))
    msg = str(info.value)
    assert msg.startswith(f"weights file {path} {what}; ") and fix in msg
    assert "\n" not in msg and "weights_only" not in msg and "method.backbone.weights=" in msg


def test_corrupt_cached_imagenet_weights_are_one_line(tmp_path, monkeypatch):
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\x80\x02garbage" * 50)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        build_backbone("mobilenet_v2", "imagenet")
    msg = str(info.value)
    assert msg.startswith(f"cached weights file {cached} is corrupt or not a PyTorch weights file (")
    assert msg.endswith("; delete it and run again (it is downloaded again)") and "weights_only" not in msg
