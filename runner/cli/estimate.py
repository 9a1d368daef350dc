"""``nnrun estimate``: the estimate for a dataset, without running anything but the (cached) baseline probe."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from runner.cli import options as cli_options
from runner.cli.common import err as _err
from runner.cli.common import finish, one_dataset, report_for_error, result
from runner.configurations import DEFAULT_PLANNER
from runner.dataset import load_raw_dataset, parse_dataset_id
from runner.errors import BadInputError, NnrunError, NotEnoughMemoryError, Outcome, exit_code_for
from runner.estimate.baseline import default_cache_dir, measure_baseline
from runner.estimate.data import dataset_geometry_with_data
from runner.estimate.model import Estimate, estimate, load_model
from runner.estimate.need import memory_needed
from runner.options import DEFAULT_CONFIGURATIONS, PreprocessOptions, validate
from runner.run.preflight import check_configurations, read_plans
from runner.run.settings import DEFAULT_IMAGE
from runner.units import format_bytes, format_mem_arg_at_most, parse_mem


def run_estimate(dataset_arg: str, mem: str, configurations: tuple[str, ...] | None, raw: str | None,
                 preprocessed: str | None, image: str, engine_factory=None, *, planner: str = DEFAULT_PLANNER,
                 overwrite_plans_name: str | None = None, use_data: bool = True) -> Estimate:
    if engine_factory is None:
        from runner.engines.docker import DockerEngine as engine_factory

    opts = validate(PreprocessOptions(parse_dataset_id(dataset_arg),
                                      configurations=configurations or DEFAULT_CONFIGURATIONS,
                                      planner=planner, overwrite_plans_name=overwrite_plans_name))
    cap = parse_mem(mem)
    raw_root = raw or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise BadInputError("no nnUNet_raw folder: pass --raw DIR or set the nnUNet_raw environment variable")
    dataset = load_raw_dataset(Path(raw_root), dataset_arg)      # a DatasetXXX_Name must match the folder
    pre_root = preprocessed or os.environ.get("nnUNet_preprocessed")
    pre_dataset = Path(pre_root) / dataset.name if pre_root else None
    plans = read_plans(pre_dataset / f"{opts.plans_name}.json") if pre_dataset else None
    # -c against the plans (or the names nnU-Net's planner makes), as `nnrun preprocess` checks it
    note = check_configurations(opts, pre_dataset)
    engine = engine_factory()
    info = engine.info()
    if info.mem_total_bytes and cap > info.mem_total_bytes:
        where = "the Podman host's memory" if info.name == "podman" else "the Docker host's memory"
        raise BadInputError(f"--mem {mem} is more than {where} ({format_bytes(info.mem_total_bytes)})",
                            hint=f"give --mem {format_mem_arg_at_most(info.mem_total_bytes)} or less")
    baseline = measure_baseline(lambda: engine, image, default_cache_dir())
    est = estimate(dataset, plans, opts.configurations, cap, baseline, load_model(), cpus=os.cpu_count() or 1,
                   geoms=dataset_geometry_with_data(dataset) if use_data else None)   # crop + foreground from the check
    if note:
        est.notes.append(note)
    return est


def estimate_command(
    dataset: list[str] = typer.Option(..., "-d", metavar="ID", help="Dataset id (e.g. 501 or Dataset501_Name)."),
    mem: str = typer.Option(..., "--mem", metavar="SIZE", help="The cap to plan for (docker syntax: 16g, 4096m)."),
    configurations: Optional[list[str]] = typer.Option(None, "-c", metavar="CONFIG...",
                                                       help="Configurations [default: 2d 3d_fullres 3d_lowres]."),
    planner: str = cli_options.PLANNER,
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed", metavar="DIR",
                                               help="Preprocessed folder; its plans give the target spacing when present."),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", metavar="IMAGE",
                              help="The image whose worker baseline is measured (once, cached)."),
    runtime: Optional[str] = cli_options.CONTAINER_RUNTIME,
    engine: Optional[str] = cli_options.ENGINE_ALIAS,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Predict each case's peak memory per phase from image headers, and the -np/-npfp that fit the cap."""
    from runner.engines.docker import engine_factory

    try:
        runtime = cli_options.container_runtime(runtime, engine, "nnrun estimate measures its worker baseline in a container")
        est = run_estimate(one_dataset(dataset, "estimate"), mem, tuple(configurations) if configurations else None,
                           raw, preprocessed, image, engine_factory(runtime), planner=planner,
                           overwrite_plans_name=overwrite_plans_name)
    except NnrunError as err:
        finish(report_for_error(err), as_json, False, is_result=False)
        return
    from runner.estimate.model import estimate_json, render_estimate
    from runner.run.admission import check_fits
    fingerprint_needed, measured = _earlier_knowledge(one_dataset(dataset, "estimate"), raw, preprocessed, est)
    refusal = None
    try:
        # What `nnrun preprocess` would need and refuse (nnrun choosing the workers), from the same function.
        need = check_fits(est, None, fingerprint_needed=fingerprint_needed, measured=measured)
    except NotEnoughMemoryError as err:
        refusal = err
        need = memory_needed(est, fingerprint=fingerprint_needed, configurations=None, measured=measured)
    text = render_estimate(est) + "\n" + f"memory needed with one worker: --mem {need.mem_arg} ({need.reason()})"
    if measured:
        text += f"\n{len(measured)} case peaks measured by earlier runs of this dataset replace their estimates"
    result(text, as_json)
    if as_json:
        sys.stdout.write(json.dumps({**estimate_json(est), "memory_needed": need.to_dict(),
                                     "fingerprint_needed": fingerprint_needed,
                                     "measured_cases": len(measured)}) + "\n")
    if refusal is not None:
        _err(f"nnrun: bad_input: {refusal.one_line()}")
        raise typer.Exit(exit_code_for(Outcome.BAD_INPUT))
    raise typer.Exit(0)


def _earlier_knowledge(dataset_arg: str, raw: str | None, preprocessed: str | None, est: Estimate) -> tuple[bool, dict]:
    """(does the fingerprint still have to run, the per-case peaks earlier runs measured): what
    `nnrun preprocess` would know about the same dataset, so both print the same --mem."""
    from runner.run.history import earlier_peaks

    pre_root = preprocessed or os.environ.get("nnUNet_preprocessed")
    raw_root = raw or os.environ.get("nnUNet_raw")
    if not pre_root or not raw_root:
        return True, {}
    folder = Path(pre_root) / load_raw_dataset(Path(raw_root), dataset_arg).name
    return (not (folder / "dataset_fingerprint.json").is_file(),
            earlier_peaks(folder, est.baseline.image_id))
