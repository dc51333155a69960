"""The five programs as commands, once karma is installed (pip install . or pip install -e .):

    karma-data-prep = python data_prep.py      karma-dpo  = python dpo.py
    karma-train-rm  = python train_rm.py       karma-eval = python eval.py
    karma-ppo       = python ppo.py

The programs are the scripts at the top of the repository, and stay there (`python ppo.py` is how
the README runs them). Installed as they are, they would be top-level modules named `ppo`, `eval`,
`dpo` in site-packages, where another package's module of the same name would collide with them.
So pyproject.toml ships the five files inside the package instead, in karma/_programs/ (a
package-dir mapping of the repository's top), and each command here loads its script from there,
or, in a clone (an editable install, or no install), from beside the karma package, and runs its
main through karma.cli.run_main, as the script's own `if __name__ == "__main__"` does: one-line
errors, exit codes 0 / 1 / 2 / 130.
"""

import importlib.util
import sys
from pathlib import Path

from karma.cli import run_main

SCRIPTS = ("data_prep", "train_rm", "ppo", "dpo", "eval")


def script_path(script: str) -> Path:
    """Where top-level script `script` is: karma/_programs/ in an installed wheel, else the clone's top."""
    package = Path(__file__).resolve().parent
    shipped = package / "_programs" / f"{script}.py"
    return shipped if shipped.is_file() else package.parent / f"{script}.py"


def program(script: str):
    """The main function of top-level script `script` (one of SCRIPTS), its module loaded once."""
    name = f"_karma_program_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, script_path(script))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].main


def data_prep() -> int:
    return run_main(program("data_prep"))


def train_rm() -> int:
    return run_main(program("train_rm"))


def ppo() -> int:
    return run_main(program("ppo"))


def dpo() -> int:
    return run_main(program("dpo"))


def eval() -> int:  # noqa: A001 (the command karma-eval; shadows the builtin only in this module)
    return run_main(program("eval"))
