"""``nnrun make-demo``: write the synthetic demo dataset."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from runner.cli.common import err as _err
from runner.cli.common import fail
from runner.errors import BadInputError, NnrunError, Outcome, exit_code_for


def make_demo_command(
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR", help="nnU-Net raw folder [default: $nnUNet_raw]."),
) -> None:
    """Write the synthetic demo dataset Dataset501_Demo (idempotent, a few seconds)."""
    from runner.demo import make_demo
    root = raw or os.environ.get("nnUNet_raw")
    if not root:
        _err("nnrun: bad_input: no raw folder: pass --raw DIR or set nnUNet_raw")
        raise typer.Exit(exit_code_for(Outcome.BAD_INPUT))
    try:
        path = make_demo(Path(root))
    except NnrunError as err:
        fail(err)
    except OSError as err:          # e.g. a folder it may not write to
        fail(BadInputError(f"cannot write the demo dataset under {root}: {err.strerror or err}"))
    print(path)
