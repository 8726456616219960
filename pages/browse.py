"""Browse a dataset (the demo set, or an allowed NIH folder): labels, expert boxes and radiologists' labels against the model.

The case view shows what Analyze shows (the triage verdict, then each finding's band at the bundle's default operating
point, :mod:`cxr_core.evaluation.reading`) beside the NIH labels, with each flag's outcome against its label. Where the
input check warns on the image, the model's output is withheld until the reader ticks "Show the model's output anyway".
"""

from pathlib import Path

import numpy as np
import streamlit as st

from cxr_core.data import EXPERT_CATEGORIES, decode_image
from cxr_core.data.film_filter import ANY_FINDING, NO_FINDING, FilmFilter, age_bounds, select_films
from cxr_core.evaluation import category_labels, category_scores
from cxr_core.evaluation.flags import FLAG, flag_outcomes
from cxr_core.evaluation.localization import best_iou_each, heatmap_to_boxes
from cxr_core.findings import DISPLAY_NAMES, FINDINGS
from cxr_core.host import settings
from cxr_core.reporting import overlays, report
from cxr_core.reporting.words import BAND_LABELS, WITHHELD_NOTE, triage_words
from pages import common

PER_PAGE, COLUMNS, SIDE = 12, 6, 640


@st.cache_data(show_spinner=False, max_entries=1024)
def thumbnail(path: str, mtime: float):
    return overlays.fit_to(decode_image(path).pixels, 160)[0]


st.title("Browse dataset")
root_text = st.text_input("Dataset folder (any NIH ChestX-ray14 layout)", str(settings.demo_root()), key="browse_root")
try:
    dataset = common.load_dataset(str(settings.check_dataset_root(root_text)))
except (ValueError, OSError) as exc:  # outside the allowed roots, no Data_Entry CSV, unreadable
    st.error(str(exc))
    st.stop()
csv, labels = dataset.csv, dataset.labels
experts = common.expert_labels(dataset.root)
expert_note = "" if experts is None else f", {int(csv['image'].isin(experts.index).sum())} with radiologists' labels (Majkowska et al. 2019)"
st.caption(f"{len(dataset)} images of {csv['patient_id'].nunique()} patients, {len(dataset.boxes)} expert boxes{expert_note}.")

c = st.columns(5)
finding = c[0].selectbox("Finding", [ANY_FINDING, NO_FINDING, *FINDINGS], format_func=lambda f: DISPLAY_NAMES.get(f, f),
                         key="browse_finding")
patient = c[1].text_input("Patient ID", key="browse_patient")
views = c[2].multiselect("View", sorted(csv["view"].dropna().unique()), key="browse_view")
sexes = c[3].multiselect("Sex", sorted(csv["sex"].dropna().unique()), key="browse_sex")
bounds = age_bounds(csv)
age = c[4].slider("Age", *bounds, bounds, key="browse_age")
expert_only = experts is not None and st.checkbox("Only images with radiologists' labels", key="browse_expert_only")
wanted = FilmFilter(finding=finding, patient=patient, views=tuple(views), sexes=tuple(sexes),
                    ages=None if tuple(age) == bounds else tuple(age), images=set(experts.index) if expert_only else None)
table = csv[select_films(csv, labels, wanted)]
st.dataframe(table[["image", "finding_labels", "patient_id", "age", "sex", "view"]], hide_index=True, key="browse_table", height=220)
if table.empty:
    st.info("No image matches these filters.")
    st.stop()

n_pages = (len(table) - 1) // PER_PAGE + 1
page = st.number_input(f"Thumbnail page (of {n_pages})", 1, n_pages, 1, key="browse_page")
shown = table.iloc[(page - 1) * PER_PAGE : page * PER_PAGE]
for start in range(0, len(shown), COLUMNS):
    for column, row in zip(st.columns(COLUMNS), shown.iloc[start : start + COLUMNS].itertuples()):
        column.image(thumbnail(row.path, Path(row.path).stat().st_mtime), caption=f"{row.image}: {row.finding_labels}", width="stretch")

st.subheader("Case")
name = st.selectbox("Image", table["image"], index=(page - 1) * PER_PAGE, key="browse_case",
                    on_change=lambda: st.session_state.pop("browse_heat_finding", None))  # a new case starts at its boxed finding
row = table.set_index("image").loc[name]
pixels, scale = overlays.fit_to(decode_image(row.path).pixels, SIDE)
height, width = (round(s / scale) for s in pixels.shape)
truth = dataset.boxes_for(name, width=width, height=height)
truth_boxes = overlays.scale_boxes(truth[["x", "y", "w", "h"]].to_numpy(), scale)
st.caption(f"Patient {row.patient_id}, {row.sex}, age {row.age}, {row.view} view. NIH labels: {row.finding_labels}.")



def expert_comparison(scores=None):
    """The radiologists' labels of this image beside NIH's (mapped to the four categories) and, with a model, its scores."""
    if experts is None or name not in experts.index:
        return
    nih = category_labels(labels[int(np.flatnonzero(csv["image"].to_numpy() == name)[0])][None, :])[0]
    said = lambda v: "—" if np.isnan(v) else ("yes" if v > 0.5 else "no")  # noqa: E731
    shown = {"category": list(EXPERT_CATEGORIES), "radiologists": [said(experts.loc[name, c]) for c in EXPERT_CATEGORIES],
             "NIH (mapped)": [said(v) for v in nih]}
    if scores is not None:
        shown["model"] = [None if np.isnan(v) else float(v) for v in scores]
    st.markdown("**Radiologists' labels** (Majkowska et al., Radiology 2019) beside NIH's text-mined labels")
    st.dataframe(shown, hide_index=True, key="browse_expert", column_config={"model": st.column_config.NumberColumn(format="%.3f")})
    st.caption("NIH's Nodule or mass is Nodule OR Mass; its Airspace opacity is Consolidation, Pneumonia, Infiltration OR "
               "Atelectasis; NIH has no fracture label and the model no fracture output (docs/build/expert_reference.md).")


predictor = common.optional_predictor()
if predictor is None:
    expert_comparison()
    st.info("No model is loaded, so only the labels and expert boxes are shown. " + common.NO_BUNDLE_HELP.splitlines()[0])
    st.image(overlays.draw_boxes(overlays.gray_to_rgb(pixels), truth_boxes, labels=list(truth["finding"])), caption="Expert boxes", width=SIDE)
    st.stop()
split = predictor.split_of(name)
if split in ("train", "val"):
    role = "the model was trained on it" if split == "train" else "it was used to choose the checkpoint, calibration and thresholds"
    st.warning(f"This image was in the model's **{'training' if split == 'train' else 'validation'}** split ({role}): its predictions here are optimistic.")
elif split == "test":
    st.caption("This image was in the model's test split (never used for training or fitting).")

analysis = common.analyze_path(*settings.current_bundle(), row.path, Path(row.path).stat().st_mtime)
reading = analysis.reading
if analysis.withheld_because:
    st.warning(" ".join(analysis.withheld_because))
    st.error(WITHHELD_NOTE)
    if st.checkbox("Show the model's output anyway", key="browse_show_anyway"):
        reading = predictor.policy.read(analysis.probabilities, withheld_because=analysis.withheld_because, show_anyway=True)
if reading.withheld:
    expert_comparison()
    st.image(overlays.draw_boxes(overlays.gray_to_rgb(pixels), truth_boxes, labels=list(truth["finding"])), caption="Expert boxes", width=SIDE)
    st.stop()

st.markdown(f"**Triage: {reading.triage}**" + (" (shown although the input check warned)" if analysis.withheld_because else ""))
st.caption(triage_words(reading, predictor.policy))
y = labels[int(np.flatnonzero(csv["image"].to_numpy() == name)[0])].astype(bool)
cuts = predictor.policy.cuts(reading.operating_point)
band = np.array([reading.bands[f] for f in FINDINGS])
flagged = band == FLAG
st.dataframe(
    {"finding": [DISPLAY_NAMES[f] for f in FINDINGS], "label": y.astype(int), "probability": [analysis.probabilities[f] for f in FINDINGS],
     "band": [BAND_LABELS.get(b, b) for b in band], "flag at": cuts.flag,
     "outcome": flag_outcomes(y, flagged)},
    hide_index=True, key="browse_outcomes",
    column_config={"label": "NIH label", "probability": st.column_config.NumberColumn("calibrated probability", format="%.3f"),
                   "flag at": st.column_config.NumberColumn(format="%.3f"), "outcome": "flag vs NIH label"},
)
point = (f"a specificity of {cuts.target_specificity:.2f} on the validation split" if reading.operating_point == "specificity"
         else "Youden's J per finding on the validation split (this bundle has no validated flags yet)")
st.caption(f"⚑ flag: the probability reaches the finding's flag cut, set at {point} (NIH labels); possible: a lower band, "
           "not a flag. Outcome of the flag against the NIH label: TP flagged and labelled, FP flagged but not labelled, "
           "FN labelled but not flagged (possible, below, or no flag set), TN neither.")
expert_comparison(category_scores(np.array([[analysis.probabilities[f] for f in FINDINGS]]))[0])

boxed = [f for f in FINDINGS if f in set(truth["finding"])]
choices = boxed + [f for f in analysis.ranked if f not in boxed]
heat_finding = st.selectbox("Heatmap of", choices, format_func=DISPLAY_NAMES.get, key="browse_heat_finding")
gt = [b for b, f in zip(truth_boxes, truth["finding"]) if f == heat_finding]
predicted = overlays.scale_boxes(heatmap_to_boxes(analysis.heatmaps[heat_finding], out_shape=(height, width)), scale)
best = best_iou_each(predicted, gt)
left, right = st.columns(2)
left.image(overlays.draw_boxes(overlays.gray_to_rgb(pixels), truth_boxes, labels=[DISPLAY_NAMES[f] for f in truth["finding"]]),
           caption="Expert boxes (green)", width="stretch")
picture = overlays.draw_boxes(overlays.blend_heatmap(pixels, overlays.fit_to(analysis.heatmaps[heat_finding], SIDE)[0]), gt, labels=["expert"] * len(gt))
picture = overlays.draw_boxes(picture, predicted, labels=[f"IoU {v:.2f}" if gt else "heatmap" for v in best], color=overlays.HEATMAP_BOX_COLOR, dashed=True)
right.image(picture, caption=f"{report.heatmap_method(predictor.metadata)} of {DISPLAY_NAMES[heat_finding]}: expert box green, heatmap boxes white (IoU with the expert box)", width="stretch")
if gt:
    st.write(f"Best IoU of a heatmap box with the expert {DISPLAY_NAMES[heat_finding]} box: **{max(best, default=0.0):.2f}**.")
