"""The shipped model's triage and flags: fitted on validation, their test numbers are the committed ones.

Runs no model: the bundle stores the raw validation and test probabilities its
cuts were fitted and measured on (``predictions.csv.gz``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.clinical_output import markdown, measure
from cxr_core.evaluation.calibration import Calibration
from cxr_core.evaluation.flags import FindingFlags, fit_flags
from cxr_core.evaluation.triage import Triage, fit_triage
from cxr_core.findings import FINDINGS
from cxr_core.jobs.bundle_evaluation import read_predictions
from tests.conftest import REPO_ROOT

SHIPPED = REPO_ROOT / "models" / "default"
RESULTS = REPO_ROOT / "benchmarks" / "CLINICAL_OUTPUT_RESULTS.md"


@pytest.fixture(scope="module")
def meta():
    return json.loads((SHIPPED / "bundle.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validation(meta):
    table = read_predictions(SHIPPED)
    val = table[table["split"] == "val"]
    calibrated = Calibration.from_dict(meta["calibration"]).apply(val[list(FINDINGS)].to_numpy())
    return val[[f"label_{f}" for f in FINDINGS]].to_numpy(), calibrated, val["patient_id"].to_numpy()


def test_stored_cuts_are_refitted_from_the_validation_films_alone(meta, validation):
    y, c, patients = validation
    stored_triage, stored_flags = Triage.from_dict(meta["triage"]), FindingFlags.from_dict(meta["flags"])
    triage = fit_triage(y, c, groups=patients)
    assert triage.method == stored_triage.method == "noisy_or"
    assert triage.rule_out == pytest.approx(stored_triage.rule_out, abs=1e-6)
    assert triage.balanced == pytest.approx(stored_triage.balanced, abs=1e-6)
    flags = fit_flags(y, c)
    np.testing.assert_allclose(flags.flag, stored_flags.flag, atol=1e-6)
    assert stored_flags.reasons[FINDINGS.index("Hernia")].startswith("too few positives in validation (6")


def test_committed_benchmark_is_what_the_bundle_gives_and_meets_the_targets():
    result = measure(SHIPPED, n_boot=1000)
    assert markdown(result) == RESULTS.read_text(encoding="utf-8")
    baseline, shipped = result["designs"][0], result["designs"][1]
    assert shipped["flags_per_no_finding_film"] <= 0.5 and shipped["no_finding_without_flag"] >= 0.70
    assert shipped["flags_right"] >= baseline["flags_right"]
    assert result["triage"]["auroc"] >= 0.80 and result["triage"]["at_rule_out"]["sensitivity"] >= 0.95


def test_readme_and_card_give_the_measured_reading(meta):
    metrics = json.loads((SHIPPED / "metrics.json").read_text(encoding="utf-8"))
    triage, burden = metrics["reading"]["triage"], metrics["reading"]["burden"]
    flags_per_normal = burden["flags"]["flags_per_no_finding_film"]
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    results = (REPO_ROOT / "docs" / "evidence" / "results.md").read_text(encoding="utf-8")
    benchmarks = (REPO_ROOT / "docs" / "evidence" / "benchmarks.md").read_text(encoding="utf-8")
    card = (SHIPPED / "MODEL_CARD.md").read_text(encoding="utf-8")
    for text in (results, card):  # the full results block
        assert f"test AUROC **{triage['auroc']:.3f}**" in text
        assert f"| flags at specificity 0.95 (shown) | {flags_per_normal:.2f} |" in text
    # The README's headline table: the triage AUROC with its CI, rule-out sensitivity and share set aside, the flags.
    assert (f"| **{triage['auroc']:.3f}** ({triage['auroc_low']:.3f}–{triage['auroc_high']:.3f}) |" in readme)
    rule_out = triage["at_rule_out"]
    assert f"| **{rule_out['sensitivity']:.3f}**; {100 * rule_out['set_aside_share']:.1f}% |" in readme
    assert f"(Youden's J per finding: {burden['youden']['flags_per_no_finding_film']:.2f}) | **{flags_per_normal:.2f}**;" in readme
    # The benchmark table's row for what a reader meets (written by hand from benchmarks/CLINICAL_OUTPUT_RESULTS.md).
    assert f"flags per No-Finding film **{flags_per_normal:.2f}**" in benchmarks
    assert f"triage AUROC **{triage['auroc']:.3f}**" in benchmarks
