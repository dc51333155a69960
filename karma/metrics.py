"""Binary classification metrics for the reward model, computed here (NumPy) and pinned against
scikit-learn in the tests.

labels y in {0, 1}; probabilities p in [0, 1] (the RM's sigmoid output); threshold 0.5.
  accuracy       mean(1[p >= 0.5] == y)
  precision      TP / (TP + FP),  recall  TP / (TP + FN),  F1 = 2PR / (P + R)  (0 when undefined, as sklearn)
  roc_auc        P(p_pos > p_neg) + 0.5 P(p_pos = p_neg): the Mann-Whitney U statistic / (n_pos n_neg),
                 ties counted half (average ranks); undefined with one class -> None and a note
  log_loss       -mean(y log p + (1 - y) log(1 - p)), p clipped to [1e-7, 1 - 1e-7]
  positive_rate  mean(1[p >= 0.5]), next to label_rate = mean(y)
  calibration    reliability bins: equal-width bins (lo, hi] of p, each with its count, mean p and
                 the fraction of positives; ece = sum_b (n_b / n) |mean_p_b - frac_pos_b|
"""

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Area under the ROC curve via average ranks (Mann-Whitney), exact with ties; None if one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(probs)  # ties get their average rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> tuple[list[dict], float]:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], probs)  # bins (lo, hi], the first [0, hi]: as sklearn
    bins, ece = [], 0.0
    for b in range(n_bins):
        in_bin = which == b
        n = int(in_bin.sum())
        mean_p = float(probs[in_bin].mean()) if n else None
        frac_pos = float(labels[in_bin].mean()) if n else None
        if n:
            ece += n / len(probs) * abs(mean_p - frac_pos)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "mean_prob": mean_p,
                     "frac_positive": frac_pos})
    return bins, float(ece)


def binary_metrics(labels, probs, threshold: float = 0.5, n_bins: int = 10) -> dict:
    """All of the above for one evaluation set, as a JSON-ready dict."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and probs must be 1-D of equal length, got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no examples to evaluate")
    pred = (p >= threshold).astype(np.int64)
    tp, fp, fn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    pc = np.clip(p, EPS, 1 - EPS)
    bins, ece = calibration_bins(y, p, n_bins)
    auc = roc_auc(y, p)
    out = {
        "n": len(y),
        "accuracy": float((pred == y).mean()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": auc,
        "log_loss": float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean()),
        "positive_rate": float(pred.mean()),
        "label_rate": float(y.mean()),
        "ece": ece,
        "calibration": bins,
    }
    if auc is None:
        out["note"] = f"only one class in the labels (all {int(y[0])}): ROC-AUC is undefined"
    return out
