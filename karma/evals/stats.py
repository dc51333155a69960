"""Paired significance tests, multiple-comparison correction and bootstrap intervals for eval tables.

Every comparison is a variant against its own base model on the same items (paired by item id; the
caller aligns the arrays): exact McNemar for 0/1 scores, Wilcoxon signed-rank for continuous ones.
The p-values of one table are Holm-corrected together (report.py); the across-models test asks
whether a variant moves the per-model aggregates in a consistent direction over the base models.
Two classifiers scored on the same labelled examples are compared by DeLong's test of their AUCs
(the reward-shortcut report, shortcuts.py), whose intervals come from a cluster bootstrap over
threads (cluster_bootstrap_indices).
"""

import math

import numpy as np
from scipy import stats


def paired_test(base_scores, variant_scores, kind: str) -> dict:
    """Two-sided paired test of variant vs base on aligned per-item scores.

    kind "continuous": Wilcoxon signed-rank on d = variant - base (Wilcoxon 1945), as
        scipy.stats.wilcoxon(variant, base, zero_method="wilcox", alternative="two-sided",
        method="auto"). zero_method="wilcox" drops the zero differences before ranking, so n_nonzero
        items carry the test; "pratt" (Pratt 1959) would rank them with the others and then drop
        their ranks, which pushes the nonzero differences to higher ranks and changes p when many
        items tie at zero. method="auto" (scipy >= 1.13): the exact null distribution when
        n <= 50 and the |d| are distinct and nonzero; with ties or zeros, exhaustive sign flips
        when n <= 13, else the normal approximation corrected for ties.
        When every difference is zero there is no evidence either way: p = 1.0 (scipy returns
        NaN with a warning there for n > 13).
    kind "binary": exact McNemar (McNemar 1947): on the discordant pairs, b = #(base 1, variant 0)
        and c = #(base 0, variant 1), under H0 b ~ Binomial(b + c, 1/2); p =
        scipy.stats.binomtest(b, b + c, 0.5).pvalue (two-sided), and p = 1.0 when b + c = 0.

    Returns {"test", "statistic", "p", "n", "n_nonzero", "mean_diff"}, plus "b" and "c" for binary:
    n is the number of pairs, n_nonzero those that differ, mean_diff = mean(variant - base);
    statistic is min(W+, W-) for Wilcoxon and b for McNemar.
    """
    base, variant = _pair(base_scores, variant_scores)
    diff = variant - base
    n_nonzero = int(np.count_nonzero(diff))
    out = {"n": len(diff), "n_nonzero": n_nonzero, "mean_diff": float(diff.mean()) if len(diff) else 0.0}
    if kind == "binary":
        if not np.isin(np.concatenate([base, variant]), (0, 1)).all():
            raise ValueError("binary scores must be 0 or 1")
        b = int(((base == 1) & (variant == 0)).sum())
        c = int(((base == 0) & (variant == 1)).sum())
        p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        return {"test": "mcnemar_exact", "statistic": float(b), "p": float(p), **out, "b": b, "c": c}
    if kind == "continuous":
        if n_nonzero == 0:
            return {"test": "wilcoxon", "statistic": 0.0, "p": 1.0, **out}
        res = stats.wilcoxon(variant, base, zero_method="wilcox", alternative="two-sided", method="auto")
        return {"test": "wilcoxon", "statistic": float(res.statistic), "p": float(res.pvalue), **out}
    raise ValueError(f"kind must be 'binary' or 'continuous', got {kind!r}")


def across_models_test(base_aggregates, variant_aggregates) -> dict:
    """Does a variant shift the per-model aggregates? Two-sided Wilcoxon signed-rank over base models
    on d_m = variant_m - base_m (one aggregate per model, aligned by the caller).

    Exact for the few models a table has (scipy's "auto": the exact null distribution, or all 2^n
    sign flips when aggregates tie, up to 13 models). With n models the smallest attainable p is
    2 / 2^n, reached when all n differences have the same sign: 6 models -> 0.03125,
    5 models -> 0.0625 (never < 0.05), 4 -> 0.125. Zero differences are dropped (zero_method="wilcox")
    and all-zero gives p = 1.0, as in paired_test.

    Returns {"test", "statistic", "p", "n", "n_nonzero", "mean_diff"} (n = number of models).
    """
    return paired_test(base_aggregates, variant_aggregates, "continuous")


def holm(pvalues) -> list[float]:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m p-values sorted ascending p_(1) <= ... <= p_(m):
        adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))
    (the running max keeps them monotone). Rejecting adj < alpha controls the family-wise error rate
    at alpha under any dependence. Not Benjamini-Hochberg (scipy.stats.false_discovery_control),
    which controls the false discovery rate instead and is less strict.
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def bootstrap_ci(values, statistic=np.mean, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of statistic(values).

    Draws n_resamples samples of len(values) with replacement (numpy default_rng(seed): the same seed
    gives the same interval) and returns the (1 - confidence)/2 and (1 + confidence)/2 quantiles of the
    statistic over them, as scipy.stats.bootstrap(method="percentile") does (its draws differ).
    `statistic(sample, axis=-1)` must reduce the last axis, as numpy's reductions do.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of values")
    rng = np.random.default_rng(seed)
    batch = max(1, 2_000_000 // len(x))  # resamples per draw, so an index block stays ~16 MB
    draws = []
    for start in range(0, n_resamples, batch):
        idx = rng.integers(0, len(x), size=(min(batch, n_resamples - start), len(x)))
        draws.append(statistic(x[idx], axis=-1))
    alpha = 1.0 - confidence
    low, high = np.quantile(np.concatenate(draws), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def cluster_bootstrap_indices(clusters, n_resamples: int, seed):
    """Yield n_resamples index arrays of a cluster bootstrap: each draws as many clusters as there
    are, uniformly with replacement, and takes every member of each (Davison & Hinkley 1997,
    "Bootstrap Methods and their Application", sec. 3.8; Field & Welsh 2007, "Bootstrapping
    clustered data", JRSS-B 69(3)).

    Why: examples of one cluster (the replies of one Reddit thread) are correlated, so a resample
    of single examples treats each as new information and its intervals are too narrow (by about
    the square root of the design effect, 1 + (m - 1) ICC for clusters of m). Resampling whole
    clusters keeps that correlation inside every resample. With one example per cluster this is
    the ordinary bootstrap. clusters: one hashable id per example; seed: anything
    numpy.random.default_rng takes (the same seed yields the same resamples, so statistics of
    several models computed on them are paired). Each array holds member indices, cluster by
    cluster, its length varying with the clusters drawn."""
    codes = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()  # [N] cluster code 0..C-1
    order = np.argsort(codes, kind="stable")  # members of cluster c: order[starts[c]:starts[c] + counts[c]]
    counts = np.bincount(codes)  # [C]
    starts = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(counts), len(counts))  # [C] clusters, with replacement
        sizes = counts[chosen]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # 0..size-1 per cluster
        yield order[np.repeat(starts[chosen], sizes) + within]


def delong_components(labels, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988), by midranks
    (the fast algorithm of Sun & Xu 2014: one sort per model, O(n log n) instead of O(m n)).

    With X the m positive scores, Y the n negative ones and psi(x, y) = 1 if x > y, 1/2 if equal,
    0 otherwise:  V10_i = (1/n) sum_j psi(X_i, Y_j),  V01_j = (1/m) sum_i psi(X_i, Y_j),
    AUC = mean(V10) = mean(V01). With T_z the midranks in all m + n scores and T_x, T_y the midranks
    within X and within Y:  V10_i = (T_z(X_i) - T_x(X_i)) / n  (the negatives below X_i, ties 1/2)
    and V01_j = 1 - (T_z(Y_j) - T_y(Y_j)) / m."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    x_pos, x_neg = s[y], s[~y]
    m, n = len(x_pos), len(x_neg)
    tz = stats.rankdata(np.concatenate([x_pos, x_neg]))
    v10 = (tz[:m] - stats.rankdata(x_pos)) / n
    v01 = 1.0 - (tz[m:] - stats.rankdata(x_neg)) / m
    return float(v10.mean()), v10, v01


def delong_test(labels, scores_a, scores_b, confidence: float = 0.95) -> dict:
    """Two-sided DeLong test (DeLong, DeLong & Clarke-Pearson 1988) of AUC_a = AUC_b for two
    classifiers scored on the same examples (correlated ROC curves).

    S10 and S01 are the 2x2 sample covariances (ddof 1) of the two models' V10 and V01
    (delong_components); Var(AUC_a - AUC_b) = c' (S10 / m + S01 / n) c with c = (1, -1);
    z = diff / sqrt(Var), p = 2 sf(|z|), and the normal interval diff +- z_{(1+confidence)/2} sqrt(Var).
    A zero variance (identical or perfectly separating scores) gives p = 1 when the AUCs are equal
    and p = 0 otherwise (the z is infinite). Needs 2+ examples of each class, else p = None.

    Returns {"test", "auc_a", "auc_b", "diff", "se", "z", "p", "ci"} (z None when infinite), plus
    "note" when the test cannot run."""
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return {"test": "delong", "auc_a": None, "auc_b": None, "diff": None, "se": None, "z": None, "p": None,
                "ci": None, "note": f"DeLong needs 2+ examples of each class ({m} positive, {n} negative)"}
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = delong_components(y, scores_a), delong_components(y, scores_b)
    s10, s01 = np.cov(np.stack([v10_a, v10_b])), np.cov(np.stack([v01_a, v01_b]))
    c = np.array([1.0, -1.0])
    var = float(c @ (s10 / m + s01 / n) @ c)
    diff = auc_a - auc_b
    if var <= 1e-15:
        z, p, se = (0.0, 1.0, 0.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0, 0.0)
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    half = stats.norm.ppf(0.5 + confidence / 2) * se
    return {"test": "delong", "auc_a": auc_a, "auc_b": auc_b, "diff": diff, "se": se,
            "z": z if math.isfinite(z) else None, "p": p, "ci": [diff - half, diff + half]}


def _pair(base_scores, variant_scores) -> tuple[np.ndarray, np.ndarray]:
    base = np.asarray(base_scores, dtype=float)
    variant = np.asarray(variant_scores, dtype=float)
    if base.shape != variant.shape or base.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of one length, got {base.shape} and {variant.shape}")
    if not (np.isfinite(base).all() and np.isfinite(variant).all()):
        raise ValueError("paired scores must be finite")
    return base, variant
