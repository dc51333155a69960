"""karma installs (pyproject.toml): its dependencies are requirements.txt's and its extras those of
requirements-test.txt and requirements-demo.txt; every package is listed; the five commands run the
five top-level scripts' main functions; a plain install (built here into a target directory) holds
the scripts inside the package (no top-level `ppo` or `eval` module) and `import karma` finds it even
beside a clone directory named karma; and --help of every trainer shows every default."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import karma.programs as programs
from test_robustness import _script

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements(name: str) -> list[str]:
    """The requirement lines of a requirements file, comments and `-r` includes left out."""
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_dependencies_are_requirements_txt_and_the_extras_mirror_the_other_files():
    assert "dependencies" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["test"] == requirements("requirements-test.txt")
    assert extras["demo"] == requirements("requirements-demo.txt")
    assert set(extras["track"]) <= set(extras["test"])  # the trackers are tested


def test_every_package_of_karma_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "karma").rglob("__init__.py")}
    assert listed == found | {"karma._programs"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"karma._programs": "."}
    assert sorted(p.stem for p in ROOT.glob("*.py")) == sorted(programs.SCRIPTS)  # all the mapping ships


@pytest.mark.parametrize("command, script", [("karma-data-prep", "data_prep"), ("karma-train-rm", "train_rm"),
                                             ("karma-ppo", "ppo"), ("karma-dpo", "dpo"), ("karma-eval", "eval")])
def test_each_command_runs_its_scripts_main(command, script, monkeypatch, capsys):
    target = PYPROJECT["project"]["scripts"][command]
    module, function = target.split(":")
    assert module == "karma.programs" and function == script
    assert programs.script_path(script) == ROOT / f"{script}.py"  # a clone: the script beside the package
    main = programs.program(script)
    assert main.__code__.co_filename == str(ROOT / f"{script}.py")
    assert main.__code__.co_code == _script(script).main.__code__.co_code
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as e:
        getattr(programs, function)()
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: {command}")


def test_a_command_reports_errors_as_its_script_does(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["karma-train-rm", "--lr", "0"])
    assert programs.train_rm() == 2
    assert capsys.readouterr().err.startswith("karma-train-rm: error: --lr 0.0: must be > 0")


@pytest.mark.parametrize("script", ["train_rm", "ppo", "dpo"])
def test_help_shows_every_default(script, capsys):
    parser = None

    def grab(p, *args, **kw):
        nonlocal parser
        parser = p
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as m:
        m.setattr("argparse.ArgumentParser.parse_args", grab)
        with pytest.raises(SystemExit):
            _script(script).parse_args([])
    hidden = [a.option_strings[0] for a in parser._actions
              if a.option_strings and a.dest not in ("help", "debug")
              and not re.search(r"\((default|required)\b", a.help or "")]
    assert hidden == []


# ------------------------------------------------------------------------------ a plain install

def test_a_plain_install_ships_the_scripts_inside_the_package_and_import_karma_works_beside_a_clone(tmp_path):
    source = tmp_path / "src"  # what a clone holds that the build reads (the build writes build/ there)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt", *(f"{s}.py" for s in programs.SCRIPTS)):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "karma", source / "karma", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                         timeout=300)
    assert pip.returncode == 0, pip.stderr

    assert sorted(p.name for p in (target / "karma" / "_programs").glob("*.py")) == \
        sorted(f"{s}.py" for s in programs.SCRIPTS)
    assert not any((target / f"{s}.py").exists() for s in programs.SCRIPTS)  # no top-level `ppo`, `eval`
    metadata = next(target.glob("karma-*.dist-info")).joinpath("METADATA").read_text()
    assert [r for r in re.findall(r"^Requires-Dist: (.+)$", metadata, re.M) if "extra ==" not in r] == \
        requirements("requirements.txt")
    commands = set(re.findall(r"^(karma-[\w-]+) = ", next(target.glob("karma-*.dist-info"))
                              .joinpath("entry_points.txt").read_text(), re.M))
    assert commands == set(PYPROJECT["project"]["scripts"])

    # from the directory that holds a clone named karma: the installed package, not the clone
    (tmp_path / "karma").mkdir()
    shutil.copy(ROOT / "ppo.py", tmp_path / "karma" / "ppo.py")
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import karma, karma.programs as p; print(karma.__file__); print(p.script_path('ppo')); "
            "print(karma.load_model)")
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    file, script, _ = shown.stdout.splitlines()
    assert file == str(target / "karma" / "__init__.py") and script == str(target / "karma" / "_programs" / "ppo.py")
    usage = subprocess.run([str(target / "bin" / "karma-ppo"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: karma-ppo"), usage.stderr

