"""karma/evals/stats.py against scipy, hand computations and textbook values."""

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from karma.evals.stats import across_models_test, bootstrap_ci, cluster_bootstrap_indices, holm, paired_test


def test_wilcoxon_is_scipy_on_known_vectors():
    rng = np.random.default_rng(0)
    for n, shift in [(8, 0.5), (30, 0.2), (200, 0.1)]:  # exact (n <= 50) and normal approximation
        base = rng.normal(size=n)
        variant = base + shift + rng.normal(size=n)
        want = sps.wilcoxon(variant, base, zero_method="wilcox", alternative="two-sided", method="auto")
        got = paired_test(base, variant, "continuous")
        assert got["test"] == "wilcoxon"
        assert got["p"] == want.pvalue and got["statistic"] == want.statistic
        assert got["n"] == n == got["n_nonzero"]
        assert got["mean_diff"] == pytest.approx(np.mean(variant - base))


def test_wilcoxon_drops_zero_differences():
    base = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    variant = base + np.array([0.0, 0.0, 0.05, 0.15, 0.25, 0.35, -0.02, 0.45])
    got = paired_test(base, variant, "continuous")
    want = sps.wilcoxon((variant - base)[2:], zero_method="wilcox")  # the zeros removed by hand
    assert got["n"] == 8 and got["n_nonzero"] == 6
    assert got["p"] == pytest.approx(want.pvalue)


@pytest.mark.parametrize("n", [5, 100])
def test_all_zero_differences_give_p_one_without_warnings(n):
    x = np.linspace(0, 1, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = paired_test(x, x.copy(), "continuous")
        assert got["p"] == 1.0 and got["n_nonzero"] == 0 and got["mean_diff"] == 0.0
        assert paired_test(np.ones(n), np.ones(n), "binary")["p"] == 1.0


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    # 12 pairs: 7 with base 1 / variant 0 (b), 2 with base 0 / variant 1 (c), 3 concordant
    base = np.array([1] * 7 + [0] * 2 + [1, 1, 0])
    variant = np.array([0] * 7 + [1] * 2 + [1, 1, 0])
    got = paired_test(base, variant, "binary")
    assert (got["b"], got["c"], got["n"], got["n_nonzero"]) == (7, 2, 12, 9)
    # two-sided exact: 2 * P(X <= 2), X ~ Bin(9, 1/2) (the distribution is symmetric)
    hand = 2 * sum(math.comb(9, k) for k in range(3)) / 2 ** 9
    assert got["p"] == pytest.approx(hand) == pytest.approx(0.1796875)
    assert got["mean_diff"] == pytest.approx((2 - 7) / 12)


def test_binary_refuses_non_binary_scores_and_unknown_kind():
    with pytest.raises(ValueError, match="0 or 1"):
        paired_test([0, 1], [0.5, 1], "binary")
    with pytest.raises(ValueError, match="kind"):
        paired_test([0, 1], [0, 1], "ordinal")
    with pytest.raises(ValueError, match="one length"):
        paired_test([0, 1], [0, 1, 1], "binary")


def test_holm_textbook_vectors():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # monotone (0.02 * 2 = 0.04 would undercut 0.045 before it) and capped at 1
    assert holm([0.015, 0.02, 0.6]) == pytest.approx([0.045, 0.045, 0.6])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_holm_matches_a_literal_implementation_and_is_not_bh():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 0.2, size=9)
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    literal, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        literal[i] = running
    assert holm(p) == pytest.approx(literal)
    assert not np.allclose(holm(p), sps.false_discovery_control(p))  # BH is a different method


def test_bootstrap_reproducible_from_its_seed():
    x = np.random.default_rng(2).normal(size=50)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    low, high = bootstrap_ci(x, seed=7)
    assert low < x.mean() < high


def test_bootstrap_agrees_with_scipy_percentile_and_covers_the_mean():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=80)
    ours = bootstrap_ci(x, n_resamples=4000, seed=0)
    theirs = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=4000, rng=0).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.05)  # different draws, same method

    covered = 0
    trials = 200
    for t in range(trials):  # true mean 0.5 of Bernoulli(0.5) datasets of 60 items
        low, high = bootstrap_ci(rng.binomial(1, 0.5, size=60), n_resamples=400, seed=t)
        covered += low <= 0.5 <= high
    assert 0.88 <= covered / trials <= 0.99  # nominal 0.95; the percentile interval runs a bit short


def test_bootstrap_other_statistics_and_degenerate_input():
    x = np.arange(11.0)
    low, high = bootstrap_ci(x, statistic=np.median, seed=0)
    assert 0 <= low <= 5 <= high <= 10
    assert bootstrap_ci([3.0], seed=0) == (3.0, 3.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def test_across_models_minimum_p():
    assert across_models_test([0.3] * 6, [0.31, 0.32, 0.33, 0.34, 0.35, 0.36])["p"] == pytest.approx(0.03125)
    five = across_models_test([0.3] * 5, [0.2, 0.1, 0.25, 0.15, 0.05])
    assert five["p"] == pytest.approx(0.0625) and five["n"] == 5
    tied = across_models_test([0.0] * 6, [0.1] * 6)  # tied differences: exhaustive sign flips, same p
    assert tied["p"] == pytest.approx(0.03125)
    assert across_models_test([0.5, 0.4], [0.5, 0.4])["p"] == 1.0


def test_cluster_bootstrap_keeps_clusters_whole_and_is_seeded():
    threads = np.array(["b", "a", "b", "c", "a", "b"])  # members: a {1, 4}, b {0, 2, 5}, c {3}
    draws = list(cluster_bootstrap_indices(threads, 50, seed=3))
    assert [d.tolist() for d in draws] == [d.tolist() for d in cluster_bootstrap_indices(threads, 50, seed=3)]
    members = {t: set(np.flatnonzero(threads == t)) for t in "abc"}
    for idx in draws:
        picked = [threads[i] for i in idx]
        for t in "abc":  # each drawn cluster comes whole: its count is a multiple of its size
            assert picked.count(t) % len(members[t]) == 0 and set(idx[np.array(picked) == t]) <= members[t]
        assert sum(picked.count(t) // len(members[t]) for t in "abc") == 3  # 3 clusters drawn per resample
    singletons = list(cluster_bootstrap_indices(np.arange(7), 5, seed=0))  # one per cluster: plain bootstrap
    assert all(len(d) == 7 for d in singletons)


def test_cluster_bootstrap_covers_a_clustered_mean_where_the_example_bootstrap_does_not():
    """Coverage sanity: 50 threads of 6 examples sharing a thread effect (intra-class correlation
    0.8, design effect 1 + 5 * 0.8 = 5): the thread bootstrap's 95% interval holds the true mean
    (0) about 95% of the time; the example bootstrap's, too narrow by about sqrt(5), far less."""
    rng = np.random.default_rng(0)
    threads = np.repeat(np.arange(50), 6)
    trials, cluster_hits, example_hits = 200, 0, 0
    for t in range(trials):
        x = rng.normal(0, 1, 50)[threads] + rng.normal(0, 0.5, 300)
        means = [x[idx].mean() for idx in cluster_bootstrap_indices(threads, 300, seed=t)]
        low, high = np.quantile(means, [0.025, 0.975])
        cluster_hits += low <= 0 <= high
        low, high = bootstrap_ci(x, n_resamples=300, seed=t)
        example_hits += low <= 0 <= high
    assert 0.88 <= cluster_hits / trials <= 0.99 and example_hits / trials < 0.75
