"""Entry point of the `rekindle` command: subcommand groups and error-to-exit-code mapping."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from rekindle import __version__
from rekindle.cli import admin, allinone, demo, repo, services
from rekindle.core.errors import ExitCode, RekindleError

app = typer.Typer(
    help="Rekindle: self-hosted server backup and disaster recovery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(repo.app, name="repo")
app.add_typer(services.cloud_app, name="cloud")
app.add_typer(services.storage_app, name="storage")
app.add_typer(services.agent_app, name="agent")
app.add_typer(admin.app, name="admin")
app.command("demo")(demo.demo)
app.command("allinone")(allinone.allinone)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"rekindle {__version__}\n")
        raise typer.Exit


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Rekindle: self-hosted server backup and disaster recovery."""


def main() -> None:
    try:
        app(standalone_mode=True)
    except RekindleError as e:
        sys.stderr.write(f"rekindle: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("rekindle: interrupted\n")
        sys.exit(130)
    except OSError as e:
        sys.stderr.write(f"rekindle: {e.strerror or e}: {e.filename or ''}\n".rstrip(": \n") + "\n")
        sys.exit(ExitCode.ERROR)
