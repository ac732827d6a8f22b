"""Temporary names that are unique across hosts and pid namespaces, and synthetic variants generated side by side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adbench import utils
from adbench.data import staging, synthetic
from adbench.data.synthetic import SyntheticDataModule, generate_category

SMALL = dict(n_train=2, n_test_good=1, n_per_defect=2, synth_size=32)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- case 5: a run removes only what it made, or what is provably stale --------------------------------------------

def test_checkpoint_staging_of_a_same_pid_run_on_another_host_survives(tmp_path, monkeypatch):
    """Two runs of one config, each pid N in its own pid namespace (host token differs): the second one's write of
    the checkpoint folder must neither reuse nor clean up the first one's staging folder while it is being filled."""
    target = tmp_path / "checkpoints" / "run"
    seen = {}

    def second_run(tmp: Path) -> None:
        (tmp / "weights.pt").write_text("second")

    def first_run(tmp: Path) -> None:
        (tmp / "weights.pt").write_text("first, part 1")
        with monkeypatch.context() as m:  # the same pid number, another host / container
            m.setattr(socket, "gethostname", lambda: "node-b")
            utils.write_dir_atomic(target, second_run)
        seen["staging_after_second"] = tmp.is_dir() and (tmp / "weights.pt").read_text()
        (tmp / "metrics.json").write_text("first, part 2")

    utils.write_dir_atomic(target, first_run)
    assert seen["staging_after_second"] == "first, part 1"
    assert (target / "weights.pt").read_text() == "first, part 1"
    assert (target / "metrics.json").read_text() == "first, part 2"
    assert [p.name for p in target.parent.iterdir()] == ["run"]  # neither run left a temporary folder


def test_staging_of_another_pid_namespace_with_the_hostname_survives_cleanup(tmp_path, monkeypatch):
    """A container sharing the host name (``--uts=host``), whose pid is dead in this namespace: its staging folder is
    not provably stale here and must survive this run's cleanup; a killed run of this namespace is removed."""
    pid = _dead_pid()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: pid)
        m.setattr(utils, "_pid_namespace", lambda: "pid:[4026530000]", raising=False)
        theirs = staging.make_staging(tmp_path, ".adbench-extract")
        (theirs / "bottle").mkdir()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: pid)
        killed = staging.make_staging(tmp_path, ".adbench-extract")  # this namespace, process gone
    mine = staging.make_staging(tmp_path, ".adbench-extract")
    assert theirs.is_dir() and (theirs / "bottle").is_dir()
    assert not killed.exists() and mine.is_dir()
    assert socket.gethostname().replace("~", "_")[:8] in mine.name and f"-{os.getpid()}-" in mine.name


def test_stale_rules(tmp_path, monkeypatch):
    """Same machine and namespace + dead pid: stale. Another machine: only after ``STALE_AFTER_S`` untouched. Names
    adbench did not make are never stale. Leftovers of older adbench versions (``.x.tmp-<pid>``) go by age."""
    me = utils.temp_name(".x.tmp")
    assert f"-{os.getpid()}-" in me and me != utils.temp_name(".x.tmp")
    (tmp_path / me).mkdir()
    with monkeypatch.context() as m:
        m.setattr(os, "getpid", lambda: _dead_pid())
        dead = tmp_path / utils.temp_name(".x.tmp")
        m.setattr(socket, "gethostname", lambda: "elsewhere")
        foreign = tmp_path / utils.temp_name(".x.tmp")
    legacy, users = tmp_path / ".x.tmp-12345", tmp_path / ".x.tmp-notes"
    for d in (dead, foreign, legacy, users):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text("x")
    utils.remove_stale_temps(tmp_path, ".x.tmp")
    assert not dead.exists()
    assert {p.name for p in tmp_path.iterdir()} == {me, foreign.name, legacy.name, users.name}
    old = 1_000_000_000  # 2001: untouched for far longer than STALE_AFTER_S
    for d in (foreign, legacy, users):
        for p in (d / "sub" / "f", d / "sub", d):
            os.utime(p, (old, old))
    os.utime(legacy / "sub" / "f", None)  # one file written just now: someone still works there
    utils.remove_stale_temps(tmp_path, ".x.tmp")
    assert {p.name for p in tmp_path.iterdir()} == {me, legacy.name, users.name}


def test_probe_and_file_temporaries_are_unique(tmp_path, monkeypatch):
    names = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (names.append(Path(a).name), real(a, b)))
    utils.torch_save_atomic({"a": 1}, tmp_path / "state.pt")
    utils.torch_save_atomic({"a": 2}, tmp_path / "state.pt")
    assert len(set(names)) == 2 and all(socket.gethostname().replace("~", "_")[:8] in n for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert utils.ensure_writable_dir(tmp_path / "w", "results_dir") == tmp_path / "w"


# -- case 6: generator settings side by side on one root -----------------------------------------------------------

def _masks(dm: SyntheticDataModule) -> dict[str, np.ndarray]:
    return {s.path.relative_to(dm.root).as_posix(): np.asarray(Image.open(s.mask_path))
            for s in dm.test_samples if s.mask_path is not None}


def test_concurrent_generator_settings_on_one_root_each_read_their_own_data(tmp_path):
    """A sweep over ``dataset.generator.seed`` / ``defect_scale`` on one root: every job gets its own data, also
    after the other jobs generated theirs."""
    settings = [dict(generator_seed=0), dict(generator_seed=1), dict(generator_seed=1, defect_scale=0.5),
                dict(generator_seed=2, n_per_defect=1)]
    start = threading.Barrier(len(settings))
    dms, errors = [None] * len(settings), []

    def job(i: int) -> None:
        try:
            kw = {**SMALL, **settings[i]}
            start.wait()
            dms[i] = SyntheticDataModule(tmp_path / "shared", "washer", image_size=32, crop_size=None, **kw).setup()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (dm, kw) in enumerate(zip(dms, settings)):
        kw = {**SMALL, **kw}
        ref = generate_category(tmp_path / f"ref{i}", "washer", seed=kw["generator_seed"], n_train=kw["n_train"],
                                n_test_good=kw["n_test_good"], n_per_defect=kw["n_per_defect"], size=kw["synth_size"],
                                defect_scale=kw.get("defect_scale", 1.0))
        got = _masks(dm)  # read after every job finished: nothing replaced this job's data
        assert len(got) == 3 * kw["n_per_defect"]
        for rel, mask in got.items():
            kind, stem = rel.split("/")[-2:]
            expected = np.asarray(Image.open(ref / "ground_truth" / kind / stem.replace(".png", "_mask.png")))
            assert np.array_equal(mask, expected), (i, rel)
        marker = json.loads((dm.root / "washer" / ".adbench_synthetic.json").read_text())
        assert marker["seed"] == kw["generator_seed"] and marker.get("defect_scale", 1.0) == kw.get("defect_scale", 1.0)
    from adbench.data.synthetic import variant_root

    base = tmp_path / "shared"  # the first to generate got base/washer, each other one base/<its settings>/washer
    assert sorted(dm.root == base for dm in dms) == [False, False, False, True]
    for dm, kw in zip(dms, settings):
        kw = {**SMALL, **kw}
        assert dm.root in (base, variant_root(base, seed=kw["generator_seed"], n_train=kw["n_train"],
                                              n_test_good=kw["n_test_good"], n_per_defect=kw["n_per_defect"],
                                              size=kw["synth_size"], defect_scale=kw.get("defect_scale", 1.0)))


def test_same_settings_at_once_generate_once(tmp_path, monkeypatch):
    calls = []
    real = synthetic._write_category

    def slow(*args, **kwargs):
        calls.append(1)
        threading.Event().wait(0.3)  # a wide window for a second generation to start
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_category", slow)
    start = threading.Barrier(3)
    errors = []

    def job() -> None:
        try:
            start.wait()
            SyntheticDataModule(tmp_path, "weave", image_size=32, crop_size=None, generator_seed=5, **SMALL).setup()
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1


def _generate_in_a_process(root: str, log: str) -> None:
    real = synthetic._write_category

    def logged(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        threading.Event().wait(0.3)
        return real(*args, **kwargs)

    synthetic._write_category = logged
    SyntheticDataModule(root, "washer", image_size=32, crop_size=None, generator_seed=7, **SMALL).setup()


def test_same_settings_in_two_processes_generate_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    log = tmp_path / "generations.log"
    procs = [ctx.Process(target=_generate_in_a_process, args=(str(tmp_path / "root"), str(log))) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1


def test_a_users_folder_at_a_variant_path_is_left_alone(tmp_path):
    from adbench.data.errors import DataError

    from adbench.data.synthetic import variant_root

    SyntheticDataModule(tmp_path, "washer", image_size=32, crop_size=None, **SMALL).setup()  # root/washer: taken
    dm = SyntheticDataModule(tmp_path, "washer", image_size=32, crop_size=None, generator_seed=3, **SMALL)
    own = variant_root(tmp_path, seed=3, size=32, n_train=2, n_test_good=1, n_per_defect=2)
    mine = own / "washer" / "train" / "good"
    mine.mkdir(parents=True)
    (mine / "keep.png").write_bytes(b"user data")
    with pytest.raises(DataError, match="was not generated by adbench"):
        dm.setup()
    assert (mine / "keep.png").read_bytes() == b"user data"
