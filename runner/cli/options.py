"""typer options that several commands declare the same way (one definition, one help text).

nnU-Net's planning options appear on ``nnrun preprocess`` and ``nnrun k8s
manifest``; the engine choice on ``estimate`` and ``doctor``.  A typer
``Option`` is a plain default value, so the same object can serve as the
default of a parameter in several command functions.
"""
from __future__ import annotations

import typer

PLANNER = typer.Option("ExperimentPlanner", "-pl", help="Experiment planner class.")
FINGERPRINT_EXTRACTOR = typer.Option("DatasetFingerprintExtractor", "-fpe", help="Fingerprint extractor class.")
GPU_MEMORY_TARGET = typer.Option(None, "-gpu_memory_target", help="GPU memory target in GB.")
PREPROCESSOR_NAME = typer.Option("DefaultPreprocessor", "-preprocessor_name", help="Preprocessor class.")
OVERWRITE_TARGET_SPACING = typer.Option(None, "-overwrite_target_spacing",
                                        help="Custom 3d_fullres target spacing (3 numbers).")
OVERWRITE_PLANS_NAME = typer.Option(None, "-overwrite_plans_name", help="Custom plans identifier.")
VERBOSE = typer.Option(False, "--verbose", help="nnU-Net's verbose output.")
NO_PBAR = typer.Option(False, "--no_pbar", help="Turn off nnU-Net's progress bars.")
CONTAINER_ENGINE = typer.Option("docker", "--engine",
                                help="Container engine: docker (DOCKER_HOST or the default socket; a Podman service "
                                     "there works too) or podman (its Docker-compatible API at $NNRUN_PODMAN_HOST or "
                                     "the standard sockets; scripts/ensure-podman.sh sets it up).")
