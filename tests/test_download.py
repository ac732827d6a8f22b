"""MVTec download against a local HTTP server (127.0.0.1): progress, resume via Range, checksum, extraction."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from adbench.data import MVTecDataModule
from adbench.data.download import DownloadError, download

from .conftest import REPO
from .test_data import make_mvtec


def make_archive(tmp: Path, categories=("bottle", "cable"), wrapper: str = "") -> bytes:
    """A small tar.xz in the official layout: <category>/{train,test,ground_truth}/..., plus a licence file."""
    src = tmp / "src"
    for c in categories:
        make_mvtec(src, c)
    (src / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for p in sorted(src.iterdir()):
            tar.add(p, arcname=f"{wrapper}{p.name}")
    return buf.getvalue()


class Server:
    """Serves ``files`` (path -> bytes) with Range support; can drop the first connection after ``cut`` bytes."""

    def __init__(self, files: dict[str, bytes], cut: int | None = None) -> None:
        self.files, self.cut, self.requests = files, cut, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut is not None:
                    body, server.cut = body[: server.cut], None  # drop this connection early, once
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def archive(tmp_path) -> bytes:
    return make_archive(tmp_path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_checks_extracts_and_loads(tmp_path, archive):
    root = tmp_path / "mvtec"
    with Server({"/mvtec_anomaly_detection.tar.xz": archive}) as srv:
        got = download(root, ["bottle"], url=f"{srv.url}/mvtec_anomaly_detection.tar.xz", sha256=_sha(archive),
                       progress=False, retry_wait=0)
    assert got == ["bottle"]
    assert not (root / "cable").exists()  # only the asked category is extracted
    assert (root / "mvtec_anomaly_detection.tar.xz").is_file()  # kept: other categories may follow
    d = MVTecDataModule(root, "bottle", image_size=32, crop_size=None).setup()
    assert len(d.train_samples) == 3 and len(d.test_samples) == 4
    # the kept archive serves the next category without the network
    assert download(root, ["cable"], url="http://127.0.0.1:9/mvtec_anomaly_detection.tar.xz", sha256=_sha(archive), progress=False,
                    retries=0) == ["cable"]


def test_resume_after_dropped_connection(tmp_path, archive):
    root = tmp_path / "mvtec"
    url_path = "/mvtec_anomaly_detection.tar.xz"
    with Server({url_path: archive}, cut=len(archive) // 3) as srv:
        with pytest.raises(DownloadError, match="interrupted at .*run the same command again to resume"):
            download(root, ["bottle"], url=srv.url + url_path, sha256=_sha(archive), progress=False, retries=0)
        part = root / "mvtec_anomaly_detection.tar.xz.part"
        assert part.stat().st_size == len(archive) // 3
        download(root, ["bottle"], url=srv.url + url_path, sha256=_sha(archive), progress=False, retries=0)
    assert srv.requests[-1] == (url_path, f"bytes={len(archive) // 3}-")  # resumed, not restarted
    assert (root / "bottle" / "train" / "good").is_dir() and not part.exists()


def test_automatic_retry_resumes_within_one_call(tmp_path, archive):
    with Server({"/a.tar.xz": archive}, cut=100) as srv:
        download(tmp_path, ["cable"], url=srv.url + "/a.tar.xz", sha256=_sha(archive), progress=False, retries=2,
                 retry_wait=0)
    assert [r for _, r in srv.requests] == [None, "bytes=100-"]
    assert (tmp_path / "cable" / "ground_truth" / "crack").is_dir()


def test_checksum_mismatch_deletes_and_says_so(tmp_path, archive):
    with Server({"/a.tar.xz": archive}) as srv:
        with pytest.raises(DownloadError, match="checksum mismatch: a.tar.xz .*expected 0000") as info:
            download(tmp_path, ["bottle"], url=srv.url + "/a.tar.xz", sha256="0" * 64, progress=False, retries=0)
    assert "\n" not in str(info.value)
    assert not list(tmp_path.glob("a.tar.xz*")) and not (tmp_path / "bottle").exists()


def test_http_error_and_missing_category_and_unknown_category(tmp_path, archive):
    with Server({"/a.tar.xz": archive}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404 .*--url"):
            download(tmp_path, ["bottle"], url=srv.url + "/nope.tar.xz", sha256=None, progress=False, retries=0)
        with pytest.raises(DownloadError, match="holds no zipper .*has: $|holds no zipper"):
            download(tmp_path, ["zipper"], url=srv.url + "/a.tar.xz", sha256=None, progress=False, retries=0)
    with pytest.raises(DownloadError, match="unknown category 'bottel' .*known: bottle"):
        download(tmp_path, ["bottel"], progress=False)


def test_wrapper_folder_and_per_category_urls(tmp_path):
    wrapped = make_archive(tmp_path / "w", ("bottle",), wrapper="mvtec_anomaly_detection/")
    per_cat = make_archive(tmp_path / "p", ("cable",))
    with Server({"/bottle.tar.xz": wrapped, "/cable.tar.xz": per_cat}) as srv:
        got = download(tmp_path / "root", ["bottle", "cable"], url=srv.url + "/{category}.tar.xz",
                       sha256=f"bottle={_sha(wrapped)},cable={_sha(per_cat)}", progress=False, retries=0)
    assert got == ["bottle", "cable"]
    assert (tmp_path / "root" / "bottle" / "train" / "good" / "000.png").is_file()
    assert not list((tmp_path / "root").glob("*.tar.xz"))  # per-category archives are removed after extraction


def test_unsafe_member_is_not_written_outside_root(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        info = tarfile.TarInfo("bottle/../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    data = buf.getvalue()
    with Server({"/a.tar.xz": data}) as srv:
        with pytest.raises(DownloadError, match="cannot extract"):
            download(tmp_path / "root", ["bottle"], url=srv.url + "/a.tar.xz", sha256=_sha(data), progress=False,
                     retries=0)
    assert not (tmp_path / "evil.txt").exists()


def test_cli_progress_bar(tmp_path, archive):
    with Server({"/a.tar.xz": archive}) as srv:
        p = subprocess.run([sys.executable, "-m", "adbench.data", "download", "--root", str(tmp_path / "r"),
                            "--category", "bottle", "--url", srv.url + "/a.tar.xz", "--sha256", _sha(archive)],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "ADBENCH_PROGRESS": "1"})
    assert p.returncode == 0, p.stderr
    assert "a.tar.xz" in p.stderr and "100%" in p.stderr  # tqdm bar on stderr
    assert "ready: bottle" in p.stdout


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    from adbench.data.__main__ import main

    assert main(["download", "--root", str(tmp_path / "r"), "--category", "bottel"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown category 'bottel' (--category); known: bottle")


# Never delete what the tool did not create; one line, no traceback, no staging folder left (issue 13) ---------


def _no_staging(root: Path) -> bool:
    return not list(root.glob(".adbench-extract*"))


def test_existing_user_folder_is_refused_before_download(tmp_path, archive):
    root = tmp_path / "mvtec"
    notes = root / "bottle" / "my_notes" / "labels.csv"
    notes.parent.mkdir(parents=True)
    notes.write_text("000.png,ok\n")
    with Server({"/a.tar.xz": archive}) as srv:
        with pytest.raises(DownloadError) as info:
            download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256=_sha(archive), progress=False, retries=0)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{root / 'bottle'} exists but is not a complete MVTec AD category")
    assert "left alone: move or rename it, or pass another --root" in msg
    assert srv.requests == []  # refused before fetching anything
    assert notes.read_text() == "000.png,ok\n" and sorted(p.name for p in (root / "bottle").iterdir()) == ["my_notes"]


@pytest.mark.parametrize("target", ["empty_dir", "dangling"])
def test_symlinked_category_folder_is_left_alone(tmp_path, archive, target):
    root = tmp_path / "mvtec"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    if target == "empty_dir":
        elsewhere.mkdir()
    os.symlink(elsewhere, root / "bottle")
    with Server({"/a.tar.xz": archive}) as srv:
        with pytest.raises(DownloadError) as info:
            download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256=_sha(archive), progress=False, retries=0)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{root / 'bottle'} is a symbolic link (to {elsewhere})")
    assert (root / "bottle").is_symlink() and os.readlink(root / "bottle") == str(elsewhere)
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []
    assert _no_staging(root)


def _tar(members: list[tuple[str, bytes | None]]) -> bytes:
    """A tar.xz from (name, data) pairs; data None makes a folder."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("members, expected", [
    ([("bottle", b"not a folder")], "the archive holds bottle as a file or link, not a folder"),
    ([("bottle/train", b"x"), ("bottle/test", None), ("bottle/ground_truth", None)],
     "the archive's bottle/train is a file where a folder is expected"),
    ([("bottle/train", b"x"), ("bottle/train/good/000.png", b"png")], "cannot extract .* at member bottle/train/good/000.png"),
])
def test_member_file_where_folder_expected_is_one_line(tmp_path, members, expected):
    data = _tar(members)
    root = tmp_path / "mvtec"
    with Server({"/a.tar.xz": data}) as srv:
        with pytest.raises(DownloadError, match=expected) as info:
            download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256=_sha(data), progress=False, retries=0)
    assert "\n" not in str(info.value) and "matches its checksum and is kept" in str(info.value)
    assert not (root / "bottle").exists() and _no_staging(root)


@pytest.mark.parametrize("sha, url_path", [("xyz", "/a.tar.xz"), ("0" * 63, "/a.tar.xz"),
                                           ("bottle=xyz", "/{category}.tar.xz"), ("bottel=" + "0" * 64, "/{category}.tar.xz")])
def test_bad_sha256_is_refused_before_download(tmp_path, archive, sha, url_path):
    with Server({"/a.tar.xz": archive, "/bottle.tar.xz": archive}) as srv:
        with pytest.raises(DownloadError, match=r"--sha256 .*(is not a SHA-256 \(64 hex digits\)|unknown category)"):
            download(tmp_path / "r", ["bottle"], url=srv.url + url_path, sha256=sha, progress=False, retries=0)
    assert srv.requests == [] and not list((tmp_path / "r").iterdir())


def test_cli_bad_sha256_one_line(tmp_path, capsys):
    from adbench.data.__main__ import main

    assert main(["download", "--root", str(tmp_path / "r"), "--category", "bottle", "--sha256", "xyz",
                 "--url", "http://127.0.0.1:9/a.tar.xz", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --sha256 xyz is not a SHA-256 (64 hex digits); pass --sha256 HEX, or --sha256 none to skip the check\n"


def test_truncated_unverified_archive_is_not_reused(tmp_path, archive):
    root = tmp_path / "mvtec"
    files = {"/a.tar.xz": archive[: len(archive) // 2]}  # the server itself sends a truncated file
    with Server(files) as srv:
        with pytest.raises(DownloadError) as info:
            download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256="none", progress=False, retries=0)
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"cannot extract {root / 'a.tar.xz'}")
        assert "not verified (no --sha256) and is deleted: run the same command again to download it again" in msg
        assert not list(root.glob("a.tar.xz*")) and not (root / "bottle").exists() and _no_staging(root)
        files["/a.tar.xz"] = archive  # the next run downloads it again instead of reusing the broken file
        assert download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256="none", progress=False,
                         retries=0) == ["bottle"]
    assert len(srv.requests) == 2


def test_archive_placed_by_the_user_is_never_deleted(tmp_path, archive):
    root = tmp_path / "mvtec"
    root.mkdir()
    mine = root / "a.tar.xz"
    mine.write_bytes(archive[: len(archive) // 2])
    with pytest.raises(DownloadError, match="not downloaded by this tool, so it is kept") as info:
        download(root, ["bottle"], url="http://127.0.0.1:9/a.tar.xz", sha256="none", progress=False, retries=0)
    assert "\n" not in str(info.value) and mine.is_file() and _no_staging(root)
    with pytest.raises(DownloadError, match="does not match the expected sha256 .* left alone"):
        download(root, ["bottle"], url="http://127.0.0.1:9/a.tar.xz", sha256=_sha(archive), progress=False, retries=0)
    assert mine.read_bytes() == archive[: len(archive) // 2]
    mine.write_bytes(archive)  # a good archive of the user's: used, and kept after all its categories are out
    assert download(root, ["bottle"], url="http://127.0.0.1:9/a.tar.xz", sha256=_sha(archive), progress=False,
                    retries=0) == ["bottle"]
    assert mine.is_file()


def test_staging_of_a_killed_run_is_cleaned_and_foreign_folders_kept(tmp_path, archive, monkeypatch):
    from adbench.utils import temp_name

    root = tmp_path / "mvtec"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with monkeypatch.context() as m:  # the name a run of this machine with that (now dead) pid gave its folder
        m.setattr(os, "getpid", lambda: dead.pid)
        stale = root / temp_name(".adbench-extract")
    stale.mkdir(parents=True)
    foreign = root / ".adbench-extract-mine"
    (foreign / "keep.txt").parent.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with Server({"/a.tar.xz": archive}) as srv:
        download(root, ["bottle"], url=srv.url + "/a.tar.xz", sha256=_sha(archive), progress=False, retries=0)
    assert not stale.exists() and (foreign / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in root.glob(".adbench-extract*")) == [".adbench-extract-mine"]


def test_nothing_is_fetched_when_every_asked_category_is_present(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", "bottle")
    assert download(root, ["bottle"], url="http://127.0.0.1:9/a.tar.xz", progress=False, retries=0) == ["bottle"]
