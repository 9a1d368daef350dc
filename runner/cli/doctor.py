"""``nnrun doctor``: can this machine run nnrun?"""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from runner.cli import options as cli_options
from runner.cli.common import err as _err
from runner.cli.common import result
from runner.errors import NnrunError, exit_code_for
from runner.run.settings import DEFAULT_IMAGE


def doctor_command(
    image: str = typer.Option(DEFAULT_IMAGE, "--image", metavar="IMAGE", help="The nnrun image to check."),
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed", metavar="DIR",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    no_probe: bool = typer.Option(False, "--no-probe", help="Skip the probe container that checks the cap is enforced."),
    runtime: Optional[str] = cli_options.CONTAINER_RUNTIME,
    engine: Optional[str] = cli_options.ENGINE_ALIAS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Check that this machine can run nnrun: Docker, cgroups, memory, enforcement, image, folders."""
    from runner.doctor import doctor_json, render_doctor, run_checks
    from runner.engines.docker import engine_factory

    try:
        factory = engine_factory(cli_options.container_runtime(runtime, engine, "nnrun doctor checks a container "
                                                                                "engine"))
    except NnrunError as err:
        _err(f"nnrun: {err.outcome.value}: {err.one_line()}")
        raise typer.Exit(exit_code_for(err.outcome)) from None
    report = run_checks(factory, image, raw, preprocessed, probe=not no_probe)
    result(render_doctor(report), as_json)
    if as_json:
        sys.stdout.write(json.dumps(doctor_json(report)) + "\n")
    raise typer.Exit(report.exit_code)
