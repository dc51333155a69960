"""The scripts' one error path: expected errors become one line on stderr, not a traceback; and
--config FILE.toml and --help's defaults for the scripts whose flags are plain argparse (data_prep.py,
eval.py, karma.recipe).

Bad paths, checkpoints, data and flags raise OSError / ValueError / KeyError with a message that
names the file, key or flag; a locked --out raises RunLocked. `run_main` prints such an error as
`<script>: error: <message>` and exits 2 (argparse's code for bad usage); a run stopped by its
divergence guard exits 1; Ctrl-C exits 130. `--debug` (or KARMA_DEBUG=1) shows the traceback.
"""

import argparse
import difflib
import os
import re
import sys
from pathlib import Path

import torch

from karma.errors import RunLocked, TrainingDiverged
from karma.settings import read_toml

EXPECTED = (OSError, ValueError, KeyError, RunLocked)


def device_arg(value: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N, and CUDA only where a CUDA device exists
    (checked at parse time, so a bad value stops the program before any model loads)."""
    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{value!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{value!r}: no CUDA device is available here (torch "
                                         f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{value!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return value


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (default: off; also KARMA_DEBUG=1)")


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of the scripts whose flags are plain argparse (data_prep.py, eval.py, karma.recipe): each
    option's help ends with its default in the words karma.settings gives the trainers' flags, (required),
    (default: off), (default: 16), as argparse.ArgumentDefaultsHelpFormatter would add it. A help that
    states its default itself keeps its words; an option whose default is None or empty says in its help
    what its absence means ("(default: all)", "(default: none: ...)"): only the code that reads it knows."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if not action.option_strings or re.search(r"\((default|required)\b", text):
            return text
        if action.required:
            return f"{text} (required)"
        if default in (None, argparse.SUPPRESS, [], ()):
            return text
        if isinstance(default, bool):
            shown = "on; this flag turns it off" if default else "off"
        else:
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"  # argparse then expands %(prog)s and %%


def run_main(main, argv=None, prog: str | None = None) -> int:
    """Call main(argv); return the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("KARMA_DEBUG", "") not in ("", "0")
    prog = prog or Path(sys.argv[0]).name
    try:
        main(argv)
        return 0
    except TrainingDiverged as e:
        if debug:
            raise
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 1
    except EXPECTED as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- --config FILE.toml
# data_prep.py and eval.py declare their flags with argparse directly (the trainers' come from their
# settings dataclasses: karma.settings). The same three layers here: the flag's default, then the
# TOML file, then the flags given. The file's values become the parser's defaults, which argparse
# uses only for the flags not given.

CONFIG_HELP = ("settings from a TOML file, one `name = value` per flag, named as the flag without its dashes "
               "(--min-chars -> min_chars = 20); flags given here override it (default: none)")


def add_config_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--config FILE.toml (read by parse_with_config); returns the parser."""
    parser.add_argument("--config", type=Path, metavar="FILE.toml", help=CONFIG_HELP)
    return parser


def parse_with_config(parser: argparse.ArgumentParser, argv=None,
                      subcommands: dict[str, argparse.ArgumentParser] | None = None) -> argparse.Namespace:
    """parser.parse_args(argv) after `--config FILE.toml` has filled the defaults of the parser that reads
    the flags: the subcommand's (`subcommands`: {name: parser}) when argv starts with its name, else
    `parser`. A flag the file sets is no longer required on the command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    target = (subcommands or {}).get(argv[0], parser) if argv else parser
    path = config_path(argv)
    if path is not None:
        values = read_config(target, path)
        target.set_defaults(**values)
        for action in target._actions:
            if action.dest in values:
                action.required = False
    return parser.parse_args(argv)


def config_path(argv: list[str]) -> Path | None:
    """The value of --config in argv, if any (a missing value is left to the real parser's error)."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config", type=Path)
    try:
        return pre.parse_known_args(argv)[0].config
    except argparse.ArgumentError:
        return None


def read_config(parser: argparse.ArgumentParser, path: Path) -> dict:
    """{flag destination: value} from the TOML file at `path`, each key one of the parser's flags
    (dashes as underscores) and each value of the flag's type: true/false for a switch, a list for a
    flag that takes several values, an integer where the flag's type is int (a number where float),
    a string for a path or a name; a flag with its own type function (a seed, a device) gets the
    value as the string it would get on the command line. An unknown key, a value of the wrong type
    or outside the flag's choices is a ValueError naming the file and the key."""
    table = read_toml(path)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    values = {}
    for key, value in table.items():
        if key not in actions:
            close = difflib.get_close_matches(key, actions, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the settings are {', '.join(actions)}"
            raise ValueError(f"{path}: {key!r} is not a setting of {parser.prog} ({hint})")
        action = actions[key]
        if action.nargs == 0:  # a switch: store_true / store_false
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {key} = {value!r}: expected true or false")
            values[key] = value
        elif action.nargs in ("+", "*"):
            if not isinstance(value, list) or (action.nargs == "+" and not value):
                raise ValueError(f"{path}: {key} = {value!r}: expected a list" + (" of at least one value"
                                                                                   if action.nargs == "+" else ""))
            values[key] = [_config_value(path, key, v, action) for v in value]
        else:
            values[key] = _config_value(path, key, value, action)
    return values


# what TOML values a flag of each type accepts, and their name in an error
_TOML_TYPES = {int: (int, "an integer"), float: ((int, float), "a number"), str: (str, "a string"),
               Path: (str, "a path string")}


def _config_value(path: Path, key: str, value, action: argparse.Action):
    """One TOML value as the flag's type (argparse's `type`, str when none), within its choices."""
    kind = action.type or str
    accepted, words = _TOML_TYPES.get(kind, ((str, int, float), "a string or a number"))
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise ValueError(f"{path}: {key} = {value!r}: expected {words}")
    try:
        value = kind(value) if kind in _TOML_TYPES else kind(str(value))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ValueError(f"{path}: {key} = {value!r}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{path}: {key} = {value!r}: must be one of {', '.join(map(str, action.choices))}")
    return value
