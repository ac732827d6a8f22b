"""``make table1`` / ``python -m adbench.table1``: run the paper-table sweeps, write ``table1.md``, ``table1.csv``
and ``table1_defects.csv``, then the report.

Every method variant runs on every category present under ``--data`` in one resumable pass (finished jobs are
skipped). ``--seeds 0,1,2`` runs those seeds everywhere; ``--seeds 0,bottle=0,1,2`` runs seed 0 on every
category and seeds 0, 1, 2 on bottle (a ``category=`` token starts that category's seeds; leading seeds are the
default). ``--seed-methods cutpaste,lora_mae`` gives the extra seeds to those methods only (the others run the
first seed of each category). The reference baselines do not depend on the seed and always run the first seed.
This module orchestrates: records -> tables (``adbench.table1``) -> report (``adbench.report``).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

from ..data.errors import ConfigError
from ..registry import list_methods
from ..results import write_texts
from . import ORDER, REFERENCE, TABLE_METHODS, VARIANTS, build, per_defect, to_markdown


def present_categories(data: Path) -> list[str]:
    """MVTec AD categories that have a train/good folder under ``data``."""
    return [c for c in ORDER if (data / c / "train" / "good").is_dir()]


def parse_seeds(spec: str, categories: list[str]) -> dict[str, list[int]]:
    """``"0,1"`` -> every category gets [0, 1]; ``"0,bottle=0,1,2,transistor=0"`` -> per-category lists
    (categories not named get the leading seeds, default [0]). Raises ValueError with the offending token."""
    default: list[int] = []
    named: dict[str, list[int]] = {}
    current: list[int] = default
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if "=" in tok:
            cat, _, tok = tok.partition("=")
            if cat not in categories:
                raise ValueError(f"--seeds names category {cat!r}, which is not run (run: {', '.join(categories)})")
            current = named.setdefault(cat, [])
            if not tok:
                continue
        try:
            current.append(int(tok))
        except ValueError:
            raise ValueError(f"--seeds: {tok!r} is not a seed; write e.g. 0,1,2 or 0,bottle=0,1,2") from None
    return {c: sorted(set(named.get(c) or default or [0])) for c in categories}


def seed_groups(seeds: dict[str, list[int]], first_only: bool) -> list[tuple[list[int], list[str]]]:
    """(seeds, categories) groups, one Hydra multirun each; ``first_only``: each category's first seed only."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for cat, s in seeds.items():
        groups.setdefault(tuple(s[:1] if first_only else s), []).append(cat)
    return [(list(k), v) for k, v in groups.items()]


def method_inputs(methods: list[str], preset: str) -> list[tuple[int, int | None]]:
    """The dataset geometries (image_size, crop_size) the given methods run at under ``preset``, default first:
    the reference baselines run at each, so every method has a baseline that saw the same pixels."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    out = [(256, 224)]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for m in methods:
            if m in REFERENCE:
                continue
            d = compose(config_name="config", overrides=[f"method={m}", f"preset={preset}", "dataset=mvtec"]).dataset
            geom = (int(d.image_size), int(d.crop_size) if d.crop_size else None)
            if geom not in out:
                out.append(geom)
    return out


def run_sweeps(methods: list[str], seeds: dict[str, list[int]], preset: str, data: Path, results: Path,
               dry_run: bool = False, seed_methods: list[str] | None = None) -> list[list[str]]:
    """Resumable Hydra multiruns: per method and seed group, over its categories and the method's variants.
    Only ``seed_methods`` (default: every method but the reference baselines) get more than the first seed."""
    cmds = []
    for method in methods:
        first_only = method in REFERENCE or (seed_methods is not None and method not in seed_methods)
        for group_seeds, cats in seed_groups(seeds, first_only):
            cmd = [sys.executable, "-m", "adbench", "-m", f"method={method}", f"preset={preset}", "dataset=mvtec",
                   f"dataset.root={data}", f"results_dir={results}", f"category={','.join(cats)}",
                   f"seed={','.join(map(str, group_seeds))}", "resume=true", "save_maps=true",
                   f"feature_cache={results / 'cache'}"]
            if method in VARIANTS:
                key, values = VARIANTS[method]
                cmd.append(f"{key}={','.join(values)}")
            if method in REFERENCE:  # one run per input geometry of the table's methods
                for size, crop in method_inputs(list(TABLE_METHODS), preset):
                    gcmd = cmd + [f"dataset.image_size={size}", f"dataset.crop_size={crop if crop else 'null'}"]
                    cmds.append(gcmd)
                    print("$ " + " ".join(gcmd[1:]), flush=True)
                    if not dry_run:
                        subprocess.run(gcmd, check=False)
                continue
            cmds.append(cmd)
            print("$ " + " ".join(cmd[1:]), flush=True)
            if not dry_run:
                subprocess.run(cmd, check=False)  # failed jobs are recorded; the table shows what finished
    return cmds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adbench.table1", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper", choices=["paper", "cpu", "tiny"], help="method profile (default: paper)")
    ap.add_argument("--data", default=os.environ.get("ADBENCH_MVTEC_ROOT", "datasets/mvtec_ad"),
                    help="MVTec AD root; every category present there is run (default: datasets/mvtec_ad)")
    ap.add_argument("--results", default="results", help="results folder for runs and the tables (default: results)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default: every landed table method)")
    ap.add_argument("--seeds", default="0",
                    help="seeds, averaged: 0,1,2 everywhere, or per category: 0,bottle=0,1,2 (default: 0)")
    ap.add_argument("--seed-methods", default=None,
                    help="comma-separated methods that get more than the first seed (default: all but the baselines)")
    ap.add_argument("--categories", default=None,
                    help="comma-separated categories to run (default: every category present under --data)")
    ap.add_argument("--no-run", action="store_true", help="only rebuild the tables from existing runs")
    ap.add_argument("--no-report", action="store_true", help="do not rebuild <out>/report.html")
    ap.add_argument("--out", default=None,
                    help="folder for table1.md/.csv, table1_defects.csv and report.html (default: --results)")
    args = ap.parse_args(argv)
    data, results = Path(args.data), Path(args.results)
    out = Path(args.out) if args.out else results
    landed = [m for m in TABLE_METHODS if m in list_methods()]
    methods = [m for m in args.methods.split(",")] if args.methods else landed
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        print(f"error: --methods names unregistered method(s) {unknown}; landed: {', '.join(landed)}", file=sys.stderr)
        return 2
    cats = present_categories(data)
    if args.categories:
        wanted = args.categories.split(",")
        absent = [c for c in wanted if c not in cats]
        if absent:
            print(f"error: --categories {','.join(absent)} not found under {data.resolve()} "
                  f"(present: {', '.join(cats) or 'none'})", file=sys.stderr)
            return 2
        cats = wanted
    if not args.no_run:
        if not cats:
            print(f"error: no MVTec AD category found under {data.resolve()} (looked for <category>/train/good); "
                  "pass DATA=DIR (make) or --data DIR", file=sys.stderr)
            return 2
        try:
            seeds = parse_seeds(args.seeds, cats)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"table1: methods {', '.join(methods)} on {', '.join(cats)} ({len(cats)}/15 categories present); "
              "seeds " + "; ".join(f"{c} {','.join(map(str, s))}" for c, s in seeds.items()))
        run_sweeps(methods, seeds, args.preset, data, results,
                   seed_methods=args.seed_methods.split(",") if args.seed_methods else None)
    # the table shows every table method's records, also when this call ran only some of them
    shown = [*landed, *[m for m in methods if m not in landed]]
    table = build(results, args.preset, shown)
    defects = per_defect(results, args.preset, shown)
    command = f"make table1 PRESET={args.preset} DATA={args.data} RESULTS={args.results}" + \
        (f" SEEDS={args.seeds}" if args.seeds != "0" else "") + \
        (f" SEED_METHODS={args.seed_methods}" if args.seed_methods else "")
    md = to_markdown(table, args.preset, command, defects)
    try:
        write_texts({out / "table1.csv": table.to_csv(index=False, quoting=csv.QUOTE_MINIMAL),
                     out / "table1_defects.csv": defects.to_csv(index=False), out / "table1.md": md + "\n"})
        print(md)
        print(f"wrote {out / 'table1.md'}, {out / 'table1.csv'} and {out / 'table1_defects.csv'}")
        if not args.no_report:
            from ..report import build_report

            print(f"wrote {build_report(results, out / 'report.html', preset=args.preset)}")
    except ConfigError as err:  # a read-only results folder: one line, pass --out
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
