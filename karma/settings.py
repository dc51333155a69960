"""A program's settings, each written once: a dataclass field carrying its default, a one-line help
and its valid range side by side. The command line, the --config TOML file and the range checks are
derived from the dataclass:

    @dataclass
    class Config:
        lr: float = setting(1e-6, "policy learning rate", POSITIVE)
        out_dir: Path = setting(Path("runs/ppo"), "output dir", flag="--out")

    cfg, args = parse_settings(Config, settings_parser(Config, __doc__), argv)

A value comes from three layers: the field's default, then the --config file, then the flags given
on the command line. The result is checked once; it is what config.json records and what --resume
compares. A value out of range is one line naming where it came from: the flag (`--lr 0.0: must be
> 0`) or the file and key (`run.toml: lr = 0.0: must be > 0`); karma.cli.run_main prints it.

Our own small functions rather than tyro, simple-parsing or jsonargparse: the scripts keep their
exact flags (--out for out_dir, --no-whiten-advantages), argparse's own usage errors, and their
one-line range errors; and no dependency is added.
"""

import argparse
import difflib
import math
import tomllib
import types
import typing
from dataclasses import Field, field, fields
from pathlib import Path

# A rule is (test, what the value must be: a string, or a function of the value giving one); `setting`
# takes any number, checked in order.
AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
UNIT_INTERVAL = (lambda v: 0 <= v <= 1, "in [0, 1]")
HALF_OPEN_UNIT = (lambda v: 0 <= v < 1, "in [0, 1)")
SEED = (lambda v: 0 <= v < 2**32, "in [0, 2**32 - 1]")  # what numpy and torch both accept
FINITE = (lambda v: True, "a finite number")  # of a setting without rules: only a float's finiteness


def in_range(lo, hi) -> tuple:
    """The rule lo <= value <= hi. The upper bound turns an absurd value (a 1e9-wide layer, a
    1e8-sequence batch) into a one-line flag error instead of an allocator traceback."""
    return (lambda v: lo <= v <= hi, f"in [{lo}, {hi}]")


def seed_arg(value: str) -> int:
    """argparse type of a seed: an integer within SEED, refused while parsing as a bad number is."""
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer") from None
    if not SEED[0](seed):
        raise argparse.ArgumentTypeError(f"{value}: must be {SEED[1]}")
    return seed


def setting(default, help: str, *rules, flag: str | None = None, choices: tuple | None = None, type=None,
            metavar: str | None = None, unset: str | None = None, required: bool = False, **metadata) -> Field:
    """A dataclass field with its one-line `help` (--help adds the default) and its `rules`. Also:
    `flag` where it is not --<name with dashes>; `choices`; `type`, argparse's where not the
    annotation's; `metavar`; `unset`, what None means, for --help; `required` on the command line
    or in --config; any other `metadata` (run.check_resumable reads "before_added" and "budget")."""
    return field(default=default, metadata=dict(help=help, rules=rules, flag=flag, choices=choices, type=type,
                                                metavar=metavar, unset=unset, required=required, **metadata))


def flag_of(f: Field) -> str:
    """A setting's flag: its own `flag`, --no-<name> for a switch that is on by default, else --<name>."""
    dashed = f.name.replace("_", "-")
    return f.metadata.get("flag") or (f"--no-{dashed}" if f.default is True else f"--{dashed}")


def check_settings(cfg, file: Path | None = None, from_file=()) -> None:
    """Every value against its field's rules and choices; a float must also be finite; None (an unset
    option) passes. The first bad value is a ValueError naming its flag, or the file and key for a
    value that came from the --config `file` (`from_file`: those settings' names)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        rules, choices = f.metadata.get("rules") or (FINITE,), f.metadata.get("choices")
        if choices:
            rules = (*rules, (lambda v: v in choices, f"one of {', '.join(choices)}"))
        for test, must in rules:
            if isinstance(value, float) and not math.isfinite(value) or not test(value):
                where = f"{file}: {f.name} = " if f.name in from_file else f"{flag_of(f)} "
                raise ValueError(f"{where}{value}: must be {must(value) if callable(must) else must}")


def settings_parser(cls, description: str) -> argparse.ArgumentParser:
    """An argparse parser with a flag for each field of the dataclass `cls`, and --config. Its
    defaults stay out of the namespace (argparse.SUPPRESS), so parse_settings sees which flags were
    given; --help shows them. A script adds its own flags (--device) before parsing."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind, is_list = _kind(hints[f.name])
        options = dict(dest=f.name, default=argparse.SUPPRESS, help=_help(f).replace("%", "%%"))
        if kind is bool:
            options["action"] = "store_false" if f.default else "store_true"
        else:
            options.update(type=f.metadata.get("type") or kind, choices=f.metadata.get("choices"),
                           metavar=f.metadata.get("metavar"), nargs="+" if is_list else None)
        p.add_argument(flag_of(f), **options)
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="settings from a TOML file, one `name = value` per setting, named as in config.json "
                        "(lr = 1e-5); flags given here override it (default: none)")
    return p


def parse_settings(cls, parser: argparse.ArgumentParser, argv=None) -> tuple:
    """(the settings, argparse's namespace): the dataclass `cls` from its defaults, then the --config
    file, then the flags given, checked (check_settings). The namespace holds the script's own flags."""
    args = parser.parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    from_file = read_settings(cls, args.config) if args.config else {}
    values = {**from_file, **given}
    missing = [flag_of(f) for f in fields(cls) if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    cfg = cls(**values)
    check_settings(cfg, args.config, from_file.keys() - given.keys())
    return cfg, args


def read_toml(path, label: str | None = None) -> dict:
    """A TOML file as a dict: a file that cannot be read is an OSError naming it (as `label`, by default
    "--config PATH"), a file that is not TOML a ValueError naming it and TOML's line and column."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise OSError(f"{label or f'--config {path}'}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None


def read_settings(cls, path: Path) -> dict:
    """{setting: value} from a TOML file whose keys are field names of `cls`, each value of its field's
    type (an integer is a float where a float is expected). An unknown key or a value of the wrong type
    is a ValueError naming the file and the key. The ranges are checked later, once flags have had
    their say (parse_settings)."""
    table = read_toml(path)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the settings are {', '.join(names)}"
            raise ValueError(f"{path}: {key!r} is not a setting ({hint})")
        kind, is_list = _kind(hints[key])
        if is_list:
            if not isinstance(value, list):
                raise ValueError(f"{path}: {key} = {value!r}: expected a list of {_WORDS[kind]}s")
            table[key] = [_typed(path, key, v, kind) for v in value]
        else:
            table[key] = _typed(path, key, value, kind)
    return table


# the TOML values each kind of setting accepts, and their name in an error
_TOML_TYPES = {bool: bool, int: int, float: (int, float), str: str, Path: str}
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path string"}


def _typed(path: Path, key: str, value, kind: type):
    """One TOML value as the setting's `kind`; bool is not an int here (TOML keeps them apart)."""
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, _TOML_TYPES[kind]):
        raise ValueError(f"{path}: {key} = {value!r}: expected {_WORDS[kind]}")
    return kind(value)


def _kind(hint) -> tuple[type, bool]:
    """(the type of one value, whether the setting is a list) of an annotation: int | None -> (int,
    False), list[Path] | None -> (Path, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _kind(args[0])
    if typing.get_origin(hint) is list:
        return args[0], True
    return hint, False


def _help(f: Field) -> str:
    """The field's help and its default, as --help shows them."""
    meta, default = f.metadata, f.default
    if meta.get("required"):
        return f"{meta['help']} (required, here or in --config)"
    if default is None:
        default = meta.get("unset") or "none"
    elif isinstance(default, bool):
        default = "on; this flag turns it off" if default else "off"
    return f"{meta['help']} (default: {default})"
