"""``nnrun merge``: check that the shards of a dataset add up to a complete preprocessed dataset."""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

import typer

from runner.cli import options as cli_options
from runner.cli.common import fail, one_dataset
from runner.cli.common import result as show
from runner.errors import BadInputError, NnrunError, Outcome, exit_code_for


def merge_command(
    dataset: list[str] = typer.Option(..., "-d", metavar="ID", help="Dataset id (e.g. 501 or Dataset501_Name)."),
    configurations: Optional[list[str]] = typer.Option(None, "-c", metavar="CONFIG...",
                                                       help="Configurations to check [default: those "
                                                            "of 2d 3d_fullres 3d_lowres the plans have]."),
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed", metavar="DIR",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    mem: Optional[str] = typer.Option(None, "--mem", metavar="SIZE",
                                      help="The --mem to put in the commands that redo missing shards "
                                           "[default: they say --mem SIZE, for you to fill in]."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Check that the shards of a dataset add up to a complete preprocessed dataset, and finish it.

    Every case of every planned configuration must be complete, with its
    ground-truth copy. A staging folder whose cases are all complete is moved
    into place (when the last shard was killed before doing it), temporary
    files of killed tasks are removed. Refused while shard runs are running.
    Exit codes: 0 complete, 2 incomplete or bad input (the shards to rerun are named), 6 infrastructure.
    """
    from runner.dataset import load_raw_dataset
    from runner.merge import merge, render_merge, rerun_command
    from runner.run.locks import acquire as acquire_locks
    from runner.run.locks import owner_info, scope_for_run
    from runner.run.preflight import resolve_root
    from runner.units import parse_mem

    try:
        if mem is not None:
            parse_mem(mem)                  # it goes into the printed commands: refuse what --mem would refuse
        raw_root = resolve_root(raw, "nnUNet_raw", "--raw")
        ds = load_raw_dataset(raw_root, one_dataset(dataset, "merge"))
        pre = resolve_root(preprocessed, "nnUNet_preprocessed", "--preprocessed") / ds.name
        if not pre.is_dir():
            raise BadInputError(f"{pre} does not exist: nothing preprocessed yet")
        plans_name = overwrite_plans_name or "nnUNetPlans"
        configs = tuple(configurations) if configurations else None
        # The same locks a full run takes: no shard of this dataset may be running.
        scope = scope_for_run(configs or ("2d", "3d_fullres", "3d_lowres"), no_pp=False)
        with acquire_locks(pre, scope, owner_info(f"merge-{os.getpid()}")):
            result = merge(ds, pre, plans_name, configs)
            if os.getuid() == 0:
                # Root's shard containers ran as the image's user; the dataset goes back to the caller.
                from runner.run.contract import hand_over
                hand_over([pre], 0, 0)
    except NnrunError as err:
        fail(err, as_json)
    outcome = Outcome.OK if result.ok else Outcome.BAD_INPUT
    hint = rerun_command(result, ds.dataset_id, mem or "SIZE")      # SIZE: a placeholder for the user to fill in
    show(render_merge(result, hint), as_json)
    if as_json:
        sys.stdout.write(json.dumps({**result.to_json(), "exit_code": exit_code_for(outcome),
                                     "next": None if result.ok else hint}) + "\n")
    raise typer.Exit(exit_code_for(outcome))
