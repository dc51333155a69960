"""karma.metrics against scikit-learn on random inputs, ties and one-class edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

from karma.metrics import binary_metrics, roc_auc


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.integers(0, 2, n)
    p = np.clip(rng.beta(2, 2, n) * 0.6 + 0.4 * y * rng.random(n), 0.001, 0.999)
    if seed % 2:  # heavy ties: probabilities on a coarse grid
        p = np.round(p, 1).clip(0.05, 0.95)
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(precision_score(y, pred, zero_division=0), abs=1e-12)
    assert m["recall"] == pytest.approx(recall_score(y, pred, zero_division=0), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-9)
    assert m["positive_rate"] == pytest.approx(pred.mean()) and m["label_rate"] == pytest.approx(y.mean())
    frac_pos, mean_p = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = [b for b in m["calibration"] if b["count"]]
    assert [b["frac_positive"] for b in filled] == pytest.approx(list(frac_pos), abs=1e-12)
    assert [b["mean_prob"] for b in filled] == pytest.approx(list(mean_p), abs=1e-12)
    assert sum(b["count"] for b in m["calibration"]) == n
    ece = sum(b["count"] / n * abs(b["mean_prob"] - b["frac_positive"]) for b in filled)
    assert m["ece"] == pytest.approx(ece)


def test_auc_with_all_scores_tied_is_one_half():
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.3, 0.3, 0.3, 0.3])) == 0.5
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])


def test_single_class_is_reported_not_a_crash():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.6])
    assert m["roc_auc"] is None and "only one class" in m["note"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(f1_score([1, 1, 1], [1, 0, 1]))
    m = binary_metrics([0, 0], [0.1, 0.7])
    assert m["roc_auc"] is None and m["precision"] == 0.0 and m["f1"] == 0.0


def test_log_loss_is_finite_for_extreme_probabilities_and_bad_shapes_raise():
    m = binary_metrics([1, 0], [0.0, 1.0])
    assert np.isfinite(m["log_loss"]) and m["log_loss"] > 10
    with pytest.raises(ValueError, match="equal length"):
        binary_metrics([1, 0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="no examples"):
        binary_metrics([], [])
