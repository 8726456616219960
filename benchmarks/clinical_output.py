"""What a reader meets on the test split: flags per film, the share that are right, and the triage.

    python -m benchmarks.clinical_output [--bundle models/default] [--out benchmarks/CLINICAL_OUTPUT_RESULTS.md]

Reads the bundle's stored raw probabilities of its validation and test films
(``predictions.csv.gz``, written by ``python -m training.evaluate``) and its
fitted calibration, Youden cuts, flags and triage (``bundle.json``); runs no
model. Rows, all measured on the TEST split against NIH's labels:

* the earlier design, every finding POSITIVE at its Youden's J cut (baseline);
* the shipped flags at a validated specificity (0.95);
* for context, flags refitted on validation at specificities 0.90 and 0.97
  (nothing on test chooses between them);

and the triage: test AUROC with its patient-bootstrap 95% CI, and at the
rule-out and balanced points sensitivity, specificity, PPV, NPV and the share
of films set aside. The issue's targets stand beside the measurements.
Writes the Markdown table to ``--out`` and the numbers beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

#: Issue 22's targets on the test split.
TARGETS = {"flags_per_no_finding_film": ("<=", 0.5), "no_finding_without_flag": (">=", 0.70),
           "flags_right": (">=", None), "triage_auroc": (">=", 0.80), "rule_out_sensitivity": (">=", 0.95)}


def _met(value: float, rule: tuple[str, float | None]) -> str:
    op, target = rule
    if target is None or value is None or not np.isfinite(value):
        return ""
    ok = value <= target if op == "<=" else value >= target
    return "met" if ok else "**missed**"


def measure(bundle: Path, *, n_boot: int = 1000) -> dict:
    """Every row of the table, from the bundle's stored predictions (see the module docstring)."""
    from cxr_core.evaluation.calibration import Calibration
    from cxr_core.evaluation.clinical import flag_burden
    from cxr_core.evaluation.evaluate import reading_report
    from cxr_core.evaluation.flags import fit_flags
    from cxr_core.evaluation.reading import ReadingPolicy
    from cxr_core.findings import FINDINGS
    from cxr_core.jobs.bundle_evaluation import read_predictions

    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    table = read_predictions(bundle)
    calibration = Calibration.from_dict(meta["calibration"])
    policy = ReadingPolicy.from_metadata(meta)
    parts = {}
    for split in ("val", "test"):
        rows = table[table["split"] == split]
        parts[split] = (rows[[f"label_{f}" for f in FINDINGS]].to_numpy(), calibration.apply(rows[list(FINDINGS)].to_numpy()),
                        rows["patient_id"].to_numpy())
    (y_val, c_val, _), (y_test, c_test, g_test) = parts["val"], parts["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report, triage, flags = reading_report(y_test=y_test, c_test=c_test, test_groups=g_test,
                                               youden_thresholds=policy.youden.flag, triage=policy.triage,
                                               flags=policy.flags, n_boot=n_boot)
    designs = [{"design": "Youden's J per finding (the design up to v3, baseline)", **report["burden"]["youden"]}]
    if flags is not None:
        designs.append({"design": f"flags at validated specificity {flags.target_specificity} (shipped)",
                        **report["burden"]["flags"]})
    for specificity in (0.90, 0.97):
        refit = fit_flags(y_val, c_val, target_specificity=specificity, possible_specificity=min(0.8, specificity - 0.05))
        designs.append({"design": f"flags at validated specificity {specificity} (context)",
                        **flag_burden(y_test, refit.flagged(c_test))})
    return {"bundle": bundle.name, "test_films": int(len(y_test)), "designs": designs, "triage": report["triage"],
            "flags": report["flags"]}


def markdown(result: dict) -> str:
    """The results file: the flag designs, then the triage, each measured against its target."""
    fmt = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        f"# What a reader meets: flags and triage of `{result['bundle']}` on its test split",
        "",
        f"Measured by `python -m benchmarks.clinical_output` on the {result['test_films']} test films (NIH labels), from the "
        "bundle's stored predictions; every cut was fitted on the validation split. Targets (issue 22): at most 0.5 flags per "
        "No-Finding film, at least 70% of No-Finding films without a flag, a share of right flags no lower than the "
        "Youden baseline's.",
        "",
        "| design | flags per No-Finding film | No-Finding films without a flag | flags per abnormal film | flags right "
        "| abnormal films with a right flag |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    baseline = result["designs"][0]["flags_right"]
    for row in result["designs"]:
        right_rule = (">=", baseline)
        lines.append(
            f"| {row['design']} | {fmt(row['flags_per_no_finding_film'], 2)} "
            f"{_met(row['flags_per_no_finding_film'], TARGETS['flags_per_no_finding_film'])} "
            f"| {fmt(row['no_finding_without_flag'], 2)} {_met(row['no_finding_without_flag'], TARGETS['no_finding_without_flag'])} "
            f"| {fmt(row['flags_per_abnormal_film'], 2)} | {fmt(row['flags_right'], 2)} "
            f"{'' if row is result['designs'][0] else _met(row['flags_right'], right_rule)} "
            f"| {fmt(row['abnormal_with_right_flag'], 2)} |"
        )
    triage = result["triage"]
    if triage:
        lines += [
            "",
            f"Triage ({triage['method']}, chosen on validation: out-of-fold AUROC noisy-OR "
            f"{fmt(triage['selection']['noisy_or']['oof_auroc'])}, logistic {fmt(triage['selection']['logistic']['oof_auroc'])}): "
            f"test AUROC **{fmt(triage['auroc'])}** (95% CI {fmt(triage['auroc_low'])}–{fmt(triage['auroc_high'])}, patient "
            f"bootstrap; target ≥ 0.80, {_met(triage['auroc'], TARGETS['triage_auroc'])}), "
            f"{triage['test_abnormal_films']} of {triage['test_films']} test films abnormal.",
            "",
            "| point | cut | sensitivity | specificity | PPV | NPV | films set aside |",
            "|---|---:|---|---|---|---|---:|",
        ]
        for key, name, cut in (("at_rule_out", "rule-out", triage["rule_out"]), ("at_balanced", "balanced", triage["balanced"])):
            r = triage[key]
            ci = lambda k: f"{fmt(r[k])} ({fmt(r[k + '_low'], 2)}–{fmt(r[k + '_high'], 2)})"  # noqa: E731
            met = f" {_met(r['sensitivity'], TARGETS['rule_out_sensitivity'])}" if key == "at_rule_out" else ""
            lines.append(f"| {name} | {fmt(cut)} | {ci('sensitivity')}{met} | {ci('specificity')} | {ci('ppv')} | {ci('npv')} "
                         f"| {fmt(1 - r['decided_share'], 3)} |")
        val = triage["validation"]["rule_out"]
        lines += ["", f"On validation the rule-out point had sensitivity {fmt(val['sensitivity'])} (its Wilson 95% lower bound "
                  f"{fmt(val['sensitivity_low'])}: the rule fits the cut so that this bound reaches 0.95). Intervals of the rates: "
                  "Wilson 95%, by film."]
    flags = result.get("flags")
    if flags:
        lines += ["", "Per finding, the shipped flags: validation worth and test rates (NIH labels).", "",
                  "| finding | flag cut | validation PPV (95% CI) | lift | test PPV | test sensitivity | test specificity |",
                  "|---|---:|---|---:|---:|---:|---:|"]
        for row in flags["per_finding"]:
            if row["flag"] is None:
                lines.append(f"| {row['finding']} | none | {row['reason']} | | | | |")
                continue
            v, t = row["validation"], row["test"]
            lines.append(f"| {row['finding']} | {fmt(row['flag'])} | {fmt(v['ppv'], 2)} ({fmt(v['ppv_low'], 2)}–"
                         f"{fmt(v['ppv_high'], 2)}) | {fmt(v['lift'], 1)} | {fmt(t['ppv'], 2)} | {fmt(t['sensitivity'], 2)} "
                         f"| {fmt(t['specificity'], 3)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--out", default="benchmarks/CLINICAL_OUTPUT_RESULTS.md")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    result = measure(Path(args.bundle), n_boot=args.n_boot)
    out = Path(args.out)
    out.write_text(markdown(result), encoding="utf-8")
    from cxr_core.evaluation.evaluate import _json

    out.with_suffix(".json").write_text(json.dumps(_json(result), indent=1, allow_nan=False), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
