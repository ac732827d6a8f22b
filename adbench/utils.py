"""Small helpers shared by the harness and the methods: seeding, devices, progress bars, memory."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import pickle
import random
import re
import resource
import secrets
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error naming the option."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .data.errors import ConfigError

        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return dev


def progress(it: Iterable[T], desc: str, enabled: bool = True, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm progress bar on stderr, off when ``enabled`` is False or ADBENCH_PROGRESS=0."""
    disable = (not enabled) or os.environ.get("ADBENCH_PROGRESS", "1") == "0"
    return tqdm(it, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr, leave=False, dynamic_ncols=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (this program's own memory; ``ru_maxrss`` survives ``exec`` and so
    reports at least the RSS of the parent that spawned it); elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def torch_load(path: str | Path, device: torch.device | str = "cpu", fix: str = "retrain with save_model=true") -> dict:
    """``torch.load`` of a file written by adbench (tensors, numbers, strings only: ``weights_only=True``).

    A truncated, empty or foreign file (e.g. a pickle of arbitrary objects) raises ConfigError with one line
    naming the file; torch's own text (which suggests ``weights_only=False``) is never passed on.
    """
    from .data.errors import ConfigError

    path = Path(path)
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ConfigError(f"cannot read {path} ({err.strerror or type(err).__name__})") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError, AttributeError, TypeError,
            ImportError, IndexError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        what = "empty" if path.stat().st_size == 0 else (
            "holds objects other than tensors and numbers" if isinstance(err, pickle.UnpicklingError) and
            "weights_only" in str(err) else "truncated or corrupt")
        raise ConfigError(f"{path} is not a readable adbench file: {what} ({type(err).__name__}); "
                          f"{fix}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not an adbench file (it holds a {type(state).__name__}, not a dict); {fix}")
    return state


def file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[Any], None]) -> Path:
    """``write(f)`` into a text file beside ``path`` (unique name, the umask's mode), fsync, then rename over
    ``path``: ``path`` holds the old file or the complete new one, never a part. A failed write raises (OSError
    ENOSPC on a full disk) and leaves no temporary file."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_atomic` of a string."""
    return write_atomic(path, lambda f: f.write(text))


class _SavedErrors:
    """A binary file wrapper that writes everything it is given and remembers the OSError of a failed write
    (torch's zip writer turns it into a RuntimeError without the errno)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                n = self.f.write(view)
                view = view[n:]
        except OSError as err:
            self.error = err
            raise
        return len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes

    def flush(self) -> None:
        self.f.flush()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over ``path``: ``path`` holds the
    old file or the complete new one, never a part. A failed write raises OSError (ENOSPC on a full disk) and
    leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = f".{path.name}.tmp"
    remove_stale_temps(path.parent, stem)  # left by a killed writer
    tmp = path.with_name(temp_name(stem))
    try:
        with open(tmp, "wb", buffering=0) as raw:
            f = _SavedErrors(raw)
            try:
                torch.save(obj, f)
            except RuntimeError:
                if f.error is not None:
                    raise f.error from None
                raise
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_method_state(path: str | Path, method: str, version: int, cfg: Any, **payload: Any) -> None:
    """Write a method's own checkpoint file: its name, format ``version``, resolved config (JSON) and ``payload``
    (atomically: temporary file + rename)."""
    from omegaconf import OmegaConf

    config = json.dumps(OmegaConf.to_container(cfg, resolve=True))
    torch_save_atomic({"method": method, "version": version, "config": config, **payload}, path)


def load_method_state(path: str | Path, method: str, version: int) -> tuple[dict, Any]:
    """A file written by :func:`save_method_state`, checked (it exists, is readable, was written by ``method``,
    at format ``version``) -> (its state dict, its config as a DictConfig)."""
    from omegaconf import OmegaConf

    from .data.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {method} checkpoint at {path}")
    state = torch_load(path)
    if state.get("method") != method:
        raise ConfigError(f"{path} is a checkpoint of method {state.get('method')!r}, not {method!r}")
    if state.get("version") != version:
        raise ConfigError(f"{path} has checkpoint version {state.get('version')}, this adbench reads {version}")
    try:
        config = json.loads(state["config"])
        if not isinstance(config, dict):
            raise ValueError("not an object")
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{path} has no readable config ({type(err).__name__}); retrain with save_model=true") from None
    return state, OmegaConf.create(config)


# Temporary files and folders. Their names say who made them: ``<stem>-<host>~<machine>-<pid>-<random>``, where
# <machine> hashes the host name, the boot id and the pid namespace, so two runs with the same pid number in two
# containers or on two nodes sharing a disk never get the same name. A run removes what it made, and a leftover of
# someone else only when it is provably stale: made on this machine, in this pid namespace, by a process that no
# longer runs; anything else (another node, another container, an older adbench's ``<stem>-<pid>``) only after
# nothing in it changed for STALE_AFTER_S: no adbench writer keeps a temporary for a week without touching it, and
# a node or container that may still be writing cannot be asked.

STALE_AFTER_S = 7 * 24 * 3600
_LEGACY_MARKER = ".adbench-staging.json"  # what staging folders of older adbench versions held


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """8 hex digits telling this host, boot and pid namespace apart from any other sharing a folder."""
    key = "\0".join((socket.gethostname(), _boot_id(), _pid_namespace()))
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _host_label() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:32] or "host"


def temp_name(stem: str) -> str:
    """A name for a temporary file or folder that no other process, on any host or in any container, gets:
    ``<stem>-<host>~<machine>-<pid>-<random>``."""
    return f"{stem}-{_host_label()}~{_machine()}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner(name: str, stem: str) -> tuple[str, int] | None:
    """(machine, pid) of a name made by :func:`temp_name` with ``stem``; None for any other name."""
    if not name.startswith(stem + "-"):
        return None
    parts = name[len(stem) + 1:].rsplit("-", 2)
    if len(parts) != 3 or "~" not in parts[0] or not parts[1].isdigit():
        return None
    return parts[0].rpartition("~")[2], int(parts[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _untouched_for(path: Path, seconds: float) -> bool:
    """Whether nothing in ``path`` (itself and everything below, links not followed) changed for ``seconds``."""
    since = time.time() - seconds
    try:
        if os.lstat(path).st_mtime > since:
            return False
        for top, dirs, files in os.walk(path):
            for name in dirs + files:
                if os.lstat(os.path.join(top, name)).st_mtime > since:
                    return False
    except OSError:
        return False
    return True


def temp_is_stale(path: Path, stem: str) -> bool:
    """Whether ``path`` is a temporary of ``stem`` that no running process can be using (see above)."""
    owner = _owner(path.name, stem)
    if owner is not None and owner[0] == _machine():
        return owner[1] != os.getpid() and not _pid_alive(owner[1])
    legacy = path.name[len(stem) + 1:].isdigit() or (path / _LEGACY_MARKER).is_file()
    return (owner is not None or legacy) and _untouched_for(path, STALE_AFTER_S)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def remove_stale_temps(parent: str | Path, stem: str) -> None:
    """Remove the temporaries of ``stem`` in ``parent`` that are provably stale (:func:`temp_is_stale`)."""
    for path in Path(parent).glob(glob.escape(stem) + "-*"):
        if temp_is_stale(path, stem):
            _remove(path)


def make_temp_dir(parent: str | Path, stem: str) -> Path:
    """A new, empty folder ``parent/<temp_name(stem)>`` (the stale ones of ``stem`` are removed first)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent, stem)
    path = parent / temp_name(stem)
    path.mkdir()
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_dir_atomic(target: str | Path, fill: Callable[[Path], T], keep: Callable[[str], bool] | None = None) -> T:
    """Build a folder with ``fill(tmp)`` in ``.<name>.tmp-<host>~<machine>-<pid>-<random>`` beside ``target``, then
    put it in place of ``target`` (atomically on Linux: the old folder is replaced only once the new one is complete).

    ``keep(name)``: entries of the old folder (not written by ``fill``) to carry over into the new one.
    A failure (or a kill) before the swap leaves ``target`` as it was; the temporary folder is removed (after a
    kill: by a later write, once it is provably stale, see :func:`temp_is_stale`). Returns what ``fill`` returns.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    old_stem = f".{target.name}.old"
    for sib in sorted(parent.glob(glob.escape(old_stem) + "-*")):  # left by a killed writer
        if temp_is_stale(sib, old_stem):
            if not target.exists():
                try:
                    os.rename(sib, target)  # killed between the two renames of the fallback swap: the old one back
                    continue
                except OSError:
                    pass
            _remove(sib)
    tmp = make_temp_dir(parent, f".{target.name}.tmp")
    try:
        out = fill(tmp)
        if keep is not None and target.is_dir():
            for entry in target.iterdir():
                if keep(entry.name) and not (tmp / entry.name).exists():
                    os.rename(entry, tmp / entry.name)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        else:
            old = parent / temp_name(old_stem)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def disk_full(path: str | Path, below: int = 1 << 20) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has less than ``below`` bytes
    free (to name ENOSPC when a C++ writer reports it without an errno)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < below


def write_failed(path: str | Path, err: BaseException, option: str = "results_dir") -> Exception:
    """The one-line ConfigError for a write that failed: ``no space left on device writing PATH ...``."""
    from .data.errors import ConfigError

    code = getattr(err, "errno", None)
    if code == errno.ENOSPC or (not isinstance(err, OSError) and disk_full(path)):
        what = "no space left on device"
    elif code == errno.EDQUOT:
        what = "disk quota exceeded"
    else:
        what = getattr(err, "strerror", None) or type(err).__name__
    return ConfigError(f"{what} writing {path}; nothing partial was left there (the metrics above are not saved); "
                       f"free space or pass {option}=DIR")


def ensure_writable_dir(path: str | Path, option: str) -> Path:
    """Create ``path`` and check that files can be written there; else a one-line error naming ``option``."""
    from .data.errors import ConfigError

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / temp_name(".write-test")
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{option}={path} is not writable ({err.strerror}); pass {option}=DIR") from None
    return p
