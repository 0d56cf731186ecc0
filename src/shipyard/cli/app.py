"""The Typer app every command registers on, the consoles, and the entry point.

Errors print as one line on stderr with a non-zero exit; ``--debug`` shows the traceback.
Exit codes: 0 success, 1 a validation gate or a signature check failed, 2 bad input or usage,
3 internal error.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from shipyard.errors import GateError, ShipyardError, VerificationError
from shipyard.problems import describe

app = typer.Typer(
    name="shipyard",
    help="Take a trained PyTorch model to production: optimize, convert, validate, benchmark, "
    "package, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _width() -> int | None:
    """Output that is not a terminal (a log, CI, a pipe) gets wide lines, so that tables never
    squeeze names into ``net.…``; a terminal (or COLUMNS) keeps its own width."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return 200


console = Console(width=_width())
errors = Console(stderr=True, width=_width())


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one line and an exit code."""
    import shipyard.cli  # noqa: F401 - registers every command on ``app``

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Standalone mode: typer prints usage errors itself and exits 2.
        app(args=args, prog_name="shipyard")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    except ShipyardError as error:
        if debug:
            traceback.print_exc()
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        return 1 if isinstance(error, GateError | VerificationError) else 2
    except ValidationError as error:  # an option value a config refused: the user's to fix
        if debug:
            traceback.print_exc()
        line = f"invalid value: {describe(error)}"
        errors.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
        return 2
    except Exception as error:  # a bug of ours: still one line, the trace on request
        if debug:
            traceback.print_exc()
        errors.print(
            f"[bold red]internal error:[/] {type(error).__name__}: {escape(str(error))} "
            f"(run with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return 3
    return 0
