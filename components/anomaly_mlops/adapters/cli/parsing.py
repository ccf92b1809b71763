"""The CLI's argparse pieces: "did you mean" for mistyped steps and flags, defaults shown in
every help, and the handle each command family registers its subcommands on."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped step or flag."""

    def parse_args(self, args=None, namespace=None):
        import difflib

        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            step = self._step_parsers().get(getattr(parsed, "command", None), self)
            flags = [o for a in step._actions for o in a.option_strings]
            hints = [
                f"'{arg}' -> '{close[0]}'"
                for arg in extras
                if arg.startswith("-") and (close := difflib.get_close_matches(arg.split("=")[0], flags, n=1))
            ]
            step.error(
                f"unrecognized arguments: {' '.join(extras)}" + (f"; did you mean {', '.join(hints)}?" if hints else "")
            )
        return parsed

    def _step_parsers(self) -> dict:
        return {
            name: sub
            for a in (self._subparsers._group_actions if self._subparsers else [])
            for name, sub in (a.choices or {}).items()
        }

    def error(self, message: str):
        import difflib
        import re

        wrong = re.search(r"invalid choice: '([^']*)'", message)
        if wrong and self._subparsers is not None:
            close = difflib.get_close_matches(wrong.group(1), list(self._step_parsers()), n=1)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


class Help(argparse.HelpFormatter):
    """Every flag's default in --help, with or without a help text (once: a text that says
    its default, in words the stored value would not give, keeps its own)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default not in (None, argparse.SUPPRESS, False, [], "")
            and "%(default)" not in text
            and "default:" not in text
            and action.option_strings
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


class SubParsers:
    """Where a command family adds its subcommands: each parser shows its defaults."""

    def __init__(self, subparsers):
        self._subparsers = subparsers

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._subparsers.add_parser(name, formatter_class=Help, **kwargs)
