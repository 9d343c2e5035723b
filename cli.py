"""Command lines that fail politely. A room: every script parses its flags through it.

A user who types a bad flag should read one line that names the flag, the value and what is allowed,
not a usage dump or a traceback. These pieces give every script that behaviour:

    Parser          argparse with defaults in --help and errors as one `error: ...` line (exit 2)
    at_least, ...   flag types that check their range while parsing, so `--batch-size 0` never reaches
                    the code that would divide by it
    config_parser   one flag per field of a config dataclass (train.py and dpo.py), help written once
    refuse_unused   a flag typed without the flag it works with is an error, not silently ignored
    main            runs a script's body: a ValueError (the project's "your input is wrong") becomes
                    `error: ...` with exit 1, Ctrl-C a one-line "interrupted" with exit 130
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Callable


class Parser(argparse.ArgumentParser):
    """argparse with `--help` showing defaults and every parse error printed as one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --step is not --steps: a typo should fail, not guess
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        # argparse prints the whole usage block before the message; the message alone says what to fix.
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def at_least(low: float, kind=int) -> Callable[[str], float]:
    """A flag type: a number of `kind` that is >= low."""

    def parse(text: str):
        value = _number(text, kind)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages (config_parser checks it too)
    return parse


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A flag type: a float in [low, high], with either end optionally excluded."""

    def parse(text: str):
        value = _number(text, float)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


def positive(text: str) -> float:
    """A flag type: a float > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


positive.__name__ = "float"  # the kind it parses, as for at_least and between


def _number(text: str, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN and infinities are never a setting
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def config_parser(config_class, description: str, choices: dict | None = None, epilog: str | None = None) -> Parser:
    """One flag per field of a config dataclass (underscores become dashes), with its default, its help
    (the class's HELP, merged along the class hierarchy) and its range (LIMITS); bools are switches."""
    helps, limits = {}, {}
    for klass in reversed(config_class.__mro__):  # subclasses override what their bases say
        helps.update(getattr(klass, "HELP", {}))
        limits.update(getattr(klass, "LIMITS", {}))
    parser = Parser(description=description, epilog=epilog)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action="store_true", help=helps[field.name])
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(field.type, str)
        limit = limits.get(field.name, kind)
        # A range check of the wrong kind would refuse valid values (an int check on a float field
        # rejects "0.1"); every range type is named after the kind it parses.
        if limit.__name__ != kind.__name__:
            raise TypeError(f"{config_class.__name__}.LIMITS[{field.name!r}] parses {limit.__name__}, the field is {field.type}")
        parser.add_argument(flag, type=limit, default=field.default, help=helps[field.name],
                            choices=(choices or {}).get(field.name))
    return parser


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set[str]:
    """The dests of the flags typed on the command line, as opposed to those left at their defaults.
    (Parser turns off argparse's prefix matching, so every typed flag is spelled out in full.)"""
    argv = sys.argv[1:] if argv is None else argv
    actions = (parser._option_string_actions.get(token.split("=", 1)[0]) for token in argv if token.startswith("--"))
    return {action.dest for action in actions if action is not None}


def refuse_unused(parser: Parser, args: argparse.Namespace, needs: dict[str, str], argv=None) -> None:
    """Stop on a flag typed without the flag it works with (`needs`: dest -> the dest it needs), which
    would otherwise be ignored silently: `eval.py --long-docs 50` without --long scores the test split."""
    for dest in sorted(given_flags(parser, argv) & set(needs)):
        if not getattr(args, needs[dest]):
            parser.error(f"--{dest.replace('_', '-')} works with --{needs[dest].replace('_', '-')} only; add it or drop the flag")


def main(body: Callable[[], object]):
    """Run a script's body with the project's error convention (see the module docstring)."""
    try:
        body()
    except ValueError as error:  # includes files.DataError: a bad file the user gave
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print("interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        sys.exit(130)  # the shell's code for a program stopped by Ctrl-C (128 + SIGINT)
