"""Download MVTec AD: resumable HTTP download (Range requests), SHA-256 check, safe extraction.

``python -m adbench.data download --root DIR [--category bottle ...]``

The official archive (``mvtec_anomaly_detection.tar.xz``, 5,264,982,680 bytes) is published by MVTec at
https://www.mvtec.com/company/research/datasets/mvtec-ad (CC BY-NC-SA 4.0, after accepting the licence there).
Its download link is a share link that MVTec has changed over time: the default below is the one in use in
2025/26; if it stops working, copy the current link from MVTec's page and pass ``--url`` (or set
``ADBENCH_MVTEC_URL``). The SHA-256 identifies the archive itself and does not change with the link.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from tqdm.auto import tqdm

from .mvtec import CATEGORIES, MVTEC_URL
from .staging import make_staging
from ..utils import write_text_atomic

DEFAULT_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/download/420938113-1629960298/"
               "mvtec_anomaly_detection.tar.xz")
DEFAULT_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
DEFAULT_SIZE = 5_264_982_680
ENV_URL, ENV_SHA256 = "ADBENCH_MVTEC_URL", "ADBENCH_MVTEC_SHA256"
MARKER = ".adbench_complete"
CHUNK = 1 << 20


class DownloadError(Exception):
    """Download, checksum or extraction failed; the message says what to do."""


@dataclass
class Archive:
    """One archive to fetch: its URL, file name, expected SHA-256 (None: not checked)."""

    url: str
    name: str
    sha256: str | None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="checksum",
                                     disable=not progress, file=sys.stderr, leave=False) as bar:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "adbench-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (restart when the server ignores Range). Raises OSError-likes."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part is complete (the checksum decides)
            return
        raise DownloadError(f"download failed: HTTP {err.code} {err.reason} for {url}; check the URL (--url or "
                            f"{ENV_URL}; the current link is on {MVTEC_URL})") from None
    with resp:
        length = resp.headers.get("Content-Length")
        if offset and resp.status == 206:
            crange = resp.headers.get("Content-Range", "")
            if not crange.startswith(f"bytes {offset}-"):
                raise DownloadError(f"server answered a resume request for {url} with Content-Range {crange!r}; "
                                    f"delete {part} and run again")
        elif offset:
            offset = 0  # 200 OK: the server sends the whole file again
        total = offset + int(length) if length is not None else None
        free = shutil.disk_usage(part.parent).free
        if length is not None and int(length) > free:
            raise DownloadError(f"not enough disk space in {part.parent}: {_human(int(length))} to download, "
                                f"{_human(free)} free; free some space or pass --root on another disk")
        with open(part, "ab" if offset else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".adbench.json")


def _write_record(dest: Path, archive: Archive) -> None:
    """Note beside a completed download that this tool wrote it, and its size (checked before reuse)."""
    record = {"url": archive.url, "size": dest.stat().st_size, "sha256": archive.sha256,
              "downloaded": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text_atomic(_record_path(dest), json.dumps(record))  # a temporary name of its own, then a rename


def downloaded_by_us(dest: Path) -> bool:
    """True when ``dest`` was completed by :func:`fetch` and still has the size it was downloaded with."""
    try:
        record = json.loads(_record_path(dest).read_text())
        return isinstance(record, dict) and record.get("size") == dest.stat().st_size
    except (OSError, ValueError):
        return False


def discard(dest: Path) -> None:
    """Delete an archive this tool downloaded, with its record."""
    dest.unlink(missing_ok=True)
    _record_path(dest).unlink(missing_ok=True)


def fetch(archive: Archive, directory: Path, progress: bool = True, retries: int = 3, retry_wait: float = 2.0,
          timeout: float = 60.0) -> Path:
    """Download ``archive`` into ``directory`` (resuming ``<name>.part``) and check its SHA-256.

    A finished download gets a record ``<name>.adbench.json`` (its size): :func:`download` deletes an archive
    of its own that fails to extract (so a truncated unverified one is fetched again, not reused forever) and
    never deletes one it did not download.
    """
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / archive.name
    part = directory / (archive.name + ".part")
    if dest.is_file():
        if archive.sha256 is None:
            print(f"using {dest} (already there; not verified: the extraction reads it to the end)")
            return dest
        if sha256_file(dest, progress) == archive.sha256:
            print(f"using {dest} (already downloaded, checksum ok)")
            return dest
        if not downloaded_by_us(dest):
            raise DownloadError(f"{dest} does not match the expected sha256 {archive.sha256} and was not downloaded "
                                f"by this tool, so it is left alone: move it away (or pass its --sha256), then run again")
        print(f"{dest} does not match its checksum: downloading it again", file=sys.stderr)
        discard(dest)
    if part.is_file():
        print(f"resuming {part} from {_human(part.stat().st_size)}")
    for attempt in range(retries + 1):
        try:
            _fetch_once(archive.url, part, progress, timeout)
            break
        except DownloadError:
            raise
        except (OSError, urllib.error.URLError, ConnectionError, EOFError, http.client.HTTPException) as err:
            have = part.stat().st_size if part.is_file() else 0
            reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            if attempt < retries:
                print(f"download interrupted at {_human(have)} ({reason}); retrying", file=sys.stderr)
                time.sleep(retry_wait * (attempt + 1))
                continue
            if have == 0:
                raise DownloadError(f"cannot download {archive.url} ({reason}); check the connection or the URL "
                                    f"(--url or {ENV_URL})") from None
            raise DownloadError(f"download of {archive.url} interrupted at {_human(have)} ({reason}); "
                                f"run the same command again to resume from {part}") from None
    if archive.sha256 is not None:
        got = sha256_file(part, progress)
        if got != archive.sha256.lower():
            part.unlink()
            raise DownloadError(f"checksum mismatch: {archive.name} from {archive.url} has sha256 {got}, expected "
                                f"{archive.sha256}; the file was deleted: run again, or pass --sha256 for another "
                                f"archive (--sha256 none skips the check)")
    part.rename(dest)
    _write_record(dest, archive)
    return dest


def _category_of(name: str, known: Iterable[str]) -> tuple[str | None, int]:
    """(category, index of its path part) of an archive member (``bottle/...``, ``./bottle/...``, ``x/bottle/...``)."""
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    for i, p in enumerate(parts[:2]):
        if p in known:
            return p, i
    return None, -1


def is_complete(root: Path, category: str) -> bool:
    """A category extracted by this tool, or any copy with train/, test/ and ground_truth/ folders."""
    c = root / category
    return (c / MARKER).is_file() or all((c / s).is_dir() for s in ("train", "test", "ground_truth"))


STAGING_PREFIX = ".adbench-extract"


class ExtractError(DownloadError):
    """The archive could not be extracted; nothing was moved into ROOT."""


def _check_extracted(folder: Path, category: str) -> None:
    if folder.is_symlink() or not folder.is_dir():
        raise ExtractError(f"the archive holds {category} as a file or link, not a folder")
    for sub in ("train", "test", "ground_truth"):
        p = folder / sub
        if p.is_symlink() or not p.is_dir():
            what = "a file where a folder is expected" if p.exists() else "missing"
            raise ExtractError(f"the archive's {category}/{sub} is {what}; it is not an MVTec AD category")


def extract(archive: Path, root: Path, categories: list[str], progress: bool = True) -> list[str]:
    """Extract ``categories`` from a (possibly compressed) tar into ``root/<category>``; returns those found.

    Members are streamed (one pass, to the end of the archive, so a truncated archive fails here), written with
    tarfile's ``data`` filter (no absolute paths, links out of the tree or device files) into a staging folder
    of this run, checked (train/, test/, ground_truth/ are folders) and only then moved into place. An existing
    ``root/<category>`` is never replaced or deleted. On any error the staging folder is removed and
    :class:`ExtractError` says why in one line.
    """
    staging = make_staging(root, STAGING_PREFIX)
    try:
        wanted = set(categories)
        found: set[str] = set()
        member = ""
        try:
            with open(archive, "rb") as raw, tqdm.wrapattr(raw, "read", total=archive.stat().st_size, desc="extract",
                                                            disable=not progress, file=sys.stderr, leave=False) as f:
                with tarfile.open(fileobj=f, mode="r|*") as tar:
                    for m in tar:
                        member = m.name
                        cat, idx = _category_of(m.name, CATEGORIES)
                        if cat is None or cat not in wanted or not (m.isfile() or m.isdir()):
                            continue
                        parts = [p for p in PurePosixPath(m.name).parts if p not in (".", "")]
                        m.name = "/".join(parts[idx:])  # drop a wrapper folder
                        tar.extract(m, staging, filter="data")
                        found.add(cat)
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as err:
            where = f" at member {member}" if member else ""
            raise ExtractError(f"cannot extract {archive}{where} ({type(err).__name__}: {err})") from None
        for cat in sorted(found):
            try:
                _check_extracted(staging / cat, cat)
            except ExtractError as err:
                raise ExtractError(f"cannot extract {archive}: {err}") from None
        for cat in sorted(found):
            dest = root / cat
            if dest.exists() or dest.is_symlink():
                raise ExtractError(f"{dest} appeared during the extraction; it is left alone: move it away and run again")
            (staging / cat).rename(dest)
            (dest / MARKER).write_text(json.dumps({"archive": archive.name, "extracted": time.strftime("%Y-%m-%d")}))
        return sorted(found)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_targets(root: Path, categories: list[str]) -> None:
    """Refuse (before any download) when ``root/<category>`` exists but is not a complete category: the tool
    neither deletes nor writes into a folder, file or link it did not make."""
    for c in categories:
        dest = root / c
        if dest.is_symlink():
            raise DownloadError(f"{dest} is a symbolic link (to {os.readlink(dest)}) without a complete {c} "
                                f"(train/, test/, ground_truth/); it is left alone: remove the link or point it at a "
                                f"complete copy, or pass another --root")
        if dest.exists():
            raise DownloadError(f"{dest} exists but is not a complete MVTec AD category (no train/, test/ and "
                                f"ground_truth/ folders) and was not made by this tool; it is left alone: move or "
                                f"rename it, or pass another --root, then run again")


def parse_categories(values: list[str] | None) -> list[str]:
    """``--category a --category b,c`` -> [a, b, c]; none: all 15; unknown names raise DownloadError."""
    if not values:
        return list(CATEGORIES)
    cats = [c.strip() for v in values for c in v.split(",") if c.strip()]
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise DownloadError(f"unknown category {bad[0]!r} (--category); known: {', '.join(CATEGORIES)}")
    return sorted(set(cats))


def plan(url: str, sha256: str | None, categories: list[str]) -> list[tuple[Archive, list[str]]]:
    """Archives to fetch and the categories each provides. A URL containing ``{category}`` is per category;
    its checksums come as ``--sha256 cat=HEX,cat=HEX`` (others unchecked)."""
    if "{category}" in url:
        sums = {}
        if sha256:
            for item in sha256.split(","):
                cat, sep, hexd = item.partition("=")
                if not sep:
                    raise DownloadError("with a per-category --url ({category}), pass --sha256 as cat=HEX,cat=HEX")
                cat = cat.strip()
                if cat not in CATEGORIES:
                    raise DownloadError(f"--sha256 {item}: unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
                sums[cat] = _hex(hexd, f"--sha256 {cat}=")
        out = []
        for c in categories:
            u = url.format(category=c)
            out.append((Archive(u, PurePosixPath(urllib.parse.urlparse(u).path).name or f"{c}.tar.xz", sums.get(c)),
                        [c]))
        return out
    if sha256 and "=" in sha256:
        raise DownloadError("--sha256 cat=HEX needs a per-category --url containing {category}")
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "mvtec_anomaly_detection.tar.xz"
    return [(Archive(url, name, _hex(sha256, "--sha256 ") if sha256 else None), categories)]


def _hex(value: str, option: str) -> str:
    """A SHA-256 given on the command line: 64 hex digits (checked before anything is downloaded)."""
    v = value.strip().lower()
    if len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v):
        raise DownloadError(f"{option}{value} is not a SHA-256 (64 hex digits); pass {option}HEX, or --sha256 none "
                            f"to skip the check")
    return v


def download(root: str | Path, categories: list[str] | None = None, url: str | None = None,
             sha256: str | None = "default", keep_archive: bool | None = None, progress: bool = True,
             retries: int = 3, retry_wait: float = 2.0, timeout: float = 60.0) -> list[str]:
    """Fetch and extract MVTec AD categories into ``root``; returns the categories now present.

    ``sha256``: ``"default"`` (the official archive's, or ``ADBENCH_MVTEC_SHA256``), a hex digest,
    ``cat=HEX,...`` for a per-category URL, or None / ``"none"`` to skip the check.
    ``keep_archive``: None keeps it only when some categories were left out (to extract them later).
    """
    root = Path(root).expanduser().resolve()
    cats = parse_categories(categories)
    url = url or os.environ.get(ENV_URL) or DEFAULT_URL
    if sha256 == "default":
        sha256 = os.environ.get(ENV_SHA256) or (None if "{category}" in url else DEFAULT_SHA256)
    if sha256 is not None and sha256.lower() == "none":
        sha256 = None
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"--root {root} cannot be created ({err.strerror}); pass --root DIR") from None
    if not os.access(root, os.W_OK):
        raise DownloadError(f"--root {root} is not writable; pass --root DIR")
    todo = [c for c in cats if not is_complete(root, c)]
    archives = [(a, w) for a, w in plan(url, sha256, todo) if w]  # options are checked before any fetch
    check_targets(root, todo)
    for c in sorted(set(cats) - set(todo)):
        print(f"{c}: already present in {root / c}")
    for archive, wanted in archives:
        if archive.sha256 is None:
            print(f"note: no checksum for {archive.name}; not verified (pass --sha256 HEX)", file=sys.stderr)
        path = fetch(archive, root, progress, retries, retry_wait, timeout)
        ours = downloaded_by_us(path)
        try:
            got = extract(path, root, wanted, progress)
        except ExtractError as err:
            if archive.sha256 is not None:
                raise DownloadError(f"{err}; the archive matches its checksum and is kept: check the free space in "
                                    f"{root}, then run again") from None
            if ours:
                discard(path)
                raise DownloadError(f"{err}; it was not verified (no --sha256) and is deleted: run the same command "
                                    f"again to download it again (pass --sha256 HEX to verify it)") from None
            raise DownloadError(f"{err}; it was not downloaded by this tool, so it is kept: replace or delete it, "
                                f"then run again") from None
        missing = sorted(set(wanted) - set(got))
        if missing:
            raise DownloadError(f"{path} holds no {', '.join(missing)} (it has: {', '.join(got) or 'no MVTec category'}); "
                                f"check --url")
        for c in got:
            print(f"{c}: extracted to {root / c}")
        per_category = "{category}" in url
        everything = all(is_complete(root, c) for c in CATEGORIES)
        keep = keep_archive if keep_archive is not None else not (per_category or everything)
        if keep:
            print(f"kept {path} for other categories (delete it when done)")
        elif ours:
            discard(path)
        else:
            print(f"left {path} in place (it was not downloaded by this tool)")
    return [c for c in cats if is_complete(root, c)]
