"""Cache-preparation throughput for full-resolution (1,024 px) chest films, and cache bytes per image.

    python -m benchmarks.prepare_throughput [--data ../shared/nih] [--images 240] [--size 256] [--workers 2]
                                            [--out benchmarks/results/prepare_throughput.json]

The full NIH release stores 1,024 x 1,024 8-bit PNGs; ``../shared/nih`` holds
the same films at 320 or 512 px. So this benchmark writes stand-ins: real
NIH images upscaled to 1,024 px (bicubic) and saved as PNG, named as such in
the output. Their decode cost is that of a 1,024 px PNG (inflating a
million pixels), though an upscaled film compresses better than an original
(the output gives both file sizes), so the original files may decode
somewhat slower. Then ``cxr_core.learn.cache.write_cache`` (what
``training.prepare`` runs) decodes, resizes and stores them with
``--workers`` processes: once untimed (one-off imports), then timed on
``--warmup`` images and on all of them.
Starting the worker processes costs seconds whatever the count, which a
112,120-image run does not notice, so the rate reported is the steady one,
(all - warmup images) / (difference of the two wall times); the raw rate is
given too. The TFRecord sizes give bytes per cached image.
``docs/evidence/scaling.md`` uses both.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

RELEASE_IMAGES = 112_120
RELEASE_BYTES = 42e9  # the release's images folder, as NIH lists it (~42 GB)


def make_standins(sources: list[Path], folder: Path, side: int = 1024) -> list[Path]:
    """Upscale real films to ``side`` px PNGs (stand-ins for the release's originals)."""
    import cv2

    paths = []
    for source in sources:
        image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
        if image is None:
            continue
        path = folder / source.name
        cv2.imwrite(str(path), cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC))
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/nih", help="NIH folder whose images are upscaled")
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", type=int, default=256, help="cached side (training.prepare's --size)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20, help="images of the first, overhead-measuring run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepare_throughput.json"))
    args = parser.parse_args()
    if args.workers < 1 or not 1 <= args.warmup < args.images:
        parser.error("--workers must be >= 1 and 1 <= --warmup < --images")
    sources = sorted((Path(args.data) / "images").glob("*.png"))[: args.images]
    if not sources:
        parser.error(f"no PNG images under {Path(args.data) / 'images'}")

    import pandas as pd

    from cxr_core.findings import FINDINGS
    from cxr_core.learn.cache import write_cache

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "standins"
        folder.mkdir()
        paths = make_standins(sources, folder)
        table = pd.DataFrame({"image": [p.name for p in paths], "path": [str(p) for p in paths],
                              "patient_id": np.arange(len(paths))})
        labels = np.zeros((len(paths), len(FINDINGS)), np.float32)  # labels do not change the cost
        seconds = []
        # The first run pays one-off imports and graph set-up in this process; it is not timed.
        for count, name in ((args.warmup, "first"), (args.warmup, "warmup"), (len(paths), "cache")):
            started = time.perf_counter()
            cache = write_cache(table[:count], labels[:count], ["train"] * count, Path(tmp) / name, size=args.size,
                                workers=args.workers, progress=False)
            seconds.append(time.perf_counter() - started)
        cached_bytes = sum(f.stat().st_size for f in cache.root.glob("*.tfrecord"))
        standin_bytes = sum(p.stat().st_size for p in paths)
    seconds = seconds[1:]
    per_s = (len(paths) - args.warmup) / max(seconds[1] - seconds[0], 1e-9)
    result = {
        "images": len(paths), "standin": "real NIH films upscaled to 1024 px (bicubic), PNG",
        "standin_png_mean_bytes": round(standin_bytes / len(paths)),
        "release_png_mean_bytes": round(RELEASE_BYTES / RELEASE_IMAGES),
        "cache_size": args.size, "workers": args.workers, "cpu_count": os.cpu_count(),
        "seconds": round(seconds[1], 2), "raw_images_per_s": round(len(paths) / seconds[1], 1),
        "fixed_overhead_s": round(seconds[0] - args.warmup / per_s, 1), "images_per_s": round(per_s, 1),
        "cache_bytes_per_image": round(cached_bytes / len(paths)),
        "release_cache_gb": round(cached_bytes / len(paths) * RELEASE_IMAGES / 1e9, 2),
        "release_prepare_minutes_at_this_rate": round(RELEASE_IMAGES / per_s / 60, 1),
        "load_average_before": load_before,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
