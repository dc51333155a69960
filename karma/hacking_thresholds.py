"""Where a PPO rollout's reward-hacking signals raise a warning: karma/ppo/signals.py computes the
signals and the warning, karma/plot.py draws these thresholds beside the curves. A module of its
own, below both, so that drawing a run's curves (which karma.run does for every trainer) needs
nothing of the PPO package.
"""

# Diversity has collapsed when the rollout's word bigrams are mostly repeats, or when at least half
# the replies are copies of another reply in the same rollout (different prompts sampled at the
# policy's temperature: a healthy policy almost never repeats a multi-word reply). One reply
# repeated n times has distinct-2 <= 1/n (0.06 for the demo's 16 replies); the demo's normal PPO run
# of SmolLM2-135M (make demo: 12 rollouts of 16 replies) stayed at distinct-2 0.94-1.00 with no
# repeat. Distinct-n falls as a rollout holds more text, so a very large rollout of short, formulaic
# replies can come near 0.2 without collapsing: the warning says which number crossed.
DISTINCT_2_MIN = 0.2
REPEAT_SHARE_MAX = 0.5
# Length alone explains the score when |Pearson r(score, length)| > 0.8 (r^2 > 0.64: length
# predicts most of the score's variance) over at least 16 scored replies. Below 16 replies a large
# |r| is too often chance: with no correlation at all, P(|r| > 0.8) is 2e-4 at n = 16 but 0.017 at
# n = 8 (the t test of r with n - 2 degrees of freedom), and a run checks this every rollout. The
# demo's normal run stayed within -0.57..+0.41.
LENGTH_CORR_MAX = 0.8
LENGTH_CORR_MIN_REPLIES = 16
