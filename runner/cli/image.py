"""``nnrun image build``: build the nnrun image from the recipe this nnrun package carries."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from runner.cli import options as cli_options
from runner.cli.common import HELP
from runner.cli.common import err as _err
from runner.cli.common import result as show
from runner.errors import NnrunError, Outcome, exit_code_for
from runner.run.settings import DEFAULT_IMAGE

SCHEMA_VERSION = 1

image_app = typer.Typer(
    name="image",
    help="The nnrun image: build it from the recipe inside this nnrun package (Dockerfile and package lock).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP,
)


@image_app.command("build", context_settings=HELP)
def build_command(
    tag: str = typer.Option(DEFAULT_IMAGE, "--tag", "-t", metavar="IMAGE", help="The image's name:tag."),
    base_image: str = typer.Option("python:3.11-slim", "--base-image", metavar="IMAGE",
                                   help="The base image (with or without Python 3.11). When the default can be "
                                        "neither found nor pulled, a local Debian base is made with debootstrap "
                                        "(as root)."),
    cache: Optional[Path] = typer.Option(None, "--cache", metavar="DIR",
                                         help="The wheelhouse and the Debian base's root file system [default: "
                                              "$NNRUN_CACHE, else /var/cache/nnrun as root, else ~/.cache/nnrun]."),
    pip_python: Optional[str] = typer.Option(None, "--pip-python", metavar="PATH",
                                             help="The Python whose pip fetches the lock's wheels on this host "
                                                  "[default: nnrun's own, else python3]."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Build every layer again (the engine's layer cache off)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print every line of the build, not just its steps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
    runtime: Optional[str] = cli_options.CONTAINER_RUNTIME,
    engine: Optional[str] = cli_options.ENGINE_ALIAS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Build the nnrun image: the lock's wheels fetched on this host (hash-checked), installed with hashes required."""
    from runner.engines.docker import engine_factory
    from runner.image.build import BuildRequest, build, render_result

    started = time.monotonic()

    def progress(line: str) -> None:
        if not quiet:
            _err(f"nnrun image build: {line}")

    def build_output(line: str) -> None:
        if verbose or line.startswith("Step ") or line.startswith("Successfully "):
            progress(line if line.startswith(("Step ", "Successfully ")) else f"  {line}")

    try:
        factory = engine_factory(cli_options.container_runtime(runtime, engine, "nnrun image build needs a container "
                                                                                "engine"))
        result = build(factory(), BuildRequest(tag=tag, base_image=base_image, cache=cache, pip_python=pip_python,
                                               no_cache=no_cache), progress, build_output)
    except NnrunError as error:
        tail = getattr(error, "output_tail", None)
        if tail and not verbose and not quiet:
            _err("\n".join(f"  | {line}" for line in tail))
        _err(f"nnrun: {error.outcome.value}: {error.one_line()}")
        if as_json:
            sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "outcome": error.outcome.value,
                                         "exit_code": exit_code_for(error.outcome), "message": error.message,
                                         "hint": error.hint, "tag": tag,
                                         "duration_s": round(time.monotonic() - started, 2)}) + "\n")
        raise typer.Exit(exit_code_for(error.outcome)) from None
    show(render_result(result), as_json)
    if as_json:
        sys.stdout.write(json.dumps({"schema_version": SCHEMA_VERSION, "outcome": Outcome.OK.value,
                                     "exit_code": 0, **result.to_dict()}) + "\n")
