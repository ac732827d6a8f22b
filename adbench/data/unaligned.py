"""Unaligned copies of an MVTec-layout category: every image (train and test) rotated and shifted at random, its
mask moved with it.

MVTec AD mixes aligned objects (bottle, transistor) with objects at varying positions and angles (screw,
metal_nut, hazelnut) and textures. A choice tuned on aligned categories (e.g. per-pixel standardisation of a map)
can fail on the others; these copies test it on the categories at hand::

    python -m adbench.data.unaligned --src ../shared/data/mvtec_ad --category bottle --out /tmp/unaligned

writes ``/tmp/unaligned/bottle`` in MVTec layout (``dataset.root=/tmp/unaligned category=bottle``). The copy is
written in a staging folder and renamed into place with a marker; a folder without that marker is never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .mvtec import scan_split
from .staging import make_staging

MARKER = ".adbench-unaligned.json"


def random_pose(rng: np.random.Generator, max_angle: float, max_shift: float) -> tuple[float, float, float]:
    """(angle in degrees, dx, dy as fractions of the side), uniform in [-max, max]."""
    angle = float(rng.uniform(-max_angle, max_angle))
    dx, dy = (float(v) for v in rng.uniform(-max_shift, max_shift, size=2))
    return angle, dx, dy


def move(img: Image.Image, pose: tuple[float, float, float], size: int, mask: bool = False) -> Image.Image:
    """``img`` resized to ``size`` x ``size``, rotated about its centre by ``pose[0]`` degrees and shifted by
    ``pose[1:]`` x ``size`` px. Images are resampled bilinearly onto a reflected border (no blank corners); masks
    with nearest neighbours onto zeros, so they stay binary and follow the image pixel for pixel."""
    angle, dx, dy = pose
    resample = Image.NEAREST if mask else Image.BILINEAR
    img = img.resize((size, size), resample)
    pad = size // 2  # reflect-pad so that rotated corners and shifted edges show the object's surroundings
    if not mask:
        a = np.asarray(img.convert("RGB"))
        img = Image.fromarray(np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="reflect"))
    else:
        img = Image.fromarray(np.pad(np.asarray(img.convert("L")), pad))
    img = img.rotate(angle, resample=resample, translate=(dx * size, dy * size))
    return img.crop((pad, pad, pad + size, pad + size))


def make_unaligned(src_root: str | Path, category: str, out_root: str | Path, seed: int = 0, size: int = 256,
                   max_angle: float = 180.0, max_shift: float = 0.1) -> Path:
    """Write the unaligned copy of ``src_root/category`` to ``out_root/category`` (MVTec layout, PNG, ``size`` px);
    one random pose per image drawn with ``seed``. An earlier copy (holding the marker) with other settings is
    replaced; one with the same settings is kept."""
    src = Path(src_root).expanduser() / category
    final = Path(out_root).expanduser() / category
    params = dict(src=str(src.resolve()), seed=seed, size=size, max_angle=max_angle, max_shift=max_shift)
    if final.exists():
        marker = final / MARKER
        if not marker.is_file():
            raise DataError(f"{final} exists and is not an unaligned copy (no {MARKER} in it): it is left alone; "
                            f"pass another --out")
        if json.loads(marker.read_text()) == params:
            return final
    if not src.is_dir():
        raise DataError(f"category folder not found: {src} (pass --src DIR holding <category>/train, test)")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging(final.parent, f".adbench-unaligned-{category}")
    try:
        _write_copy(src, staging / category, np.random.default_rng(seed), size, max_angle, max_shift)
        (staging / category / MARKER).write_text(json.dumps(params))
        if final.exists():
            shutil.rmtree(final)  # an earlier copy with other settings (it holds the marker)
        os.replace(staging / category, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _write_copy(src: Path, dst: Path, rng: np.random.Generator, size: int, max_angle: float,
                max_shift: float) -> None:
    for split in ("train", "test"):
        for s in scan_split(src, split):
            pose = random_pose(rng, max_angle, max_shift)
            out = dst / split / s.defect_type / f"{s.path.stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(s.path) as img:
                move(img, pose, size).save(out)
            if s.mask_path is not None:
                mout = dst / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
                mout.parent.mkdir(parents=True, exist_ok=True)
                with Image.open(s.mask_path) as m:
                    moved = np.asarray(move(m, pose, size, mask=True)) > 0
                Image.fromarray(moved.astype(np.uint8) * 255).save(mout)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adbench.data.unaligned", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", required=True, help="dataset root holding <category>/ in MVTec layout")
    p.add_argument("--category", required=True, action="append", help="category (repeat for several)")
    p.add_argument("--out", required=True, help="root of the copies (dataset.root= of the runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random poses (default 0)")
    p.add_argument("--size", type=int, default=256, help="side of the written images in px (default 256)")
    p.add_argument("--max-angle", type=float, default=180.0, help="rotation drawn in [-A, A] degrees (default 180)")
    p.add_argument("--max-shift", type=float, default=0.1, help="shift drawn in [-S, S] x side (default 0.1)")
    a = p.parse_args(argv)
    for cat in a.category:
        try:
            path = make_unaligned(a.src, cat, a.out, a.seed, a.size, a.max_angle, a.max_shift)
        except DataError as err:
            raise SystemExit(f"error: {err}") from None
        print(f"unaligned copy: {path}")


if __name__ == "__main__":
    main()
