"""Entry point of the `rekindle` command: subcommand groups and error-to-exit-code mapping."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from rekindle import __version__
from rekindle.core.errors import ExitCode, RekindleError

#: Command groups and single commands, and where they are defined. Only the one a command
#: line names is imported: `rekindle repo ...` does not pay for the admin client, the
#: services or the demo at every start (a no-change backup spends a tenth of its time
#: starting up).
_GROUPS = {
    "repo": ("rekindle.cli.repo", "app"),
    "cloud": ("rekindle.cli.services", "cloud_app"),
    "storage": ("rekindle.cli.services", "storage_app"),
    "agent": ("rekindle.cli.services", "agent_app"),
    "admin": ("rekindle.cli.admin", "app"),
}
_COMMANDS = {
    "demo": ("rekindle.cli.demo", "demo"),
    "allinone": ("rekindle.cli.allinone", "allinone"),
}


def build_app(command: str | None = None) -> typer.Typer:
    """The command line; with `command`, only that group or command is loaded (help and
    unknown names load everything)."""
    known = command in _GROUPS or command in _COMMANDS
    app = typer.Typer(
        help="Rekindle: self-hosted server backup and disaster recovery.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    for name, (module, attr) in _GROUPS.items():
        if not known or name == command:
            app.add_typer(getattr(importlib.import_module(module), attr), name=name)
    for name, (module, attr) in _COMMANDS.items():
        if not known or name == command:
            app.command(name)(getattr(importlib.import_module(module), attr))
    app.callback()(main_options)
    return app


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"rekindle {__version__}\n")
        raise typer.Exit


def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Rekindle: self-hosted server backup and disaster recovery."""


def __getattr__(name: str) -> typer.Typer:
    if name == "app":  # the whole command line, for tools that look for it
        return build_app()
    raise AttributeError(name)


def main() -> None:
    try:
        build_app(sys.argv[1] if len(sys.argv) > 1 else None)(standalone_mode=True)
    except RekindleError as e:
        sys.stderr.write(f"rekindle: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("rekindle: interrupted\n")
        sys.exit(130)
    except OSError as e:
        sys.stderr.write(f"rekindle: {e.strerror or e}: {e.filename or ''}\n".rstrip(": \n") + "\n")
        sys.exit(ExitCode.ERROR)
