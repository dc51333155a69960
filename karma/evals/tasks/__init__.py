"""One module per benchmark; each defines NAME, FILES, load() and evaluate() (karma/evals/task.py)."""

import importlib

TASKS = ["mmlu", "truthfulqa", "truthfulqa_gen", "crows_pairs", "colbert_humor", "msad", "sycophancy", "realtoxicity"]
MODULES = {"mmlu": "mmlu", "truthfulqa": "truthfulqa", "truthfulqa_gen": "truthfulqa", "crows_pairs": "crows_pairs",
           "colbert_humor": "classification", "msad": "classification", "sycophancy": "sycophancy",
           "realtoxicity": "realtoxicity"}


def get_task(name: str):
    """The task object (module or module attribute) for a task name."""
    if name not in MODULES:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    module = importlib.import_module(f"karma.evals.tasks.{MODULES[name]}")
    return getattr(module, "TASKS", {}).get(name, module)
