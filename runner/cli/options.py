"""typer options that several commands declare the same way (one definition, one help text).

nnU-Net's planning options appear on ``nnrun preprocess`` and ``nnrun k8s
manifest``; the container engine choice (``--runtime``) on ``estimate`` and
``doctor``.  A typer ``Option`` is a plain default value, so the same object can
serve as the default of a parameter in several command functions.
"""
from __future__ import annotations

import typer

from runner.errors import BadInputError

PLANNER = typer.Option("ExperimentPlanner", "-pl", metavar="CLASS", help="Experiment planner class.")
FINGERPRINT_EXTRACTOR = typer.Option("DatasetFingerprintExtractor", "-fpe", metavar="CLASS", help="Fingerprint extractor class.")
GPU_MEMORY_TARGET = typer.Option(None, "-gpu_memory_target", metavar="GB", help="GPU memory target in GB.")
PREPROCESSOR_NAME = typer.Option("DefaultPreprocessor", "-preprocessor_name", metavar="CLASS", help="Preprocessor class.")
OVERWRITE_TARGET_SPACING = typer.Option(None, "-overwrite_target_spacing", metavar="X Y Z",
                                        help="Custom 3d_fullres target spacing (3 numbers).")
OVERWRITE_PLANS_NAME = typer.Option(None, "-overwrite_plans_name", metavar="NAME", help="Custom plans identifier.")
VERBOSE = typer.Option(False, "--verbose", help="nnU-Net's verbose output.")
NO_PBAR = typer.Option(False, "--no_pbar", help="Turn off nnU-Net's progress bars.")
CONTAINER_RUNTIME = typer.Option(None, "--runtime", metavar="docker|podman",
                                 help="Container engine: docker (DOCKER_HOST or the default socket; a Podman service "
                                      "there works too) or podman (its Docker-compatible API at $NNRUN_PODMAN_HOST "
                                      "or the standard sockets) [default: docker].")
# The old name of --runtime, still accepted everywhere --runtime picks a container engine.
ENGINE_ALIAS = typer.Option(None, "--engine", hidden=True, help="The old name of --runtime.")


def pick_runtime(runtime: str | None, engine: str | None, default: str) -> str:
    """--runtime, or its old name --engine, or the default."""
    if runtime is not None and engine is not None and runtime != engine:
        raise BadInputError(f"--engine is the old name of --runtime: give one of them (got --runtime {runtime} "
                            f"and --engine {engine})")
    return (runtime if runtime is not None else engine if engine is not None else default).lower()


CONTAINER_RUNTIMES = ("docker", "podman")


def container_runtime(runtime: str | None, engine: str | None, why: str) -> str:
    """--runtime (or --engine) of a command that needs a container engine: docker or podman."""
    name = pick_runtime(runtime, engine, "docker")
    if name not in CONTAINER_RUNTIMES:
        raise BadInputError(f"--runtime must be docker or podman (got {name!r}): {why}")
    return name


def nnunet_options(dataset_id: int, configurations, np, npfp: int, *, verify_dataset_integrity: bool, clean: bool,
                   planner: str, fpe: str, gpu_memory_target, preprocessor_name: str, overwrite_target_spacing,
                   overwrite_plans_name, verbose: bool, no_pbar: bool, extra_args, no_pp: bool = False):
    """nnU-Net's options from the values of the shared typer options (``nnrun preprocess``, ``k8s manifest``);
    ``extra_args``: what followed ``--`` on the command line."""
    from runner.options import PreprocessOptions

    return PreprocessOptions(
        dataset_id=dataset_id,
        configurations=tuple(configurations) if configurations else PreprocessOptions.configurations,
        np=tuple(np) if np else None,
        npfp=npfp,
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
        extra_args=(("--no_pbar",) if no_pbar else ()) + tuple(extra_args),
    )
