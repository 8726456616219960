"""Write models/default/MODEL_CARD.md, the full results in docs/evidence/results.md and the README's headline table.

    python -m tools.model_card [--bundle models/default] [--readme README.md] [--results docs/evidence/results.md]

Every number comes from the committed ``metrics.json`` and ``bundle.json``
(for an ensemble, the network line lists every member with its backbone,
start, input size, weight and training time; the expert-reference table and
the label audit appear when ``metrics.json`` has them). The full block
(``results_block``) goes between ``START`` and ``END`` in ``docs/evidence/results.md``
and into the card; a compact headline table (``headline_block``) goes between
``HEADLINE_START`` and ``HEADLINE_END`` in the README.
``tests/serving/test_shipped_model.py`` and ``tests/serving/test_shipped_reading.py`` check
that all three agree with them, so re-running the evaluation and then this
tool keeps them true.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cxr_core.bundle.format import describe_model, explanation_method, input_sizes
from cxr_core.evaluation.expert import expert_markdown

START, END = "<!-- results:start -->", "<!-- results:end -->"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_block(metrics: dict, meta: dict) -> str:
    macro = metrics["macro"]
    counts = metrics["counts"]
    published = metrics["published_auroc"]
    names = list(published)
    lines = [
        f"Test split: {counts['test_images']} images of {counts['test_patients']} patients never seen in training "
        f"(validation: {counts['val_images']} images). **Mean AUROC over the 14 findings: {fmt(macro['auroc'])}** "
        f"(mean of the per-finding 95% CI bounds: {fmt(macro['auroc_low'])}–{fmt(macro['auroc_high'])}); "
        f"target 0.75{_shortfall(macro['auroc'], 0.75)}. Mean AUPRC {fmt(macro['auprc'])}, mean F1 at the validation-fitted "
        f"thresholds {fmt(macro['f1'])}.",
        "",
        "| finding | test positives | AUROC (95% CI, patient bootstrap) | AUPRC | threshold | sensitivity | specificity | PPV | F1 | Wang 2017 | CheXNet |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(metrics["per_finding"]):
        lines.append(
            f"| {row['finding']} | {row['n_test_pos']} | {fmt(row['auroc'])} ({fmt(row['auroc_low'])}–{fmt(row['auroc_high'])}) "
            f"| {fmt(row['auprc'])} | {fmt(row['threshold'])} | {fmt(row['recall'])} | {fmt(row['specificity'])} "
            f"| {fmt(row['precision'])} | {fmt(row['f1'])} | {fmt(published[names[0]][i])} | {fmt(published[names[1]][i])} |"
        )
    means = [float(np.mean(published[n])) for n in names]
    lines += [
        f"| **mean** | | **{fmt(macro['auroc'])}** | {fmt(macro['auprc'])} | | | | | {fmt(macro['f1'])} | {fmt(means[0])} | {fmt(means[1])} |",
        "",
        "The published columns are for orientation only: Wang et al. 2017 (ResNet-50, ImageNet initialisation, "
        "NIH's official split) and CheXNet (DenseNet-121, ImageNet initialisation, its own patient-wise split) "
        f"trained on tens of thousands of images (CheXNet: 98,637); ours ({describe_model(meta)}) learned from "
        f"{_count((meta.get('data') or {}).get('counts', {}).get('train'))} training images and is tested on a different, "
        "much smaller test set.",
    ]
    lines += reading_lines(metrics)
    cal = metrics["calibration"]
    ece_b = np.nanmean([v for v in cal["ece_before"] if v is not None])
    ece_a = np.nanmean([v for v in cal["ece_after"] if v is not None])
    brier_b = np.nanmean([v for v in cal["brier_before"] if v is not None])
    brier_a = np.nanmean([v for v in cal["brier_after"] if v is not None])
    lines += [
        "",
        f"Calibration ({cal['method']} scaling per finding, fitted on validation), on test: mean ECE {ece_b:.3f} → "
        f"{ece_a:.3f}, mean Brier score {brier_b:.4f} → {brier_a:.4f}.",
    ]
    loc = metrics.get("localization") or {}
    if loc.get("n_boxes"):
        keys = [k for k in loc["accuracy"][0] if k.startswith("T(IoBB)")]
        t01 = [row["T(IoBB)=0.1"] for row in loc["accuracy"] if row.get("T(IoBB)=0.1") is not None]
        mean_t01 = float(np.mean(t01)) if t01 else None
        lines += [
            "",
            f"Localisation: heatmap boxes ({_map_words(meta)}) against the {loc['n_boxes']} expert boxes on the test images, "
            "T(IoBB) accuracy (share of boxes hit with IoBB ≥ T) and mean IoU. "
            f"**Mean T(IoBB)=0.1 over the {len(t01)} boxed findings: {fmt(mean_t01, 2)}** (target 0.57, Wang et al. 2017"
            f"{_shortfall(mean_t01, 0.57, 2)}):",
            "",
            "| finding | boxes | " + " | ".join(keys) + " | mean IoU |",
            "|---|---:|" + "---:|" * (len(keys) + 1),
        ]
        for row in loc["accuracy"]:
            lines.append(f"| {row['finding']} | {row['n_boxes']} | " + " | ".join(fmt(row[k], 2) for k in keys) + f" | {fmt(row['mean_iou'], 2)} |")
    expert = expert_markdown(metrics)  # absent from bundles evaluated without the radiologists' labels
    if expert:
        lines += ["", *expert]
    groups: dict[tuple[str, str], list[float]] = {}
    for row in metrics.get("subgroups", []):
        if row.get("auroc") is not None:
            groups.setdefault((row["attribute"], str(row["group"])), []).append(row["auroc"])
    if groups:
        lines += ["", "Subgroups (mean AUROC over findings with positives in the group; test split):", "",
                  "| attribute | group | mean AUROC |", "|---|---|---:|"]
        for (attribute, group), values in groups.items():
            lines.append(f"| {attribute} | {group} | {np.mean(values):.3f} |")
    return "\n".join(lines)


#: The models shipped before, each read once on the same test split (mean AUROC, mean of the per-finding 95% CI
#: bounds); measured numbers from their own metrics.json, kept here because their bundles are replaced.
SHIPPED_BEFORE = (("v1", 0.686, 0.616, 0.756), ("v2", 0.704, 0.634, 0.773), ("v3", 0.710, 0.642, 0.777))


def headline_block(metrics: dict) -> str:
    """The README's compact table: the test split's headline numbers, each linked to where it is explained."""
    macro, counts = metrics["macro"], metrics["counts"]
    rows = [
        f"Test split of the shipped model: {counts['test_images']} images of {counts['test_patients']} patients never seen "
        "in training; every cut fitted on validation.",
        "",
        "| measure | result | target | details |",
        "|---|---|---|---|",
        f"| mean AUROC over the 14 findings (mean of their 95% CI bounds) | **{fmt(macro['auroc'])}** ({fmt(macro['auroc_low'])}–"
        f"{fmt(macro['auroc_high'])}) | 0.75{_shortfall(macro['auroc'], 0.75)} | [results](docs/evidence/results.md) |",
        "| the same, for the models shipped before | " + ", ".join(f"{name} {a:.3f} ({low:.3f}–{high:.3f})"
                                                            for name, a, low, high in SHIPPED_BEFORE)
        + " | - | [model card](models/default/MODEL_CARD.md) |",
    ]
    loc = metrics.get("localization") or {}
    t01 = [row["T(IoBB)=0.1"] for row in loc.get("accuracy") or [] if row.get("T(IoBB)=0.1") is not None]
    if t01:
        mean_t01 = float(np.mean(t01))
        rows.append(f"| heatmaps: mean T(IoBB)=0.1 over the {len(t01)} boxed findings | **{fmt(mean_t01, 2)}** "
                    f"| 0.57{_shortfall(mean_t01, 0.57, 2)} | [localisation](docs/evidence/results.md) |")
    reading = metrics.get("reading") or {}
    triage, burden = reading.get("triage"), reading.get("burden") or {}
    if triage:
        rule_out = triage["at_rule_out"]
        rows += [
            f"| normal/abnormal triage AUROC (95% CI, patient bootstrap) | **{fmt(triage['auroc'])}** ({fmt(triage['auroc_low'])}–"
            f"{fmt(triage['auroc_high'])}) | 0.80{_shortfall(triage['auroc'], 0.80)} | [triage](docs/use/reading.md) |",
            f"| rule-out point: sensitivity for abnormal films; films set aside as \"no finding likely\" "
            f"| **{fmt(rule_out['sensitivity'])}**; {100 * rule_out['set_aside_share']:.1f}% "
            f"| 0.95{_shortfall(rule_out['sensitivity'], 0.95)} | [triage](docs/use/reading.md) |",
        ]
    if burden.get("flags"):
        new, old = burden["flags"], burden["youden"]
        rows.append(
            f"| findings flagged per No-Finding film, at validated specificity 0.95 (Youden's J per finding: "
            f"{fmt(old['flags_per_no_finding_film'], 2)}) | **{fmt(new['flags_per_no_finding_film'], 2)}**; "
            f"{100 * new['no_finding_without_flag']:.0f}% of No-Finding films without a flag, "
            f"{100 * new['flags_right']:.0f}% of flags right (Youden: {100 * old['flags_right']:.0f}%) "
            f"| ≤ 0.5{'; met' if new['flags_per_no_finding_film'] <= 0.5 else '; missed'} "
            "| [flags](docs/use/reading.md), [benchmark](benchmarks/CLINICAL_OUTPUT_RESULTS.md) |"
        )
    return "\n".join(rows)


def replace_between(path: Path, start: str, end: str, block: str) -> bool:
    """Put ``block`` between the markers in ``path``; False (file untouched) when the markers are absent."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{block}\n{end}{tail}", encoding="utf-8")
    return True


def reading_lines(metrics: dict) -> list[str]:
    """The triage and the flags on test (``metrics.json``'s ``reading``); nothing for a bundle evaluated before them."""
    reading = metrics.get("reading") or {}
    triage, burden = reading.get("triage"), reading.get("burden") or {}
    lines: list[str] = []
    if triage:
        rule_out, balanced = triage["at_rule_out"], triage["at_balanced"]
        lines += [
            "",
            f"**Normal/abnormal triage** (probability of any of the 14 findings, {triage['method'].replace('_', '-')} of the "
            f"calibrated probabilities, fitted on validation): test AUROC **{fmt(triage['auroc'])}** (95% CI "
            f"{fmt(triage['auroc_low'])}–{fmt(triage['auroc_high'])}, patient bootstrap; target 0.80"
            f"{_shortfall(triage['auroc'], 0.80)}), {triage['test_abnormal_films']} of {triage['test_films']} test films "
            f"abnormal by NIH's labels. At the rule-out point ({fmt(triage['rule_out'])}, fitted on validation so that the "
            f"lower bound of its sensitivity's 95% interval reaches 0.95): sensitivity **{fmt(rule_out['sensitivity'])}**, "
            f"specificity {fmt(rule_out['specificity'])}, NPV {fmt(rule_out['npv'])}, "
            f"**{100 * rule_out['set_aside_share']:.1f}% of films set aside** as \"no finding likely\". At the balanced "
            f"point ({fmt(triage['balanced'])}): sensitivity {fmt(balanced['sensitivity'])}, "
            f"specificity {fmt(balanced['specificity'])}, PPV {fmt(balanced['ppv'])}.",
        ]
    if burden.get("flags"):
        new, old = burden["flags"], burden["youden"]
        lines += [
            "",
            "**Flags** (each finding flagged at validation specificity 0.95, none where validation has fewer than 10 positives), "
            "on test against the earlier Youden's J cuts:",
            "",
            "| design | flags per No-Finding film | No-Finding films without a flag | flags per abnormal film | flags right "
            "| abnormal films with a right flag |",
            "|---|---:|---:|---:|---:|---:|",
            *(f"| {name} | {fmt(b['flags_per_no_finding_film'], 2)} | {fmt(b['no_finding_without_flag'], 2)} "
              f"| {fmt(b['flags_per_abnormal_film'], 2)} | {fmt(b['flags_right'], 2)} | {fmt(b['abnormal_with_right_flag'], 2)} |"
              for name, b in (("flags at specificity 0.95 (shown)", new), ("Youden's J per finding (before)", old))),
        ]
    return lines


def _count(value) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else "its"


def _shortfall(value, target: float, digits: int = 3) -> str:
    """``"; short by 0.027"`` when ``value`` misses ``target``, ``"; met"`` otherwise."""
    if value is None or not np.isfinite(value):
        return ""
    return "; met" if value >= target else f"; short by {target - value:.{digits}f}"


_METHOD_WORDS = {"gradcam": "Grad-CAM, which for a linear head is the class activation map", "gradcam++": "Grad-CAM++"}


def _map_words(meta: dict) -> str:
    """How the heatmaps are made: the method of each member, and their weights in the averaged map."""
    members = meta.get("members")
    if not members:
        return _METHOD_WORDS[explanation_method(meta)]
    parts = []
    for m in members:
        share = m.get("map_weight", m.get("weight"))
        method = _METHOD_WORDS[explanation_method(m)]
        parts.append(f"{method} of `{m['name']}` weighted {share:.2f}")
    return "the weighted mean of " + " and ".join(parts)


def _init_words(weights_init) -> str:
    if not weights_init:
        return "from scratch (no pretrained weights)"
    if weights_init == "simclr":
        return "initialised from a trunk pretrained here by SimCLR on the sample's images, labels unused"
    return f"initialised from `{weights_init}`"


def network_text(meta: dict) -> str:
    """The card's network line, true for one model or an ensemble (each member's backbone, start and input size)."""
    members = meta.get("members")
    if not members:
        size = meta.get("input_size")
        return f"{meta.get('backbone')} {_init_words((meta.get('model') or {}).get('weights_init'))}, grayscale input {size} x {size} px"
    parts = []
    for m in members:
        # The wall time recorded by the member's own run; a linear head that reused cached trunk
        # features records only its fit, so the template's Recipe section states the full cost.
        minutes = "" if m.get("training_seconds") is None else f", its training run {m['training_seconds'] / 60:.0f} min"
        if m.get("pretraining_seconds"):
            minutes += f" after {m['pretraining_seconds'] / 60:.0f} min of pretraining"
        best = "" if m.get("best_val_mean_auroc") is None else f", best validation mean AUROC {fmt(m['best_val_mean_auroc'])}"
        views = int(m.get("tta_views") or 1)
        scored = f", scored over {views} views (the image and {views - 1} crops; heatmap from the image)" if views > 1 else ""
        parts.append(f"`{m['name']}` (weight {m['weight']:.2f}): {m.get('backbone')} {_init_words(m.get('weights_init'))}, "
                     f"grayscale input {m.get('input_size')} x {m.get('input_size')} px{scored}{minutes}{best}")
    return (f"{describe_model(meta)}, whose logits are averaged with the weights given per member before the sigmoid; calibration "
            "and thresholds are fitted on validation after averaging. Members: " + "; ".join(parts))


def training_seconds(meta: dict) -> float:
    """Training wall time: the model's, or the sum of an ensemble's members'."""
    if meta.get("members"):
        return float(sum(m.get("training_seconds") or 0 for m in meta["members"]))
    return float(((meta.get("training") or {}).get("history") or {}).get("seconds") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--readme", default="README.md", help="gets the headline table")
    parser.add_argument("--results", default="docs/evidence/results.md", help="gets the full results block")
    args = parser.parse_args()
    bundle = Path(args.bundle)
    metrics = json.loads((bundle / "metrics.json").read_text())
    meta = json.loads((bundle / "bundle.json").read_text())
    for member in meta.get("members") or []:  # ensembles assembled before members listed their heatmap method
        if "explanation" not in member:
            own = json.loads((bundle / member["path"] / "bundle.json").read_text())
            member["explanation"] = {"method": explanation_method(own)}
    block = results_block(metrics, meta)
    for path, start, end, text in ((Path(args.results), START, END, block),
                                   (Path(args.readme), HEADLINE_START, HEADLINE_END, headline_block(metrics))):
        if not replace_between(path, start, end, text):
            print(f"{path}: no {start} … {end} markers; left as it is")
    template = Path(__file__).with_name("MODEL_CARD.template.md")
    if template.is_file():
        data = meta.get("data", {})
        split = meta.get("split", {})
        training = meta.get("training", {})
        history = training.get("history") if isinstance(training.get("history"), dict) else {}
        fields = {
            "{{RESULTS}}": block,
            "{{NETWORK}}": network_text(meta),
            "{{BACKBONE}}": str(meta.get("backbone")),
            "{{INPUT_SIZE}}": " / ".join(str(size) for size in input_sizes(meta)),
            "{{SPLIT_IMAGES}}": ", ".join(f"{k} {v:,}" for k, v in data.get("counts", {}).items()),
            "{{SPLIT_PATIENTS}}": ", ".join(f"{k} {v:,}" for k, v in data.get("patients", {}).items()),
            "{{SPLIT_SEED}}": str(split.get("seed")),
            "{{EPOCHS_RUN}}": str(history.get("epochs_run")),
            "{{BEST_EPOCH}}": str(history.get("best_epoch")),
            "{{BEST_VAL_AUROC}}": fmt(history.get("best_val_mean_auroc")),
            "{{TRAIN_MINUTES}}": f"{training_seconds(meta) / 60:.0f}",
            "{{CODE}}": str(meta.get("code", {}).get("git_commit") or meta.get("code", {})),
        }
        card = template.read_text()
        for key, value in fields.items():
            card = card.replace(key, value)
        if meta.get("site"):  # an adapted bundle (python -m training.adapt): its site, beside the parent's NIH numbers
            from cxr_core.adaptation.adapt import site_card_section

            card = card.rstrip() + "\n\n" + site_card_section(meta["site"]) + "\n"
        (bundle / "MODEL_CARD.md").write_text(card)
    print(block)


if __name__ == "__main__":
    main()
