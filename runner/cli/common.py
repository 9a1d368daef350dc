"""What every command shares: printing, the exit-code path, interrupts, crash logs, nnU-Net's extra arguments.

Results go through :func:`finish` (human report and, with ``--json``, one JSON
object on stdout); the exit code comes from :func:`runner.errors.exit_code_for`.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import typer

from runner.diagnosis.report import RunReport, dumps, render_human
from runner.errors import NnrunError, Outcome, RunInterrupted, exit_code_for

HELP = {"help_option_names": ["-h", "--help"]}

# nnU-Net arguments after `--`, split off by runner.cli.app.main before click parses the rest.
NNUNET_EXTRA: list[str] = []


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


def finish(report: RunReport, as_json: bool, quiet: bool) -> None:
    if not quiet or report.outcome is not Outcome.OK:
        err(render_human(report))
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def report_for_error(error: NnrunError) -> RunReport:
    report = RunReport(outcome=error.outcome, message=error.one_line(), hint=error.hint)
    if isinstance(error, RunInterrupted):
        report.interrupt_signal = error.signum
    return report


def fail(error: NnrunError) -> None:
    """One line for an error before any result, and its exit code."""
    err(f"nnrun: {error.outcome.value}: {error.one_line()}")
    raise typer.Exit(exit_code_for(error.outcome))
