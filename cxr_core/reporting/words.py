"""The words a clinician reads about a reading: the triage sentence, what a flag means, the withheld note.

Every page, report and handout takes its sentences from here, so they say the same thing; each number in
them says what it was measured on (validation split, NIH labels).
"""

from __future__ import annotations

from cxr_core.evaluation.flags import FLAG, NOT_SET, POSSIBLE, FindingFlags
from cxr_core.evaluation.reading import Reading, ReadingPolicy
from cxr_core.evaluation.triage import NOT_ASSESSED
from cxr_core.findings import DISPLAY_NAMES, FINDINGS

__all__ = ["BAND_LABELS", "WITHHELD_NOTE", "flag_words", "triage_words"]

#: How each band is written on every page (the PDF, whose font lacks the flag sign, writes "FLAG").
BAND_LABELS = {FLAG: "⚑ flag", POSSIBLE: "possible", "below": "", NOT_SET: "no flag set"}

WITHHELD_NOTE = ("The model's output is withheld: the input check says this may not be a frontal chest X-ray, and "
                 "findings for such an image are not meaningful.")



def triage_words(reading: Reading, policy: ReadingPolicy) -> str:
    """One sentence on the triage a clinician can read, with what the operating point means (validation numbers)."""
    if reading.withheld:
        return WITHHELD_NOTE
    if policy.triage is None or reading.triage_probability is None:
        return "No triage: this model bundle was evaluated before the triage existed (run python -m training.evaluate)."
    val = policy.triage.validation
    rule_out, balanced = val.get("rule_out", {}), val.get("balanced", {})
    p = reading.triage_probability
    if reading.triage == NOT_ASSESSED:
        return "Not assessed."
    if reading.triage == "no finding likely":
        return (f"Probability of any of the 14 findings {p:.2f}, below the rule-out point {policy.triage.rule_out:.2f}. "
                f"On the validation split this point caught {_pct(rule_out.get('sensitivity'))} of abnormal films; of "
                f"the films below it, {_pct(rule_out.get('npv'))} had no finding (NIH labels).")
    strength = (f"also above the balanced point {policy.triage.balanced:.2f}, where {_pct(balanced.get('ppv'))} of "
                "validation films were abnormal" if reading.above_balanced else
                f"below the balanced point {policy.triage.balanced:.2f}")
    return (f"Probability of any of the 14 findings {p:.2f}: at or above the rule-out point {policy.triage.rule_out:.2f} "
            f"({strength}; NIH labels).")


def flag_words(finding: str, band: str, cuts: FindingFlags) -> str:
    """What a finding's band means, in words, from its validation numbers ("" for "below")."""
    i = FINDINGS.index(finding)
    if band == NOT_SET:
        return f"No flag for {DISPLAY_NAMES[finding]}: {cuts.reasons[i] or 'no cut fitted'}."
    stats = cuts.validation[i] or {}
    if band == FLAG:
        if cuts.operating_point == "youden":
            return (f"At Youden's J cut: validation sensitivity {_num(stats.get('sensitivity'))}, "
                    f"specificity {_num(stats.get('specificity'))}.")
        lift = stats.get("lift")
        lift_text = f"{lift:.1f}× as often as validation films overall" if lift and lift == lift else "n/a"
        words = (f"Flagged validation films had {DISPLAY_NAMES[finding]} {lift_text} (PPV {_num(stats.get('ppv'))}, "
                 f"95% CI {_num(stats.get('ppv_low'))}–{_num(stats.get('ppv_high'))}; NIH labels)")
        low, prevalence = stats.get("ppv_low"), stats.get("prevalence")
        if low is not None and prevalence is not None and low <= prevalence:
            # A wide interval on a few hundred films: say that the flag's value is not established.
            words += f"; the interval includes the base rate ({_num(prevalence)}), so its value is not established"
        return words + "."
    if band == POSSIBLE:
        return (f"Possible: above the lower cut (validation specificity {_num(cuts.possible_specificity)}), below the flag; "
                "not a flag.")
    return ""


def _num(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def _pct(value) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.0f}%"
