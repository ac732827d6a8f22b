"""``python -m adbench.export`` and ONNX loading under faults (issue 20, cases 7, 8, 9): what export may replace,
never writing in a checkpoint folder, temporary files of killed exports, write failures and bad opsets in one
line, and a modified or foreign ONNX file refused at load (graph digest, metadata checked in one place)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import adbench.export as export_mod  # noqa: E402
from adbench.checkpoint import verify_checkpoint  # noqa: E402
from adbench.data.errors import ConfigError  # noqa: E402
from adbench.export import main as export_main  # noqa: E402
from adbench.predict import load, main as predict_main  # noqa: E402

from .test_predict import patchcore_checkpoint  # noqa: E402,F401 - shared session fixture

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(patchcore_checkpoint, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """(checkpoint, its ONNX file); tests copy the file before changing it."""
    ckpt, _ = patchcore_checkpoint
    onnx_file = tmp_path_factory.mktemp("export_faults") / "patchcore.onnx"
    assert export_main([f"checkpoint={ckpt}", f"output={onnx_file}"]) == 0
    return ckpt, onnx_file


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# Case 7: what export may replace ----------------------------------------------------------------------------------


def test_export_does_not_replace_a_file_it_did_not_write(exported, tmp_path, capsys):
    ckpt, _ = exported
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    assert export_main([f"checkpoint={ckpt}", f"output={notes}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: output={notes} exists and is not an ONNX model written by python -m adbench.export; pass another "
        f"output=FILE.onnx, or overwrite=true to replace it\n")
    assert notes.read_text() == "my notes\n" and files(tmp_path) == {"notes.txt": b"my notes\n"}
    assert export_main([f"checkpoint={ckpt}", f"output={notes}", "overwrite=true"]) == 0  # asked for
    assert export_mod.is_adbench_onnx(notes)
    assert export_main([f"checkpoint={ckpt}", f"output={notes}"]) == 0  # its own file: exported again


@pytest.mark.parametrize("target", ["config.yaml", "adbench_checkpoint.json", "model.onnx", "sub/model.onnx",
                                    "other checkpoint"])
def test_export_never_writes_inside_a_checkpoint_folder(exported, tmp_path, capsys, target):
    ckpt, _ = exported
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    before, before_other = files(copy), files(other)
    output = other / "model.onnx" if target == "other checkpoint" else copy / target
    assert export_main([f"checkpoint={copy}", f"output={output}", "overwrite=true"]) == 2
    err = one_line(capsys.readouterr().err)
    folder = other if target == "other checkpoint" else copy
    assert err.startswith(f"error: output={output} is inside the checkpoint folder {folder.resolve()}: adbench never "
                          f"writes there")
    assert files(copy) == before and files(other) == before_other and not (copy / "sub").exists()
    assert verify_checkpoint(copy) is None


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}") and p.name.endswith(".tmp"))


def test_a_killed_export_leaves_a_temporary_file_the_next_export_removes(exported, tmp_path):
    """A real SIGKILL of ``python -m adbench.export`` while its temporary file exists; the next export to the same
    file removes it (its process is gone, same host), and keeps the ones it cannot prove abandoned."""
    from adbench.utils import _host_label, _machine

    ckpt, _ = exported
    out = tmp_path / "m.onnx"
    code = ("import sys, time, onnx, adbench.export as e\n"
            "real = onnx.save\n"
            "def slow(*a, **k):\n"
            "    real(*a, **k)\n"
            "    time.sleep(120)\n"
            "onnx.save = slow\n"
            f"e.main(['checkpoint={ckpt}', 'output={out}'])\n")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not any((tmp_path / n).stat().st_size > 0 for n in _temps(tmp_path, "m.onnx")):
            assert child.poll() is None and time.time() < deadline, "the export ended before it could be killed"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    left = _temps(tmp_path, "m.onnx")
    assert len(left) == 1 and not out.exists()
    assert f"-{_host_label()}~{_machine()}-{child.pid}-" in left[0]  # host, machine and pid in the name
    other_host = f".m.onnx-elsewhere~0badcafe-{child.pid}-0123abcd.tmp"  # another machine: cannot be asked
    live = f".m.onnx-{_host_label()}~{_machine()}-{os.getppid()}-0123abcd.tmp"  # a running process
    old_style_recent = f".m.onnx.{child.pid}.tmp"
    old_style_old = f".m.onnx.{child.pid + 1}.tmp"
    for name in (other_host, live, old_style_recent, old_style_old):
        (tmp_path / name).write_bytes(b"partial")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(tmp_path / old_style_old, (week_ago, week_ago))
    assert export_main([f"checkpoint={ckpt}", f"output={out}"]) == 0
    assert _temps(tmp_path, "m.onnx") == sorted([other_host, live, old_style_recent])
    assert export_mod.is_adbench_onnx(out)


# Case 8: failures in one line -------------------------------------------------------------------------------------


def test_export_onto_a_folder_is_one_line(exported, tmp_path, capsys):
    ckpt, _ = exported
    (tmp_path / "models").mkdir()
    assert export_main([f"checkpoint={ckpt}", f"output={tmp_path / 'models'}"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: output={tmp_path / 'models'} is a folder; pass output=FILE.onnx, a file path (e.g. "
        f"{tmp_path / 'models' / 'model.onnx'})\n")
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize("opset", ["3", "99", "0", "-1", "seventeen"])
def test_an_opset_out_of_range_is_one_line(exported, tmp_path, capsys, opset):
    ckpt, _ = exported
    assert export_main([f"checkpoint={ckpt}", f"output={tmp_path / 'm.onnx'}", f"opset={opset}"]) == 2
    lo, hi = export_mod.opset_range()
    assert one_line(capsys.readouterr().err) == (
        f"error: opset={opset} is not an ONNX opset torch can export (it writes {lo} to {hi}); pass opset=N with "
        f"{lo} <= N <= {hi}, or leave it out (default 17)\n")
    assert list(tmp_path.iterdir()) == []


def test_an_opset_too_low_for_the_model_is_one_line_without_the_graph_dump(exported, tmp_path, capfd):
    ckpt, _ = exported
    assert export_main([f"checkpoint={ckpt}", f"output={tmp_path / 'm.onnx'}", "opset=9"]) == 2
    out, err = capfd.readouterr()
    assert one_line(err).startswith("error: the patchcore model cannot be exported at opset=9 (TypeError translating "
                                    "upsample_bilinear2d: ")
    assert err.rstrip().endswith("pass a higher opset, e.g. opset=17 (the default)")
    assert out == "" and list(tmp_path.iterdir()) == []  # torch's TorchScript graph dump does not reach stdout


def _mount(where: Path, options: str) -> None:
    where.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")


@pytest.mark.parametrize("fs", ["read-only", "full"])
def test_export_onto_a_real_read_only_or_full_file_system_is_one_line(exported, tmp_path, capsys, fs):
    ckpt, _ = exported
    mnt = tmp_path / "mnt"
    _mount(mnt, "ro,size=1m" if fs == "read-only" else "size=256k")
    try:
        out = mnt / "m.onnx"
        assert export_main([f"checkpoint={ckpt}", f"output={out}"]) == 2
        reason = "Read-only file system" if fs == "read-only" else "no space left on device"
        fix = "pass output=FILE.onnx in a writable folder" if fs == "read-only" else \
            "free space or pass output= on another disk"
        assert one_line(capsys.readouterr().err) == (
            f"error: cannot write output={out} ({reason}); nothing was left there (a file it would have replaced is "
            f"unchanged); {fix}\n")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("step", ["trace", "save"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(exported, tmp_path, capsys, monkeypatch, code,
                                                                   step):
    """Simulated: the failure at the graph's write or at the metadata's, and the clean-up failing too (as it does on
    a read-only file system): the first error is the one shown, in one line."""
    ckpt, onnx_file = exported
    out = tmp_path / "m.onnx"
    shutil.copy(onnx_file, out)
    old = out.read_bytes()

    def fail(*a, **k):
        Path(a[2] if step == "trace" else a[1]).write_bytes(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(export_mod, "trace_onnx", fail) if step == "trace" else monkeypatch.setattr(onnx, "save", fail)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.endswith(".tmp") and code == errno.EROFS:
            real_unlink(self, missing_ok)
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert export_main([f"checkpoint={ckpt}", f"output={out}"]) == 2
    reason = "no space left on device" if code == errno.ENOSPC else os.strerror(code)
    assert one_line(capsys.readouterr().err).startswith(f"error: cannot write output={out} ({reason}); nothing was "
                                                        f"left there")
    assert out.read_bytes() == old and _temps(tmp_path, "m.onnx") == []


# Case 9: a modified or foreign ONNX file ---------------------------------------------------------------------------


def _predict(onnx_file: Path, images: Path, out: Path) -> int:
    return predict_main([f"checkpoint={onnx_file}", "engine=onnxruntime", f"input={images}", f"output={out}",
                         "progress=false"])


def _largest_initializer(proto):
    return max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))


def test_scaled_weights_are_refused(exported, small_synthetic_root, tmp_path, capsys):
    _, onnx_file = exported
    proto = onnx.load(str(onnx_file))
    bank = _largest_initializer(proto)
    bank.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bank) * np.float32(1.5), bank.name))
    bad = tmp_path / "scaled.onnx"
    onnx.save(proto, str(bad))
    out = tmp_path / "out"
    assert _predict(bad, small_synthetic_root / "washer" / "test" / "good", out) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: {bad} is modified or corrupt: its graph does not match the graph_sha256 of its metadata (changed "
        f"weights, damaged bytes, or metadata copied from another file); export it again with python -m "
        f"adbench.export checkpoint=DIR output=FILE.onnx\n")
    assert not out.exists()
    with pytest.raises(ConfigError, match="does not match the graph_sha256"):
        load(bad, engine="onnxruntime")


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_flipped_bytes_are_one_line_without_training_advice(exported, small_synthetic_root, tmp_path, capsys, where):
    _, onnx_file = exported
    data = bytearray(onnx_file.read_bytes())
    start = int(len(data) * where)
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(data))
    assert _predict(bad, small_synthetic_root / "washer" / "test" / "good", tmp_path / "out") == 2
    err = one_line(capsys.readouterr().err)
    assert str(bad) in err and "export it again" in err and "learning rate" not in err


def _with_metadata(src: Path, dest: Path, **changes: str | None) -> Path:
    proto = onnx.load(str(src))
    props = {e.key: e.value for e in proto.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v
    del proto.metadata_props[:]
    for k, v in props.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(proto, str(dest))
    return dest


def _calibration_without_quantile(onnx_file: Path) -> str:
    props = {e.key: e.value for e in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    cal = json.loads(props["calibration"])
    del cal["quantile"]
    return json.dumps(cal)


@pytest.mark.parametrize("key, value, expected", [
    ("input_size", "[64, 64]", "metadata input_size='[64, 64]' disagrees with the graph's input (128 x 128)"),
    ("input_size", "[128]", "metadata input_size='[128]' is not [H, W] of two positive integers"),
    ("calibration", "no quantile", "metadata calibration is incomplete (no quantile)"),
    ("tiling", '{"size": 128, "stride": 0}', "metadata tiling='{\"size\": 128, \"stride\": 0}' is not"),
    ("image_size", "banana", "metadata image_size='banana' is not valid JSON"),
    ("image_size", "96", "metadata image_size='96' with crop_size=None does not give the graph's input size"),
    ("threshold", "0.5", "metadata threshold='0.5' disagrees with the threshold of metadata calibration"),
    ("method", "", "metadata method='' is empty"),
])
def test_tampered_metadata_is_one_line(exported, small_synthetic_root, tmp_path, capsys, key, value, expected):
    _, onnx_file = exported
    if value == "no quantile":
        value = _calibration_without_quantile(onnx_file)
    bad = _with_metadata(onnx_file, tmp_path / "tampered.onnx", **{key: value})
    assert _predict(bad, small_synthetic_root / "washer" / "test" / "good", tmp_path / "out") == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"error: {bad}: {expected}"), err
    assert err.rstrip().endswith("export it again with python -m adbench.export checkpoint=DIR output=FILE.onnx")


class _Foreign(torch.nn.Module):
    def forward(self, x):
        m = x.mean(1)
        return m.amax((1, 2)), m


def test_a_foreign_graph_with_copied_metadata_is_refused(exported, small_synthetic_root, tmp_path, capsys):
    _, onnx_file = exported
    foreign = export_mod.trace_onnx(_Foreign(), (128, 128), tmp_path / "foreign.onnx")
    meta = {e.key: e.value for e in onnx.load(str(onnx_file), load_external_data=False).metadata_props}
    _with_metadata(foreign, foreign, **meta)
    assert _predict(foreign, small_synthetic_root / "washer" / "test" / "good", tmp_path / "out") == 2
    assert "its graph does not match the graph_sha256 of its metadata" in one_line(capsys.readouterr().err)


def test_a_file_without_a_digest_is_refused(exported, small_synthetic_root, tmp_path, capsys):
    _, onnx_file = exported
    bad = _with_metadata(onnx_file, tmp_path / "old.onnx", graph_sha256=None)
    assert _predict(bad, small_synthetic_root / "washer" / "test" / "good", tmp_path / "out") == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {bad} has no graph_sha256 in its metadata")
