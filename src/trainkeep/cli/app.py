"""The ``trainkeep`` command group: global flags, logging to stderr, and errors as one line with an exit code."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import click

from trainkeep._version import __version__
from trainkeep.cli.common import (
    EXIT_INTERNAL,
    EXIT_LOCKED,
    EXIT_NOT_FOUND,
    EXIT_STORAGE,
    EXIT_USAGE,
)
from trainkeep.cli.listing import best_command, ls_command, runs_command, show_command
from trainkeep.cli.maintain import prune_command, verify_command
from trainkeep.cli.plot import plot_command
from trainkeep.errors import (
    CliError,
    ConfigError,
    ConfigTypeError,
    CorruptRunError,
    IncompatibleRunError,
    InvalidCheckpointNameError,
    RunLockedError,
)

EXIT_INTERRUPTED = 130


class _StderrHandler(logging.Handler):
    """Write log records to whatever ``sys.stderr`` is at the time (click's test runner swaps it)."""

    def __init__(self, debug: bool) -> None:
        super().__init__(logging.DEBUG if debug else logging.WARNING)
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            where = f" ({record.name})" if self.debug else ""
            sys.stderr.write(f"trainkeep: {record.levelname.lower()}{where}: {record.getMessage()}\n")
        except Exception:  # a broken stderr must not turn a warning into a crash
            self.handleError(record)


class TrainkeepGroup(click.Group):
    """A click group whose errors are one line on stderr (a traceback too with ``--debug``) and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in (argv[: argv.index("--")] if "--" in argv else argv)
        logger = logging.getLogger("trainkeep")
        saved = (logger.level, logger.propagate)
        handler = _StderrHandler(debug)
        logger.addHandler(handler)
        logger.setLevel(handler.level)
        logger.propagate = False
        try:
            code = super().main(argv, prog_name or "trainkeep", complete_var, standalone_mode=False, **extra)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - every error becomes one line and an exit code
            code = report_error(exc, debug)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
        if standalone_mode:
            sys.exit(code or 0)
        return code


def exit_code_for(exc: BaseException) -> int:
    """Return the documented exit code for an error (see docs/cli.md)."""
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, click.ClickException):
        return int(exc.exit_code)
    if isinstance(exc, RunLockedError):
        return EXIT_LOCKED
    if isinstance(exc, (ConfigError, ConfigTypeError, InvalidCheckpointNameError)):
        return EXIT_USAGE
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (CorruptRunError, IncompatibleRunError, OSError)):
        return EXIT_STORAGE
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL


def report_error(exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as one ``trainkeep: error: ...`` line (after its traceback with ``--debug``)."""
    code = exit_code_for(exc)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if isinstance(exc, click.UsageError):
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        message = exc.format_message() + hint
    elif isinstance(exc, click.ClickException):
        message = exc.format_message()
    elif code == EXIT_INTERRUPTED:
        message = "interrupted"
    elif code == EXIT_INTERNAL:
        message = f"internal error: {type(exc).__name__}: {exc}" + ("" if debug else
                                                                    " (rerun with --debug for the traceback)")
    else:
        message = str(exc) or type(exc).__name__
    click.echo(f"trainkeep: error: {' '.join(message.split())}", err=True)
    return code


@click.group(cls=TrainkeepGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show debug logs, and the traceback of an error.")
@click.version_option(__version__, prog_name="trainkeep")
def cli(debug: bool) -> None:
    """Inspect, verify, prune and plot trainkeep runs on any path or fsspec URL (s3://, memory://, ...).

    Listing commands take --json. Exit codes: 0 ok; 1 verify found problems, or nothing matched; 2 usage
    error; 3 the run is held by a live writer; 4 no such run or checkpoint; 5 storage error or corrupt run
    files; 6 an optional dependency is missing; 70 internal error.
    """


for _command in (runs_command, ls_command, show_command, best_command, verify_command, prune_command,
                 plot_command):
    cli.add_command(_command)


def main(args: Sequence[str] | None = None) -> None:
    """Run the ``trainkeep`` command line (the console script's entry point)."""
    cli.main(args, prog_name="trainkeep")
