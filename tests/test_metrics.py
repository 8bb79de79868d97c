"""Every metric pinned to values worked out by hand on tiny score sets (higher score = more OOD)."""

from __future__ import annotations

import numpy as np
import pytest
from ood_bench.errors import UserError
from ood_bench.metrics import (
    HIGHER_IS_BETTER,
    METRIC_INFO,
    METRICS,
    balanced_pair,
    compute_metrics,
    fpr_at_tpr,
)
from ood_bench.metrics.ood import fpr80_ood_pos, fpr95_ood_pos
from sklearn.metrics import roc_curve

ALL = list(METRICS)

# Case A: one ID/OOD tie at 0.3.
#   sorted high -> low: 0.6 ood, 0.5 ood, 0.4 id, 0.3 id + 0.3 ood (tie), 0.2 id, 0.1 id
#   AUROC: pairs = 4 * 3 = 12. ood 0.3 beats ids 0.1, 0.2 and ties 0.3 -> 2 + 0.5; ood 0.5 and 0.6 beat all 4.
#          (2.5 + 4 + 4) / 12 = 10.5 / 12 = 0.875
#   AUPRC_out (OOD positive, 3 positives), thresholds from the top:
#          >=0.6: P=1 R=1/3;  >=0.5: P=1 R=2/3;  >=0.4: no recall step;  >=0.3: TP=3 FP=2 P=3/5 R=1
#          AP = 1/3*1 + 1/3*1 + 1/3*3/5 = 13/15
#   AUPRC_in (ID positive, score negated, 4 positives), thresholds from the lowest score:
#          <=0.1: P=1 R=1/4;  <=0.2: P=1 R=2/4;  <=0.3: TP=3 FP=1 P=3/4 R=3/4;  <=0.4: TP=4 FP=1 P=4/5 R=1
#          AP = 1/4 * (1 + 1 + 3/4 + 4/5) = 0.8875
#   FPR80, OOD positive: TPR steps 1/3, 2/3, 2/3, 1 -> first >= 0.8 is at >=0.3, where IDs 0.3, 0.4 are
#          flagged: FPR = 2/4 = 0.5
#   FPR95, OOD positive: the same threshold (>= 0.95 of 3 also needs all three): 0.5
#   FPR80 / FPR95, ID positive: TPR steps 1/4, 2/4, 3/4, 1 -> first >= 0.8 (and >= 0.95) is at <=0.4, where
#          OOD 0.3 is accepted as ID: FPR = 1/3
CASE_A = (np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.3, 0.5, 0.6]))
EXPECTED_A = {"auroc": 0.875, "auprc_out": 13 / 15, "auprc_in": 0.8875, "fpr80_ood_pos": 0.5,
              "fpr80_id_pos": 1 / 3, "fpr95_ood_pos": 0.5, "fpr95_id_pos": 1 / 3}

# Case B: no ties; 80 % of 5 ID examples is exactly 4, so the TPR >= 0.8 boundary is hit exactly.
#   AUROC: ood 4.5 beats 4 ids, 6 and 7 beat all 5 -> 14/15
#   AUPRC_out: >=7 P=1 R=1/3; >=6 P=1 R=2/3; >=5 no step; >=4.5 TP=3 FP=1 P=3/4 R=1 -> 2/3 + 1/4 = 11/12
#   AUPRC_in: ids 1..4 each P=1 (R 1/5 .. 4/5); then 4.5 is OOD; at <=5 TP=5 FP=1 P=5/6 R=1
#          -> (4 + 5/6)/5 = 29/30
#   FPR80 and FPR95, OOD positive: all 3 OOD needed (2/3 < 0.8) -> threshold 4.5, ID 5 flagged: 1/5
#   FPR80, ID positive: 4 IDs accepted at <=4, no OOD <= 4: 0
#   FPR95, ID positive: all 5 IDs needed -> <=5 accepts OOD 4.5: 1/3
CASE_B = (np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([4.5, 6.0, 7.0]))
EXPECTED_B = {"auroc": 14 / 15, "auprc_out": 11 / 12, "auprc_in": 29 / 30, "fpr80_ood_pos": 0.2,
              "fpr80_id_pos": 0.0, "fpr95_ood_pos": 0.2, "fpr95_id_pos": 1 / 3}

# Case C: heavy ties at 1.0 (two IDs, three OODs).
#   AUROC: each ood 1.0 beats ids 0, 0 and ties 1, 1 -> 2 + 0.5*2 = 3; ood 2.0 beats all 4
#          -> (9 + 4)/16 = 0.8125
#   AUPRC_out: >=2 P=1 R=1/4; >=1 TP=4 FP=2 P=4/6 R=1 -> 1/4 + 3/4*2/3 = 0.75
#   AUPRC_in: <=0 P=1 R=2/4; <=1 TP=4 FP=3 P=4/7 R=1 -> 1/2 + 1/2*4/7 = 11/14
#   FPR80 and FPR95, OOD positive: TPR 1/4 then 1 -> at >=1 the tied IDs are flagged too: 2/4
#   FPR80 / FPR95, ID positive: TPR 2/4 then 1 -> at <=1 three tied OODs are accepted: 3/4
CASE_C = (np.array([0.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 2.0]))
EXPECTED_C = {"auroc": 0.8125, "auprc_out": 0.75, "auprc_in": 11 / 14, "fpr80_ood_pos": 0.5,
              "fpr80_id_pos": 0.75, "fpr95_ood_pos": 0.5, "fpr95_id_pos": 0.75}


@pytest.mark.parametrize(("case", "expected"),
                         [(CASE_A, EXPECTED_A), (CASE_B, EXPECTED_B), (CASE_C, EXPECTED_C)],
                         ids=["tie", "boundary", "heavy-ties"])
def test_every_metric_matches_hand_computed_value(case, expected):
    assert set(expected) == set(METRICS)
    got = compute_metrics(*case, ALL)
    assert list(got) == ALL
    for name in ALL:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
        assert METRICS[name](*case) == pytest.approx(expected[name], abs=1e-12), name


def test_metric_names_and_info_agree():
    assert list(METRICS) == ["auroc", "auprc_out", "auprc_in",
                             "fpr80_ood_pos", "fpr80_id_pos", "fpr95_ood_pos", "fpr95_id_pos"]
    assert set(METRIC_INFO) == set(METRICS) == set(HIGHER_IS_BETTER)
    for name, info in METRIC_INFO.items():
        assert ("higher is better" in info) == HIGHER_IS_BETTER[name]
        assert "positive" in info


def test_fpr_at_tpr_generic_matches_named_metrics():
    s_id, s_ood = CASE_B
    assert fpr_at_tpr(s_id, s_ood, 0.8, "ood") == pytest.approx(0.2)
    assert fpr_at_tpr(s_id, s_ood, 0.8, "id") == 0.0
    assert fpr_at_tpr(s_id, s_ood, 0.95, "id") == pytest.approx(1 / 3)
    # 60 % of ID = 3 of 5 accepted at <=3: no OOD accepted; 60 % of OOD = 2 of 3 caught at >=6: no ID flagged.
    assert fpr_at_tpr(s_id, s_ood, 0.6, "id") == 0.0
    assert fpr_at_tpr(s_id, s_ood, 0.6, "ood") == 0.0
    with pytest.raises(ValueError, match="positive"):
        fpr_at_tpr(s_id, s_ood, 0.8, "both")
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(s_id, s_ood, 0.0, "id")


def test_collinear_roc_points_fpr_is_exact_where_drop_intermediate_is_not():
    # OOD [10..1], ID [9..0], OOD positive. Threshold 3 catches 8 of 10 OOD and flags IDs 9..3: FPR80 = 0.7.
    # Catching 95 % needs all 10 OOD (threshold 1), flagging IDs 9..1: FPR95 = 0.9.
    s_ood, s_id = np.arange(10.0, 0.0, -1.0), np.arange(9.0, -1.0, -1.0)
    assert fpr80_ood_pos(s_id, s_ood) == pytest.approx(0.7, abs=1e-12)
    assert fpr95_ood_pos(s_id, s_ood) == pytest.approx(0.9, abs=1e-12)
    # hvae-oodd's reading: sklearn's default drop_intermediate=True removes the collinear points, and the
    # first point with TPR >= 0.8 left is (0.9, 1.0)
    labels = np.r_[np.ones(10), np.zeros(10)]
    fpr, tpr, _ = roc_curve(labels, np.r_[s_ood, s_id])
    assert fpr[np.argmax(tpr >= 0.8)] == pytest.approx(0.9)


def test_extremes():
    same = np.zeros(5)
    assert compute_metrics(same, same, ["auroc"])["auroc"] == 0.5
    # All tied: every threshold that reaches the TPR target flags everything.
    assert compute_metrics(same, same, ["fpr80_ood_pos", "fpr95_id_pos"]) == {"fpr80_ood_pos": 1.0,
                                                                               "fpr95_id_pos": 1.0}
    perfect = compute_metrics(np.arange(5.0), np.arange(5.0) + 10, ALL)
    assert perfect == {"auroc": 1.0, "auprc_out": 1.0, "auprc_in": 1.0, "fpr80_ood_pos": 0.0,
                       "fpr80_id_pos": 0.0, "fpr95_ood_pos": 0.0, "fpr95_id_pos": 0.0}
    reversed_ = compute_metrics(np.arange(5.0) + 10, np.arange(5.0), ["auroc", "fpr80_ood_pos"])
    assert reversed_ == {"auroc": 0.0, "fpr80_ood_pos": 1.0}


def test_unknown_metric_is_a_user_error_listing_allowed_names():
    with pytest.raises(UserError) as info:
        compute_metrics(*CASE_A, ["auroc", "fpr95"])
    message = str(info.value)
    assert "'fpr95'" in message
    for name in METRICS:
        assert name in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_say_which_set(bad):
    with pytest.raises(ValueError, match=r"OOD \(s_ood\).*non-finite"):
        compute_metrics(np.arange(3.0), np.array([1.0, bad]), ["auroc"])
    with pytest.raises(ValueError, match=r"ID \(s_id\).*non-finite"):
        compute_metrics(np.array([bad, 1.0]), np.arange(3.0), ["auroc"])
    with pytest.raises(ValueError, match="non-finite"):
        METRICS["fpr80_id_pos"](np.array([bad]), np.arange(3.0))


def test_empty_or_2d_scores_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.array([]), np.arange(3.0), ["auroc"])
    with pytest.raises(ValueError, match="1-D"):
        compute_metrics(np.ones((2, 2)), np.arange(3.0), ["auroc"])


def test_balanced_pair_sizes_membership_and_determinism():
    s_id = np.arange(10.0)
    s_ood = np.arange(1000.0) + 0.5
    a_id, a_ood = balanced_pair(s_id, s_ood, seed=3)
    b_id, b_ood = balanced_pair(s_id, s_ood, seed=3)
    assert a_id.dtype == a_ood.dtype == np.float64
    np.testing.assert_array_equal(a_id, s_id)  # the smaller set is kept whole
    assert a_ood.size == 10
    assert np.unique(a_ood).size == 10 and np.isin(a_ood, s_ood).all()  # a subset, without replacement
    np.testing.assert_array_equal(a_ood, b_ood)  # same seed, same subset
    _, c_ood = balanced_pair(s_id, s_ood, seed=4)
    assert not np.array_equal(a_ood, c_ood)
    # The roles swap when the ID set is the larger one.
    d_id, d_ood = balanced_pair(s_ood, s_id, seed=3)
    np.testing.assert_array_equal(d_ood, s_id)
    np.testing.assert_array_equal(d_id, a_ood)
    # Equal sizes: both returned unchanged.
    e_id, e_ood = balanced_pair(*CASE_C, seed=0)
    np.testing.assert_array_equal(e_id, CASE_C[0])
    np.testing.assert_array_equal(e_ood, CASE_C[1])


def test_compute_metrics_balanced_uses_the_balanced_pair():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(size=50), rng.normal(0.5, 1.0, size=7)
    got = compute_metrics(s_id, s_ood, ALL, balanced=True, seed=11)
    assert got == compute_metrics(*balanced_pair(s_id, s_ood, 11), ALL)
    assert got != compute_metrics(s_id, s_ood, ALL)


def test_rank_nonfinite_puts_nan_and_inf_above_every_finite_score_and_counts_them():
    from ood_bench.metrics import auroc, rank_nonfinite

    s_id, s_ood, n = rank_nonfinite(np.array([0.0, np.nan, 1.0]), np.array([-np.inf, 5.0, np.inf]))
    assert n == 3 and np.isfinite(s_id).all() and np.isfinite(s_ood).all()
    assert s_id[1] == s_ood[2] > 5.0 and s_ood[0] < 0.0
    # an ID NaN outranks every OOD finite score: it is a false alarm, not dropped
    assert auroc(s_id, s_ood) == pytest.approx(auroc(np.array([0.0, 6.0, 1.0]), np.array([-1.0, 5.0, 6.0])))
    same_id, same_ood, none = rank_nonfinite(np.arange(3.0), np.arange(3.0))
    assert none == 0 and same_id.tolist() == [0.0, 1.0, 2.0]
