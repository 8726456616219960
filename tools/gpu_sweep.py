"""Recipe exploration on a lent GPU: from-scratch levers and self-supervised pretraining.

The harness (``python -m training.experiment``) trains every recipe on the
2-core CPU, where one from-scratch MobileNetV2 takes about 50 minutes. The
levers of issue 11 that need many such runs (augmentation strength, mixup,
cutmix, longer schedules, weight averaging, other backbones, seeds,
test-time augmentation, contrastive pretraining) are explored here instead,
on a GPU machine that has Keras but no TensorFlow, in three steps::

    python -m tools.gpu_sweep pack --cache cache/nih192 --out .sweep/pack.npz           # here
    KERAS_BACKEND=jax python -m tools.gpu_sweep run --pack .sweep/pack.npz --out $OUT   # on the GPU
    python -m tools.gpu_sweep score --results DIR --cache cache/nih192                   # here (tools/sweep_score.py)

``run`` uses cxr-assist's own builder (:func:`cxr_core.learn.models.build_model`),
loss, split, augmentation magnitudes and schedule, written with Keras ops and
OpenCV instead of tf.data, so it runs on any Keras backend. It is a stand-in
for the harness, not the harness: images travel as 192 px JPEG (quality 90,
to fit the device's transfer limit), and each lever is read against the
baseline recipe trained the same way in the same run, never against a CPU
row. Each finished recipe appends one JSON line with its validation logits
(best epoch by validation mean AUROC, as the harness's checkpoint choice),
so a run cut off at its time limit keeps what finished. ``score`` computes
the same patient-bootstrap intervals as the harness.

The test split never leaves this machine: the pack holds the training and
validation images with labels, and the test images WITHOUT labels, used only
by the self-supervised pretraining, which the issue asks to run on every
image (labels unused).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cxr_core.data.preprocessing import PreprocessConfig, normalize
from cxr_core.learn.augment import AugmentConfig
from cxr_core.learn.selection import mean_auroc

STORED_SIZE = 192
INPUT_SIZE = 160


# ---------------------------------------------------------------- pack (here)

def pack(cache: str, out: str, *, quality: int = 90) -> Path:
    """Write train/val images with labels and test images without, as JPEG bytes in one npz."""
    import cv2

    from cxr_core.learn.cache import open_cache

    source = open_cache(cache)
    if source.size != STORED_SIZE:
        raise ValueError(f"the sweep expects a {STORED_SIZE} px cache, {cache} is {source.size} px")
    blobs, offsets, splits, labels, names, patients = [], [0], [], [], [], []
    for split in ("train", "val", "test"):
        images, split_labels, split_names = source.read_split(split)
        index = source.split_index(split).set_index("image")
        for image, label, name in zip(images, split_labels, split_names):
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for {name}")
            blobs.append(encoded.tobytes())
            offsets.append(offsets[-1] + len(blobs[-1]))
            splits.append(split)
            names.append(name)
            patients.append(int(index.loc[name, "patient_id"]))
            labels.append(np.full(14, -1.0, np.float32) if split == "test" else label)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), np.uint8), offsets=np.asarray(offsets, np.int64),
             split=np.asarray(splits), labels=np.stack(labels).astype(np.float32), image=np.asarray(names),
             patient_id=np.asarray(patients, np.int64))
    return path


def load_pack(path: str) -> dict:
    import cv2

    data = np.load(path)
    raw, offsets = data["jpeg"], data["offsets"]
    images = np.stack([cv2.imdecode(raw[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE)
                       for i in range(len(offsets) - 1)])
    return {"images": images, "split": data["split"], "labels": data["labels"], "image": data["image"]}


# ------------------------------------------------------ augmentation (numpy)

def augment(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, *, blur: float = 0.0,
            size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 (n, S, S) -> float32 (n, size, size) in 0-255, as pipeline.augment_batch (no flip).

    ``blur`` is the probability of a Gaussian blur (self-supervised views only).
    """
    import cv2

    n, source = images.shape[0], float(images.shape[1])
    k = cfg.strength
    out = np.empty((n, size, size), np.float32)
    half = (size - 1) / 2.0
    for i in range(n):
        area = rng.uniform(1.0 - cfg.crop_area * k, 1.0)
        log_ratio = math.log1p(cfg.aspect * k)
        ratio = math.exp(rng.uniform(-log_ratio, log_ratio)) if log_ratio > 0 else 1.0
        crop_w = min(source * math.sqrt(area * ratio), source)
        crop_h = min(source * math.sqrt(area / ratio), source)
        cx = crop_w / 2.0 + rng.uniform() * (source - crop_w) - 0.5
        cy = crop_h / 2.0 + rng.uniform() * (source - crop_h) - 0.5
        max_angle = math.radians(cfg.rotation * k)
        angle = rng.uniform(-max_angle, max_angle) if max_angle > 0 else 0.0
        sx, sy = crop_w / size, crop_h / size
        c, s = math.cos(angle), math.sin(angle)
        a0, a1, b0, b1 = c * sx, -s * sy, s * sx, c * sy
        matrix = np.array([[a0, a1, cx - (a0 + a1) * half], [b0, b1, cy - (b0 + b1) * half]], np.float32)
        img = cv2.warpAffine(images[i], matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        if blur and rng.uniform() < blur:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.1, 2.0))
        if cfg.contrast * k > 0:
            mean = img.mean()
            img = (img - mean) * rng.uniform(1 - cfg.contrast * k, 1 + cfg.contrast * k) + mean
        if cfg.brightness * k > 0:
            img = img + rng.uniform(-255 * cfg.brightness * k, 255 * cfg.brightness * k)
        out[i] = np.clip(img, 0, 255)
    return out


def augment_parallel(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, *, blur: float = 0.0,
                     threads: int = 4) -> np.ndarray:
    """:func:`augment` over ``threads`` chunks (OpenCV releases the GIL), one child generator per chunk."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = np.array_split(np.arange(len(images)), threads)
    children = rng.spawn(threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda c: augment(images[c[0]], c[1], cfg, blur=blur), zip(chunks, children))
        return np.concatenate(list(parts))


def eval_views(images: np.ndarray, *, tta: bool, size: int = INPUT_SIZE) -> list[np.ndarray]:
    """The evaluation resize (area), and with ``tta`` five 176 px crops (corners, centre) resized alike."""
    import cv2

    def resize(batch):
        return np.stack([np.round(cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)) for im in batch])

    views = [resize(images).astype(np.float32)]
    if tta:
        s, c = images.shape[1], 176
        for y, x in ((0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)):
            views.append(resize(images[:, y:y + c, x:x + c]).astype(np.float32))
    return views


def normalise(x: np.ndarray) -> np.ndarray:
    """0-255 -> the model's input (the one preprocessing's :func:`normalize`), with a channel axis."""
    return normalize(x, PreprocessConfig(INPUT_SIZE))[..., None]


def mix(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, *, mixup: float, cutmix: float):
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) of an epoch's images with a permutation."""
    perm = rng.permutation(len(x))
    if mixup > 0:
        lam = rng.beta(mixup, mixup, size=len(x)).astype(np.float32)
        return lam[:, None, None] * x + (1 - lam[:, None, None]) * x[perm], lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    # Patches come from the original images, never from ones already mixed in this loop.
    mixed_x, mixed_y = x.copy(), y.copy()
    size = x.shape[1]
    for i in range(len(x)):
        lam = rng.beta(cutmix, cutmix)
        h = int(size * math.sqrt(1 - lam))
        if h == 0:
            continue
        top, left = rng.integers(0, size - h + 1), rng.integers(0, size - h + 1)
        mixed_x[i, top:top + h, left:left + h] = x[perm[i], top:top + h, left:left + h]
        kept = 1 - h * h / size ** 2
        mixed_y[i] = kept * y[i] + (1 - kept) * y[perm[i]]
    return mixed_x, mixed_y


# ----------------------------------------------------------- recipes (GPU)

@dataclass(frozen=True)
class Recipe:
    name: str
    what: str
    backbone: str = "mobilenetv2"
    small_cnn_width: int = 16
    width_multiplier: float = 1.0
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    loss: str = "weighted_bce"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    ssl_epochs: int = 0
    patience: int = 8


BASE = Recipe("sweep_base_s0", "baseline recipe (configs/shipped.toml): MobileNetV2 scratch 160 px, weighted BCE, 30 ep")
RECIPES = {r.name: r for r in [
    BASE,
    replace(BASE, name="sweep_base_s1", what="baseline, seed 1", seed=1),
    replace(BASE, name="sweep_base_s2", what="baseline, seed 2", seed=2),
    replace(BASE, name="sweep_bce", what="plain BCE instead of weighted", loss="bce"),
    replace(BASE, name="sweep_aug05", what="augmentation strength 0.5", augment=AugmentConfig(strength=0.5)),
    replace(BASE, name="sweep_aug20", what="augmentation strength 2.0", augment=AugmentConfig(strength=2.0)),
    replace(BASE, name="sweep_mixup02", what="image mixup alpha 0.2", mixup=0.2),
    replace(BASE, name="sweep_cutmix", what="CutMix alpha 1.0", cutmix=1.0),
    replace(BASE, name="sweep_ep60", what="60-epoch cosine schedule", epochs=60, patience=16),
    replace(BASE, name="sweep_ema", what="EMA of the weights (0.998) for evaluation", ema=0.998),
    replace(BASE, name="sweep_effb0", what="EfficientNet-B0 from scratch", backbone="efficientnetb0"),
    replace(BASE, name="sweep_densenet121", what="DenseNet-121 from scratch", backbone="densenet121"),
    replace(BASE, name="sweep_smallcnn32", what="small CNN built here, width 32", backbone="small_cnn", small_cnn_width=32),
    replace(BASE, name="sweep_smallcnn64", what="small CNN built here, width 64", backbone="small_cnn", small_cnn_width=64),
    replace(BASE, name="sweep_mnv2_w05", what="MobileNetV2 at width multiplier 0.5", width_multiplier=0.5),
    replace(BASE, name="sweep_simclr", what="SimCLR pretraining (100 ep, all 3,426 images, labels unused), then the baseline",
            ssl_epochs=100),
    replace(BASE, name="sweep_simclr_lr3e4", what="SimCLR pretraining, then the baseline at lr 3e-4",
            ssl_epochs=100, learning_rate=3e-4),
    # The 2-core CPU's versions: width 0.5 (1.7x faster, within seed noise of
    # width 1.0), each read against sweep_mnv2_w05 trained the same way.
    replace(BASE, name="sweep_cutmix_w05", what="CutMix alpha 1.0, MobileNetV2 at width 0.5", cutmix=1.0,
            width_multiplier=0.5),
    replace(BASE, name="sweep_simclr_w05", what="SimCLR pretraining (20 ep, all 3,426 images, labels unused), "
            "then MobileNetV2 at width 0.5", ssl_epochs=20, width_multiplier=0.5),
]}

#: Worker queues: the self-supervised run alone on one, the rest spread by cost.
QUEUES = [
    ["sweep_simclr", "sweep_simclr_lr3e4"],
    ["sweep_base_s0", "sweep_bce", "sweep_aug05", "sweep_aug20", "sweep_smallcnn32"],
    ["sweep_base_s1", "sweep_mixup02", "sweep_cutmix", "sweep_ema", "sweep_smallcnn64"],
    ["sweep_base_s2", "sweep_ep60", "sweep_effb0", "sweep_densenet121", "sweep_mnv2_w05"],
]


def _classifier(recipe: Recipe):
    import keras

    from cxr_core.learn.models import build_model

    full = build_model(recipe.backbone, INPUT_SIZE, weights=None, dropout=0.2, bn_momentum=0.9,
                       small_cnn_width=recipe.small_cnn_width, width_multiplier=recipe.width_multiplier)
    return keras.Model(full.inputs, full.get_layer("logits").output, name=full.name)


def _schedule(peak: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 1.0):
    import keras

    warmup = max(1, int(steps_per_epoch * warmup_epochs))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps_per_epoch * epochs - warmup), alpha=0.01, warmup_target=peak, warmup_steps=warmup)


def simclr_pretrain(model, images: np.ndarray, recipe: Recipe, rng: np.random.Generator, log) -> float:
    """SimCLR (Chen et al. 2020): two augmented views per image, NT-Xent loss, on the trunk's pooled features."""
    import keras
    from keras import layers, ops

    from cxr_core.learn.pretrain import nt_xent

    encoder = keras.Model(model.inputs, model.get_layer("pool").output)
    pairs = keras.Input((2, INPUT_SIZE, INPUT_SIZE, 1), name="pairs")
    # Explicit output shapes: JAX cannot infer a Lambda's shape by tracing as TensorFlow does.
    flat = layers.Lambda(lambda t: ops.concatenate([t[:, 0], t[:, 1]], 0),
                         output_shape=(INPUT_SIZE, INPUT_SIZE, 1))(pairs)
    h = encoder(flat)
    z = layers.Dense(128)(layers.Dense(512, activation="relu")(h))
    out = layers.Lambda(lambda t: ops.stack(ops.split(t, 2, axis=0), axis=1), output_shape=(2, 128))(z)
    ssl = keras.Model(pairs, out)
    temperature = 0.2

    def pair_loss(_, y_pred):
        b = ops.shape(y_pred)[0]
        per_row = nt_xent(ops.concatenate([y_pred[:, 0], y_pred[:, 1]], 0), temperature)
        return ops.mean(ops.reshape(per_row, (2, b)), axis=0)

    batch = min(256, len(images) // 2)
    steps = len(images) // batch
    warmup = min(5.0, max(1.0, recipe.ssl_epochs / 10))  # 5 of 100 epochs; 2 of a short run's 20
    ssl.compile(optimizer=keras.optimizers.AdamW(_schedule(1e-3, steps, recipe.ssl_epochs, warmup), weight_decay=1e-4),
                loss=pair_loss)
    strong = AugmentConfig(strength=2.0)
    start = time.perf_counter()
    for epoch in range(recipe.ssl_epochs):
        order = rng.permutation(len(images))[: steps * batch]
        views = np.stack([normalise(augment_parallel(images[order], rng, strong, blur=0.5)),
                          normalise(augment_parallel(images[order], rng, strong, blur=0.5))], 1)
        hist = ssl.fit(views, np.zeros(len(views), np.float32), batch_size=batch, epochs=1, shuffle=False, verbose=0)
        log(f"{recipe.name}: simclr epoch {epoch + 1}/{recipe.ssl_epochs} loss {hist.history['loss'][-1]:.3f} "
            f"{time.perf_counter() - start:.0f}s")
    return time.perf_counter() - start


_PRETRAINED: dict = {}


def train_recipe(recipe: Recipe, data: dict, log) -> dict:
    import keras

    from cxr_core.learn.losses import make_loss

    keras.utils.set_random_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    split, labels, images = data["split"], data["labels"], data["images"]
    train, val = split == "train", split == "val"
    x_train, y_train = images[train], labels[train]
    y_val = labels[val]
    val_views = [normalise(v) for v in eval_views(images[val], tta=True)]
    model = _classifier(recipe)
    ssl_seconds = 0.0
    if recipe.ssl_epochs:
        # Recipes that differ only after pretraining share one pretraining run.
        key = (recipe.backbone, recipe.width_multiplier, recipe.ssl_epochs, recipe.seed)
        if key not in _PRETRAINED:
            seconds = simclr_pretrain(model, images, recipe, rng, log)
            _PRETRAINED[key] = (model.get_weights(), seconds)
        weights, ssl_seconds = _PRETRAINED[key]
        model.set_weights(weights)

    steps = len(x_train) // recipe.batch_size
    optimizer = keras.optimizers.AdamW(_schedule(recipe.learning_rate, steps, recipe.epochs), weight_decay=1e-4)
    # Not the optimizer's own use_ema: Keras's fit() ends by writing the averages
    # into the model (finalize_variable_values), and this loop calls fit() once
    # an epoch, so raw and averaged weights would never be told apart.
    average = weight_average(recipe.ema) if recipe.ema else None
    model.compile(optimizer=optimizer, loss=make_loss(recipe.loss, train_labels=y_train, from_logits=True))
    # An EMA recipe also scores the raw weights of the same run each epoch: a
    # paired comparison (same seed, same batches), free of seed noise.
    best = {"": {"auroc": -1.0}, **({"raw": {"auroc": -1.0}} if recipe.ema else {})}
    history, start, waited = [], time.perf_counter(), 0
    for epoch in range(recipe.epochs):
        x = augment_parallel(x_train, rng, recipe.augment)
        y = y_train
        if recipe.mixup or recipe.cutmix:
            x, y = mix(x, y, rng, mixup=recipe.mixup, cutmix=recipe.cutmix)
        hist = model.fit(normalise(x), y, batch_size=recipe.batch_size, epochs=1, shuffle=True, verbose=0,
                         callbacks=[average] if average else None)
        row = {"epoch": epoch + 1, "loss": float(hist.history["loss"][-1])}
        improved = False
        for variant in best:
            swapped = average.swap_in() if average and variant == "" else None
            centre = model.predict(val_views[0], batch_size=128, verbose=0)
            auroc = mean_auroc(y_val, centre)[0]
            auroc_key = "val_mean_auroc" + (f"_{variant}" if variant else "")
            row[auroc_key] = auroc
            if auroc > best[variant]["auroc"]:
                # The extra views only matter for the epoch kept: scored only there.
                tta = np.mean([centre] + [model.predict(v, batch_size=128, verbose=0) for v in val_views[1:]], axis=0)
                best[variant] = {"auroc": auroc, "epoch": epoch + 1, "centre": centre, "tta": tta}
                row[auroc_key + "_tta"] = mean_auroc(y_val, tta)[0]
                improved = improved or variant == ""
            if swapped is not None:
                average.restore(swapped)
        history.append(row)
        log(f"{recipe.name}: epoch {epoch + 1} " + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "epoch")
            + f" {time.perf_counter() - start:.0f}s")
        waited = 0 if improved else waited + 1
        if waited >= recipe.patience:
            break
    seconds = time.perf_counter() - start
    result = {
        "recipe": recipe.name, "what": recipe.what, "config": asdict(recipe),
        "best_epoch": best[""]["epoch"], "epochs_run": len(history), "history": history,
        "train_seconds": seconds, "ssl_seconds": ssl_seconds,
        "images_per_s": len(history) * steps * recipe.batch_size / seconds, "parameters": int(model.count_params()),
        "val_image": [str(n) for n in data["image"][val]],
        "val_logits": best[""]["centre"].round(5).tolist(), "val_logits_tta": best[""]["tta"].round(5).tolist(),
    }
    if "raw" in best:
        result.update(best_epoch_raw=best["raw"]["epoch"], val_logits_raw=best["raw"]["centre"].round(5).tolist(),
                      val_logits_raw_tta=best["raw"]["tta"].round(5).tolist())
    return result


def weight_average(momentum: float):
    """A Keras callback keeping an exponential moving average of the trainable weights, updated every step.

    The average lives in NumPy, so it behaves the same on every backend;
    ``swap_in()`` puts it into the model and returns the raw weights, which
    ``restore()`` puts back.

    Args:
        momentum: the average's decay per step (0.998: about 500 steps, 7 epochs here).
    """
    import keras

    if not 0.0 < momentum < 1.0:
        raise ValueError(f"momentum must be in (0, 1), got {momentum}")

    class WeightAverage(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values: list[np.ndarray] | None = None

        def on_train_batch_end(self, batch, logs=None):
            current = [keras.ops.convert_to_numpy(v.value).astype(np.float32) for v in self.model.trainable_variables]
            if self.values is None:
                self.values = current
                return
            for average, value in zip(self.values, current):
                average *= momentum
                average += (1.0 - momentum) * value

        def swap_in(self) -> list[np.ndarray] | None:
            if self.values is None:
                return None
            raw = [keras.ops.convert_to_numpy(v.value) for v in self.model.trainable_variables]
            self.restore(self.values)
            return raw

        def restore(self, values: list[np.ndarray]) -> None:
            """Assign ``values`` (e.g. what :meth:`swap_in` handed back) to the trainable weights."""
            for var, value in zip(self.model.trainable_variables, values):
                var.assign(value)

    return WeightAverage()


def run_worker(pack_path: str, out: str, names: list[str], worker: int, deadline: float, smoke: bool) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)  # each worker makes it: one may be started alone, without `run`
    results = Path(out) / f"results_w{worker}.jsonl"
    log_file = open(Path(out) / f"log_w{worker}.txt", "a", buffering=1)

    def log(message: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {message}\n")
        log_file.flush()

    import keras

    log(f"backend {keras.backend.backend()}")
    data = load_pack(pack_path)
    if smoke:
        keep = np.concatenate([np.flatnonzero(data["split"] == s)[:48] for s in ("train", "val", "test")])
        data = {k: v[keep] for k, v in data.items()}
    for name in names:
        if time.time() > deadline:
            log(f"{name}: skipped, past the deadline")
            continue
        recipe = RECIPES[name]
        if smoke:
            recipe = replace(recipe, epochs=2, batch_size=16, ssl_epochs=min(recipe.ssl_epochs, 1))
        log(f"{name}: start")
        try:
            row = train_recipe(recipe, data, log)
        except Exception as exc:  # one broken recipe must not lose the others' rows
            import traceback

            log(f"{name}: FAILED {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            continue
        with open(results, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log(f"{name}: best epoch {row['best_epoch']} val {max(h['val_mean_auroc'] for h in row['history']):.3f} "
            f"{row['train_seconds']:.0f}s")


def run(pack_path: str, out: str, *, seconds: float, workers: int, smoke: bool, only: list[str] | None) -> int:
    import subprocess

    deadline = time.time() + seconds
    queues = [[n for n in q if not only or n in only] for q in QUEUES][:workers]
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.2")
    procs = [subprocess.Popen([sys.executable, "-m", "tools.gpu_sweep", "worker", "--pack", pack_path, "--out", out,
                               "--worker", str(i), "--deadline", str(deadline), "--names", *q] + (["--smoke"] if smoke else []),
                              env=env)
             for i, q in enumerate(queues) if q]
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline + 60 - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("run")
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seconds", type=float, default=480)
    p.add_argument("--workers", type=int, default=len(QUEUES))
    p.add_argument("--only", nargs="+")
    p.add_argument("--smoke", action="store_true", help="48 images per split, 2 epochs: a check of the code path")
    p = sub.add_parser("score")
    p.add_argument("--results", required=True, help="folder with the run's results_w*.jsonl or results*.jsonl.gz")
    p.add_argument("--cache", required=True, help="the cache the pack was made from (validation labels, patients)")
    p.add_argument("--doc", default="docs/experiments.md")
    p.add_argument("--device", default="one NVIDIA H200 (Keras on JAX)", help="where it ran, with the Keras backend")
    p.add_argument("--table", default="gpu-sweep", help="the marker name of the table in --doc")
    p.add_argument("--reference", help="the row gains are read against (default: the mean of the baseline seeds)")
    p = sub.add_parser("worker")
    p.add_argument("--pack", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--deadline", type=float, required=True)
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(pack(args.cache, args.out))
        return 0
    if args.command == "score":
        from tools.sweep_score import add_seed_ensemble, score, sweep_markdown, write_sweep_table

        rows = add_seed_ensemble(score(args.results, args.cache))
        print(sweep_markdown(rows, args.device, reference=args.reference))
        print(write_sweep_table(rows, args.doc, args.device, table=args.table, reference=args.reference))
        return 0
    if args.command == "run":
        return run(args.pack, args.out, seconds=args.seconds, workers=args.workers, smoke=args.smoke, only=args.only)
    run_worker(args.pack, args.out, args.names, args.worker, args.deadline, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
