"""The ``nnrun`` command line: the only module that prints.

Every outcome of ``nnrun preprocess`` ends here: a human report on stderr and,
with ``--json``, exactly one JSON object on stdout; the exit code comes from
:func:`runner.errors.exit_code_for`, the one place that maps outcomes to codes.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

import importlib
import json

import typer

from runner.cli import options as cli_options
from runner import __version__
from runner.dataset import parse_dataset_id
from runner.cli.progress import make_progress
from runner.errors import BadInputError, NnrunError, Outcome, RunInterrupted, exit_code_for
from runner.options import DEFAULT_NPFP, PreprocessOptions, spread_multi_value_options
from runner.diagnosis.report import RunReport, dumps, load_report, render_human, report_from_json
from runner.run.preprocess import DEFAULT_IMAGE, Preprocess, RunSettings
from runner.cli.k8s import k8s_app

app = typer.Typer(
    name="nnrun",
    help="Run nnU-Net v2 preprocessing under a hard memory cap in Docker, and say exactly what went wrong.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(k8s_app, name="k8s")


def _parser_exception_types(name: str) -> tuple[type, ...]:
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


_USAGE_ERRORS = _parser_exception_types("UsageError")
_EXITS = _parser_exception_types("Exit")
_ABORTS = _parser_exception_types("Abort")

# nnU-Net arguments after `--`, split off by main() before click parses the rest.
_NNUNET_EXTRA: list[str] = []


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class _Interrupts:
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


def _crash_log(exc: BaseException) -> str:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnrun"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path("/tmp")
    path = base / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return str(path)


def _finish(report: RunReport, as_json: bool, quiet: bool) -> None:
    if not quiet or report.outcome is not Outcome.OK:
        _err(render_human(report))
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def _parse_np(values: list[str] | None) -> tuple[tuple[int, ...] | None, bool]:
    """-np: None, 'auto', or integers."""
    if not values:
        return None, False
    if [v.lower() for v in values] == ["auto"]:
        return None, True
    try:
        return tuple(int(v) for v in values), False
    except ValueError:
        raise BadInputError(f"-np takes whole numbers or auto (got {' '.join(values)})") from None


def _parse_npfp(value: str | None) -> tuple[int, bool]:
    if value is None:
        return DEFAULT_NPFP, False
    if value.lower() == "auto":
        return DEFAULT_NPFP, True
    try:
        return int(value), False
    except ValueError:
        raise BadInputError(f"-npfp takes a whole number or auto (got {value})") from None


def _report_for_error(err: NnrunError) -> RunReport:
    report = RunReport(outcome=err.outcome, message=err.one_line(), hint=err.hint)
    if isinstance(err, RunInterrupted):
        report.interrupt_signal = err.signum
    return report


@app.command("preprocess", context_settings={"help_option_names": ["-h", "--help"]})
def preprocess_command(
    dataset: List[str] = typer.Option(..., "-d", help="Dataset id (e.g. 501 or Dataset501_Name). One dataset per run."),
    mem: str = typer.Option(..., "--mem", help="Hard memory cap of the container, docker syntax: 16g, 4096m, 2.5g. "
                                              "Swap is off (memory == memory+swap)."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", help="nnU-Net configurations "
                                                                        "[default: 2d 3d_fullres 3d_lowres]."),
    np_: Optional[List[str]] = typer.Option(None, "-np", help="Preprocessing workers: one value, or one per "
                                                             "configuration, or auto (the largest pool that fits the "
                                                             "cap, from the estimate). Without -np nnrun admits cases "
                                                             "by predicted memory (--schedule memory)."),
    npfp: Optional[str] = typer.Option(None, "-npfp", help="Fingerprint extraction workers, or auto "
                                                           "[default: auto with --schedule memory, else 8]."),
    schedule: Optional[str] = typer.Option(None, "--schedule",
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
    overwrite_target_spacing: Optional[List[float]] = cli_options.OVERWRITE_TARGET_SPACING,
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    verbose: bool = cli_options.VERBOSE,
    no_pbar: bool = cli_options.NO_PBAR,
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="The nnrun image to run."),
    raw: Optional[str] = typer.Option(None, "--raw", help="nnU-Net raw folder [default: $nnUNet_raw]. Mounted read-only."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    skip_file_check: bool = typer.Option(False, "--skip-file-check",
                                         help="Skip reading every image and label to the end before the run."),
    shm_size: str = typer.Option("256m", "--shm-size", help="Size of /dev/shm in the container (counts against the cap)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the outcome on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; the report only when not ok."),
    nnunet_output: bool = typer.Option(False, "--nnunet-output",
                                       help="Stream nnU-Net's own output to stderr (it is always in the log file)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not render memory.png in the run folder."),
    shard: Optional[str] = typer.Option(None, "--shard",
                                        help="K/N: preprocess only shard K (0..N-1) of N of the cases, e.g. one Slurm "
                                             "array task or Kubernetes index each. Needs the fingerprint and plans "
                                             "(run once with --no_pp first); the case->shard map is shared in "
                                             ".nnrun/shards.<plans>.json. `nnrun merge` checks the result."),
    runtime: str = typer.Option("docker", "--runtime", "--engine",
                                help="docker: a container of --image (default); podman: the same through Podman's "
                                     "Docker-compatible API; host: nnU-Net as processes on this node, under the "
                                     "memory limit of the surrounding job (a Slurm task), with --host-python."),
    host_python: Optional[str] = typer.Option(None, "--host-python",
                                              help="--runtime host: a Python with nnunetv2 installed "
                                                   "[default: $NNRUN_HOST_PYTHON, else this Python]."),
    retry: Optional[int] = typer.Option(None, "--retry", min=0, max=10,
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
        extra_args = tuple(_NNUNET_EXTRA)
        np_values, np_auto = _parse_np(np_)
        npfp_value, npfp_auto = _parse_npfp(npfp)
        if schedule not in (None, "memory", "fixed"):
            raise BadInputError(f"--schedule must be memory or fixed (got {schedule!r})")
        schedule = schedule or ("fixed" if np_ else "memory")
        if schedule == "memory" and npfp is None:
            npfp_auto = True
        if no_pbar:
            extra_args = ("--no_pbar", *extra_args)
        opts = PreprocessOptions(
            dataset_id=parse_dataset_id(dataset[0]),
            configurations=tuple(configurations) if configurations else PreprocessOptions.configurations,
            np=np_values,
            npfp=npfp_value,
            verify_dataset_integrity=verify_dataset_integrity,
            no_pp=no_pp,
            clean=clean,
            planner=planner,
            fingerprint_extractor=fpe,
            gpu_memory_target=gpu_memory_target,
            preprocessor_name=preprocessor_name,
            overwrite_target_spacing=tuple(overwrite_target_spacing) if overwrite_target_spacing else None,
            overwrite_plans_name=overwrite_plans_name,
            verbose=verbose,
            extra_args=extra_args,
        )
        shard_spec = _parse_shard(shard)
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
                               shard=shard_spec, runtime=runtime)
        engine_factory = engine_factory_for(runtime, host_python)
        progress = make_progress(quiet, nnunet_output)
        try:
            with _Interrupts():
                report = Preprocess(opts, settings, engine_factory, progress).run()
        finally:
            progress.close()
    except NnrunError as err:
        report = _report_for_error(err)
    _finish(report, as_json, quiet)


RUNTIMES = ("docker", "podman", "host")


def engine_factory_for(runtime: str, host_python: str | None = None):
    """The engine behind --runtime (imported only when a run needs it: no Docker SDK at start-up)."""
    if runtime == "host":
        from runner.engines.host import HostEngine
        return lambda: HostEngine(python=host_python)
    from runner.engines.docker import engine_factory
    return engine_factory(runtime)      # docker (a Podman socket in DOCKER_HOST is recognised) or podman


def _parse_shard(text: str | None):
    if text is None:
        return None
    from runner.shards import ShardError, parse_shard
    try:
        return parse_shard(text)
    except ShardError as err:
        raise BadInputError(str(err)) from None


@app.command("merge", context_settings={"help_option_names": ["-h", "--help"]})
def merge_command(
    dataset: str = typer.Option(..., "-d", help="Dataset id (e.g. 501 or Dataset501_Name)."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", help="Configurations to check [default: those "
                                                                        "of 2d 3d_fullres 3d_lowres the plans have]."),
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    raw: Optional[str] = typer.Option(None, "--raw", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    mem: str = typer.Option("SIZE", "--mem", help="The --mem to put in the commands that redo missing shards."),
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
    from runner.run.locks import acquire as acquire_locks, owner_info, scope_for_run
    from runner.merge import merge, render_merge, rerun_command
    from runner.run.preprocess import _resolve_root

    try:
        raw_root = _resolve_root(raw, "nnUNet_raw", "--raw")
        ds = load_raw_dataset(raw_root, parse_dataset_id(dataset))
        pre = _resolve_root(preprocessed, "nnUNet_preprocessed", "--preprocessed") / ds.name
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
                from runner.run.preprocess import hand_over
                hand_over([pre], 0, 0)
    except NnrunError as err:
        _err(f"nnrun: {err.outcome.value}: {err.one_line()}")
        if as_json:
            sys.stdout.write(json.dumps({"outcome": err.outcome.value, "message": err.one_line(),
                                         "exit_code": exit_code_for(err.outcome)}) + "\n")
        raise typer.Exit(exit_code_for(err.outcome))
    outcome = Outcome.OK if result.ok else Outcome.BAD_INPUT
    hint = rerun_command(result, ds.dataset_id, mem)
    _err(render_merge(result, hint))
    if as_json:
        sys.stdout.write(json.dumps({**result.to_json(), "exit_code": exit_code_for(outcome),
                                     "next": None if result.ok else hint}) + "\n")
    raise typer.Exit(exit_code_for(outcome))


@app.command("estimate", context_settings={"help_option_names": ["-h", "--help"]})
def estimate_command(
    dataset: str = typer.Option(..., "-d", help="Dataset id (e.g. 501)."),
    mem: str = typer.Option(..., "--mem", help="The cap to plan for (docker syntax: 16g, 4096m)."),
    configurations: Optional[List[str]] = typer.Option(None, "-c", help="Configurations [default: 2d 3d_fullres 3d_lowres]."),
    raw: Optional[str] = typer.Option(None, "--raw", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed",
                                               help="Preprocessed folder; its plans give the target spacing when present."),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="The image whose worker baseline is measured (once, cached)."),
    engine: str = cli_options.CONTAINER_ENGINE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Predict each case's peak memory per phase from image headers, and the -np/-npfp that fit the cap."""
    from runner.engines.docker import engine_factory
    from runner.cli.estimate import run_estimate

    try:
        est = run_estimate(dataset, mem, tuple(configurations) if configurations else None, raw, preprocessed, image,
                           engine_factory(engine))
    except NnrunError as err:
        _finish(_report_for_error(err), as_json, False)
        return
    from runner.estimate.model import estimate_json, render_estimate
    from runner.run.admission import check_fits
    _err(render_estimate(est))
    if as_json:
        sys.stdout.write(json.dumps(estimate_json(est)) + "\n")
    try:
        check_fits(est, None, fingerprint_needed=True)   # what `nnrun preprocess` would refuse
    except BadInputError as err:
        _err(f"nnrun: bad_input: {err.one_line()}")
        raise typer.Exit(exit_code_for(Outcome.BAD_INPUT))
    raise typer.Exit(0)


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="A run folder: <preprocessed>/DatasetXXX_Name/.nnrun/runs/<run id>."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's JSON report instead."),
) -> None:
    """Print the report of an earlier run again, from its run folder."""
    try:
        data = load_report(run_dir)
    except NnrunError as err:
        _err(f"nnrun: {err.outcome.value}: {err.one_line()}")
        raise typer.Exit(exit_code_for(err.outcome))
    if as_json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        _err(render_human(report_from_json(data)))
        for name in ("manifest.json", "timeline.jsonl", "memory.png"):
            if (run_dir / name).exists():
                _err(f"  {name + ':':<13} {run_dir / name}")


@app.command("doctor")
def doctor_command(
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="The nnrun image to check."),
    raw: Optional[str] = typer.Option(None, "--raw", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    no_probe: bool = typer.Option(False, "--no-probe", help="Skip the probe container that checks the cap is enforced."),
    engine: str = cli_options.CONTAINER_ENGINE,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Check that this machine can run nnrun: Docker, cgroups, memory, enforcement, image, folders."""
    from runner.engines.docker import engine_factory
    from runner.doctor import doctor_json, render_doctor, run_checks

    try:
        factory = engine_factory(engine)
    except NnrunError as err:
        _err(f"nnrun: {err.outcome.value}: {err.one_line()}")
        raise typer.Exit(exit_code_for(err.outcome))
    report = run_checks(factory, image, raw, preprocessed, probe=not no_probe)
    _err(render_doctor(report))
    if as_json:
        sys.stdout.write(json.dumps(doctor_json(report)) + "\n")
    raise typer.Exit(report.exit_code)


@app.command("make-demo")
def make_demo_command(
    raw: Optional[str] = typer.Option(None, "--raw", help="nnU-Net raw folder [default: $nnUNet_raw]."),
) -> None:
    """Write the synthetic demo dataset Dataset501_Demo (idempotent, a few seconds)."""
    from runner.demo import make_demo
    root = raw or os.environ.get("nnUNet_raw")
    if not root:
        _err("nnrun: bad_input: no raw folder: pass --raw DIR or set nnUNet_raw")
        raise typer.Exit(exit_code_for(Outcome.BAD_INPUT))
    path = make_demo(Path(root))
    print(path)


@app.command("version")
def version_command() -> None:
    """Print nnrun's version."""
    print(__version__)


app.add_typer(importlib.import_module("runner.cli.slurm").app, name="slurm")


def _wants_json(argv: list[str]) -> bool:
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (also for usage errors, which are bad_input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    head, tail = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if not head:
        head = ["--help"]        # a bare `nnrun` shows the help, as it is
    _NNUNET_EXTRA[:] = tail
    try:
        code = command.main(args=spread_multi_value_options(head), prog_name="nnrun", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except _EXITS as done:
        return done.exit_code
    except _USAGE_ERRORS as err:
        report = RunReport(outcome=Outcome.BAD_INPUT, message=" ".join(err.format_message().split()),
                           hint="see nnrun preprocess --help")
        _err(render_human(report) + " (see nnrun --help)")
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
        path = _crash_log(exc)
        report = RunReport(outcome=Outcome.BUG, message=f"{type(exc).__name__}: {exc}", log_path=path)
        _err(f"nnrun: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]} "
             f"(full log: {path}; please report it)")
        if _wants_json(argv):
            sys.stdout.write(dumps(report) + "\n")
        return report.exit_code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
