"""The library and the CLIs never import `transformers` or `trl`: they are test-only oracles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"transformers", "trl"}
SCRIPTS = ["data_prep.py", "train_rm.py", "ppo.py", "eval.py"]


def sources() -> list[Path]:
    files = sorted((ROOT / "karma").rglob("*.py"))
    files += [ROOT / s for s in SCRIPTS if (ROOT / s).exists()]
    return files


def forbidden_imports(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call):  # importlib.import_module("transformers"), __import__(...)
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname not in ("import_module", "__import__") or not node.args:
                continue
            arg = node.args[0]
            names = [arg.value] if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else []
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    return found


def test_library_sources_exist():
    names = {p.name for p in sources()}
    assert {"__init__.py", "model.py", "weights.py", "tokenizer.py", "generate.py"} <= names


def test_no_transformers_or_trl_import():
    offenders = [hit for path in sources() for hit in forbidden_imports(path)]
    assert offenders == []


def test_detector_catches_imports(tmp_path):
    """The AST check itself: every spelling of the import is caught, look-alikes are not."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, transformers\n"
        "import transformers.models.llama as ll\n"
        "from transformers import AutoModel\n"
        "from trl.trainer import PPOTrainer\n"
        "def f():\n"
        "    import importlib\n"
        "    return importlib.import_module('transformers')\n"
    )
    good = tmp_path / "good.py"
    good.write_text("import transformer_engine\nfrom .transformers import x\nimport trlx\nx = 'transformers'\n")
    assert len(forbidden_imports(bad, tmp_path)) == 5
    assert forbidden_imports(good, tmp_path) == []


def test_importing_karma_does_not_load_transformers():
    code = (
        "import sys\n"
        "import karma, karma.config, karma.model, karma.weights, karma.tokenizer, karma.generate\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'trl'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
