"""Is the input pipeline fast enough to keep the training step busy?

    python -m benchmarks.pipeline [--cache DIR | --data DIR] [--backbone mobilenetv2] [--input-size 224] [--batch-size 16]

Measures, in one process on the same machine with the same batch size:

1. images/s of the cached training input pipeline alone (read, random
   resized crop + rotation + brightness/contrast, normalise, batch), after
   warm-up;
2. images/s of the same pipeline reading PNG files instead (for comparison);
3. images/s of one training step of the backbone (forward, backward,
   AdamW update) on a batch held in memory, after warm-up;

prints them with the ratio pipeline / step and writes them into
``benchmarks/RESULTS.md`` (between markers, the rest of the file is kept).
The two are measured one after the other, each with all cores: in training
they share the cores, so the ratio needs headroom (the target is >= 5x).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
START, END = "<!-- pipeline-benchmark:start -->", "<!-- pipeline-benchmark:end -->"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help="existing cache folder (default: build one from --data in a temporary folder)")
    parser.add_argument("--data", default=None, help="NIH folder (default ../shared/nih if present, else data/demo)")
    parser.add_argument("--cache-size", type=int, default=256, help="side of the cache built from --data (default 256)")
    parser.add_argument("--backbone", default="mobilenetv2")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pipeline-batches", type=int, default=60, help="timed batches of the input pipeline")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    return parser


def time_pipeline(dataset, batches: int, warmup: int = 5) -> float:
    """Images per second yielded by ``dataset`` (each element a batch (x, y))."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def time_train_step(model, images, labels, steps: int, warmup: int = 2) -> float:
    """Images per second of ``model.train_on_batch`` on one batch held in memory."""
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return steps * int(images.shape[0]) / (time.perf_counter() - start)


def write_results(text: str) -> None:
    block = f"{START}\n{text.rstrip()}\n{END}"
    current = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    if START in current and END in current:
        current = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from cxr_core.data import NIHDataset
    from cxr_core.learn import (
        AugmentConfig,
        TrainConfig,
        compile_model,
        dataset_from_cache,
        dataset_from_files,
        open_cache,
        prepare_cache,
    )

    load_before = os.getloadavg()[0]
    data_root = args.data or (str(REPO.parent / "shared" / "nih") if (REPO.parent / "shared" / "nih").is_dir() else str(REPO / "data" / "demo"))
    temporary = None
    if args.cache:
        cache = open_cache(args.cache)
        prepare_seconds = None
    else:
        temporary = tempfile.TemporaryDirectory(prefix="cxr-bench-cache-")
        started = time.perf_counter()
        cache = prepare_cache(data_root, Path(temporary.name) / "cache", size=args.cache_size, workers=os.cpu_count(), progress=False)
        prepare_seconds = time.perf_counter() - started
    config = TrainConfig(cache=str(cache.root), backbone=args.backbone, input_size=args.input_size, batch_size=args.batch_size)
    preprocess, augment = config.preprocess(), AugmentConfig()

    cached = dataset_from_cache(cache, "train", preprocess=preprocess, training=True, augment=augment,
                                batch_size=args.batch_size, repeat=True)
    pipeline_ips = time_pipeline(cached, args.pipeline_batches)

    dataset = NIHDataset(data_root)
    paths = dataset.csv["path"].to_numpy()[: args.batch_size * 40]
    labels = dataset.labels[: len(paths)]
    files = dataset_from_files(paths, labels, preprocess=preprocess, training=True, augment=augment,
                               batch_size=args.batch_size, decode_size=cache.size, repeat=True)
    files_ips = time_pipeline(files, min(args.pipeline_batches, 30))

    model = compile_model(config, cache.labels("train"), steps_per_epoch=100)
    images, batch_labels = next(iter(cached))
    step_ips = time_train_step(model, images, batch_labels, args.steps)

    ratio = pipeline_ips / step_ips
    cpu = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"
    gpus = tf.config.list_physical_devices("GPU")
    device = f"{len(gpus)} GPU(s) + {cpu}" if gpus else cpu
    lines = [
        "## Input pipeline vs training step",
        "",
        f"Measured by `python -m benchmarks.pipeline` on {time.strftime('%Y-%m-%d')}, {device}, "
        f"TensorFlow {tf.__version__}, batch {args.batch_size}, model input {args.input_size} px, "
        f"cache {cache.size} px ({cache.manifest['count']} images of {Path(cache.manifest['source'].get('root', data_root)).name}), "
        "training augmentation on (random resized crop, rotation, brightness/contrast), after warm-up.",
        "",
        "| measurement | images/s |",
        "|---|---:|",
        f"| input pipeline from the cache (alone) | {pipeline_ips:,.0f} |",
        f"| input pipeline from PNG files (alone, decode at {cache.size} px) | {files_ips:,.0f} |",
        f"| training step, {args.backbone} from scratch at {args.input_size} px | {step_ips:,.1f} |",
        f"| **ratio cached pipeline / step** | **{ratio:,.0f}x** |",
        "",
    ]
    if prepare_seconds is not None:
        lines.append(f"Building the cache took {prepare_seconds:.0f} s ({cache.manifest['count']} images, {os.cpu_count()} workers).")
    lines.append("The pipeline and the step were timed one after the other, each using all cores; in training they "
                 "share them, which the ratio leaves room for.")
    lines.append(f"1-minute load average before / after the measurement: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
                 f"(above ~0.5 before, other processes were sharing the {os.cpu_count()} cores and every number is lower).")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_results(text)
        print(f"\nwritten to {RESULTS}")
    if temporary is not None:
        temporary.cleanup()
    return 0 if ratio >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
