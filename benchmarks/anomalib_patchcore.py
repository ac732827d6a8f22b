"""Run anomalib's PatchCore (its torch model) on adbench's data pipeline; write scores, maps and timings.

Runs in a throwaway virtual environment that has anomalib (never a dependency of adbench), e.g.::

    python3 -m venv /tmp/anomalib-venv && /tmp/anomalib-venv/bin/pip install anomalib==2.7.0
    /tmp/anomalib-venv/bin/python benchmarks/anomalib_patchcore.py --root ../shared/data/mvtec_ad \
        --category bottle --out /tmp/peer.npz

The images come from adbench's own datamodule (resize, centre crop, ImageNet normalisation), so both tools see
identical tensors; ``adbench.bench`` evaluates the written scores and maps with adbench's evaluator. The driver
mirrors anomalib's Lightning module: a train-mode forward per batch stores embeddings, ``subsample_embedding``
runs the k-center-greedy coreset, an eval-mode forward per test batch gives scores and blurred maps.

Backbone: anomalib uses timm ``mobilenetv2_100`` (blocks 2 and 4); timm's ImageNet weights are not available
offline, so the torchvision MobileNetV2 ImageNet weights (the file adbench uses) are copied into it tensor by
tensor (same architecture, same order); the script checks that both give the same stage outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # adbench's data pipeline, not installed here

from adbench.data.mvtec import MVTecDataModule  # noqa: E402
from adbench.data.synthetic import SyntheticDataModule  # noqa: E402
from adbench.utils import peak_rss_mb  # noqa: E402


def load_torchvision_weights(extractor: torch.nn.Module, torch_home: str | None) -> float:
    """Copy torchvision's ImageNet MobileNetV2 into timm's mobilenetv2_100 feature net; returns the largest
    difference between the two networks' blocks.2 / features.6 outputs on a random input."""
    import torchvision

    if torch_home:
        torch.hub.set_dir(str(Path(torch_home) / "hub"))
    tv = torchvision.models.mobilenet_v2(weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1).eval()
    src = [(k, v) for k, v in tv.state_dict().items() if k.startswith("features.")]
    dst = list(extractor.state_dict().items())
    if len(dst) > len(src):
        raise RuntimeError(f"timm net has {len(dst)} tensors, torchvision only {len(src)}")
    new = {}
    for (dk, dv), (sk, sv) in zip(dst, src):
        if dv.shape != sv.shape:
            raise RuntimeError(f"shape mismatch {dk} {tuple(dv.shape)} <- {sk} {tuple(sv.shape)}")
        new[dk] = sv.clone()
    extractor.load_state_dict(new)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = tv.features[:7](x)  # features.6 output, stride 8
        got = extractor.eval()(x)[0]
    return float((ref - got).abs().max())


def build_datamodule(args: argparse.Namespace):
    common = dict(root=args.root, category=args.category, image_size=args.image_size,
                  crop_size=args.crop_size or None, batch_size=args.batch_size, num_workers=args.num_workers)
    if args.dataset == "synthetic":
        return SyntheticDataModule(**common, generator_seed=0, n_train=args.n_train, n_test_good=args.n_test_good,
                                   n_per_defect=args.n_per_defect, synth_size=256).setup()
    return MVTecDataModule(**common).setup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--dataset", default="mvtec", choices=["mvtec", "synthetic"])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test-good", type=int, default=20)
    ap.add_argument("--n-per-defect", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--crop-size", type=int, default=224, help="0: no crop")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--neighbours", type=int, default=9)
    ap.add_argument("--weights", default="torchvision", choices=["torchvision", "none"])
    ap.add_argument("--torch-home", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import anomalib
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.manual_seed(0)
    dm = build_datamodule(args)
    model = PatchcoreModel(backbone="mobilenetv2_100", layers=["blocks.2", "blocks.4"], pre_trained=False,
                           num_neighbors=args.neighbours)
    weight_check = None
    if args.weights == "torchvision":
        weight_check = load_torchvision_weights(model.feature_extractor.feature_extractor, args.torch_home)

    t0 = time.perf_counter()
    model.train()
    for batch in dm.train_dataloader():
        model(batch["image"])  # stores the batch's patch embeddings
    t1 = time.perf_counter()
    model.subsample_embedding(args.ratio)
    t2 = time.perf_counter()
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model(batch["image"])
            scores.append(out.pred_score.reshape(-1).float().numpy())
            maps.append(out.anomaly_map.reshape(len(batch["image"]), *batch["image"].shape[-2:]).float().numpy())
    t3 = time.perf_counter()
    np.savez(args.out, image_scores=np.concatenate(scores), anomaly_maps=np.concatenate(maps).astype(np.float32))
    info = {
        "tool": "anomalib", "anomalib_version": anomalib.__version__, "torch_version": torch.__version__,
        "extract_s": t1 - t0, "coreset_s": t2 - t1, "predict_s": t3 - t2, "fit_s": t2 - t0, "total_s": t3 - t0,
        "peak_rss_mb": peak_rss_mb(), "memory_bank": list(model.memory_bank.shape),
        "weights": args.weights, "weight_check_max_abs_diff": weight_check, "threads": torch.get_num_threads(),
        "n_train": len(dm.train_samples), "n_test": len(dm.test_samples),
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
