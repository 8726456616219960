"""How often the not-a-frontal-chest-X-ray warning fires: on things that are not one, and on real test films.

    python -m benchmarks.ood --bundle models/default --data ../shared/nih [--per-transform 100] [--out benchmarks/OOD_RESULTS.md]

Every image goes through the path ``training.predict`` takes (encoded as PNG,
decoded, resized for every member and screened by ``Predictor.prepare``, then
``Predictor.analyze`` as a batch), so a row is warned exactly when the app, the reports
and the ``warning`` column would warn it.

The corpus (all made here, seeded):

- ``nih_test``: every TEST-split image of the bundle's split (false alarms);
- ``noise``: uniform, Gaussian, blurred and salt-and-pepper noise, 320-1024 px, chest-film shapes;
- ``photo``: scikit-learn's two sample photographs (grey) and random crops of them (>= 256 px);
- ``nih_rot90``, ``nih_rot270``, ``nih_upside_down`` (rotated 180°), ``nih_inverted`` (1 - x),
  ``nih_cropped`` (a random 30-45% of the side, scaled back to the film's size, as a crop of a
  full-resolution film would be): ``--per-transform`` test-split films each;
- ``ct_mr``: the CT, MR and nuclear-medicine slices among pydicom's test files (../shared/dicom holds
  chest films only), windowed into 8-bit PNGs as stored, and ``ct_mr_512`` the same scaled to 512 px
  on the long side (a screenshot-sized export);
- ``text``: rendered text pages (PIL), dark on light and light on dark.

Per category: images, warned by anything (the rules, the intensity check, the
learned check), by the simple rules, by the learned check and by each of its
four scores. Goals: >= 95% of the non-chest corpus warned, <= 2% of NIH test films.

This script only reads the bundle's check: its thresholds were fitted on the
validation split by ``python -m training.fit_ood`` beforehand. Run it once per
fitted bundle and do not refit after looking at its test numbers (that would
choose thresholds on the test split). For a new bundle::

    python -m training.fit_ood --bundle models/default --data ../shared/nih
    python -m benchmarks.ood --bundle models/default --data ../shared/nih --out benchmarks/OOD_RESULTS.md
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np

from cxr_core.screening.ood import SCORE_KEYS, SCORES

GOAL_DETECTION, GOAL_FALSE_ALARM = 0.95, 0.02


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    x = np.asarray(pixels)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise(rng, n: int) -> list[tuple[str, np.ndarray]]:
    import cv2

    out = []
    shapes = [(320, 320), (512, 512), (1024, 1024), (1000, 820), (820, 1000), (600, 480)]
    for i in range(n):
        h, w = shapes[i % len(shapes)]
        kind = i % 4
        if kind == 0:
            x = rng.random((h, w))
        elif kind == 1:
            x = np.clip(rng.normal(0.5, 0.18, (h, w)), 0, 1)
        elif kind == 2:
            x = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigmaX=float(rng.uniform(2, 12)))
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
        else:
            x = np.full((h, w), 0.5) + 0.1 * rng.random((h, w))
            mask = rng.random((h, w))
            x[mask < 0.1], x[mask > 0.9] = 0.0, 1.0
        out.append((f"noise_{['uniform', 'gaussian', 'blurred', 'salt_pepper'][kind]}_{i}", np.asarray(x, np.float32)))
    return out


def _photos(rng, crops_each: int) -> list[tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    out = []
    for name, rgb in zip(data.filenames, data.images):
        gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
        stem = Path(name).stem
        out.append((f"photo_{stem}", gray))
        h, w = gray.shape
        for k in range(crops_each):
            side_h = int(rng.integers(256, h + 1))
            side_w = int(np.clip(side_h * rng.uniform(0.7, 1.4), 256, w))
            y, x = int(rng.integers(0, h - side_h + 1)), int(rng.integers(0, w - side_w + 1))
            out.append((f"photo_{stem}_crop{k}", gray[y : y + side_h, x : x + side_w]))
    return out


def _nih_transforms(rng, films: list[tuple[str, np.ndarray]]) -> dict[str, list[tuple[str, np.ndarray]]]:
    import cv2

    out = {"nih_rot90": [], "nih_rot270": [], "nih_upside_down": [], "nih_inverted": [], "nih_cropped": []}
    for name, x in films:
        out["nih_rot90"].append((name, np.rot90(x, 1)))
        out["nih_rot270"].append((name, np.rot90(x, 3)))
        out["nih_upside_down"].append((name, np.rot90(x, 2)))
        out["nih_inverted"].append((name, 1.0 - x))
        h, w = x.shape
        side = float(rng.uniform(0.30, 0.45))
        ch, cw = max(int(h * side), 8), max(int(w * side), 8)
        y, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = cv2.resize(np.ascontiguousarray(x[y : y + ch, x0 : x0 + cw]), (w, h), interpolation=cv2.INTER_CUBIC)
        out["nih_cropped"].append((name, np.clip(crop, 0, 1)))
    return {k: [(n, np.ascontiguousarray(v, dtype=np.float32)) for n, v in items] for k, items in out.items()}


CT_MR_FILES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "MR_small.dcm", "examples_overlay.dcm", "JPEG2000.dcm")


def _ct_mr() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(as stored, scaled to 512 px on the long side): the single-frame CT / MR / NM slices pydicom ships."""
    import cv2
    import pydicom
    from pydicom.data import get_testdata_file

    native, scaled = [], []
    for name in CT_MR_FILES:
        path = get_testdata_file(name)
        if path is None:
            continue
        ds = pydicom.dcmread(path)
        values = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        windows = [("", np.percentile(values, [1, 99]))]
        if ds.Modality == "CT":
            windows.append(("_lung", np.array([-1350.0, 150.0])))
        for suffix, (low, high) in windows:
            x = np.clip((values - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
            label = f"{ds.Modality}_{Path(name).stem}{suffix}"
            native.append((label, x))
            h, w = x.shape
            f = 512 / max(h, w)
            scaled.append((label, cv2.resize(x, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)))
    return native, scaled


def _text(rng, n: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image, ImageDraw, ImageFont

    words = ("chest radiograph findings impression lungs clear no pleural effusion heart size normal mediastinum "
             "patient history cough fever comparison prior study technique frontal lateral views").split()
    out = []
    for i in range(n):
        w, h = [(640, 800), (800, 640), (512, 512), (1000, 1000)][i % 4]
        dark_on_light = i % 2 == 0
        image = Image.new("L", (w, h), 245 if dark_on_light else 10)
        draw = ImageDraw.Draw(image)
        size = int(rng.integers(14, 40))
        font = ImageFont.load_default(size=size)
        y = int(rng.integers(5, 30))
        while y < h - size:
            line = " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
            draw.text((int(rng.integers(5, 40)), y), line, fill=20 if dark_on_light else 235, font=font)
            y += int(size * rng.uniform(1.2, 1.8))
        out.append((f"text_{i}", np.asarray(image, np.float32) / 255.0))
    return out


def screen(predictor, images: list[tuple[str, np.ndarray]], batch_size: int = 16) -> list[dict]:
    """Each image as training.predict sees it: PNG bytes -> prepare -> analyze (a batch)."""
    from cxr_core.data.imageio import decode_image
    from cxr_core.screening.check import learned_warnings
    from cxr_core.screening.rules import rule_warnings

    rows = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        films, rules = [], []
        for _, pixels in chunk:
            data = _png(pixels)
            films.append(predictor.prepare(data, keep_image=False))
            decoded = decode_image(data)
            rules.append(rule_warnings(decoded.pixels, decoded.original_shape))
        for (name, _), film_rules, analysis in zip(chunk, rules, predictor.analyze(films, explain=[])):
            check = analysis.input_check
            learned = learned_warnings(check)
            rows.append({"name": name, "warned": bool(analysis.warnings), "rules": bool(film_rules), "learned": bool(learned),
                         **{key: (check or {}).get(key) for key in SCORE_KEYS.values()},
                         **{score: bool(check and score in check.get("beyond", ())) for score in SCORES}})
    return rows


def _rate(rows: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="../shared/nih", help="the bundle's dataset (its test split is used)")
    parser.add_argument("--per-transform", type=int, default=100, help="test films per NIH transform (default 100)")
    parser.add_argument("--noise", type=int, default=40)
    parser.add_argument("--photo-crops", type=int, default=12, help="random crops per sample photograph")
    parser.add_argument("--text", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the Markdown results here (e.g. benchmarks/OOD_RESULTS.md)")
    parser.add_argument("--scores", help="write every image's row (category, scores, what warned it) to this CSV")
    args = parser.parse_args()

    from cxr_core.data import NIHDataset, decode_image
    from cxr_core.serving import Predictor

    started = time.time()
    predictor = Predictor.from_bundle(args.bundle)
    if predictor.ood is None:
        print("note: this bundle has no fitted reference (python -m training.fit_ood): only the simple rules run")
    rng = np.random.default_rng(args.seed)
    dataset = NIHDataset(args.data)
    test = [p for name, p in zip(dataset.csv["image"], dataset.csv["path"]) if predictor.split_of(name) == "test"]
    if not test:
        raise SystemExit(f"{args.data} holds none of {args.bundle}'s test images")
    chosen = sorted(rng.choice(len(test), size=min(args.per_transform, len(test)), replace=False))
    films = [(Path(test[i]).name, decode_image(test[i]).pixels) for i in chosen]
    ct_mr, ct_mr_512 = _ct_mr()
    corpus = {
        "noise": _noise(rng, args.noise), "photo": _photos(rng, args.photo_crops),
        **_nih_transforms(rng, films), "ct_mr": ct_mr, "ct_mr_512": ct_mr_512, "text": _text(rng, args.text),
    }
    results = {}
    for category, images in corpus.items():
        results[category] = screen(predictor, images)
        print(f"{category}: {len(images)} images, {_rate(results[category], 'warned'):.1%} warned", flush=True)
    # The real films, read from their files as training.predict reads them.
    nih = [(Path(p).name, decode_image(p).pixels) for p in test]
    results["nih_test"] = screen(predictor, nih)
    print(f"nih_test: {len(nih)} images, {_rate(results['nih_test'], 'warned'):.1%} warned", flush=True)

    ood_rows = [r for c, rows in results.items() if c != "nih_test" for r in rows]
    detection, false_alarm = _rate(ood_rows, "warned"), _rate(results["nih_test"], "warned")
    seconds = time.time() - started
    print(f"detection {detection:.1%} of {len(ood_rows)} (goal >= {GOAL_DETECTION:.0%}); "
          f"false alarms {false_alarm:.1%} of {len(nih)} NIH test films (goal <= {GOAL_FALSE_ALARM:.0%}); {seconds:.0f} s")
    if args.scores:
        import pandas as pd

        pd.DataFrame([{"category": c, **r} for c, rows in results.items() for r in rows]).to_csv(args.scores, index=False)
    if args.out:
        Path(args.out).write_text(_markdown(args, predictor, results, detection, false_alarm, len(ood_rows), seconds),
                                  encoding="utf-8")
        print(f"written to {args.out}")


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _markdown(args, predictor, results, detection, false_alarm, n_ood, seconds) -> str:
    from cxr_core.bundle.format import describe_model

    entry = predictor.metadata.get("ood") or {}
    parts = {key: entry.get(key) or {} for key in ("grid", "layout", "scale")}
    bounds = entry.get("bound_per_score") or {}
    lines = [
        "# Not-a-frontal-chest-X-ray warning: detection and false-alarm rates",
        "",
        f"`python -m benchmarks.ood --bundle {args.bundle} --data {Path(args.data).as_posix()} --per-transform {args.per_transform} "
        f"--out benchmarks/OOD_RESULTS.md` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, {seconds:.0f} s). "
        f"Model: {describe_model(predictor.metadata)}.",
        "",
        f"**Detection: {detection:.1%} of {n_ood} non-chest-film images warned** (goal >= {GOAL_DETECTION:.0%}). "
        f"**False alarms: {false_alarm:.1%} of {len(results['nih_test'])} NIH test films warned** (goal <= {GOAL_FALSE_ALARM:.0%}).",
        "",
        "## How the check was fitted (`python -m training.fit_ood`, before this run; no test image was used)",
        "",
        f"Learned check ({entry.get('method', 'none fitted')}, member `{entry.get('member')}`, fitted {entry.get('created')}): "
        f"the reference is {entry.get('train_images')} training images (of {entry.get('train_images_in_split')}), the "
        f"thresholds come from the {entry.get('val_images')} VALIDATION images of the bundle's split. Four scores, from the "
        "prediction's own forward pass and the member's 8-bit input:",
        "",
        "| score | what | warned when | threshold |",
        "|---|---|---|---:|",
        f"| feature | Mahalanobis distance of the globally pooled features ({entry.get('components')} PPCA components of "
        f"{entry.get('dimensions')}) | above | {_fmt(entry.get('threshold'), '{:.2f}')} |",
        f"| grid | the same for the 2 x 2 pooled features ({parts['grid'].get('components')} of {parts['grid'].get('dimensions')}) "
        f"| above | {_fmt(parts['grid'].get('threshold'), '{:.2f}')} |",
        "| layout | thumbnail's correlation with the mean training film upright minus turned 90/180/270 degrees "
        f"| below | {_fmt(parts['layout'].get('threshold'), '{:.3f}')} |",
        f"| scale | Mahalanobis distance of the radial power spectrum profile ({parts['scale'].get('bands')} bands, "
        f"{parts['scale'].get('components')} components) | above | {_fmt(parts['scale'].get('threshold'), '{:.2f}')} |",
        "",
        f"Threshold rule: false-alarm budget {_fmt(entry.get('false_alarm_budget'), '{:.1%}')} split evenly, "
        f"alpha = {_fmt(entry.get('alpha_per_score'), '{:.2%}')} per score; {entry.get('threshold_rule', 'n/a')}. A film "
        "exchangeable with the validation films is beyond a threshold with probability at most "
        + (", ".join(f"{k} {v:.2%}" for k, v in bounds.items()) or "n/a")
        + f" (<= {sum(bounds.values()):.2%} for the check by the union bound); "
        f"{_fmt(entry.get('val_warned'), '{:.1%}')} of the validation images are warned. "
        "Simple rules (cxr_core.screening.rules): short side < 256 px, width/height outside 0.6-1.7, nearly uniform.",
        "",
        "## Per category",
        "",
        "| category | images | warned | by the simple rules | by the learned check | (feature) | (grid) | (layout) | (scale) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for category, rows in results.items():
        lines.append(f"| {category} | {len(rows)} | {_rate(rows, 'warned'):.1%} | {_rate(rows, 'rules'):.1%} | "
                     f"{_rate(rows, 'learned'):.1%} | " + " | ".join(f"{_rate(rows, k):.1%}" for k in SCORES) + " |")
    missed = [f"{c}: {r['name']}" for c, rows in results.items() if c != "nih_test" for r in rows if not r["warned"]]
    alarms = [r["name"] for r in results["nih_test"] if r["warned"]]
    lines += [
        "",
        "\"warned\" is what the app, the reports and `training.predict`'s `warning` column show (any rule, the intensity "
        "check, or the learned check); a row can be warned by several scores. The corpus is described in "
        "`benchmarks/ood.py`; the transformed NIH films are test-split films of the bundle's split, the cropped ones "
        "scaled back to the film's size (so the size rule cannot catch them); `ct_mr` are pydicom's CT/MR/NM test "
        "slices (few, and small: the size rule catches them as stored; `ct_mr_512` shows the learned check on them alone).",
        "",
        f"Missed ({len(missed)}): " + (", ".join(missed[:40]) + (" ..." if len(missed) > 40 else "") if missed else "none") + ".",
        "",
        f"NIH test films warned ({len(alarms)}): " + (", ".join(alarms) if alarms else "none") + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
