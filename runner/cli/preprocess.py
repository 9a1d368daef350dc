"""``nnrun preprocess``: parse the options, run :class:`runner.run.preprocess.Preprocess`, print the report."""
from __future__ import annotations

from typing import Optional

import typer

from runner.cli import options as cli_options
from runner.cli.common import NNUNET_EXTRA, Interrupts, command_as_typed, finish, report_for_error
from runner.cli.progress import make_progress
from runner.cli.terminal import color_wanted
from runner.dataset import parse_dataset_id
from runner.errors import BadInputError, NnrunError
from runner.options import DEFAULT_NPFP
from runner.run.preprocess import Preprocess
from runner.run.settings import DEFAULT_IMAGE, RunSettings

RUNTIMES = ("docker", "podman", "host")


def parse_np(values: list[str] | None) -> tuple[tuple[int, ...] | None, bool]:
    """-np: None, 'auto', or integers."""
    if not values:
        return None, False
    if [v.lower() for v in values] == ["auto"]:
        return None, True
    try:
        return tuple(int(v) for v in values), False
    except ValueError:
        raise BadInputError(f"-np takes whole numbers or auto (got {' '.join(values)})") from None

def parse_npfp(value: str | None) -> tuple[int, bool]:
    if value is None:
        return DEFAULT_NPFP, False
    if value.lower() == "auto":
        return DEFAULT_NPFP, True
    try:
        return int(value), False
    except ValueError:
        raise BadInputError(f"-npfp takes a whole number or auto (got {value})") from None

def preprocess_command(
    dataset: list[str] = typer.Option(..., "-d", metavar="ID",
                                      help="Dataset id (e.g. 501 or Dataset501_Name). One dataset per run."),
    mem: str = typer.Option(..., "--mem", metavar="SIZE",
                            help="Hard memory cap of the container, docker syntax: 16g, 4096m, 2.5g. "
                                 "Swap is off (memory == memory+swap)."),
    configurations: Optional[list[str]] = typer.Option(None, "-c", metavar="CONFIG...",
                                                       help="nnU-Net configurations "
                                                            "[default: 2d 3d_fullres 3d_lowres]."),
    np_: Optional[list[str]] = typer.Option(None, "-np", metavar="N...|auto",
                                            help="Preprocessing workers: one value, or one per "
                                                 "configuration, or auto (the largest pool that fits the "
                                                 "cap, from the estimate). Without -np nnrun admits cases "
                                                 "by predicted memory (--schedule memory)."),
    npfp: Optional[str] = typer.Option(None, "-npfp", metavar="N|auto",
                                       help="Fingerprint extraction workers, or auto "
                                            "[default: auto with --schedule memory, else 8]."),
    schedule: Optional[str] = typer.Option(None, "--schedule", metavar="memory|fixed",
                                           help="memory: admit cases largest first while their predicted peaks fit "
                                                "the cap (default without -np); fixed: a pool of -np workers, as "
                                                "nnU-Net (default with -np)."),
    verify_dataset_integrity: bool = typer.Option(False, "--verify_dataset_integrity",
                                                  help="Run nnU-Net's dataset integrity check first."),
    no_pp: bool = typer.Option(False, "--no_pp", help="Only fingerprint and planning, no preprocessing."),
    clean: bool = typer.Option(False, "--clean", help="Recompute the fingerprint even if one exists."),
    planner: str = cli_options.PLANNER,
    fpe: str = cli_options.FINGERPRINT_EXTRACTOR,
    gpu_memory_target: Optional[float] = cli_options.GPU_MEMORY_TARGET,
    preprocessor_name: str = cli_options.PREPROCESSOR_NAME,
    overwrite_target_spacing: Optional[list[float]] = cli_options.OVERWRITE_TARGET_SPACING,
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    verbose: bool = cli_options.VERBOSE,
    no_pbar: bool = cli_options.NO_PBAR,
    image: str = typer.Option(DEFAULT_IMAGE, "--image", metavar="IMAGE", help="The nnrun image to run."),
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR",
                                      help="nnU-Net raw folder [default: $nnUNet_raw]. Mounted read-only."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed", metavar="DIR",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    skip_file_check: bool = typer.Option(False, "--skip-file-check",
                                         help="Skip reading every image and label to the end before the run."),
    shm_size: str = typer.Option("256m", "--shm-size", metavar="SIZE",
                                 help="Size of /dev/shm in the container (counts against the cap)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; the report only when not ok."),
    nnunet_output: bool = typer.Option(False, "--nnunet-output",
                                       help="Stream nnU-Net's own output to stderr (it is always in the log file)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not render memory.png in the run folder."),
    no_color: bool = typer.Option(False, "--no-color",
                                  help="No colour or other terminal attributes in the progress panel and the "
                                       "report (also: a non-empty NO_COLOR environment variable)."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="K/N",
                                        help="K/N: preprocess only shard K (0..N-1) of N of the cases, e.g. one Slurm "
                                             "array task or Kubernetes index each. Needs the fingerprint and plans "
                                             "(run once with --no_pp first); the case->shard map is shared in "
                                             ".nnrun/shards.<plans>.json. `nnrun merge` checks the result."),
    runtime: Optional[str] = typer.Option(None, "--runtime", metavar="docker|podman|host",
                                          help="docker: a container of --image (default); podman: the same through "
                                               "Podman's Docker-compatible API; host: nnU-Net as processes on this "
                                               "node, under the memory limit of the surrounding job (a Slurm task), "
                                               "with --host-python."),
    engine: Optional[str] = cli_options.ENGINE_ALIAS,
    host_python: Optional[str] = typer.Option(None, "--host-python", metavar="PATH",
                                              help="--runtime host: a Python with nnunetv2 installed "
                                                   "[default: $NNRUN_HOST_PYTHON, else this Python]."),
    retry: Optional[int] = typer.Option(None, "--retry", min=0, max=10, metavar="N",
                                        help="After an OOM kill, run again with fewer workers (never more memory), "
                                             "only on unfinished cases, up to N times [default: 2 when nnrun chose "
                                             "the worker counts, 0 when you gave -np/-npfp]."),
) -> None:
    """Run nnUNetv2_plan_and_preprocess in a memory-capped container and diagnose the outcome.

    Exit codes: 0 ok, 2 bad input, 3 out of memory, 4 nnU-Net error, 5 killed,
    6 infrastructure, 130/143 interrupted, 1 nnrun bug.

    Arguments after `--` go to nnUNetv2_plan_and_preprocess verbatim.
    """
    try:
        if len(dataset) != 1:
            raise BadInputError(f"one dataset per run (got -d {' '.join(dataset)}): run nnrun once per dataset, "
                                f"so each gets its own cap, report and exit code")
        extra_args = tuple(NNUNET_EXTRA)
        np_values, np_auto = parse_np(np_)
        npfp_value, npfp_auto = parse_npfp(npfp)
        if schedule not in (None, "memory", "fixed"):
            raise BadInputError(f"--schedule must be memory or fixed (got {schedule!r})")
        schedule = schedule or ("fixed" if np_ else "memory")
        if schedule == "memory" and npfp is None:
            npfp_auto = True
        opts = cli_options.nnunet_options(
            parse_dataset_id(dataset[0]), configurations, np_values, npfp_value,
            verify_dataset_integrity=verify_dataset_integrity, clean=clean, planner=planner, fpe=fpe,
            gpu_memory_target=gpu_memory_target, preprocessor_name=preprocessor_name,
            overwrite_target_spacing=overwrite_target_spacing, overwrite_plans_name=overwrite_plans_name,
            verbose=verbose, no_pbar=no_pbar, extra_args=extra_args, no_pp=no_pp)
        shard_spec = parse_shard_arg(shard)
        runtime = cli_options.pick_runtime(runtime, engine, "docker")
        if runtime not in RUNTIMES:
            raise BadInputError(f"--runtime must be one of {', '.join(RUNTIMES)} (got {runtime!r})")
        passthrough: list[str] = []
        for flag, value, default in (("--image", image, DEFAULT_IMAGE), ("--raw", raw, None),
                                     ("--preprocessed", preprocessed, None), ("--shm-size", shm_size, "256m"),
                                     ("--shard", shard, None), ("--runtime", runtime, "docker"),
                                     ("--host-python", host_python, None)):
            if value != default:
                passthrough += [flag, value]
        settings = RunSettings(mem=mem, image=image, raw_root=raw, preprocessed_root=preprocessed,
                               skip_file_check=skip_file_check, shm_size=shm_size, passthrough_argv=passthrough,
                               plot=not no_plot, retries=retry, schedule=schedule, np_auto=np_auto,
                               npfp_auto=npfp_auto,
                               workers_pinned=np_values is not None or (npfp is not None and not npfp_auto),
                               shard=shard_spec, runtime=runtime, dataset_arg=dataset[0],
                               command=command_as_typed())
        engine_factory = engine_factory_for(runtime, host_python)
        progress = make_progress(quiet, nnunet_output, color=color_wanted(no_color))
        try:
            with Interrupts():
                report = Preprocess(opts, settings, engine_factory, progress).run()
        finally:
            progress.close()
    except NnrunError as err:
        finish(report_for_error(err), as_json, quiet, is_result=False,     # no run, no result: stderr
               color=color_wanted(no_color))
    finish(report, as_json, quiet, color=color_wanted(no_color))          # the run's report: stdout

def engine_factory_for(runtime: str, host_python: str | None = None):
    """The engine behind --runtime (imported only when a run needs it: no Docker SDK at start-up)."""
    if runtime == "host":
        from runner.engines.host import HostEngine
        return lambda: HostEngine(python=host_python)
    from runner.engines.docker import engine_factory
    return engine_factory(runtime)      # docker (a Podman socket in DOCKER_HOST is recognised) or podman

def parse_shard_arg(text: str | None):
    if text is None:
        return None
    from runner.shards import ShardError, parse_shard
    try:
        return parse_shard(text)
    except ShardError as err:
        raise BadInputError(str(err)) from None
