"""tools/ensemble_weights.py: the validation grid of an added member's share (synthetic logits, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.evaluation.metrics import auroc, macro_mean
from tools.ensemble_weights import build_parser, combine, grid_rows, paired_bootstrap


def _data(n: int = 120, findings: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, findings)) < 0.3).astype(int)
    y[0], y[1] = 1, 0  # every finding has positives and negatives
    signal = 2.0 * y - 1.0
    weak = [signal * 0.3 + rng.normal(size=y.shape) for _ in range(2)]
    strong = signal * 1.5 + rng.normal(size=y.shape)
    groups = np.repeat(np.arange(n // 2), 2)  # two films per patient
    return y, groups, weak, strong


def test_combine_is_the_sigmoid_of_the_normalised_weighted_mean_logit():
    a, b = np.array([[0.0, 2.0]]), np.array([[2.0, -2.0]])
    assert np.allclose(combine([a, b], [3, 1]), 1 / (1 + np.exp(-(0.75 * a + 0.25 * b))))


def test_share_zero_is_the_base_and_share_one_the_added_member_alone():
    y, groups, weak, strong = _data()
    table = grid_rows(y, groups, weak, [0.5, 0.5], {1: [strong]}, [0.0, 0.5, 1.0], n_boot=50)
    base = macro_mean(auroc(y, combine(weak, [1, 1])))
    alone = macro_mean(auroc(y, strong))
    first, last = table.iloc[0], table.iloc[-1]
    assert first["val_mean_auroc"] == pytest.approx(base)
    assert first["delta"] == pytest.approx(0.0) and first["delta_low"] == pytest.approx(0.0)
    assert last["val_mean_auroc"] == pytest.approx(alone)
    assert table["weights"].iloc[1] == [0.25, 0.25, 0.5]
    assert (table["delta"].iloc[1:] > 0).all()  # a much stronger member lifts the ensemble


def test_two_added_members_share_their_weight_equally():
    y, groups, weak, strong = _data()
    table = grid_rows(y, groups, weak, [0.7, 0.3], {6: [strong, strong]}, [0.4], n_boot=20)
    assert table["weights"].iloc[0] == [0.42, 0.18, 0.2, 0.2]
    assert table["views"].iloc[0] == 6


def test_paired_bootstrap_bounds_hold_the_point_and_resample_patients():
    y, groups, weak, strong = _data()
    base, other = combine(weak, [1, 1]), combine([strong], [1])
    point, low, high = paired_bootstrap(y, base, other, groups, n_boot=200)
    assert low <= point <= high and point > 0
    assert paired_bootstrap(y, base, other, groups, n_boot=200) == (point, low, high)  # seeded


def test_parser_defaults():
    args = build_parser().parse_args(["--grid", "a.toml", "--data", "d", "--base", "b", "--add", "x", "y"])
    assert args.views == [1, 6] and args.add == ["x", "y"] and 0 in args.shares
