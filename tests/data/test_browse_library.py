"""What the Browse page asks of the library: the dataset filter (cxr_core.data.film_filter), each flag's outcome
against its label (evaluation.flags.flag_outcomes) and the heatmap boxes against the expert boxes
(evaluation.localization.best_iou_each)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_core.data.film_filter import ANY_FINDING, NO_FINDING, FilmFilter, age_bounds, select_films
from cxr_core.evaluation.flags import flag_outcomes
from cxr_core.evaluation.localization import best_iou_each
from cxr_core.findings import FINDINGS


def _table():
    table = pd.DataFrame({"image": ["a.png", "b.png", "c.png", "d.png"], "patient_id": [1, 1, 22, 3],
                          "view": ["PA", "AP", "PA", "PA"], "sex": ["F", "M", "M", None], "age": [30.0, 31.0, 70.0, np.nan]})
    labels = np.zeros((4, len(FINDINGS)))
    labels[0, FINDINGS.index("Effusion")] = 1
    labels[2, [FINDINGS.index("Effusion"), FINDINGS.index("Mass")]] = 1
    return table, labels


@pytest.mark.parametrize("wanted, images", [
    (FilmFilter(), ["a.png", "b.png", "c.png", "d.png"]),
    (FilmFilter(finding=ANY_FINDING), ["a.png", "b.png", "c.png", "d.png"]),
    (FilmFilter(finding=NO_FINDING), ["b.png", "d.png"]),
    (FilmFilter(finding="Effusion"), ["a.png", "c.png"]),
    (FilmFilter(finding="Mass"), ["c.png"]),
    (FilmFilter(patient=" 1 "), ["a.png", "b.png"]),
    (FilmFilter(patient="2"), []),  # the whole ID, not a part of it
    (FilmFilter(views=("PA",), sexes=("M",)), ["c.png"]),
    (FilmFilter(ages=(30, 31)), ["a.png", "b.png"]),  # inclusive; a film without an age only when any age is asked
    (FilmFilter(images={"d.png", "a.png"}, finding="Effusion"), ["a.png"]),
])
def test_the_filter_lets_through_what_was_asked(wanted, images):
    table, labels = _table()
    assert table["image"][select_films(table, labels, wanted)].tolist() == images


def test_the_filter_refuses_what_it_cannot_read():
    table, labels = _table()
    with pytest.raises(ValueError, match="unknown finding 'Pneumonitis'"):
        select_films(table, labels, FilmFilter(finding="Pneumonitis"))
    with pytest.raises(ValueError, match="labels must have shape"):
        select_films(table, labels[:2], FilmFilter())


def test_age_bounds_span_the_films_at_least_a_year():
    table, _ = _table()
    assert age_bounds(table) == (30, 70)
    assert age_bounds(table.iloc[:1]) == (30, 31)
    assert age_bounds(table.iloc[3:]) == (0, 120)


def test_flag_outcomes_against_the_labels():
    assert flag_outcomes([1, 0, 1, 0], [1, 1, 0, 0]).tolist() == ["TP", "FP", "FN", "TN"]
    assert flag_outcomes(np.ones((2, 2), bool), np.eye(2, dtype=bool)).tolist() == [["TP", "FN"], ["FN", "TP"]]
    with pytest.raises(ValueError, match="same shape"):
        flag_outcomes([1, 0], [1])


def test_each_heatmap_box_gets_its_best_iou_with_an_expert_box():
    expert = [(0, 0, 10, 10), (20, 20, 10, 10)]
    heatmap = [(0, 0, 10, 10, 0.9), (20, 20, 5, 10, 0.5), (50, 50, 5, 5, 0.1)]
    assert best_iou_each(heatmap, expert) == pytest.approx([1.0, 0.5, 0.0])
    assert best_iou_each(heatmap, []) == [0.0, 0.0, 0.0]
    assert best_iou_each([], expert) == []
    assert best_iou_each(iter(heatmap[:1]), iter(expert)) == [1.0]
