"""The ``nnrun`` command line: the typer app, its commands, and :func:`main`, which maps every ending to an exit code.

Each command lives in its own module of this package; this one registers
them.  The CLI is the only package that prints: a command's result on stdout
(with ``--json`` exactly one JSON object there, and the human text on stderr),
progress and errors on stderr; the exit code comes from
:func:`runner.errors.exit_code_for`, the one place that maps outcomes to codes.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import typer

from runner import __version__
from runner.cli.common import HELP, INVOCATION, NNUNET_EXTRA, crash_log, parser_exception_types
from runner.cli.common import err as _err
from runner.cli.demo import make_demo_command
from runner.cli.doctor import doctor_command
from runner.cli.estimate import estimate_command
from runner.cli.image import image_app
from runner.cli.k8s import k8s_app
from runner.cli.merge import merge_command
from runner.cli.preprocess import preprocess_command
from runner.cli.report import report_command
from runner.cli.slurm import app as slurm_app
from runner.diagnosis.report import RunReport, dumps, render_human
from runner.errors import Outcome
from runner.options import spread_multi_value_options

app = typer.Typer(
    name="nnrun",
    help="Run nnU-Net v2 preprocessing under a hard memory cap in Docker, and say exactly what went wrong.",
    add_completion=True,            # --install-completion, --show-completion (the shell is detected)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP,          # -h as well as --help, inherited by every command and sub-app
)


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _nnrun(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                        help="Print nnrun's version and exit.")) -> None:
    pass


app.command("preprocess", context_settings=HELP)(preprocess_command)
app.command("merge", context_settings=HELP)(merge_command)
app.command("estimate", context_settings=HELP)(estimate_command)
app.command("report", context_settings=HELP)(report_command)
app.command("doctor", context_settings=HELP)(doctor_command)
app.command("make-demo", context_settings=HELP)(make_demo_command)
app.add_typer(k8s_app, name="k8s")
app.add_typer(image_app, name="image")

_USAGE_ERRORS = parser_exception_types("UsageError")
_EXITS = parser_exception_types("Exit")
_ABORTS = parser_exception_types("Abort")


@app.command("version", context_settings=HELP)
def version_command() -> None:
    """Print nnrun's version."""
    print(__version__)


app.add_typer(slurm_app, name="slurm")


def _wants_json(argv: list[str]) -> bool:
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)

def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (also for usage errors, which are bad_input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    head, tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if not head:
        head = ["--help"]        # a bare `nnrun` shows the help, as it is
    NNUNET_EXTRA[:] = tail
    INVOCATION[:] = argv
    try:
        code = command.main(args=spread_multi_value_options(head), prog_name="nnrun", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _EXITS as done:
        return done.exit_code
    except SystemExit as done:      # shell completion (--show-completion, --install-completion, the completer itself)
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except _USAGE_ERRORS as err:
        ctx = getattr(err, "ctx", None)
        where = f"{ctx.command_path if ctx is not None else 'nnrun'} --help"      # the command that was misused
        report = RunReport(outcome=Outcome.BAD_INPUT, message=" ".join(err.format_message().split()),
                           hint=f"see {where}")
        _err(render_human(report) + f" (see {where})")
        if _wants_json(argv):
            sys.stdout.write(dumps(report) + "\n")
        return report.exit_code
    except (*_ABORTS, KeyboardInterrupt):
        report = RunReport(outcome=Outcome.INTERRUPTED, message="interrupted", interrupt_signal=signal.SIGINT)
        _err(render_human(report))
        if _wants_json(argv):
            sys.stdout.write(dumps(report) + "\n")
        return report.exit_code
    except Exception as exc:  # noqa: BLE001 - a bug in nnrun: one line and the log path
        path = crash_log(exc)
        report = RunReport(outcome=Outcome.BUG, message=f"{type(exc).__name__}: {exc}", log_path=path)
        _err(f"nnrun: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]} "
             f"(full log: {path}; please report it)")
        if _wants_json(argv):
            sys.stdout.write(dumps(report) + "\n")
        return report.exit_code

def entry() -> None:
    code = main()
    # Every output is written and closed when main() returns.  Finalizing an interpreter that
    # loaded numpy, matplotlib and the Docker SDK then takes ~0.2 s more (measured after a
    # `preprocess` run: 0.22 s from atexit to the shell prompt), on every command: skip it,
    # unless a non-daemon thread still runs (sys.exit waits for those) or stdio cannot be flushed.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    entry()
