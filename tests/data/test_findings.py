import numpy as np
import pytest

from cxr_core.findings import (
    DISPLAY_NAMES,
    FINDINGS,
    canonical_finding,
    from_multi_hot,
    parse_finding_labels,
    to_multi_hot,
)


def test_findings_are_the_14_data_spellings_in_order():
    assert FINDINGS == (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
        "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
    )
    assert "No Finding" not in FINDINGS
    assert DISPLAY_NAMES["Pleural_Thickening"] == "Pleural Thickening"


@pytest.mark.parametrize(
    "alias, expected",
    [("Infiltrate", "Infiltration"), ("pleural thickening", "Pleural_Thickening"), ("MASS", "Mass"), (" Nodule ", "Nodule")],
)
def test_aliases(alias, expected):
    assert canonical_finding(alias) == expected


def test_no_finding_and_unknown_are_not_findings():
    with pytest.raises(KeyError):
        canonical_finding("No Finding")
    with pytest.raises(KeyError):
        canonical_finding("Nodule Mass")  # the seed text merged them; the data keeps them apart


def test_parse_labels_orders_and_reports_unknown():
    assert parse_finding_labels("Emphysema|Cardiomegaly") == (("Cardiomegaly", "Emphysema"), ())
    assert parse_finding_labels("No Finding") == ((), ())
    assert parse_finding_labels("Mass|Fracture") == (("Mass",), ("Fracture",))


def test_multi_hot_round_trip():
    vector = to_multi_hot(["Hernia", "Atelectasis"])
    assert vector.shape == (14,) and vector.dtype == np.float32
    assert vector[0] == 1 and vector[13] == 1 and vector.sum() == 2
    assert from_multi_hot(vector) == ("Atelectasis", "Hernia")
    with pytest.raises(ValueError):
        from_multi_hot([1, 0])
