"""The evaluation suite (eval.py): scoring primitives (lm.py), one module per benchmark (tasks/),
paired statistics (stats.py) and reporting (report.py)."""
