"""``nnrun report``: print the report of an earlier run again, from its run folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from runner.cli.common import err as _err
from runner.cli.terminal import color_wanted, print_report
from runner.diagnosis.report import load_report, render_human, report_from_json
from runner.errors import NnrunError, exit_code_for


def report_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR",
                                   help="A run folder: <preprocessed>/DatasetXXX_Name/.nnrun/runs/<run id>."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's JSON report instead."),
    no_color: bool = typer.Option(False, "--no-color",
                                  help="No colour on a terminal (also: a non-empty NO_COLOR environment variable)."),
) -> None:
    """Print the report of an earlier run again, from its run folder."""
    try:
        data = load_report(run_dir)
    except NnrunError as err:
        _err(f"nnrun: {err.outcome.value}: {err.one_line()}")
        raise typer.Exit(exit_code_for(err.outcome)) from None
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        report = report_from_json(data)
        lines = [render_human(report)]
        lines += [f"  {name + ':':<13} {run_dir / name}" for name in ("manifest.json", "timeline.jsonl", "memory.png")
                  if (run_dir / name).exists()]
        print_report("\n".join(lines), sys.stdout, report.outcome, color=color_wanted(no_color))
