"""Cost and accuracy of the test-set intervals (adbench.intervals) on a real bottle run.

A reference baseline (no model: ``pixel_gaussian`` or ``mean_image``) is fitted and scored on MVTec AD bottle
through the run's own steps, giving 83 test maps at 224 x 224; they are kept in ``--cache`` so that a second call
only measures. Then:

- the seconds of everything a run record adds (histograms + 1000 resamples of the four metrics + DeLong), best of
  ``--repeat``, and the size of the stored histograms;
- on the first ``--exact`` resamples, pixel AUROC and AUPRO from the histograms against the exact evaluator
  (``adbench.evaluate.pixel_auroc`` / ``aupro`` on the resampled maps), with the strict bound each resample
  carries.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/intervals.py --method pixel_gaussian --exact 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mvtec_ad"


def test_maps(method: str, category: str, cache: Path) -> dict[str, np.ndarray]:
    """scores, labels, maps, masks of one run of ``method`` (cached as .npz)."""
    path = cache / f"{method}-{category}.npz"
    if path.is_file():
        with np.load(path) as z:
            return dict(z)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from adbench.run import build_context, fit_and_calibrate, predict_and_evaluate

    work = Path("/tmp/adbench-intervals-bench")
    overrides = [f"method={method}", "preset=cpu", f"category={category}", f"dataset.root={SHARED}",
                 f"results_dir={work}", "progress=false"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    s = build_context(cfg, OmegaConf.to_container(cfg, resolve=True), method, work, work / "runs" / "x.json")
    ev = predict_and_evaluate(s, fit_and_calibrate(s))
    out = {"scores": np.asarray(ev.pred.image_scores, dtype=np.float64), "labels": np.asarray(ev.labels),
           "maps": np.asarray(ev.pred.anomaly_maps, dtype=np.float32), "masks": np.asarray(ev.masks, dtype=bool)}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def main() -> None:
    from adbench import intervals as iv
    from adbench.evaluate import aupro, pixel_auroc

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="pixel_gaussian")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--cache", default="/tmp/adbench-intervals-bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--exact", type=int, default=40, help="resamples checked against the exact evaluator")
    args = ap.parse_args()
    d = test_maps(args.method, args.category, Path(args.cache))
    scores, labels, maps, masks = d["scores"], d["labels"], d["maps"], d["masks"]
    secs = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fields = iv.uncertainty_fields(scores, labels, maps, masks)
        secs.append(time.perf_counter() - t0)
    size = len(json.dumps(fields["pixel_histograms"]))
    hist = iv.PixelHistograms.from_record(fields["pixel_histograms"])
    vals = iv.resample_values(scores, labels, hist)
    idx = iv.resample_indices(labels)
    err = {"pixel_auroc": [], "aupro": []}
    for b in range(min(args.exact, len(idx))):
        i = idx[b]
        err["pixel_auroc"].append(abs(vals["pixel_auroc"][b] - pixel_auroc(maps[i], masks[i])))
        err["aupro"].append(abs(vals["aupro"][b] - aupro(maps[i], masks[i])))
    out = {"method": args.method, "category": args.category, "images": int(len(labels)),
           "map_size": list(maps.shape[1:]), "bins": int(hist.normal.shape[1]),
           "seconds_best": round(min(secs), 3), "seconds_all": [round(s, 3) for s in secs],
           "histograms_json_bytes": size, "intervals": fields["intervals"],
           "exact_checked": len(err["aupro"]),
           "max_abs_error": {k: float(max(v, default=0.0)) for k, v in err.items()},
           "max_bound": {k: float(np.max(vals[f"{k}_bound"])) for k in err},
           "bound_holds": all(e <= vals[f"{k}_bound"][b] + 1e-12 for k, v in err.items() for b, e in enumerate(v))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
