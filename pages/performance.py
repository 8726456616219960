"""Model performance on its test split, from the bundle's metrics.json: ROC, PR, thresholds, calibration, localisation."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cxr_core.evaluation import expert
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.serving import report
from pages import common


def fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def curves(points, x, y, label, diagonal, titles):
    figure = go.Figure()
    if diagonal:
        figure.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"}, name="chance")
    for p in points:
        figure.add_scatter(x=p[x], y=p[y], mode="lines", name=label(p))
    figure.update_layout(height=460, margin={"t": 30}, xaxis_title=titles[0], yaxis_title=titles[1], legend={"font": {"size": 10}})
    return figure


st.title("Model performance")
metrics = common.bundle_metrics()
if metrics is None:
    st.info(f"No evaluation found in `{common.bundle_dir()}` (metrics.json). " + common.NO_BUNDLE_HELP.format(path=common.bundle_dir())
            if not common.bundle_present() else "The bundle has not been evaluated yet: run `python -m training.evaluate --bundle <bundle> --data <NIH folder>`.")
    st.stop()
macro, counts, rows = metrics["macro"], metrics["counts"], {r["finding"]: r for r in metrics["per_finding"]}
st.markdown(
    f"Test split: **{counts['test_images']} images of {counts['test_patients']} patients** (thresholds and calibration fitted on "
    f"{counts['val_images']} validation images). Mean AUROC **{fmt(macro['auroc'])}** (mean of the per-finding 95% CI bounds "
    f"{fmt(macro['auroc_low'])}–{fmt(macro['auroc_high'])}; patient-level bootstrap, {metrics['bootstrap']['n_boot']} resamples)."
)

per_finding = pd.DataFrame(metrics["per_finding"])
per_finding["AUROC 95% CI"] = [f"{fmt(r.auroc_low)}–{fmt(r.auroc_high)}" for r in per_finding.itertuples()]
per_finding["AUPRC 95% CI"] = [f"{fmt(r.auprc_low)}–{fmt(r.auprc_high)}" for r in per_finding.itertuples()]
st.subheader("Per finding (AUROC, AUPRC with 95% CI; operating point at the fitted threshold)")
st.dataframe(
    per_finding[["finding", "n_test_pos", "auroc", "AUROC 95% CI", "auprc", "AUPRC 95% CI", "threshold", "precision", "recall", "specificity", "f1"]],
    hide_index=True, key="perf_table", height=35 * 15 + 3,
    column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("auroc", "auprc", "threshold", "precision", "recall", "specificity", "f1")}
    | {"n_test_pos": "test positives", "recall": st.column_config.NumberColumn("recall (sensitivity)", format="%.3f")},
)
st.caption(f"Thresholds: {metrics['thresholds']['method']} on calibrated probabilities, fitted on {metrics['thresholds']['fitted_on']}.")

chosen = st.multiselect("Findings in the curves", FINDINGS, default=list(FINDINGS), format_func=DISPLAY_NAMES.get, key="perf_findings")
left, right = st.columns(2)
roc = [p for p in metrics["roc"] if p["finding"] in chosen]
left.plotly_chart(curves(roc, "fpr", "tpr", lambda p: f"{DISPLAY_NAMES[p['finding']]} {fmt(p['auc'])} ({fmt(rows[p['finding']]['auroc_low'])}–{fmt(rows[p['finding']]['auroc_high'])})", True,
                             ("false positive rate (1 − specificity)", "true positive rate (sensitivity)")), key="perf_roc")
pr = [p for p in metrics["pr"] if p["finding"] in chosen]
right.plotly_chart(curves(pr, "recall", "precision", lambda p: f"{DISPLAY_NAMES[p['finding']]} AP {fmt(p['average_precision'])}", False,
                              ("recall (sensitivity)", "precision (PPV)")), key="perf_pr")

st.subheader("Calibration")
cal = metrics["calibration"]
st.caption(f"{cal['method'].capitalize()} scaling fitted on {cal['fitted_on']}; reliability on the test split.")
cal_finding = st.selectbox("Reliability diagram of", FINDINGS, format_func=DISPLAY_NAMES.get, key="perf_cal_finding")
figure = go.Figure().add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"}, name="perfect")
for when in ("before", "after"):
    bins = [b for b in cal[f"reliability_{when}"] if b["finding"] == cal_finding and b["count"]]
    figure.add_scatter(x=[b["mean_predicted"] for b in bins], y=[b["fraction_positive"] for b in bins], mode="lines+markers", name=f"{when} calibration")
figure.update_layout(height=380, margin={"t": 30}, xaxis_title="mean predicted probability", yaxis_title="fraction positive")
left, right = st.columns([3, 2])
left.plotly_chart(figure, key="perf_reliability")
right.dataframe(
    pd.DataFrame({"finding": FINDINGS, "ECE before": cal["ece_before"], "ECE after": cal["ece_after"],
                  "Brier before": cal["brier_before"], "Brier after": cal["brier_after"]}).round(4),
    hide_index=True, key="perf_calibration",
)

st.subheader(f"Localisation ({report.heatmap_method(common.bundle_metadata())} boxes against the expert boxes)")
loc = metrics.get("localization") or {}
if loc.get("n_boxes"):
    st.dataframe(pd.DataFrame(loc["accuracy"]).round(3), hide_index=True, key="perf_localization")
    st.caption(f"{loc['n_boxes']} expert boxes of test images. T(IoBB)=t: share of boxes with a heatmap box whose intersection over its own area is ≥ t (Wang et al. 2017).")
else:
    st.info("No expert boxes in the test split, so no localisation score.")

if metrics.get("expert_reference", {}).get("per_category"):  # bundles evaluated without the expert labels: nothing
    reference = metrics["expert_reference"]
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
               "for them is the OR of those findings. Fracture has no model output. Mapping and reasons: docs/expert_reference.md.")
    if metrics.get("label_audit", {}).get("per_category"):
        st.markdown("**How often NIH's labels agree with the radiologists** (the experts as the reference)")
        st.dataframe(expert.audit_table(metrics["label_audit"]).round(3), hide_index=True, key="perf_label_audit")

st.subheader("Subgroups (AUROC)")
groups = pd.DataFrame(metrics.get("subgroups") or [])
if groups.empty:
    st.info("No subgroup results.")
else:
    wide = groups.pivot_table(index=["attribute", "group"], columns="finding", values="auroc").reindex(columns=[f for f in FINDINGS if f in set(groups["finding"])])
    wide.insert(0, "images", groups.groupby(["attribute", "group"])["n"].max())
    st.dataframe(wide.round(3).reset_index(), hide_index=True, key="perf_subgroups")

st.subheader("Published results, for orientation")
anchors = pd.DataFrame({"finding": FINDINGS, "cxr-assist (this model)": [rows[f]["auroc"] for f in FINDINGS]})
for name, values in (metrics.get("published_auroc") or {}).items():
    anchors[name] = values
anchors.loc[len(anchors)] = ["mean", *anchors.drop(columns="finding").mean(numeric_only=True).tolist()]
st.dataframe(anchors.round(3), hide_index=True, key="perf_published")
st.info(
    "Not a like-for-like comparison: Wang et al. 2017 used NIH's official split of all 112,120 images, CheXNet its own random "
    "split of the same images; this model was trained and tested on different (smaller) data and splits, so only the rough "
    "level is comparable."
)
