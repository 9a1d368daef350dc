"""The run manifest (what ran, where, with which versions) and the summary of each attempt."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from runner import __version__
from runner.dataset import RawDataset
from runner.diagnosis.report import RunReport
from runner.engines.base import ContainerSpec, EngineInfo, ImageInfo
from runner.image import LABEL_LOCK_DIGEST, lock_digest
from runner.options import PreprocessOptions, nnunet_argv
from runner.run.settings import RunSettings


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def attempt_summary(report: RunReport) -> dict:
    return {"run_id": report.run_id, "outcome": report.outcome.value, "exit_code": report.exit_code,
            "workers": report.workers, "phase": report.phase, "configuration": report.configuration,
            "victim": report.victim, "victim_case": report.victim_case, "oom_kills": report.oom_kills,
            "duration_s": report.duration_s, "run_dir": report.run_dir}


def command_line(argv: list[str] | None = None) -> list[str]:
    """The command as the user typed it: ``nnrun`` for argv[0], whatever runs (the entry point, a module path)."""
    argv = sys.argv if argv is None else argv
    return ["nnrun", *argv[1:]]


def lock_record(labels: dict[str, str], host_digest: str | None = None) -> dict:
    """The image's package lock (its ``io.nnrun.lock-digest`` label) next to the lock this nnrun carries."""
    image_digest = labels.get(LABEL_LOCK_DIGEST) or None
    host_digest = host_digest if host_digest is not None else lock_digest()
    return {"image_digest": image_digest, "nnrun_digest": host_digest,
            "matches": image_digest is not None and image_digest == host_digest}


def build_manifest(run_id: str, opts: PreprocessOptions, settings: RunSettings, spec: ContainerSpec,
                   dataset: RawDataset, info: EngineInfo, image: ImageInfo, mem_bytes: int) -> dict:
    """What a cluster admin needs to trust and reproduce the run."""
    labels = image.labels
    return {
        "schema_version": 1,
        "run_id": run_id,
        "started": iso_time(time.time()),
        "ended": None,
        "command": settings.command or command_line(),
        "nnunet_argv": nnunet_argv(opts),
        "container_command": spec.command,
        "options": asdict(opts),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items() if k != "command"},
        "limit_bytes": mem_bytes,
        "versions": {"nnrun": __version__, "nnunetv2": labels.get("io.nnrun.nnunetv2-version"),
                     "torch": labels.get("io.nnrun.torch-version"), "image_nnrun": labels.get("io.nnrun.version")},
        "image": {"ref": image.ref, "id": image.image_id, "repo_digests": image.repo_digests, "labels": labels},
        "lock": lock_record(labels),
        "engine": asdict(info),
        "host": {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version()},
        "cgroup": {"version": info.cgroup_version, "driver": info.cgroup_driver},
        "dataset": {"name": dataset.name, "path": dataset.path, "cases": len(dataset.cases),
                    "file_ending": dataset.file_ending},
        "user": spec.user,
    }
