"""Model performance on its test split, from the bundle's metrics.json: the normal/abnormal triage and the finding flags
first (what a reader is shown), then ROC, PR, the Youden thresholds, calibration, localisation."""

from dataclasses import asdict

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxr_core.adaptation import read_site_report
from cxr_core.evaluation import expert
from cxr_core.evaluation.metrics_file import Flags, Metrics, Triage, metrics_path
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.host import settings
from cxr_core.reporting import report
from pages import common


def fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def ci(stats: dict, name: str) -> str:
    """``0.97 (0.89–0.99)``: a rate with its Wilson 95% interval, from a rates dict."""
    value = stats.get(name) if stats else None
    if value is None or value != value:
        return "n/a"
    return f"{value:.2f} ({fmt(stats.get(f'{name}_low'), 2)}–{fmt(stats.get(f'{name}_high'), 2)})"


def triage_section(triage: Triage) -> None:
    """The triage's test AUROC, ROC with both points, and rates at each point (test split, NIH labels)."""
    st.markdown(
        f"Probability that a film has any of the 14 findings ({triage.method.replace('_', '-')} combination of the 14 "
        f"calibrated probabilities, fitted on validation). Test AUROC for abnormal vs No-Finding films **{fmt(triage.auroc)}** "
        f"(95% CI {fmt(triage.auroc_low)}–{fmt(triage.auroc_high)}, patient bootstrap) on {triage.test_films} films, "
        f"{triage.test_abnormal_films} of them abnormal (NIH labels).")
    points = {"rule-out": (triage.rule_out, triage.at_rule_out), "balanced": (triage.balanced, triage.at_balanced)}
    figure = go.Figure().add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"}, name="chance")
    figure.add_scatter(x=triage.roc.x, y=triage.roc.y, mode="lines", name=f"triage AUROC {fmt(triage.auroc)}")
    for (name, (cut, stats)), symbol in zip(points.items(), ("diamond", "circle")):
        figure.add_scatter(x=[1 - stats["specificity"]], y=[stats["sensitivity"]], mode="markers", marker={"size": 12, "symbol": symbol},
                           name=f"{name} point (cut {cut:.2f})")
    figure.update_layout(height=400, margin={"t": 30}, xaxis_title="false positive rate (1 − specificity)",
                         yaxis_title="true positive rate (sensitivity)", legend={"font": {"size": 10}})
    left, right = st.columns([3, 2])
    left.plotly_chart(figure, key="perf_triage_roc")
    right.dataframe(
        pd.DataFrame([{"point": f"{name} (cut {cut:.2f})", **{label: ci(stats, key) for key, label in RATES},
                       "films set aside": f"{1 - stats['decided_share']:.0%}"} for name, (cut, stats) in points.items()]),
        hide_index=True, key="perf_triage_table")
    right.caption("Test split, NIH labels; points fitted on validation. 95% Wilson intervals. The rule-out point keeps the "
                  "sensitivity for abnormal films on validation at 0.95 or more (lower bound of its interval); films below it "
                  "are \"no finding likely\", the share set aside. The balanced point maximises sensitivity + specificity.")


RATES = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV"), ("npv", "NPV"))
BURDEN = (("flags_per_no_finding_film", "flags per No-Finding film", "{:.2f}"), ("flags_per_abnormal_film", "flags per abnormal film", "{:.2f}"),
          ("no_finding_without_flag", "No-Finding films without a flag", "{:.0%}"), ("flags_right", "share of flags that are right", "{:.0%}"),
          ("abnormal_with_right_flag", "abnormal films with a right flag", "{:.0%}"), ("flags", "flags in all", "{:.0f}"))


def flags_section(flags: Flags, burden: dict) -> None:
    """Per finding the flag cut and what it is worth (validation, test), then the flag burden against Youden's."""
    rows = []
    for r in flags.per_finding:
        val, test = r.validation, r.test
        lift = val.get("lift")
        rows.append({"finding": DISPLAY_NAMES.get(r.finding, r.finding), "flag at": r.flag, "possible from": r.possible,
                     "validation PPV (95% CI)": ci(val, "ppv") if r.flag is not None else "",
                     "lift (validation)": None if lift is None or lift != lift else lift,
                     "test PPV (95% CI)": ci(test, "ppv") if test else "", "test sensitivity": test.get("sensitivity"),
                     "test specificity": test.get("specificity"), "no flag because": r.reason})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="perf_flags_table", height=35 * 15 + 3,
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("flag at", "possible from", "test sensitivity", "test specificity")}
                 | {"lift (validation)": st.column_config.NumberColumn(format="%.1f×")})
    st.caption(f"Flag cut per finding at a specificity of {fmt(flags.target_specificity, 2)} on the validation split ('possible' "
               f"from {fmt(flags.possible_specificity, 2)}), NIH labels. Validation PPV: the share of flagged validation films that "
               "had the finding; lift: that share over the finding's share among all validation films. Test columns: the same "
               f"cuts read once on the test split. No flag where validation has fewer than {flags.min_val_positives} films with the finding.")
    columns = {"flags": "flags (validated specificity)", "youden": "Youden's J (earlier design)"}
    table = pd.DataFrame({"measure": [label for _, label, _ in BURDEN]}
                         | {title: [form.format(v) if (v := burden[key].get(name)) is not None and v == v else "n/a"
                                    for name, _, form in BURDEN] for key, title in columns.items() if burden.get(key)})
    st.markdown("**What a reader meets on the test split** (NIH labels)")
    st.dataframe(table, hide_index=True, key="perf_burden")
    st.caption("A right flag: the film has the flagged finding (NIH label). Youden's J: the earlier per-finding cuts, for comparison.")


def site_section(site_report: dict, site: dict, metrics: Metrics) -> None:
    """At your site (the check part, the site's labels) beside on NIH test (the parent bundle, NIH labels)."""
    split, check_films = site_report["split"], site_report["split"]["check_films"]
    st.subheader(f"At your site: {site['name']}")
    st.markdown(
        f"This bundle was adapted to **{site['name']}** from `{site['parent']['bundle']}` ({site['films']} films of "
        f"{site['patients']} patients; fine-tuning: {site['fine_tune']}). Calibration, cuts, flags and triage were refitted on "
        f"{split['fit_films']} films; the numbers \"at your site\" are measured on the other **{check_films} films** (the check "
        "part, other patients), against your site's own labels, and nothing was fitted on them. \"On NIH test\": the parent "
        "bundle on NIH's test split, NIH labels.")
    if check_films < site["few_films"]:
        st.warning(f"Few films: the numbers at your site come from only {check_films} films, so their intervals are wide and a "
                   "finding with a handful of positive films says little. Read them as a rough guide, not a measurement to rely on.")
    adapted, shipped = site_report["adapted"], site_report["shipped"]
    nih_triage, nih_burden = metrics.reading.triage, metrics.reading.burden.get("flags") or {}
    ece_after = [v for v in metrics.calibration.ece_after if v is not None]
    nih = {"mean AUROC (95% CI)": f"{fmt(metrics.macro_auroc)} ({fmt(metrics.macro_auroc_low)}–{fmt(metrics.macro_auroc_high)})",
           "mean calibration error (ECE)": fmt(sum(ece_after) / len(ece_after) if ece_after else None),
           "triage sensitivity at the rule-out point": fmt(nih_triage.at_rule_out.get("sensitivity") if nih_triage else None),
           "flags per No-Finding film": fmt(nih_burden.get("flags_per_no_finding_film"), 2)}

    def column(block: dict) -> list[str]:
        triage, flags = block.get("triage") or {}, block.get("flags") or {}
        return [f"{fmt(block['mean_auroc'])} ({fmt(block['mean_auroc_low'])}–{fmt(block['mean_auroc_high'])})",
                fmt(block["mean_ece"]), fmt(triage.get("sensitivity")), fmt(flags.get("flags_per_no_finding_film"), 2)]

    st.dataframe(pd.DataFrame({"measure": list(nih), "at your site (this bundle)": column(adapted),
                               "at your site (before adaptation)": column(shipped), "on NIH test": list(nih.values())}),
                 hide_index=True, key="perf_site_summary")
    st.caption(f"Decision when adapting: {site['reason']}")
    rows = []
    for here, before in zip(adapted["per_finding"], shipped["per_finding"]):
        nih_row = metrics.finding(here["finding"])
        rows.append({"finding": DISPLAY_NAMES.get(here["finding"], here["finding"]), "films at your site": here["films"],
                     "positives at your site": here["positives"],
                     "AUROC at your site (95% CI)": f"{fmt(here['auroc'])} ({fmt(here['auroc_low'])}–{fmt(here['auroc_high'])})",
                     "before adaptation": fmt(before["auroc"]), "AUROC on NIH test": fmt(nih_row and nih_row.auroc),
                     "note": "few films" if here["positives"] < 10 or here["films"] - here["positives"] < 10 else ""})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="perf_site_findings", height=35 * 15 + 3)
    st.caption("\"few films\": fewer than 10 positive or 10 negative films of the finding at your site: its AUROC there is "
               "barely a measurement. n/a: no positive (or no negative) film of it in the check part.")


def curves(points, label, diagonal, titles):
    figure = go.Figure()
    if diagonal:
        figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"}, name="chance")
    for p in points:
        figure.add_scatter(x=p.x, y=p.y, mode="lines", name=label(p))
    figure.update_layout(height=460, margin={"t": 30}, xaxis_title=titles[0], yaxis_title=titles[1], legend={"font": {"size": 10}})
    return figure


st.title("Model performance")
metrics_file = metrics_path(settings.bundle_dir(), common.bundle_metadata())
if not metrics_file.is_file():
    st.info(f"No evaluation found in `{settings.bundle_dir()}` (metrics.json). " + common.NO_BUNDLE_HELP.format(path=settings.bundle_dir())
            if not settings.bundle_present() else "The bundle has not been evaluated yet: run `python -m training.evaluate --bundle <bundle> --data <NIH folder>`.")
    st.stop()
try:
    metrics = common.bundle_metrics()
except ValueError as exc:
    st.error(f"The bundle's evaluation could not be read: {exc}")
    st.stop()
st.markdown(
    f"Test split: **{metrics.test_images} images of {metrics.test_patients} patients** (thresholds and calibration fitted on "
    f"{metrics.val_images} validation images). Mean AUROC **{fmt(metrics.macro_auroc)}** (mean of the per-finding 95% CI bounds "
    f"{fmt(metrics.macro_auroc_low)}–{fmt(metrics.macro_auroc_high)}; patient-level bootstrap, {metrics.n_boot} resamples)."
)
site = (common.bundle_metadata() or {}).get("site")
try:
    site_report = read_site_report(settings.bundle_dir()) if site else None
except ValueError as error:  # a damaged site_report.json: say so, show the rest
    site_report = None
    st.warning(f"This bundle's site report could not be read ({error}); the NIH numbers below are the parent bundle's.")
if site_report is not None:
    st.caption(site["nih_numbers"] + "; your site's numbers follow.")
    site_section(site_report, site, metrics)

reading = metrics.reading
st.subheader("Normal/abnormal triage")
if reading.triage:
    triage_section(reading.triage)
else:
    st.info(reading.triage_note or "This bundle's evaluation has no triage yet (its metrics.json was written before the "
            "triage existed): run `python -m training.evaluate --bundle <bundle> --data <NIH folder>` to fit and measure it.")
st.subheader("Flags")
if reading.flags:
    flags_section(reading.flags, reading.burden)
else:
    st.info("This bundle's evaluation has no flags at a validated specificity yet (its metrics.json was written before them): "
            "run `python -m training.evaluate --bundle <bundle> --data <NIH folder>` to fit and measure them.")

per_finding = pd.DataFrame([asdict(r) for r in metrics.per_finding])
per_finding["AUROC 95% CI"] = [f"{fmt(r.auroc_low)}–{fmt(r.auroc_high)}" for r in per_finding.itertuples()]
per_finding["AUPRC 95% CI"] = [f"{fmt(r.auprc_low)}–{fmt(r.auprc_high)}" for r in per_finding.itertuples()]
st.subheader("Per finding (AUROC, AUPRC with 95% CI; precision, recall, specificity, F1 at the Youden threshold)")
st.dataframe(
    per_finding[["finding", "n_test_pos", "auroc", "AUROC 95% CI", "auprc", "AUPRC 95% CI", "threshold", "precision", "recall", "specificity", "f1"]],
    hide_index=True, key="perf_table", height=35 * 15 + 3,
    column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("auroc", "auprc", "precision", "recall", "specificity", "f1")}
    | {"n_test_pos": "test positives", "recall": st.column_config.NumberColumn("recall (sensitivity)", format="%.3f"),
       "threshold": st.column_config.NumberColumn("Youden threshold", format="%.3f")},
)
st.caption(f"Thresholds: {metrics.thresholds.get('method')} on calibrated probabilities, fitted on {metrics.thresholds.get('fitted_on')}: "
           "the earlier operating point, kept for comparison; the app flags findings at the validated specificity above.")

chosen = st.multiselect("Findings in the curves", FINDINGS, default=list(FINDINGS), format_func=DISPLAY_NAMES.get, key="perf_findings")
left, right = st.columns(2)
rows = {r.finding: r for r in metrics.per_finding}
roc = [p for p in metrics.roc if p.finding in chosen]
left.plotly_chart(curves(roc, lambda p: f"{DISPLAY_NAMES[p.finding]} {fmt(p.area)} ({fmt(rows[p.finding].auroc_low)}–{fmt(rows[p.finding].auroc_high)})", True,
                         ("false positive rate (1 − specificity)", "true positive rate (sensitivity)")), key="perf_roc")
pr = [p for p in metrics.pr if p.finding in chosen]
right.plotly_chart(curves(pr, lambda p: f"{DISPLAY_NAMES[p.finding]} AP {fmt(p.area)}", False,
                          ("recall (sensitivity)", "precision (PPV)")), key="perf_pr")

st.subheader("Calibration")
cal = metrics.calibration
st.caption(f"{cal.method.capitalize()} scaling fitted on {cal.fitted_on}; reliability on the test split.")
cal_finding = st.selectbox("Reliability diagram of", FINDINGS, format_func=DISPLAY_NAMES.get, key="perf_cal_finding")
figure = go.Figure().add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"}, name="perfect")
for when, reliability in (("before", cal.reliability_before), ("after", cal.reliability_after)):
    bins = [b for b in reliability if b["finding"] == cal_finding and b["count"]]
    figure.add_scatter(x=[b["mean_predicted"] for b in bins], y=[b["fraction_positive"] for b in bins], mode="lines+markers", name=f"{when} calibration")
figure.update_layout(height=380, margin={"t": 30}, xaxis_title="mean predicted probability", yaxis_title="fraction positive")
left, right = st.columns([3, 2])
left.plotly_chart(figure, key="perf_reliability")
right.dataframe(
    pd.DataFrame({"finding": FINDINGS, "ECE before": cal.ece_before, "ECE after": cal.ece_after,
                  "Brier before": cal.brier_before, "Brier after": cal.brier_after}).round(4),
    hide_index=True, key="perf_calibration",
)

st.subheader(f"Localisation ({report.heatmap_method(common.bundle_metadata())} boxes against the expert boxes)")
loc = metrics.localization
if loc.get("n_boxes"):
    st.dataframe(pd.DataFrame(loc["accuracy"]).round(3), hide_index=True, key="perf_localization")
    st.caption(f"{loc['n_boxes']} expert boxes of test images. T(IoBB)=t: share of boxes with a heatmap box whose intersection over its own area is ≥ t (Wang et al. 2017).")
else:
    st.info("No expert boxes in the test split, so no localisation score.")

if (metrics.expert_reference or {}).get("per_category"):  # bundles evaluated without the expert labels: nothing
    reference = metrics.expert_reference
    st.subheader("Against radiologists' labels (Majkowska et al., Radiology 2019)")
    st.markdown(
        f"{reference['images']} of the {reference['images_offered']} {reference.get('split', 'test')} images "
        f"({reference['patients']} patients) were re-read by radiologists for four categories. The model's AUROC against "
        "their adjudicated labels stands **beside** its AUROC against NIH's text-mined labels on the same images "
        "(95% CI, patient bootstrap)."
    )
    st.dataframe(expert.reference_table(reference), hide_index=True, key="perf_expert",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("AUROC vs experts", "AUROC vs NIH")})
    st.caption("Nodule or mass and Airspace opacity combine several model outputs (the largest probability); NIH's label "
               "for them is the OR of those findings. Fracture has no model output. Mapping and reasons: docs/build/expert_reference.md.")
    if (metrics.label_audit or {}).get("per_category"):
        st.markdown("**How often NIH's labels agree with the radiologists** (the experts as the reference)")
        st.dataframe(expert.audit_table(metrics.label_audit).round(3), hide_index=True, key="perf_label_audit")

st.subheader("Subgroups (AUROC)")
groups = pd.DataFrame(list(metrics.subgroups))
if groups.empty:
    st.info("No subgroup results.")
else:
    wide = groups.pivot_table(index=["attribute", "group"], columns="finding", values="auroc").reindex(columns=[f for f in FINDINGS if f in set(groups["finding"])])
    wide.insert(0, "images", groups.groupby(["attribute", "group"])["n"].max())
    st.dataframe(wide.round(3).reset_index(), hide_index=True, key="perf_subgroups")

st.subheader("Published results, for orientation")
anchors = pd.DataFrame({"finding": FINDINGS, "cxr-assist (this model)": [rows[f].auroc for f in FINDINGS]})
for name, values in metrics.published_auroc.items():
    anchors[name] = values
anchors.loc[len(anchors)] = ["mean", *anchors.drop(columns="finding").mean(numeric_only=True).tolist()]
st.dataframe(anchors.round(3), hide_index=True, key="perf_published")
st.info(
    "Not a like-for-like comparison: Wang et al. 2017 used NIH's official split of all 112,120 images, CheXNet its own random "
    "split of the same images; this model was trained and tested on different (smaller) data and splits, so only the rough "
    "level is comparable."
)
