"""Nothing lost, nothing half-written: records, checkpoints and sweeps under faults (issue 13).

Kill tests SIGKILL a real ``python -m adbench`` child in the middle of a write; disk-full tests simulate ENOSPC at
the write and, where this machine lets root mount one, fill a real small tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from adbench.checkpoint import MANIFEST, load_checkpoint
from adbench.data.errors import ConfigError
from adbench.evaluate import compute_metrics
from adbench.results import load_runs, write_json_atomic
from adbench.utils import load_method_state

from .conftest import REPO, compose_cfg

PY = sys.executable


def _env() -> dict[str, str]:
    return {**os.environ, "ADBENCH_PROGRESS": "0", "PYTHONPATH": str(REPO)}


def _overrides(root: Path, results: Path, *extra: str) -> list[str]:
    """A seconds-long mean_image run on a small MVTec-layout copy of the synthetic washer category."""
    return ["method=mean_image", "dataset=mvtec", f"dataset.root={root}", "category=washer",
            "dataset.image_size=128", "dataset.crop_size=null", "dataset.batch_size=8", "dataset.num_workers=0",
            "progress=false", f"results_dir={results}", *extra]


def _copy_data(small_synthetic_root: Path, dest: Path) -> Path:
    shutil.copytree(small_synthetic_root / "washer", dest / "washer")
    return dest


def _run(overrides: list[str]) -> dict:
    from adbench.run import run

    return run(compose_cfg(overrides))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def good(tmp_path_factory, small_synthetic_root):
    """An ``ok`` run with a calibrated checkpoint: (data root, results dir, record, checkpoint dir)."""
    base = tmp_path_factory.mktemp("good")
    root = _copy_data(small_synthetic_root, base / "data")
    results = base / "results"
    rec = _run(_overrides(root, results, "save_model=true", "calibration.holdout=0.25"))
    return root, results, rec, Path(rec["checkpoint"])


@pytest.fixture
def results_copy(good, tmp_path):
    """A private copy of the good results folder (same config, same data) to damage."""
    root, results, rec, ckpt = good
    res = tmp_path / "results"
    shutil.copytree(results, res)
    rel_rec = Path(rec["path"]).relative_to(results)
    rel_ckpt = ckpt.relative_to(results)
    return root, res, res / rel_rec, res / rel_ckpt


# --- 1. a failure never replaces an ok record -----------------------------------------------------------------


def test_failed_job_never_replaces_an_ok_record(tmp_path, small_synthetic_root):
    root = _copy_data(small_synthetic_root, tmp_path / "data")
    results = tmp_path / "results"
    rec = _run(_overrides(root, results))
    path = Path(rec["path"])
    good_bytes = path.read_bytes()
    root.rename(tmp_path / "moved")  # the data moved away; the sweep is run again from scratch
    p = subprocess.run([PY, "-m", "adbench", "-m", *_overrides(root, results, "resume=false"),
                        f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert path.read_bytes() == good_bytes  # the ok record is untouched
    failed = path.with_name(path.stem + ".failed.json")
    frec = json.loads(failed.read_text())
    assert frec["status"] == "missing" and "dataset root not found" in frec["error"]
    assert "sweep finished: 1 jobs: 1 missing" in p.stdout
    assert f"the earlier ok result {path} is kept" in p.stdout
    assert list(load_runs(results)["path"]) == [str(path)]  # tables use the ok record only


# --- 3. checkpoints: temporary folder + rename; resume verifies -----------------------------------------------

_SLOW_SAVE = textwrap.dedent("""
    import os, sys, time
    import torch
    real = torch.save
    def slow_save(obj, f, *args, **kwargs):  # writes half of the file, says so, then waits to be killed
        if isinstance(f, (str, os.PathLike)):
            real(obj, f, *args, **kwargs)
            size = os.path.getsize(f)
            os.truncate(f, size // 2)
        else:
            import io
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
        open(os.environ["READY"], "w").close()
        time.sleep(600)
    torch.save = slow_save
    sys.argv = ["adbench", *sys.argv[1:]]
    from adbench.__main__ import main
    main()
""")


def test_kill_while_saving_a_checkpoint_keeps_the_old_one(results_copy, tmp_path):
    root, results, rec_path, ckpt = results_copy
    before = {f: _sha(ckpt / f) for f in _files(ckpt)}
    script = tmp_path / "slow_save.py"
    script.write_text(_SLOW_SAVE)
    ready = tmp_path / "ready"
    child = subprocess.Popen([PY, str(script), *_overrides(root, results, "save_model=true", "resume=false",
                                                           "calibration.holdout=0.25")],
                             cwd=REPO, env={**_env(), "READY": str(ready)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not ready.exists():
            assert child.poll() is None, "the child ended before writing the checkpoint"
            assert time.time() < deadline
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)  # in the middle of writing the method's file
    finally:
        child.kill()
        child.wait()
    assert {f: _sha(ckpt / f) for f in _files(ckpt)} == before  # the old checkpoint, byte for byte
    load_checkpoint(ckpt)  # loads
    out = _run(_overrides(root, results, "save_model=true", "resume=true", "calibration.holdout=0.25"))
    assert out.get("skipped")  # resume trusts it: it verified

    from adbench.checkpoint import verify_checkpoint
    from adbench.utils import write_dir_atomic

    assert verify_checkpoint(ckpt) is None
    # the next write of this checkpoint clears what the killed writer left beside it
    write_dir_atomic(ckpt, lambda tmp: (tmp / "x").write_text("x"))
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_resume_runs_again_when_the_checkpoint_does_not_verify(results_copy, damage, capsys):
    root, results, rec_path, ckpt = results_copy
    pt = ckpt / "mean_image.pt"
    if damage == "truncate":
        os.truncate(pt, pt.stat().st_size // 2)
    elif damage == "delete":
        pt.unlink()
    else:
        (ckpt / MANIFEST).write_text("{not json")
    out = _run(_overrides(root, results, "save_model=true", "resume=true", "calibration.holdout=0.25"))
    assert not out.get("skipped")
    assert "resume: not trusting the checkpoint" in capsys.readouterr().out
    from adbench.checkpoint import verify_checkpoint

    assert verify_checkpoint(ckpt) is None and load_checkpoint(ckpt)[1]["method"] == "mean_image"


def test_method_files_are_written_atomically(tmp_path, monkeypatch):
    """save_method_state: a failing write leaves the previous file and no temporary file."""
    from omegaconf import OmegaConf

    from adbench.utils import save_method_state

    cfg = OmegaConf.create({"name": "x"})
    path = tmp_path / "x.pt"
    save_method_state(path, "x", 1, cfg, bank=torch.zeros(4))
    old = path.read_bytes()
    real = torch.save

    def failing(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError):
        save_method_state(path, "x", 1, cfg, bank=torch.ones(4))
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


# --- 4. disk full -------------------------------------------------------------------------------------------


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["checkpoint", "record"])
def test_disk_full_simulated_one_line_exit_2_no_partial_file(tmp_path, small_synthetic_root, monkeypatch, capsys,
                                                            where):
    from adbench.__main__ import job

    root = _copy_data(small_synthetic_root, tmp_path / "data")
    results = tmp_path / "results"
    if where == "checkpoint":
        real = torch.save

        def full(obj, f, *a, **k):  # part of the file reaches the disk, then ENOSPC
            if isinstance(f, (str, os.PathLike)):
                Path(f).write_bytes(b"\0" * 100)
            else:
                f.write(b"\0" * 100)
            _enospc()

        monkeypatch.setattr(torch, "save", full)
        assert real is not full
    else:
        monkeypatch.setattr(json, "dump", _enospc)
    with pytest.raises(SystemExit) as exc:
        job(compose_cfg(_overrides(root, results, *(["save_model=true"] if where == "checkpoint" else []))))
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert "image_auroc" in out  # the metrics were shown before the write
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing "), err
    assert lines[0].endswith("free space or pass results_dir=DIR")
    assert ("checkpoints" in lines[0]) == (where == "checkpoint")
    left = _files(results)
    assert not any("tmp" in f or f.endswith(".pt") for f in left), left  # nothing partial
    assert not any(f.startswith("runs") for f in left), left  # no record claims a result


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 256 KiB tmpfs (root only); skips where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full_real_tmpfs(tiny_tmpfs, tmp_path, small_synthetic_root):
    root = _copy_data(small_synthetic_root, tmp_path / "data")
    p = subprocess.run([PY, "-m", "adbench", *_overrides(root, tiny_tmpfs, "save_model=true")], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "image_auroc" in p.stdout
    err = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "no space left on device writing " in err[0] and "checkpoints" in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert _files(tiny_tmpfs) == []  # no partial checkpoint, no temporary file, no record


# --- 8. a test set with only good images ------------------------------------------------------------------------


def test_only_good_test_images_give_null_metrics_and_say_why(tmp_path, small_synthetic_root, capsys):
    root = _copy_data(small_synthetic_root, tmp_path / "data")
    cat = root / "washer"
    for d in (cat / "test").iterdir():
        if d.name != "good":
            shutil.rmtree(d)
    shutil.rmtree(cat / "ground_truth", ignore_errors=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = _run(_overrides(root, tmp_path / "results"))
    assert not [w for w in caught if "sklearn" in (w.filename or "") or "positive" in str(w.message)], \
        [str(w.message) for w in caught]
    for k in ("image_auroc", "image_f1_max", "pixel_auroc", "aupro"):
        assert rec["metrics"][k] is None, (k, rec["metrics"])
    saved = json.loads(Path(rec["path"]).read_text())
    assert saved["metrics"]["image_f1_max"] is None
    out = capsys.readouterr().out
    assert "image_f1_max   null" in out or "image_f1_max  null" in out
    assert "the test set has only good images (6)" in out


def test_f1_max_without_anomalous_images_is_undefined_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(np.array([0.1, 0.5, 0.2]), None, np.array([0, 0, 0]), None)
    assert np.isnan(m["image_f1_max"]) and np.isnan(m["image_auroc"])


# --- 9 / 11. tampered or corrupt checkpoints --------------------------------------------------------------------


class _NotATensor:
    pass


def _damage(ckpt: Path, what: str) -> str:
    """Damage one file of ``ckpt``; returns the name the error line must contain."""
    pt = ckpt / "mean_image.pt"
    if what == "truncated_pt":
        os.truncate(pt, pt.stat().st_size // 2)
    elif what == "empty_pt":
        pt.write_bytes(b"")
    elif what == "pickle_pt":
        torch.save({"method": "mean_image", "x": _NotATensor()}, pt)
    elif what == "calibration":
        (ckpt / "calibration.json").write_text("{\"threshold\": ")
        return "calibration.json"
    elif what == "nan_threshold":
        cal = json.loads((ckpt / "calibration.json").read_text())
        cal["threshold"] = float("nan")
        (ckpt / "calibration.json").write_text(json.dumps(cal))
        return "calibration.json"
    elif what == "config":
        (ckpt / "config.yaml").write_text("method: [unclosed\n  : :")
        return "config.yaml"
    elif what == "manifest_list":
        (ckpt / MANIFEST).write_text("[]")
        return MANIFEST
    elif what == "manifest_keys":
        m = json.loads((ckpt / MANIFEST).read_text())
        del m["out_size"]
        (ckpt / MANIFEST).write_text(json.dumps(m))
        return MANIFEST
    return "mean_image.pt"


DAMAGES = ["truncated_pt", "empty_pt", "pickle_pt", "calibration", "nan_threshold", "config", "manifest_list",
           "manifest_keys"]


@pytest.mark.parametrize("legacy", [False, True], ids=["manifest", "no-file-list"])
@pytest.mark.parametrize("what", DAMAGES)
def test_corrupt_checkpoint_is_one_line_naming_the_file(results_copy, tmp_path, capsys, what, legacy):
    from adbench.predict import main as predict_main

    root, results, rec_path, ckpt = results_copy
    if legacy:  # a checkpoint whose manifest lists no files: each reader must still say what is wrong
        m = json.loads((ckpt / MANIFEST).read_text())
        m.pop("files", None)
        (ckpt / MANIFEST).write_text(json.dumps(m))
    name = _damage(ckpt, what)
    code = predict_main([f"checkpoint={ckpt}", f"input={root / 'washer' / 'test' / 'good'}",
                         f"output={tmp_path / 'pred'}", "device=cpu", "progress=false"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err
    assert "weights_only" not in err and "Traceback" not in err


def test_nan_threshold_at_load_names_the_value(results_copy):
    from adbench.calibration import Calibration

    _, _, _, ckpt = results_copy
    _damage(ckpt, "nan_threshold")
    with pytest.raises(ConfigError, match=r"calibration.json: threshold is nan, not a finite number"):
        Calibration.load(ckpt)


def test_pickle_payload_is_refused_without_torch_advice(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"method": "m", "version": 1, "x": _NotATensor()}, path)
    with pytest.raises(ConfigError) as exc:
        load_method_state(path, "m", 1)
    assert str(path) in str(exc.value) and "weights_only" not in str(exc.value)


# --- 12 / 15. records that are not objects or cannot be read ------------------------------------------------------


def test_record_that_is_not_an_object_is_skipped_with_a_warning(results_copy, capsys):
    from adbench.results import main as results_main

    root, results, rec_path, _ = results_copy
    bad = rec_path.with_name("seed1-000000000000.json")
    bad.write_text("[]")
    df = load_runs(results)
    assert list(df["path"]) == [str(rec_path)]
    assert f"warning: {bad} is not a run record (a JSON list, not an object); skipped" in capsys.readouterr().err
    assert results_main(["--results-dir", str(results)]) == 0
    rec_path.write_text("[]")  # resume over a record that is a list: a warning, then the run
    out = _run(_overrides(root, results, "resume=true", "calibration.holdout=0.25"))
    assert not out.get("skipped") and json.loads(rec_path.read_text())["status"] == "ok"
    assert "is not a run record" in capsys.readouterr().err


def test_records_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_json_atomic(tmp_path / "r.json", {"status": "ok"})
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o002)
        p = write_json_atomic(tmp_path / "r2.json", {"status": "ok"})
        assert p.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_unreadable_record_is_named_not_skipped_silently(results_copy, monkeypatch, capsys):
    _, results, rec_path, _ = results_copy
    real = Path.read_text

    def read_text(self, *a, **k):
        if self == rec_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert load_runs(results).empty
    assert f"warning: cannot read {rec_path} (Permission denied); skipped" in capsys.readouterr().err


# --- 14. two sweeps in the same second ----------------------------------------------------------------------------

_FIXED_NOW = textwrap.dedent("""
    import sys
    from datetime import datetime
    import hydra.core.utils as hu
    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 1, 2, 3, 4, 5)
    hu.datetime = Fixed  # every sweep of this test starts "in the same second"
    sys.argv = ["adbench", *sys.argv[1:]]
    from adbench.__main__ import main
    main()
""")


def test_two_sweeps_in_the_same_second_get_their_own_folders(tmp_path, small_synthetic_root):
    root = _copy_data(small_synthetic_root, tmp_path / "data")
    script = tmp_path / "fixed_now.py"
    script.write_text(_FIXED_NOW)
    outs = []
    for i in range(2):
        p = subprocess.run([PY, str(script), "-m", *_overrides(root, tmp_path / f"results{i}")], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(p.stdout)
    sweeps = sorted((tmp_path / "multirun" / "2026-01-02").iterdir())
    assert len(sweeps) == 2 and all(s.name.startswith("03-04-05-") for s in sweeps), sweeps
    for out in outs:
        assert "sweep finished: 1 jobs: 1 ok" in out, out
