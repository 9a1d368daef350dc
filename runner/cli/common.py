"""What every command shares: printing, the exit-code path, interrupts, crash logs, nnU-Net's extra arguments.

Results go to stdout, progress and diagnostics to stderr: a command's human
result (a run's report, an estimate, a diagnosis) is written with :func:`result`,
on stdout; with ``--json`` stdout carries exactly one JSON object instead and
the human text goes to stderr.  Errors that end a command before it has a result
are one line on stderr.  The exit code comes from :func:`runner.errors.exit_code_for`.
"""
from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

import typer

from runner.diagnosis.report import RunReport, dumps, render_human
from runner.errors import BadInputError, NnrunError, Outcome, RunInterrupted, exit_code_for

HELP = {"help_option_names": ["-h", "--help"]}

# nnU-Net arguments after `--`, split off by runner.cli.app.main before click parses the rest.
NNUNET_EXTRA: list[str] = []
# The arguments nnrun was given (after the program name), set by runner.cli.app.main: the command as typed.
INVOCATION: list[str] = []


def command_as_typed() -> list[str]:
    """``nnrun`` and the arguments as the user typed them (not the path of the module that runs)."""
    return ["nnrun", *INVOCATION]


def parser_exception_types(name: str) -> tuple[type, ...]:
    """click's exception classes, wherever this typer keeps them (recent typer vendors click)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


def err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def result(text: str, as_json: bool) -> None:
    """A command's human result: on stdout, or on stderr when ``--json`` keeps stdout for the JSON object."""
    (err if as_json else out)(text)


class Interrupts:
    """Turn the first SIGINT/SIGTERM into RunInterrupted; later ones wait for the clean-up."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame):
        if self.received is None:
            self.received = signum
            raise RunInterrupted(signum)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        return False


def crash_log(exc: BaseException) -> str:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnrun"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path("/tmp")
    path = base / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return str(path)


def finish(report: RunReport, as_json: bool, quiet: bool, is_result: bool = True, color: bool = True) -> NoReturn:
    """Print a run's report and exit with its code.

    The report of a run (``is_result``, whatever its outcome) is the command's
    result: stdout, or stderr with ``--json``.  An error that ended the command
    before it had a result (``is_result=False``) is a diagnostic: stderr.  On a
    terminal the report is fitted to its width and coloured (not with
    ``color=False``); anywhere else it is written as rendered.
    """
    if not quiet or report.outcome is not Outcome.OK:
        from runner.cli.terminal import print_report

        text = render_human(report)
        stream = sys.stderr if (as_json or not is_result) else sys.stdout
        print_report(text, stream, report.outcome, color=color)
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def one_dataset(values: list[str], per: str) -> str:
    """The one -d value of a command that takes one dataset (``-d 501 502`` is spread to ``-d 501 -d 502``)."""
    if len(values) != 1:
        raise BadInputError(f"one dataset per {per} (got -d {' '.join(values)}): run nnrun once per dataset")
    return values[0]


def report_for_error(error: NnrunError) -> RunReport:
    report = RunReport(outcome=error.outcome, message=error.one_line(), hint=error.hint)
    argv = getattr(error, "recommendation_argv", None)     # NotEnoughMemoryError: the command that fits
    if argv:
        report.recommendation_argv, report.recommendation = list(argv), shlex.join(argv)
    if isinstance(error, RunInterrupted):
        report.interrupt_signal = error.signum
    return report


def fail(error: NnrunError, as_json: bool = False, prefix: str = "nnrun") -> NoReturn:
    """One line on stderr for an error before any result (and, with --json, one JSON object on stdout),
    then the outcome's exit code."""
    code = exit_code_for(error.outcome)
    err(f"{prefix}: {error.outcome.value}: {error.one_line()}")
    if as_json:
        sys.stdout.write(json.dumps({"outcome": error.outcome.value, "exit_code": code,
                                     "message": error.one_line()}) + "\n")
        sys.stdout.flush()
    raise typer.Exit(code)
