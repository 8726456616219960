"""Training step time per backbone: images/s of one optimiser step, input pipeline excluded.

    python -m benchmarks.step_time [--backbones densenet121 mobilenetv2 ...] [--size 224] [--batch 32]
                                   [--steps 10] [--precision float32 mixed_bfloat16] [--out step_time.jsonl]

The model is cxr-assist's own (``cxr_core.learn.models.build_model``: gray
input, 14 logits) under whatever Keras backend is active: TensorFlow here;
on a GPU machine without TensorFlow, ``KERAS_BACKEND=jax`` runs the same
Keras model through XLA. One fixed synthetic batch (named synthetic: random
pixels and labels; the step's cost does not depend on the values) is fed
with ``train_on_batch`` after warm-up, which waits for the step to finish,
so the time is the device's. Where Keras cannot run, ``--torch`` measures
torchvision's implementation of the same architecture instead, labelled as
such. Each result is one JSON line appended to ``--out`` as soon as it is
measured (a run cut off keeps what it measured). ``docs/evidence/scaling.md`` uses these
numbers for its epoch-time estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

FINDINGS_COUNT = 14


def _write(out: Path | None, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if out is not None:
        with out.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _device() -> str:
    try:
        import keras

        if keras.backend.backend() == "jax":
            import jax

            return str(jax.devices()[0].device_kind)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return str(tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU"))
    except Exception:  # noqa: BLE001 - a label only
        pass
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def keras_step_time(backbone: str, size: int, batch: int, steps: int, precision: str) -> dict:
    """Median seconds of one training step of cxr-assist's model for ``backbone``."""
    import keras

    from cxr_core.learn.models import build_model

    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model(backbone, size, rgb_stem=backbone != "small_cnn")
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=keras.losses.BinaryCrossentropy())
        rng = np.random.default_rng(0)
        x = rng.normal(0, 1, (batch, size, size, 1)).astype(np.float32)
        y = (rng.random((batch, FINDINGS_COUNT)) < 0.1).astype(np.float32)
        started = time.perf_counter()
        model.train_on_batch(x, y)  # compilation / tracing
        compile_s = time.perf_counter() - started
        model.train_on_batch(x, y)
        times = []
        for _ in range(steps):
            started = time.perf_counter()
            model.train_on_batch(x, y)  # returns Python floats: the step has finished
            times.append(time.perf_counter() - started)
        return {"step_s": statistics.median(times), "first_step_s": round(compile_s, 2), "parameters": model.count_params()}
    finally:
        keras.mixed_precision.set_global_policy("float32")


def torch_step_time(backbone: str, size: int, batch: int, steps: int, precision: str) -> dict:
    """The same measurement with torchvision's model of the same architecture (a stand-in, labelled)."""
    import torch
    import torchvision

    constructors = {"densenet121": torchvision.models.densenet121, "mobilenetv2": torchvision.models.mobilenet_v2,
                    "efficientnetb0": torchvision.models.efficientnet_b0, "vgg16": torchvision.models.vgg16,
                    "resnet50": torchvision.models.resnet50}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = constructors[backbone](num_classes=FINDINGS_COUNT).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(batch, 1, size, size, device=device).repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, FINDINGS_COUNT, device=device) < 0.1).float()
    dtype = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(precision, torch.float32)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    step()
    compile_s = time.perf_counter() - started
    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"step_s": statistics.median(times), "first_step_s": round(compile_s, 2),
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["densenet121", "mobilenetv2", "efficientnetb0", "vgg16"])
    parser.add_argument("--size", type=int, nargs="+", default=[224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "mixed_float16", "mixed_bfloat16"])
    parser.add_argument("--torch", action="store_true", help="torchvision's models instead of cxr-assist's Keras models")
    parser.add_argument("--out", type=Path, help="JSON-lines file the results are appended to")
    args = parser.parse_args()
    if args.batch < 1 or args.steps < 1 or min(args.size) < 32:
        parser.error("--batch and --steps must be >= 1 and --size >= 32")

    if args.torch:
        import torch

        framework = f"torch {torch.__version__} (torchvision's architecture)"
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
        measure = torch_step_time
    else:
        import keras

        framework = f"keras {keras.__version__} on {keras.backend.backend()}"
        device = _device()
        measure = keras_step_time
    for size in args.size:
        for precision in args.precision:
            for backbone in args.backbones:
                row = {"backbone": backbone, "size": size, "batch": args.batch, "precision": precision,
                       "framework": framework, "device": device}
                try:
                    result = measure(backbone, size, args.batch, args.steps, precision)
                except Exception as error:  # noqa: BLE001 - one failing backbone must not lose the others
                    row["error"] = f"{type(error).__name__}: {error}"[:500]
                else:
                    row.update(result, images_per_s=round(args.batch / result["step_s"], 1),
                               step_s=round(result["step_s"], 4))
                _write(args.out, row)


if __name__ == "__main__":
    main()
