"""``python -m adbench.compare A B``: paired differences of two runs (or two results folders) on the same test images.

A and B are run records (``.json``) or folders holding records (a results folder, or any folder under ``runs/``).
A folder's records are grouped per method variant, dataset and category (the newest record per seed; several
seeds are averaged on every resample). Groups pair up when both sides hold the same variant of the same
category; in a category where no variant is on both sides, every group of A meets every group of B there. Two
record files always form one pair.

For each pair and metric it prints A and B with their 95 % test-set intervals and A − B with the interval of the
difference on the same bootstrap resamples (stratified over the test images, ``adbench.intervals``), and the
verdict: *better* (the interval of A − B lies above 0), *indistinguishable* (it holds 0) or *worse* (below 0).
Pixel AUROC and AUPRO need the ``pixel_histograms`` that records carry since they were introduced; older records
show '–' there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .intervals import (BOOTSTRAP_SEED, DEFAULT_RESAMPLES, LEVEL, METRICS, paired, pairing_key, percentile_interval,
                        record_resamples)
from .results import input_label, read_record, variant_of, warn

NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "image_f1_max": "F1-max"}


class Group:
    """The records of one method variant on one category (one per seed), and their resample values."""

    def __init__(self, key: tuple[str, str, str, str], records: list[dict[str, Any]]):
        self.key = key
        self.records = sorted(records, key=lambda r: r["config"].get("seed", 0))

    @property
    def name(self) -> str:
        method, variant, dataset, category = self.key
        seeds = ",".join(str(r["config"].get("seed")) for r in self.records)
        inp = input_label(self.records[0]["config"].get("dataset", {}))
        what = f"{method} {variant}".strip()
        if inp and inp not in what:
            what += f", {inp}"
        return f"{what} on {dataset}/{category} (seed{'s' if len(self.records) > 1 else ''} {seeds})"

    def point(self, metric: str) -> float | None:
        vals = [r.get("metrics", {}).get(metric) for r in self.records]
        return None if any(v is None for v in vals) or not vals else float(np.mean(vals))

    def values(self, n_resamples: int, seed: int) -> tuple[tuple | None, dict[str, np.ndarray]]:
        """(pairing key, {metric: seed-mean on each resample}); (None, {}) when the seeds saw other test sets."""
        keys = {pairing_key(r) for r in self.records}
        if len(keys) != 1:
            return None, {}
        got = []
        for r in self.records:
            try:
                got.append(record_resamples(r, n_resamples, seed))
            except Exception as err:  # a damaged pixel_histograms: image metrics only  # noqa: BLE001
                warn(f"{r.get('_path')}: its pixel_histograms cannot be read ({type(err).__name__}); pixel "
                     "metrics left out")
                got.append(record_resamples({k: v for k, v in r.items() if k != "pixel_histograms"},
                                            n_resamples, seed))
        names = [m for m in METRICS if got and all(m in g for g in got)]
        return keys.pop(), {m: sum(g[m] for g in got) / len(got) for m in names}


def load_side(path: Path) -> list[Group]:
    """The groups of one side: one record file, or every ok record under a folder (newest per seed)."""
    files = [path] if path.is_file() else sorted(p for p in path.glob("**/*.json") if not p.name.endswith(".failed.json"))
    newest: dict[tuple, dict[str, Any]] = {}
    for p in files:
        rec, problem = read_record(p)
        if rec is None:
            warn(f"{problem}; skipped")
            continue
        if rec.get("status", "ok") != "ok" or not (rec.get("per_image") or {}).get("score"):
            continue
        cfg = rec["config"]
        method = cfg["method"]["name"]
        key = (method, variant_of(method, cfg), cfg["dataset"]["name"], cfg["category"])
        rec["_path"] = str(p)
        slot = (*key, cfg["seed"])
        if slot not in newest or str(rec.get("finished_at") or "") >= str(newest[slot].get("finished_at") or ""):
            newest[slot] = rec
    groups: dict[tuple, list] = {}
    for slot, rec in newest.items():
        groups.setdefault(slot[:4], []).append(rec)
    return [Group(k, v) for k, v in groups.items()]


def pair_groups(a: list[Group], b: list[Group], files: bool) -> list[tuple[Group, Group]]:
    """Same variant and category first; in a category with none in common, every A group with every B group."""
    if files:
        return [(a[0], b[0])] if a and b else []
    bkeys = {g.key: g for g in b}
    pairs = [(g, bkeys[g.key]) for g in a if g.key in bkeys]
    matched = {g.key[2:] for g, _ in pairs}
    for g in a:
        if g.key[2:] in matched:
            continue
        pairs += [(g, h) for h in b if h.key[2:] == g.key[2:]]
    return pairs


def _pct(v: float | None, digits: int = 1, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.{digits}f}" if sign else f"{100 * v:.{digits}f}"


def _ci(ci: tuple[float, float] | None, digits: int = 1, sign: bool = False) -> str:
    return "[–]" if ci is None else f"[{_pct(ci[0], digits, sign)}, {_pct(ci[1], digits, sign)}]"


def compare_pair(ga: Group, gb: Group, n_resamples: int = DEFAULT_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = LEVEL) -> tuple[list[dict[str, Any]], str | None]:
    """Per metric: A and B (point, interval), A − B (point, interval) and the verdict; or ([], why not)."""
    ka, va = ga.values(n_resamples, seed)
    kb, vb = gb.values(n_resamples, seed)
    if ka is None or kb is None:
        return [], "the seeds of one side were scored on different test images"
    if ka != kb:
        return [], "not scored on the same test images (files or labels differ): no paired comparison"
    rows = []
    for m in METRICS:
        pa, pb = ga.point(m), gb.point(m)
        row = {"metric": m, "a": pa, "b": pb, "a_ci": percentile_interval(va[m], level) if m in va else None,
               "b_ci": percentile_interval(vb[m], level) if m in vb else None,
               "diff": None if pa is None or pb is None else pa - pb, "diff_ci": None, "verdict": None}
        if m in va and m in vb:
            d = paired(va[m], vb[m], level)
            if d is not None:
                row["diff_ci"], row["verdict"] = (d["low"], d["high"]), d["verdict"]
        rows.append(row)
    return rows, None


def format_pair(ga: Group, gb: Group, rows: list[dict[str, Any]], n_resamples: int, level: float) -> str:
    labels = ga.records[0]["per_image"]["label"]
    n_bad = int(sum(labels))
    out = [f"A: {ga.name}", f"B: {gb.name}",
           f"{len(labels)} test images ({len(labels) - n_bad} good, {n_bad} defective), {n_resamples} stratified "
           f"bootstrap resamples, {100 * level:g} % intervals, percent",
           "", f"| metric | A | B | A − B | verdict |", "|---|---:|---:|---:|---|"]
    for r in rows:
        why = "" if r["verdict"] else " (no pixel histograms)" if r["metric"] in ("pixel_auroc", "aupro") and \
            r["a"] is not None and r["b"] is not None else ""
        out.append(f"| {NAMES[r['metric']]} | {_pct(r['a'])} {_ci(r['a_ci'])} | {_pct(r['b'])} {_ci(r['b_ci'])} | "
                   f"{_pct(r['diff'], 2, True)} {_ci(r['diff_ci'], 2, True)} | {r['verdict'] or '–'}{why} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="a run record (.json) or a folder of records")
    ap.add_argument("b", help="a run record (.json) or a folder of records")
    ap.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default 1000)")
    ap.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed (default 0, as in the records)")
    ap.add_argument("--level", type=float, default=LEVEL, help="interval level (default 0.95)")
    args = ap.parse_args(argv)
    if args.resamples < 1 or not 0 < args.level < 1:
        print("error: --resamples must be >= 1 and --level between 0 and 1", file=sys.stderr)
        return 2
    pa, pb = Path(args.a), Path(args.b)
    for p in (pa, pb):
        if not p.exists():
            print(f"error: {p} does not exist; pass a run record (.json) or a folder of records", file=sys.stderr)
            return 2
    a, b = load_side(pa), load_side(pb)
    for p, side in ((pa, a), (pb, b)):
        if not side:
            print(f"error: no usable run record (status ok, with per-image scores) in {p}", file=sys.stderr)
            return 2
    pairs = pair_groups(a, b, pa.is_file() and pb.is_file())
    if not pairs:
        print(f"error: {pa} and {pb} share no category; nothing to compare", file=sys.stderr)
        return 2
    blocks, compared = [], 0
    for ga, gb in pairs:
        rows, why = compare_pair(ga, gb, args.resamples, args.seed, args.level)
        if why:
            blocks.append(f"A: {ga.name}\nB: {gb.name}\n{why}")
            continue
        compared += 1
        blocks.append(format_pair(ga, gb, rows, args.resamples, args.level))
    print("\n\n".join(blocks))
    return 0 if compared else 2


if __name__ == "__main__":
    raise SystemExit(main())
