"""Run records: atomic JSON files under ``<results_dir>/runs``, and tables built from them."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .data.errors import ConfigError

# keys that do not change what a run computes, left out of its identity hash
VOLATILE_KEYS = ("results_dir", "progress", "resume", "save_model", "save_maps", "device", "feature_cache",
                "logger")
METRIC_ORDER = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
REPO_DIR = Path(__file__).resolve().parent.parent


def config_hash(cfg: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of a resolved config (sorted JSON, volatile keys removed)."""
    core = {k: v for k, v in cfg.items() if k not in VOLATILE_KEYS}
    dataset = core.get("dataset")
    if isinstance(dataset, dict) and "tiling" in dataset and not (dataset["tiling"] or {}).get("size"):
        core["dataset"] = {k: v for k, v in dataset.items() if k != "tiling"}  # off = absent: older hashes hold
    elif isinstance(dataset, dict) and isinstance(dataset.get("tiling"), dict) and dataset["tiling"].get("stride") is None:
        tiling = {**dataset["tiling"], "stride": dataset["tiling"]["size"]}  # stride null = size: one run, one hash
        core["dataset"] = {**dataset, "tiling": tiling}
    blob = json.dumps(core, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# folders that are never a results_dir, and those nothing is written under
SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt", "/opt",
               "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/var")
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr")


def check_results_dir(results_dir: str | Path) -> None:
    """ConfigError when ``results_dir`` is a system folder (``/``, ``/etc``, anything under ``/usr``...) or the home
    folder itself."""
    p = Path(results_dir).expanduser().resolve()
    if p == Path.home().resolve():
        what = "your home folder"
    elif str(p) in SYSTEM_DIRS or any(p.is_relative_to(t) for t in SYSTEM_TREES):
        what = "a system folder"
    else:
        return
    raise ConfigError(f"results_dir={results_dir} is {what}; pass results_dir=DIR, a folder of its own "
                      f"(e.g. results_dir=results)")


def path_part(option: str, value: Any) -> str:
    """``value`` as one folder name under results_dir; ConfigError when it is empty, ``.``, ``..`` or holds a
    path separator (it would leave its folder), or not a string (a record's tables need names)."""
    if not isinstance(value, str):
        raise ConfigError(f"{option}={value!r} is not a name (a {type(value).__name__}); quote it: "
                          f"'{option}=\"{value}\"'")
    name = value
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"{option}={value!r} would leave results_dir (it forms the folder "
                          f"<results_dir>/runs/<method>/<dataset>/<category>); pass a plain name without '/' or "
                          f"'..', e.g. {option}={'bottle' if option == 'category' else 'NAME'}")
    return name


def run_path(results_dir: str | Path, cfg: dict[str, Any]) -> Path:
    """Where the record of a run with this resolved config lives: always inside ``<results_dir>/runs`` (a value
    that would leave it, or a system folder as results_dir, is a ConfigError)."""
    check_results_dir(results_dir)
    seed = cfg["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is not an integer; pass e.g. seed=0")
    return (Path(results_dir) / "runs" / path_part("method.name", cfg["method"]["name"])
            / path_part("dataset.name", cfg["dataset"]["name"]) / path_part("category", cfg["category"])
            / f"seed{seed}-{config_hash(cfg)}.json")


def failure_path(path: str | Path) -> Path:
    """Where a failed job's record goes when an ``ok`` record already holds ``path``: ``<stem>.failed.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.failed.json")


def read_record(path: str | Path, validate: bool = True) -> tuple[dict[str, Any] | None, str | None]:
    """(the record at ``path``, None) or (None, why it cannot be used: unreadable, not JSON, not an object, or,
    with ``validate``, not following :class:`adbench.record_schema.RunRecord`, naming the field)."""
    from .record_schema import record_problem

    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except OSError as err:
        return None, f"cannot read {path} ({err.strerror or type(err).__name__})"
    except ValueError as err:
        return None, f"{path} is not valid JSON ({type(err).__name__})"
    if not isinstance(rec, dict):
        return None, f"{path} is not a run record (a JSON {type(rec).__name__}, not an object)"
    problem = record_problem(rec) if validate else None
    if problem:
        return None, f"{path} is not a valid run record: {problem}"
    return rec, None


def warn(message: str) -> None:
    """One ``warning: ...`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> Path:
    """Write JSON to a temp file in the same folder, fsync, then rename over ``path``.

    The file gets the mode a plain ``open()`` would give it (0o666 less the umask), not ``mkstemp``'s 0600, so
    records in a shared results folder stay readable by the others who may read it. A failed write (e.g. ENOSPC)
    raises OSError and leaves no temporary file."""
    from .utils import write_atomic

    return write_atomic(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, allow_nan=False, default=str))


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide the numbers."""
    out = {"python": platform.python_version()}
    for name in ("adbench", "torch", "torchvision", "timm", "faiss-cpu", "faiss-gpu", "numpy", "scipy",
                 "scikit-learn", "loralib", "hydra-core", "omegaconf", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """Commit of the adbench checkout (``+dirty`` when it has local changes), None outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def clean_metrics(metrics: dict[str, float]) -> tuple[dict[str, float | None], list[str]]:
    """Replace non-finite metrics by None (JSON null) and name them."""
    out, bad = {}, []
    for k, v in metrics.items():
        if v is None or not math.isfinite(float(v)):
            out[k] = None
            bad.append(k)
        else:
            out[k] = float(v)
    return out, bad


def variant_of(method: str, cfg: dict) -> str:
    """The published column a run belongs to (e.g. 'coreset 10%', '3way'); '' for single-variant methods. A tiled
    run is a variant of its own ('coreset 10%, 512 px, 128 px tiles'): it is never averaged with, or shown as, the
    paper protocol's row."""
    m, dataset = cfg.get("method", {}), cfg.get("dataset", {})
    if method in ("mean_image", "pixel_gaussian"):  # the reference baselines: one row per input geometry
        return input_label(dataset)
    if method == "patchcore":
        base = f"coreset {float(m.get('coreset', {}).get('ratio', 0)) * 100:g}%"
    elif method == "cutpaste":
        base = str(m.get("variant", ""))
    else:
        base = ""
    if (dataset.get("tiling") or {}).get("size"):
        return f"{base}, {input_label(dataset)}" if base else input_label(dataset)
    return base


def input_label(dataset: dict) -> str:
    """The input geometry of a run: '256→224 px' (resize, then centre crop) or '256 px' (no crop)."""
    size, crop = dataset.get("image_size"), dataset.get("crop_size")
    tiles = (dataset.get("tiling") or {}).get("size")
    stride = (dataset.get("tiling") or {}).get("stride")
    if size is None and not tiles:
        return ""
    label = "native size" if size is None else (f"{size}→{crop}" if crop else f"{size}") + " px"
    if stride and tiles and stride != tiles:  # overlapping tiles: another input than the same tiles side by side
        return f"{label}, {tiles} px tiles every {stride} px"
    return f"{label}, {tiles} px tiles" if tiles else label


def load_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per successful run record: method, dataset, category, seed, preset, metrics, times."""
    rows = []
    for p in sorted(Path(results_dir).glob("runs/**/*.json")):
        rec, problem = read_record(p)
        if rec is None:
            warn(f"{problem}; skipped")
            continue
        if rec.get("status", "ok") != "ok":
            continue
        cfg = rec["config"]  # read_record checked the types
        row = {"method": cfg.get("method", {}).get("name"), "dataset": cfg.get("dataset", {}).get("name"),
               "category": cfg.get("category"), "seed": cfg.get("seed"),
               "preset": (cfg.get("preset") or {}).get("name"), "path": str(p)}
        row["variant"] = variant_of(row["method"] or "", cfg)
        row["input"] = input_label(cfg.get("dataset", {}))
        row.update(rec.get("metrics", {}))
        for k in ("fit_s", "predict_s", "evaluate_s", "peak_rss_mb", "finished_at"):
            row[k] = rec.get(k)
        rows.append(row)
    return pd.DataFrame(rows)


def cannot_write(err: OSError, path: Path, fix: str = "pass --out DIR") -> str:
    """The one line for an output that cannot be written: its folder is read-only, or the write's own reason."""
    why = err.strerror or type(err).__name__
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{path.parent} is read-only ({why} writing {path.name}); {fix} to write it elsewhere"
    return f"cannot write {path} ({why}); {fix} to write it elsewhere"


def write_texts(texts: dict[Path, str], fix: str = "pass --out DIR") -> None:
    """Write each file atomically; a failed write is a one-line ConfigError (:func:`cannot_write`)."""
    from .utils import write_text_atomic

    for path, text in texts.items():
        try:
            write_text_atomic(path, text)
        except OSError as err:
            raise ConfigError(cannot_write(err, Path(path), fix)) from None


def build_table(results_dir: str | Path, name: str = "summary", metrics: tuple[str, ...] = METRIC_ORDER,
                out_dir: str | Path | None = None) -> pd.DataFrame:
    """Aggregate runs into ``<out_dir>/<name>.csv`` and ``.md`` (default: ``results_dir``): category rows, a mean
    row, per method. A folder that cannot be written is a one-line ConfigError."""
    df = load_runs(results_dir)
    if df.empty:
        raise FileNotFoundError(f"no run records under {Path(results_dir) / 'runs'}")
    cols = [m for m in metrics if m in df.columns]
    # runs at different inputs (resize, crop, tiles) are different rows, not averaged as if they were seeds
    keys = ["method", "dataset"] + (["input"] if df["input"].nunique(dropna=False) > 1 else [])
    g = df.groupby([*keys, "category"], dropna=False)[cols].mean()  # mean over seeds
    table = g.reset_index()
    parts = []
    for key, sub in table.groupby(keys, dropna=False):
        sub = sub.sort_values("category")
        mean = {**dict(zip(keys, key)), "category": "mean", **sub[cols].mean().to_dict()}
        parts.append(pd.concat([sub, pd.DataFrame([mean])], ignore_index=True))
    out = pd.concat(parts, ignore_index=True)
    folder = Path(out_dir or results_dir)
    write_texts({folder / f"{name}.csv": out.to_csv(index=False, float_format="%.4f"),
                 folder / f"{name}.md": to_markdown(out) + "\n"})
    return out


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency); NaN shown as an en dash."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else floatfmt.format(v)
        return "–" if v is None else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body])


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m adbench.results",
                                 description="Aggregate run records into <out>/<name>.csv and .md")
    ap.add_argument("--results-dir", default="results", help="folder holding runs/ (default: results)")
    ap.add_argument("--name", default="summary", help="table file name without extension (default: summary)")
    ap.add_argument("--out", default=None, help="folder for the table files (default: --results-dir)")
    args = ap.parse_args(argv)
    try:
        table = build_table(args.results_dir, args.name, out_dir=args.out)
    except FileNotFoundError as err:
        print(f"error: {err}")
        return 2
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
