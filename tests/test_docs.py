"""The README and docs/ cannot go stale silently. For README.md and every docs/*.md:

  * every module, function, class and method named in `backticks` exists in the code (an ast walk
    over karma/ and the scripts; nothing is imported), and every name of the paper-to-code table is
    defined in the modules its row names;
  * every flag of a command block (```bash) that runs one of our programs is in that program's
    --help, every `--flag` in the text is some program's flag, and a default written beside its
    flag, "`--min-chars` (10)", is the one --help shows;
  * every `make` target and every linked file exists.

What counts as a code name in backticks: a path of this repository (`karma/ppo/core.py`,
`karma/data/`), a Python file name (`data_prep.py`), a dotted name (`karma.run.Progress`,
`RewardModel.score`, `reward_train.train`), a name called (`policy_loss(logp, ...)`, `evaluate()`),
a CamelCase class name (`PPOConfig`). Everything else is prose and not checked: a flag, a shell
command, a JSON key (`kl_coef`), a file a program writes (`metrics.jsonl`, `runs/demo/SUMMARY.md`).
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = ["data_prep.py", "train_rm.py", "ppo.py", "dpo.py", "eval.py"]
SUBCOMMANDS = {"data_prep.py": "kinship", "eval.py": "rm"}

# Dotted names that start with these are other projects' code, not ours.
EXTERNAL = {"torch", "transformers", "numpy", "scipy", "sklearn", "huggingface_hub", "tokenizers", "tomllib",
            "lm_eval", "trl", "vllm", "orjson"}
# A dotted name ending in one of these is a file a program reads or writes (metrics.jsonl, config.json,
# model.safetensors.index.json, RS_2015-01.zst), not a code name.
FILE_SUFFIXES = {"json", "jsonl", "ndjson", "md", "png", "csv", "pt", "safetensors", "toml", "txt", "zst",
                 "gz", "parquet", "gguf", "lock", "sh"}
# Backticked spans that look like code names but are not ours, each with the reason.
NOT_CODE = {
    "flock(2)": "the Linux system call, as its manual page is named",
    "config.workers": "a key of the stats.json that data_prep.py writes",
    "PPOTrainer": "TRL's PPO trainer, which bench/ppo_vs_trl.py measures karma against",
}

DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
CALL = re.compile(r"(?P<name>[A-Za-z_][\w.]*)\(.*\)")
REPO_PATH = re.compile(r"(?:karma|tests|bench|data|docs)/[\w./*-]*")
PY_FILE = re.compile(r"[\w./-]+\.py")
CLASS_NAME = re.compile(r"(?=[A-Za-z0-9]*[a-z])(?=(?:[^A-Z]*[A-Z]){2})[A-Z][A-Za-z0-9]*")  # not Base, a word
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


# ------------------------------------------------------------------------------------- the code

class Code:
    """Every module of karma/ and the scripts, and the names each defines."""

    def __init__(self):
        self.modules: dict[str, set[str]] = {}  # "karma.run" -> the names defined at its top level
        self.members: dict[str, set[str]] = {}  # class name -> its methods, fields and class attributes
        self.anywhere: set[str] = set()  # every function, method and class name
        for path in sorted((ROOT / "karma").rglob("*.py")) + [ROOT / s for s in SCRIPTS]:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            self.modules[name] = self._top_level(tree, reexports=path.name == "__init__.py")
        self.py_names = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}

    def _top_level(self, tree: ast.Module, reexports: bool) -> set[str]:
        """The names a module defines (a package's __init__.py: also those it imports, karma.load_model)."""
        names = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                self.anywhere.add(node.name)
                if isinstance(node, ast.ClassDef):
                    self._members(node)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and reexports:
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        return names

    def _members(self, cls: ast.ClassDef) -> None:
        body = self.members.setdefault(cls.name, set())
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body.add(item.name)
                self.anywhere.add(item.name)
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                body.add(item.target.id)  # a dataclass field
            elif isinstance(item, ast.Assign):
                body |= {t.id for t in item.targets if isinstance(t, ast.Name)}

    def in_module(self, module: str, rest: list[str]) -> bool:
        """`rest` names something in the module: a top-level name, then a member of that class."""
        if not rest:
            return True
        if rest[0] not in self.modules[module]:
            return False
        return len(rest) == 1 or rest[0] not in self.members or rest[1] in self.members[rest[0]]

    def has(self, dotted: str) -> bool:
        """A module named fully (`karma.ppo.core`) or by its tail (`ppo.core`, `reward_train`), then a
        name it defines, then a member of that class; or Class.member; or a plain name that is a
        function, method or class somewhere (or a Python builtin)."""
        parts = dotted.split(".")
        if parts[0] in EXTERNAL:
            return True
        if len(parts) == 1 and (parts[0] in self.anywhere or hasattr(builtins, parts[0])):
            return True
        for n in range(len(parts), 0, -1):
            head = ".".join(parts[:n])
            modules = [m for m in self.modules if m == head or m.endswith("." + head)]
            if any(self.in_module(m, parts[n:]) for m in modules):
                return True
        return len(parts) == 2 and parts[1] in self.members.get(parts[0], set())


@functools.cache
def code() -> Code:
    return Code()


# ------------------------------------------------------------------------------------- the docs

def shown(doc: Path) -> str:
    return str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else doc.name


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def backticked(text: str) -> list[str]:
    """The `spans` of the prose; a span may run over a line break, as in Markdown."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose(text))]


def shell_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped, one per
    command (a line may hold several: `a && b`, `a; b`)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            commands += [c.strip() for c in re.split(r"&&|;|\|", line) if c.strip()]
    return commands


def program_of(command: str) -> tuple[str, list[str]] | None:
    """(program, the words after it) of a command that runs one of ours (`python ppo.py ...`,
    `torchrun ... ppo.py ...`, `python -m karma ...`), else None (bench/ scripts, pip, hf, make)."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote after a comment was cut
        words = command.split()
    for i, w in enumerate(words):
        if w in SCRIPTS:
            rest = words[i + 1:]
            if rest and rest[0] == SUBCOMMANDS.get(w):
                return f"{w} {rest[0]}", rest[1:]
            return w, rest
        if w == "-m" and i + 1 < len(words) and words[i + 1].split(".")[0] == "karma":
            return f"python -m {words[i + 1]}", words[i + 2:]
    return None


def paper_table_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """The rows of the paper-to-code table (its header says "where" and "what to read"): the paths of
    the "where" cell (a bare `threads.py` is in the folder of the path before it) and the names of
    the "what to read" cell."""
    rows, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and "what to read" in cells:
            where, what, in_table = cells.index("where"), cells.index("what to read"), True
        elif in_table and line.startswith("|") and len(cells) > max(where, what):
            paths, folder = [], ""
            for path in re.findall(r"`([^`]+)`", cells[where]):
                folder = path.rpartition("/")[0] if "/" in path else folder
                paths.append(path if "/" in path else f"{folder}/{path}")
            names = re.findall(r"`([A-Za-z_][\w.]*)`", cells[what])
            rows.append((paths, [n for n in names if not n.endswith(".py")]))
        else:
            in_table = False
    return rows


# ------------------------------------------------------------------------------- names in the code

def problem(span: str) -> str | None:
    """Why a backticked span names code that does not exist, or None (it exists, or it is prose)."""
    c = code()
    if span in NOT_CODE or "<" in span:  # <date>, <out>/.lock: placeholders
        return None
    if m := CALL.fullmatch(span):
        return None if c.has(m["name"]) else f"`{span}`: no function or method {m['name']}"
    if " " in span:
        return None
    if REPO_PATH.fullmatch(span):
        if "*" in span:
            return None if list(ROOT.glob(span)) else f"`{span}`: matches no file"
        if (ROOT / span).exists():
            return None
        path, _, attr = span.rpartition(".")  # karma/ppo/trainer.train
        if span.startswith("karma/") and attr and (ROOT / f"{path}.py").exists():
            module = ".".join(Path(path).parts)
            return None if attr in c.modules[module] else f"`{span}`: {module} defines no {attr}"
        return f"`{span}`: no such file or directory"
    if PY_FILE.fullmatch(span):
        if "/" in span:
            return None if (ROOT / span).exists() else f"`{span}`: no such file"
        return None if span in c.py_names else f"`{span}`: no such Python file"
    if DOTTED.fullmatch(span) and span.rsplit(".", 1)[1] not in FILE_SUFFIXES:
        return None if c.has(span) else f"`{span}`: no such module, function, class or method"
    if CLASS_NAME.fullmatch(span):
        return None if span in c.members else f"`{span}`: no such class"
    return None


def defined_in(name: str, paths: list[str]) -> bool:
    """`name` (or Class.member) is defined in a module these paths name (a folder: any module in it)."""
    modules = []
    for path in paths:
        dotted = ".".join(Path(path.removesuffix(".py")).parts)
        modules += [m for m in code().modules
                    if m == dotted or (path.endswith("/") and m.startswith(dotted + "."))]
    return any(code().in_module(m, name.split(".")) for m in modules)


def stale_names(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    found = [p for s in backticked(text) if (p := problem(s))]
    found += [f"`{name}` (paper-to-code table): not in {', '.join(paths)}"
              for paths, names in paper_table_rows(text) for name in names if not defined_in(name, paths)]
    return [f"{shown(doc)}: {p}" for p in found]


# ------------------------------------------------------------------------------------- the flags

# The --help of each program, from one Python process (torch is imported once: a few seconds).
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for name, argv, module in json.loads(sys.argv[1]):
    sys.argv, text = [*argv, "--help"], io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            (runpy.run_module(module, run_name="__main__", alter_sys=True) if module else
             runpy.run_path(argv[0], run_name="__main__"))
        except SystemExit:
            pass
    out[name] = text.getvalue()
print(json.dumps(out))
"""
PROGRAMS = {  # name in a command -> (argv before --help, the module run with -m)
    "data_prep.py": (["data_prep.py"], None), "data_prep.py kinship": (["data_prep.py", "kinship"], None),
    "train_rm.py": (["train_rm.py"], None), "ppo.py": (["ppo.py"], None), "dpo.py": (["dpo.py"], None),
    "eval.py": (["eval.py"], None), "eval.py rm": (["eval.py", "rm"], None),
    "python -m karma": (["karma"], "karma"), "python -m karma.demo": (["karma.demo"], "karma.demo"),
    "python -m karma.plot": (["karma.plot"], "karma.plot"),
    "python -m karma.track": (["karma.track"], "karma.track"), "python -m karma.recipe": (["karma.recipe"], "karma.recipe"),
}


@functools.cache
def help_texts() -> dict[str, str]:
    jobs = [(name, argv, module) for name, (argv, module) in PROGRAMS.items()]
    run = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(jobs)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    texts = json.loads(run.stdout.splitlines()[-1])
    assert all("--help" in text for text in texts.values()), texts  # each program printed its help
    return texts


@functools.cache
def help_flags() -> dict[str, set[str]]:
    return {name: set(re.findall(r"(?<![\w-])" + FLAG.pattern, text)) for name, text in help_texts().items()}


def help_defaults() -> dict[str, set[str]]:
    """flag -> the defaults its --help entries state ("(default: 0.2)", "(default 24; ...)"), all programs."""
    defaults: dict[str, set[str]] = {}
    for text in help_texts().values():
        for entry in re.split(r"\n(?=  -)", text):  # an option's entry starts on a line "  --flag ..."
            entry = " ".join(entry.split())
            if m := re.search(r"\(default:? (-?[\d.e+-]+)[;),]", entry):
                for flag in re.findall(r"^(?:-\w[ ,]+)?(" + FLAG.pattern + ")", entry):
                    defaults.setdefault(flag, set()).add(m[1])
    return defaults


def bench_flags() -> set[str]:
    """The flags the bench/ scripts define (their `add_argument("--x", ...)` calls)."""
    flags = set()
    for path in (ROOT / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                flags |= {a.value for a in node.args
                          if isinstance(a, ast.Constant) and str(a.value).startswith("--")}
    return flags


def unknown_flags(doc: Path) -> list[str]:
    bad = []
    for command in shell_commands(doc.read_text(encoding="utf-8")):
        if (found := program_of(command)) is None:
            continue
        program, words = found
        if program not in PROGRAMS:
            bad.append(f"{shown(doc)}: no program {program} (`{command}`)")
            continue
        for flag in [w.split("=")[0] for w in words if w.startswith("--")]:
            if flag not in help_flags()[program]:
                bad.append(f"{shown(doc)}: {program} has no {flag} (`{command}`)")
    return bad


def unknown_prose_flags(doc: Path) -> list[str]:
    """A `--flag` in the text (`--max-length`, `--lr 10`, `--stop-after-*`) is some program's flag."""
    known = set().union(*help_flags().values(), bench_flags())
    bad = []
    for span in backticked(doc.read_text(encoding="utf-8")):
        if m := re.match(FLAG.pattern + r"(\*)?", span):
            flag = m[0].rstrip("*")
            if not (flag in known or (m[1] and any(k.startswith(flag) for k in known))):
                bad.append(f"{shown(doc)}: `{span}`: no program has {flag}")
    return bad


def same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def wrong_defaults(doc: Path) -> list[str]:
    """A default written by hand beside its flag, "`--min-chars` (10)", is the one --help shows."""
    text = " ".join(prose(doc.read_text(encoding="utf-8")).split())
    bad = []
    for flag, value in re.findall(r"`(" + FLAG.pattern + r")` \((-?\d[\d.e+-]*)\b", text):
        shown_values = help_defaults().get(flag)
        if shown_values and not any(same_number(value, v) for v in shown_values):
            bad.append(f"{shown(doc)}: `{flag}` ({value}): --help says {' or '.join(sorted(shown_values))}")
    return bad


# ------------------------------------------------------------------------------ targets and links

def unknown_make_targets(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = [c.split()[1] for c in shell_commands(text) if c.startswith("make ") and len(c.split()) > 1]
    named += re.findall(r"`make ([\w-]+)", prose(text))
    return [f"{shown(doc)}: make {t}: no such target" for t in named if "=" not in t and t not in targets]


def broken_links(doc: Path) -> list[str]:
    """Relative links ([text](target)) whose file is missing, from the doc's own folder."""
    targets = re.findall(r"\]\(([^)\s]+)\)", prose(doc.read_text(encoding="utf-8")))
    return [f"{shown(doc)}: link to {t}: no such file" for t in targets
            if "://" not in t and not t.startswith("#") and not (doc.parent / t.split("#")[0]).exists()]


# ------------------------------------------------------------------------------------- the tests

each_doc = pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))


@each_doc
def test_every_name_in_backticks_exists_in_the_code(doc):
    assert stale_names(doc) == []


@each_doc
def test_every_flag_in_a_command_block_is_in_that_programs_help(doc):
    assert unknown_flags(doc) == []


@each_doc
def test_every_flag_named_in_the_text_is_a_programs_flag(doc):
    assert unknown_prose_flags(doc) == []


@each_doc
def test_every_default_written_beside_its_flag_is_the_programs(doc):
    assert wrong_defaults(doc) == []


@each_doc
def test_every_make_target_and_linked_file_exists(doc):
    assert unknown_make_targets(doc) + broken_links(doc) == []


def test_the_checks_catch_what_went_stale_before(tmp_path):
    """The checks themselves, on names this project once had: each is caught, and only those."""
    doc = tmp_path / "stale.md"
    doc.write_text(
        "Read `karma/encoder.py`, `karma.run.check_flags`, `reward_train._train()`, "
        "`karma/ppo/trainer._train` and [PPO](docs/nothing.md); `--beta-ppo 0.1`; `--min-chars` (12); "
        "not `metrics.jsonl` or `--lr`.\n\n"
        "| the paper says | where | what to read |\n|---|---|---|\n"
        "| threads | `karma/data/pushshift.py`, `threads.py` | `read_dump`, `is_rewarding`, `gae` |\n\n"
        "```bash\npython ppo.py --model x --kl-coef 0.1   # stale\nmake nothing\n"
        "python -m karma.data.kinship --help\n```\n")
    assert [p.split(": ", 1)[1].split(":")[0] for p in stale_names(doc)] == [
        "`karma/encoder.py`", "`karma.run.check_flags`", "`reward_train._train()`",
        "`karma/ppo/trainer._train`", "`read_dump` (paper-to-code table)", "`gae` (paper-to-code table)"]
    flags = unknown_flags(doc)
    assert len(flags) == 2 and "ppo.py has no --kl-coef" in flags[0]
    assert "no program python -m karma.data.kinship" in flags[1]
    assert unknown_prose_flags(doc) == ["stale.md: `--beta-ppo 0.1`: no program has --beta-ppo"]
    assert wrong_defaults(doc) == ["stale.md: `--min-chars` (12): --help says 10"]
    assert unknown_make_targets(doc) == ["stale.md: make nothing: no such target"]
    assert broken_links(doc) == ["stale.md: link to docs/nothing.md: no such file"]
