"""The import layers stay low: reading a config loads no checkpoint machinery, the core weight loader
does not import the GGUF demo converter, the data layer imports nothing of the scripts' layer, and
the scripts' subcommands are argparse subcommands that --help lists."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import data_prep

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Every module a source file imports, anywhere in it (a function's import too), as dotted names:
    `from karma import cli` gives karma.cli."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def in_fresh_python(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_reading_a_config_loads_no_distributed_checkpoint():
    loaded = in_fresh_python("import sys, karma.config; print('torch.distributed.checkpoint' in sys.modules)")
    assert loaded == "False"


def test_the_weight_loader_does_not_import_the_gguf_converter():
    assert not any(m == "karma.gguf_import" for m in imports(ROOT / "karma" / "weights.py"))


def test_the_offline_demo_model_is_a_model_name_wherever_karma_is_imported():
    """The converter adds smollm2-135m to the weight loader's local builds; karma/__init__.py imports it."""
    names = in_fresh_python("import karma.weights as w; print(sorted(w.LOCAL_BUILDS))")
    assert names == "['smollm2-135m']"


@pytest.mark.parametrize("path", sorted((ROOT / "karma" / "data").glob("*.py")), ids=lambda p: p.name)
def test_the_data_layer_imports_nothing_of_the_scripts_layer(path):
    assert not [m for m in imports(path) if m == "karma.cli" or m.startswith("karma.cli.")]


def help_text(main, capsys, *argv) -> str:
    """The --help text of a script's main (argparse prints it and exits 0)."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_data_prep_help_lists_its_subcommand(capsys):
    text = help_text(data_prep.main, capsys)
    assert "subcommands:" in text and "kinship" in text.split("subcommands:")[1]
    assert "--ultrafeedback" in help_text(data_prep.main, capsys, "kinship")


def test_eval_help_lists_its_subcommand(capsys):
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    eval_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_script)
    text = help_text(eval_script.main, capsys)
    assert "subcommands:" in text and "rm" in text.split("subcommands:")[1].split()
    assert "--reward-models" in help_text(eval_script.main, capsys, "rm")
