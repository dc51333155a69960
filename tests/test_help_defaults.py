"""--help shows every option's default: each option of every program and subcommand says "(default: ...)"
(what its absence means where it has no value) or "(required)". Parsers are built in-process: each
program's argument parsing is stopped at its first parse_args call, which hands over the parser."""

from __future__ import annotations

import argparse
import re

import pytest

import data_prep
import dpo
import eval as eval_script
import ppo
import train_rm
from karma import __main__ as sample_cli
from karma import demo, plot, recipe, track


class Built(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(parse) -> argparse.ArgumentParser:
    """The parser that `parse(argv)` builds, taken at its first parse_args call."""
    def grab(parser, *args, **kwargs):
        raise Built(parser)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", grab)
        m.setattr(argparse.ArgumentParser, "parse_intermixed_args", grab)  # python -m karma
        with pytest.raises(Built) as built:
            parse([])
    return built.value.parser


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def parsers() -> dict[str, argparse.ArgumentParser]:
    """{program as run: its parser}: the five scripts, their two subcommands, and the recipe, plot and
    replay commands, the sampler (python -m karma) and the demo report."""
    found = {"ppo.py": parser_of(ppo.parse_args), "train_rm.py": parser_of(train_rm.parse_args),
             "dpo.py": parser_of(dpo.parse_args), "data_prep.py": parser_of(data_prep.parse_args),
             "eval.py": parser_of(eval_script.parse_args), "python -m karma.recipe": parser_of(recipe.main),
             "python -m karma.plot": parser_of(plot.main), "python -m karma.track": parser_of(track.main),
             "python -m karma": parser_of(sample_cli.parse_args), "python -m karma.demo": parser_of(demo.parse_args)}
    found["data_prep.py kinship"] = subcommand(found["data_prep.py"], "kinship")
    found["eval.py rm"] = subcommand(found["eval.py"], "rm")
    return found


def shown_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An option's help as --help prints it, with the default its parser's formatter adds."""
    return parser._get_formatter()._expand_help(action)


def test_every_option_of_every_program_shows_its_default_or_that_it_is_required():
    hidden = [f"{program} {action.option_strings[-1]}" for program, parser in parsers().items()
              for action in parser._actions if action.option_strings and action.dest != "help"
              and not re.search(r"\((default|required)\b", shown_help(parser, action))]
    assert hidden == []


def helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.option_strings[-1]: shown_help(parser, a) for a in parser._actions if a.option_strings}


def test_the_formatter_writes_defaults_as_the_trainers_settings_do():
    prep, evals = parser_of(data_prep.parse_args), parser_of(eval_script.parse_args)
    assert helps(prep)["--min-chars"].endswith("(default: 10)")
    assert helps(prep)["--bots"].endswith("(default: AutoModerator)")  # a list: its values
    assert helps(evals)["--rtp-greedy"].endswith("(default: off)")
    assert helps(evals)["--out"].endswith("(default: runs/eval)")
    assert helps(evals)["--limit"].count("(default") == 1  # a help that states its default keeps its words
    assert helps(subcommand(evals, "rm"))["--reward-models"].endswith("(required)")
    assert helps(subcommand(prep, "kinship"))["--scores"].endswith("(required)")
