"""Site adaptation on a shifted "site" built from the shared NIH sample: before and after, on the check part.

    nice -n 10 python -m benchmarks.site_adapt [--bundle models/default] [--data ../shared/nih] [--modes none heads]
        [--out benchmarks/SITE_ADAPT_RESULTS.md] [--work runs/site_adapt]

The site: the AP (anterior-posterior) films of the bundle's TEST split, the
films it never trained on and whose labels it was never fitted on. AP films
are taken at the bedside of patients too ill to stand (wards, intensive
care), with a portable machine: another population and another acquisition
than the PA films that make up two thirds of the training films, and a higher
prevalence of findings (fewer No-Finding films) than training. That is the
shift a hospital with many portable films brings. Labels: NIH's (text-mined),
as a site's own labels would be.

For each ``--modes`` entry, ``training.adapt``'s engine runs on that site
with the same seed, so the same patient-wise fit/check split; the numbers are
the report's, all measured on the CHECK part, which nothing is fitted on:
mean AUROC with its patient-bootstrap interval, mean calibration error (ECE),
triage sensitivity at the rule-out point (and films set aside), flags per
No-Finding film, the never-worse decision, and what each step cost in time.
Writes the Markdown table to ``--out`` and everything beside it as JSON.

A second site (``--site screening``), defined before any adaptation was run on
it: the SAME test split's films (PA and AP), sub-sampled patient-wise to a
screening-like prevalence, at least 50% No-Finding films against 21% in the
whole test split (26% in training; the shipped calibration was fitted on NIH
validation). Every patient whose films are all No Finding is kept; then the
patients with an abnormal film, in an order shuffled with seed 35
(``SCREENING_SEED``), each with all its films, where the site's No-Finding
share stays at or above 50% with them; the others are left out. That keeps
as many films as the test split allows at that prevalence (the No-Finding
films run out first): 266 films of 188 patients. Why: the issue asks for a
site "at a prevalence unlike training", and the AP site's shift was mild (11
of 14 findings within 0.03 of its prevalence). Why 50% and not 60%: chosen on
label counts alone, before any adaptation ran on either: at 60% the test split
allows only 195 films (about 97 fit films, fewer than the AP site's 108), whose
fit part would hold 10 positive films (the least a finding needs to be
refitted) for at most 2 of the 14 findings: the refit would keep the shipped
calibration by rule, not by measurement. At 50%: 266 films, about 133 fit. It is a SIMULATION of a population shift on NIH films with
NIH labels: the films, their acquisition and their labelling are NIH's; only
the mix of patients changes, chosen by their labels. The rule leaves out more
often patients with many abnormal films (a sicker patient weighs more on the
share), as a screening population would. Its results are kept beside the AP
site's (``sites.screening`` in the JSON, a section of its own in the Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: The screening-like site: its No-Finding share (at least) and the seed of its patients' order; fixed before any
#: adaptation was run on it.
SCREENING_NO_FINDING_SHARE = 0.50
SCREENING_SEED = 35
#: Each site: its folder under ``--work`` (the AP site's as before) and the name an adapted bundle records.
SITES = {"ap": ("site_ap", "NIH test split, AP films"),
         "screening": ("site_screening", "NIH test split, screening-like sub-sample")}
#: Why each site, in the Markdown.
SITE_WHY = {
    "ap": "AP films are bedside films of patients too ill to stand, taken with a portable machine: another population "
          "and acquisition, at another prevalence.",
    "screening": "the issue asks for a site at a prevalence unlike training, and the AP site's shift was mild. It is a "
                 "**simulation** of a population shift on NIH films with NIH labels: the films, their acquisition and "
                 "their labelling stay NIH's; only the mix of patients changes, chosen by their labels (patients with "
                 "many abnormal films are left out more often, as in a screening population). The rule and its seed "
                 "were fixed and committed before any adaptation was run on this site.",
}


def screening_patients(patients: pd.Series, no_finding: pd.Series, *, share: float = SCREENING_NO_FINDING_SHARE,
                       seed: int = SCREENING_SEED) -> set:
    """The screening-like site's patients: all whose films are all No Finding, then the others in a seeded order,
    each where the No-Finding share of the films taken stays at or above ``share`` with all its films."""
    films = pd.DataFrame({"patient": patients.to_numpy(), "normal": no_finding.to_numpy()})
    per = films.groupby("patient")["normal"].agg(["sum", "size"])
    normal_only = per[per["sum"] == per["size"]]
    others = per[per["sum"] < per["size"]].sort_index()
    order = np.random.default_rng(seed).permutation(len(others))
    kept, normal, total = set(normal_only.index), int(normal_only["sum"].sum()), int(normal_only["size"].sum())
    for i in order:
        patient, row = others.index[i], others.iloc[i]
        if (normal + row["sum"]) >= share * (total + row["size"]):
            kept.add(patient)
            normal, total = normal + int(row["sum"]), total + int(row["size"])
    return kept


def build_site(bundle: Path, data: Path, work: Path, which: str = "ap") -> tuple[Path, Path, dict]:
    """The site folder (links to the chosen films of the test split) and its labels CSV; what it holds."""
    from cxr_core.data import NIHDataset

    dataset = NIHDataset(data)
    split = pd.read_csv(bundle / "splits.csv", dtype={"image": str}).set_index("image")["split"]
    table = dataset.csv.assign(split=dataset.csv["image"].map(split))
    test = (table["split"] == "test").to_numpy()
    no_finding = pd.Series(dataset.labels.sum(axis=1) == 0, index=table.index)
    if which == "ap":
        chosen = (table["split"] == "test") & (table["view"] == "AP")
    else:
        patients = screening_patients(table.loc[test, "patient_id"], no_finding[test])
        chosen = (table["split"] == "test") & table["patient_id"].isin(patients)
    films = table[chosen]
    folder = work / SITES[which][0] / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in zip(films["image"], films["path"]):
        link = folder / name
        if not link.exists():
            os.symlink(os.path.abspath(path), link)
    labels = work / SITES[which][0] / "labels.csv"
    pd.DataFrame({"Image Index": films["image"], "Patient ID": films["patient_id"],
                  "Finding Labels": films["finding_labels"]}).to_csv(labels, index=False)
    y = dataset.labels[chosen.to_numpy()]
    train = (table["split"] == "train").to_numpy()
    described = {
        "what": "the AP films of the bundle's test split (never trained on, never fitted on)",
        "films": int(len(films)), "patients": int(films["patient_id"].nunique()),
        "no_finding_share": float((y.sum(axis=1) == 0).mean()),
        "training_no_finding_share": float((dataset.labels[train].sum(axis=1) == 0).mean()),
        "training_ap_share": float((table.loc[train, "view"] == "AP").mean()),
        "labels": "NIH's text-mined labels (Data_Entry_2017)",
    }
    if which != "ap":  # the AP site's description stays as it was (the earlier results are matched on it)
        y_test = dataset.labels[test]
        described.update({
            "key": which,
            "what": (f"the films of the bundle's test split (never trained on, never fitted on), sub-sampled "
                     f"patient-wise to at least {SCREENING_NO_FINDING_SHARE:.0%} No-Finding films (every patient with "
                     f"only No-Finding films, then the others in an order shuffled with seed {SCREENING_SEED}, each "
                     f"where the share stays at or above {SCREENING_NO_FINDING_SHARE:.0%})"),
            "test_split_films": int(test.sum()), "test_split_patients": int(table.loc[test, "patient_id"].nunique()),
            "test_split_no_finding_share": float((y_test.sum(axis=1) == 0).mean()),
            "ap_share": float((films["view"] == "AP").mean()),
            "prevalence": {f: float(y[:, j].mean()) for j, f in enumerate(dataset.pathologies)},
            "test_split_prevalence": {f: float(y_test[:, j].mean()) for j, f in enumerate(dataset.pathologies)},
            "sampling_seed": SCREENING_SEED, "target_no_finding_share": SCREENING_NO_FINDING_SHARE,
        })
    return folder, labels, described


def _row(mode: str, report: dict) -> dict:
    def part(block: dict) -> dict:
        triage, flags = block.get("triage") or {}, block.get("flags") or {}
        return {"mean_auroc": block["mean_auroc"], "mean_auroc_low": block["mean_auroc_low"],
                "mean_auroc_high": block["mean_auroc_high"], "mean_ece": block["mean_ece"],
                "rule_out_sensitivity": triage.get("sensitivity"), "set_aside_share": triage.get("set_aside_share"),
                "flags_per_no_finding_film": flags.get("flags_per_no_finding_film"),
                "flags_right": flags.get("flags_right")}

    return {"mode": mode, "decision": report["decision"], "reason": report["reason"],
            "recalibration": report.get("recalibration", "refit"), "triage_refit": report.get("triage_refit", "refit"),
            "calibration_choices": {s["finding"]: s.get("calibration", s["source"]) for s in report["fitted"]["sources"]
                                    if s["source"] == "site"},
            "shipped": part(report["shipped"]), "adapted": part(report["adapted"]),
            "difference": report["difference"], "seconds": report["seconds"],
            "fit_films": report["split"]["fit_films"], "check_films": report["split"]["check_films"],
            "refitted_findings": [s["finding"] for s in report["fitted"]["sources"] if s["source"] == "site"],
            "triage": report["fitted"]["triage_note"],
            "members": [{k: r[k] for k in ("member", "cut", "best_epoch", "seconds", "learning_rate")}
                        for r in report["fine_tune"]["members"]]}


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _method(row: dict) -> str:
    """How a row's operating points were refitted, in words."""
    calibration = {"auto": "calibration per finding kept, intercept-shifted or refitted as patient-grouped "
                           "cross-validation inside the fit part supports (one-standard-error rule)",
                   "refit": "calibration refitted (Platt) for every finding with 10 positive and negative fit films",
                   "intercept": "calibration intercept moved for every finding with 10 positive and negative fit films"}
    triage = {"auto": "triage kept as shipped unless cross-validation inside the fit part supports a refit",
              "refit": "triage always refitted"}
    return (f"{calibration[row.get('recalibration', 'refit')]}; {triage[row.get('triage_refit', 'refit')]} "
            f"(`--recalibrate {row.get('recalibration', 'refit')} --triage {row.get('triage_refit', 'refit')}`)")


def _key(row: dict) -> tuple:
    """A split-seed row's identity: its seed and how it was refitted (rows from before ``--triage`` refitted it)."""
    return row["seed"], row.get("recalibration", "refit"), row.get("triage_refit", "refit")


def _decision(row: dict) -> str:
    """``written``, ``refused`` or, where nothing moved, ``nothing to write``."""
    return "nothing to write" if row["reason"].startswith("no bundle written") else row["decision"]


def _mode_table(rows: list[dict]) -> list[str]:
    lines = ["| mode | check films | mean AUROC (95% CI) | mean ECE | rule-out sensitivity | set aside | flags per No-Finding "
             "film | decision |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for row in rows:
        for label, block in (("shipped", row["shipped"]), (f"adapted: {row['mode']}", row["adapted"])):
            if label == "shipped" and row is not rows[0]:
                continue
            lines.append(
                f"| {label} | {row['check_films']} | {_fmt(block['mean_auroc'])} ({_fmt(block['mean_auroc_low'])}–"
                f"{_fmt(block['mean_auroc_high'])}) | {_fmt(block['mean_ece'])} | {_fmt(block['rule_out_sensitivity'])} | "
                f"{_fmt(None if block['set_aside_share'] is None else 100 * block['set_aside_share'], 1)}% | "
                f"{_fmt(block['flags_per_no_finding_film'], 2)} | {'' if label == 'shipped' else _decision(row)} |")
    return lines


def _site_line(site: dict) -> str:
    """What the site is, its size and prevalence, and why."""
    key = site.get("key", "ap")
    if key == "ap":
        return (f"Site: {site['what']}: {site['films']} films of {site['patients']} patients; No-Finding films "
                f"{site['no_finding_share']:.0%} (training: {site['training_no_finding_share']:.0%}); AP films are "
                f"{site['training_ap_share']:.0%} of training. Labels: {site['labels']}. Why: {SITE_WHY[key]}")
    prevalence = ", ".join(f"{f} {site['prevalence'][f]:.3f} ({site['test_split_prevalence'][f]:.3f})"
                           for f in site["prevalence"])
    return (f"Site: {site['what']}: {site['films']} films of {site['patients']} patients, of the test split's "
            f"{site['test_split_films']} films of {site['test_split_patients']} patients; No-Finding films "
            f"{site['no_finding_share']:.0%} (the whole test split: {site['test_split_no_finding_share']:.0%}; training: "
            f"{site['training_no_finding_share']:.0%}); AP films {site['ap_share']:.0%}. Labels: {site['labels']}. Why: "
            f"{SITE_WHY[key]}\n\nEach finding's prevalence on the site (in the whole test split): {prevalence}.")


def _section(results: dict) -> list[str]:
    """One site's tables (the Markdown below its heading)."""
    lines = [
        _site_line(results["site"]),
        "",
        f"Machine: {results['machine']}; {results['when']}. Every number is measured on the CHECK part (NIH labels), "
        "which nothing was fitted on; same seed, so the same split, for every mode. Method: "
        + _method(results.get("method") or (results["rows"] or [{}])[0]) + ".",
        "",
    ]
    lines += _mode_table(results["rows"])
    lines += ["", "Paired patient bootstrap of the mean AUROC (adapted minus shipped), the decision, and the cost:", ""]
    for row in results["rows"]:
        d, s = row["difference"], row["seconds"]
        lines.append(f"- **{row['mode']}**: {_fmt(d['difference'])} (95% interval {_fmt(d['low'])} to {_fmt(d['high'])}); "
                     f"{row['reason']}. Refitted on the fit part ({row['fit_films']} films): "
                     f"{', '.join(row['refitted_findings']) or 'no finding'}; triage: {row['triage']}. Time: predicting "
                     f"{s['predicting']:.0f} s{' (the shipped pass reused from an earlier run)' if s.get('shipped_pass_reused') else ''}, fine-tuning {s['fine_tuning']:.0f} s, total {s['total']:.0f} s.")
        for member in row["members"]:
            lines.append(f"  - {member['member']}: from {member['cut']}, learning rate {member['learning_rate']}, best epoch "
                         f"{member['best_epoch']}, {member['seconds']:.0f} s")
    previous = results.get("previous")
    if previous:
        lines += ["", f"The previous method ({previous['when']}; {_method(previous['rows'][0])}), same site, same seed, "
                      "same split:", ""]
        lines += _mode_table(previous["rows"])
    seeds = list(results.get("split_seeds") or [])
    for row in results["rows"] + (previous or {}).get("rows", []):  # the main tables' refit-only rows: seed 0's split
        if row["mode"] == "none" and not any(_key(r) == _key({**row, "seed": results.get("seed", 0)}) for r in seeds):
            seeds.append({**row, "seed": results.get("seed", 0)})
    if seeds:
        lines += ["", "How the refit alone (mode none) fares on other patient-wise splits of the same site (the split's seed; "
                  "each row its own fit and check part; `auto` `auto` is the default method, the others the previous method or "
                  "a comparison):", "",
                  "| seed | calibration | triage | check films | mean ECE shipped → adapted | rule-out sensitivity shipped → "
                  "adapted | films set aside | findings moved | decision |",
                  "|---:|---|---|---:|---|---|---|---|---|"]
        for row in sorted(seeds, key=lambda r: (_key(r)[1] != "auto", _key(r)[1:], r["seed"])):
            a, b = row["shipped"], row["adapted"]
            aside = [None if v is None else 100 * v for v in (a["set_aside_share"], b["set_aside_share"])]
            moved = row.get("calibration_choices")
            moved = ("n/a" if moved is None else ", ".join(f"{k} ({v})" for k, v in moved.items()) or "none")
            lines.append(f"| {row['seed']} | {_key(row)[1]} | {_key(row)[2]} | {row['check_films']} | "
                         f"{_fmt(a['mean_ece'])} → {_fmt(b['mean_ece'])} | {_fmt(a['rule_out_sensitivity'])} → "
                         f"{_fmt(b['rule_out_sensitivity'])} | {_fmt(aside[0], 1)}% → {_fmt(aside[1], 1)}% | {moved} | "
                         f"{_decision(row)} |")
        lines += ["", "In sum, per method (check-part mean ECE adapted against shipped, on each split):", ""]
        for method in sorted({_key(r)[1:] for r in seeds}, key=lambda m: (m[0] != "auto", m)):
            rows = [r for r in seeds if _key(r)[1:] == method]
            change = [r["adapted"]["mean_ece"] - r["shipped"]["mean_ece"] for r in rows]
            decisions = [_decision(r) for r in rows]
            lines.append(f"- `--recalibrate {method[0]} --triage {method[1]}`, {len(rows)} splits (seeds "
                         f"{', '.join(str(r['seed']) for r in sorted(rows, key=lambda r: r['seed']))}): calibration error "
                         f"lower on {sum(c < -1e-12 for c in change)}, equal on {sum(abs(c) <= 1e-12 for c in change)}, "
                         f"higher on {sum(c > 1e-12 for c in change)} (mean change {sum(change) / len(change):+.4f}); "
                         + ", ".join(f"{decisions.count(d)} {d}" for d in ("written", "refused", "nothing to write")
                                     if d in decisions))
    return lines


def markdown(results: dict) -> str:
    """The whole file: the AP site's section, its reading, then each other site's (``results["sites"]``)."""
    lines = ["# Site adaptation on a shifted site (`python -m benchmarks.site_adapt`)", ""]
    readings = results.get("readings") or {}
    if "site" in results:
        lines += _section(results)
        if readings.get("ap"):
            lines += ["", readings["ap"].rstrip()]
    for key, sub in (results.get("sites") or {}).items():
        lines += ["", f"## Second site: {SITES[key][1]} (`--site {key}`)", ""] + _section(sub)
        if readings.get(key):
            lines += ["", readings[key].rstrip()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="models/default")
    parser.add_argument("--data", default="../shared/nih")
    parser.add_argument("--modes", nargs="*", default=["none", "heads"], choices=["none", "heads", "last-block"])
    parser.add_argument("--out", default="benchmarks/SITE_ADAPT_RESULTS.md")
    parser.add_argument("--work", default="runs/site_adapt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seeds", nargs="*", type=int, default=[],
                        help="also refit (mode none) on the splits of these seeds: how the decision depends on the split")
    parser.add_argument("--recalibrate", default="auto", choices=["auto", "refit", "intercept"],
                        help="training.adapt --recalibrate, for every run (default auto)")
    parser.add_argument("--triage", default="auto", choices=["auto", "refit"],
                        help="training.adapt --triage, for every run (default auto)")
    parser.add_argument("--site", default="ap", choices=list(SITES),
                        help="ap: the test split's AP films; screening: the test split sub-sampled to 50%% No-Finding "
                             "films (see the module docstring)")
    args = parser.parse_args()

    from cxr_core.adaptation import adapt_bundle

    bundle, work = Path(args.bundle), Path(args.work)
    site_dir, labels, site = build_site(bundle, Path(args.data), work, args.site)
    # The AP site's runs keep their folders as before; another site's lie in its own.
    runs = work if args.site == "ap" else work / SITES[args.site][0]
    results = {"site": site, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": [], "seed": args.seed}
    method = {"recalibration": args.recalibrate, "triage_refit": args.triage}
    if args.modes:
        results["method"] = method
    out = Path(args.out)
    whole = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    earlier = whole if args.site == "ap" else (whole.get("sites") or {}).get(args.site, {})
    if earlier.get("site") == site and earlier.get("seed", args.seed) == args.seed and not args.modes:
        # Split seeds only: the mode tables stay as they are (whatever their method).
        results.update({k: earlier[k] for k in ("rows", "previous", "method", "when") if k in earlier})
    elif earlier.get("site") == site and earlier.get("seed", args.seed) == args.seed:
        # Rows of another method (the earlier runs) are kept as the previous method's table; rows of this method for
        # the modes not run again stay.
        same = [row for row in earlier["rows"] if all(row.get(k, "refit") == v for k, v in method.items())]
        other = [row for row in earlier["rows"] if row not in same]
        results["rows"] = [row for row in same if row["mode"] not in args.modes]
        results["previous"] = ({"when": earlier["when"], "rows": other} if other else earlier.get("previous"))
    results["split_seeds"] = earlier.get("split_seeds", [])
    # One pass of the shipped bundle over the site serves every run (the same bundle, the same films).
    # Kept on disk too, so that runs of other methods on the same site reuse it (the key names the bundle's digest and
    # the films, so a stale pass is never used).
    cache = work / SITES[args.site][0] / "shipped_pass.pkl"
    screened = pickle.loads(cache.read_bytes()) if cache.is_file() else {}
    options = {"site_name": SITES[args.site][1], "recalibration": args.recalibrate, "triage": args.triage,
               "screened": screened}

    def write() -> None:
        if not cache.is_file() and screened:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(pickle.dumps(screened))
        readings = {k: v for k, v in (whole.get("readings") or {}).items() if k != args.site}  # a rerun drops its own
        if args.site == "ap":
            everything = {**results, "sites": whole.get("sites") or {}, "readings": readings}
        else:
            everything = {**whole, "sites": {**(whole.get("sites") or {}), args.site: results}, "readings": readings}
        out.with_suffix(".json").write_text(json.dumps(everything, indent=1, default=float))
        out.write_text(markdown(everything))

    for seed in args.split_seeds:
        folder = runs / f"seed_{seed}_{args.recalibrate}_{args.triage}"
        shutil.rmtree(folder / "bundle", ignore_errors=True)
        report = adapt_bundle(bundle, site_dir, labels, folder, seed=seed, **options)
        shutil.rmtree(folder / "bundle", ignore_errors=True)  # the benchmark keeps the report only
        row = {**_row("none", report), "seed": seed}
        results["split_seeds"] = [r for r in results["split_seeds"] if _key(r) != _key(row)] + [row]
        write()
    for mode in args.modes:
        report_dir = runs / f"out_{mode}"
        shutil.rmtree(report_dir / "bundle", ignore_errors=True)
        report = adapt_bundle(bundle, site_dir, labels, report_dir, fine_tune=mode, seed=args.seed, **options)
        results["rows"].append({**_row(mode, report), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        results["rows"].sort(key=lambda row: ["none", "heads", "last-block"].index(row["mode"]))
        write()
        print("\n".join(_section(results)))


if __name__ == "__main__":
    main()
