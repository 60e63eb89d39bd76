"""Every command's --help works: help text is rendered as rich markup, where a stray
`[/...]` is a closing tag and crashes the help of that one command."""

from __future__ import annotations

import click
import typer
from typer.testing import CliRunner

from rekindle.cli.main import build_app


def _commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _commands(cmd, [*prefix, name])
        else:
            found.append([*prefix, name])
    return found


def test_every_command_has_working_help() -> None:
    app = build_app()
    root = typer.main.get_command(app)
    assert isinstance(root, click.Group)
    paths = _commands(root, [])
    assert len(paths) > 40  # the whole command line was walked
    runner = CliRunner()
    failed = {}
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0 or "Usage" not in result.output:
            failed[" ".join(path)] = (result.exit_code, repr(result.exception))
    assert failed == {}
