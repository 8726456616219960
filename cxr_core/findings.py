"""The 14 ChestX-ray14 findings, defined once.

Every label vector, model output column, metrics table and CSV column in
cxr-assist follows :data:`FINDINGS` in this exact order. "No Finding" is not a
class: it is the all-zero label vector.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: The 14 findings, spelled exactly as in ``Data_Entry_2017.csv``, in the
#: order of Wang et al. 2017 (and CheXNet), which is the order of the NIH README.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: The label text NIH uses for an image with none of the 14 findings.
NO_FINDING = "No Finding"

#: Human-readable names for display (the data spelling stays the key).
DISPLAY_NAMES: dict[str, str] = {f: f.replace("_", " ") for f in FINDINGS}

# Other spellings seen in NIH files and peer projects. BBox_List_2017.csv says
# "Infiltrate"; several derived datasets write "Pleural Thickening" or
# "Effusion" as "Pleural Effusion".
_ALIASES: dict[str, str] = {
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pleural thickening": "Pleural_Thickening",
    "pleural_thickening": "Pleural_Thickening",
    "pleural-thickening": "Pleural_Thickening",
    "pleural effusion": "Effusion",
    "pleural_effusion": "Effusion",
}
ALIASES: dict[str, str] = {**{f.lower(): f for f in FINDINGS}, **_ALIASES}

FINDING_INDEX: dict[str, int] = {f: i for i, f in enumerate(FINDINGS)}


def canonical_finding(name: str) -> str:
    """Return the canonical spelling of a finding name.

    Args:
        name: a finding as written in any NIH file or common alias
            (case-insensitive, e.g. ``"Infiltrate"``, ``"pleural thickening"``).

    Raises:
        KeyError: if ``name`` is not one of the 14 findings or an alias
            ("No Finding" is not a finding and raises too).
    """
    key = str(name).strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    raise KeyError(f"Unknown finding {name!r}; expected one of {', '.join(FINDINGS)}")


def parse_finding_labels(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split one ``Finding Labels`` cell into known findings and unknown tokens.

    Args:
        text: a cell such as ``"Cardiomegaly|Emphysema"`` or ``"No Finding"``.

    Returns:
        ``(findings, unknown)``: canonical findings in :data:`FINDINGS` order,
        and any tokens that are neither a finding nor "No Finding".
    """
    found: set[str] = set()
    unknown: list[str] = []
    for token in str(text).split("|"):
        token = token.strip()
        if not token or token == NO_FINDING:
            continue
        try:
            found.add(canonical_finding(token))
        except KeyError:
            unknown.append(token)
    return tuple(f for f in FINDINGS if f in found), tuple(unknown)


def to_multi_hot(findings: Iterable[str]) -> np.ndarray:
    """Encode findings as a float32 multi-hot vector of shape (14,)."""
    vector = np.zeros(len(FINDINGS), dtype=np.float32)
    for name in findings:
        vector[FINDING_INDEX[canonical_finding(name)]] = 1.0
    return vector


def from_multi_hot(vector: Iterable[float], *, threshold: float = 0.5) -> tuple[str, ...]:
    """Decode a (14,) vector into the findings at or above ``threshold``."""
    values = np.asarray(list(vector), dtype=float)
    if values.shape != (len(FINDINGS),):
        raise ValueError(f"expected a vector of {len(FINDINGS)} values, got shape {values.shape}")
    return tuple(f for f, v in zip(FINDINGS, values) if v >= threshold)
