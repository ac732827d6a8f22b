"""``python -m adbench.data download --root DIR [--category NAME ...]``: fetch MVTec AD."""

from __future__ import annotations

import argparse
import os
import sys

from .download import DEFAULT_SHA256, DEFAULT_URL, ENV_SHA256, ENV_URL, DownloadError, download
from .mvtec import CATEGORIES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.data", description="Dataset tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("download", help="download and extract MVTec AD",
                       description="Download MVTec AD (resumable, SHA-256 checked) and extract it into ROOT/<category>. "
                                   "MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial).")
    d.add_argument("--root", required=True, help="target folder; use it as dataset.root=ROOT afterwards")
    d.add_argument("--category", action="append", metavar="NAME",
                   help=f"category to extract (repeat or comma-separate; default: all): {', '.join(CATEGORIES)}")
    d.add_argument("--url", default=None, help=f"archive URL (env {ENV_URL}; default: the official link "
                                               f"{DEFAULT_URL}); a URL with {{category}} fetches one archive per category")
    d.add_argument("--sha256", default="default", help=f"expected SHA-256 (env {ENV_SHA256}; default: the official "
                                                       f"archive's {DEFAULT_SHA256[:12]}...), cat=HEX,... for a "
                                                       f"per-category URL, or none")
    d.add_argument("--keep-archive", action="store_true", default=None,
                   help="keep the archive after extraction (default: kept only when categories were left out)")
    d.add_argument("--retries", type=int, default=3, help="automatic resumes after a dropped connection (default 3)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    try:
        present = download(args.root, args.category, url=args.url, sha256=args.sha256, keep_archive=args.keep_archive,
                           progress=not args.no_progress and os.environ.get("ADBENCH_PROGRESS", "1") != "0",
                           retries=args.retries)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    print(f"ready: {', '.join(present)} in {os.path.abspath(args.root)} (use dataset.root={os.path.abspath(args.root)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
